// Numerically stable log-sum-exp over a workgroup. Each lane keeps a running pair
// (max, Σ exp(x − max)) over its elements (one exp per element); the pairs are merged by a fixed
// tree. Include after declaring `var<workgroup> lse_max: array<f32, WG>` and `lse_sum` (WG a power
// of two). A lane starts from LSE_EMPTY, which merges away without overflow.
const LSE_EMPTY = vec2<f32>(-3.0e38, 0.0);

fn lse_push(state: vec2<f32>, x: f32) -> vec2<f32> {
  let e = exp(-abs(x - state.x));
  return select(vec2<f32>(state.x, state.y + e), vec2<f32>(x, state.y * e + 1.0), x > state.x);
}

fn lse_merge(p: vec2<f32>, q: vec2<f32>) -> vec2<f32> {
  let m = max(p.x, q.x);
  return vec2<f32>(m, p.y * exp(p.x - m) + q.y * exp(q.x - m));
}

// The workgroup's (max, Σ exp(x − max)), the same in every lane. May be called several times.
fn workgroup_lse(state: vec2<f32>, lane: u32) -> vec2<f32> {
  // Earlier readers of lse_max[0] / lse_sum[0] are done before they are overwritten.
  workgroupBarrier();
  var s = state;
  lse_max[lane] = s.x;
  lse_sum[lane] = s.y;
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lane < stride) {
      s = lse_merge(s, vec2<f32>(lse_max[lane + stride], lse_sum[lane + stride]));
      lse_max[lane] = s.x;
      lse_sum[lane] = s.y;
    }
  }
  workgroupBarrier();
  return vec2<f32>(lse_max[0], lse_sum[0]);
}
