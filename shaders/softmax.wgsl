// Row-wise softmax over [rows, cols], or log-softmax with LOG; in place with IN_PLACE (only y bound).
//
// One workgroup per row. Pass 1: each invocation keeps a running (max, sum of exp(x − max)) over its
// strided elements, one exp per element; the pairs are merged by a tree in workgroup memory.
// Pass 2 writes exp(x − max) / sum, or x − max − log(sum).

struct Params {
  rows: u32,
  cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#if IN_PLACE
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
#endif

var<workgroup> maxes: array<f32, WG>;
var<workgroup> sums: array<f32, WG>;

fn load(i: u32) -> f32 {
#if IN_PLACE
  return y[i];
#else
  return x[i];
#endif
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
  @builtin(num_workgroups) groups: vec3<u32>,
) {
  let row = wid.x + wid.y * groups.x;
  if (row >= params.rows) {
    return;
  }
  let cols = params.cols;
  let base = row * cols;

  // An invocation without elements contributes (−3e38, 0), which merges away without overflow.
  var m = -3.0e38;
  var s = 0.0;
  if (lid < cols) {
    m = load(base + lid);
    s = 1.0;
  }
  for (var i = lid + WG; i < cols; i += WG) {
    let v = load(base + i);
    let e = exp(-abs(v - m));
    s = select(s + e, s * e + 1.0, v > m);
    m = max(m, v);
  }
  maxes[lid] = m;
  sums[lid] = s;
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) {
      let m2 = maxes[lid + stride];
      let s2 = sums[lid + stride];
      let mx = max(m, m2);
      s = s * exp(m - mx) + s2 * exp(m2 - mx);
      m = mx;
      maxes[lid] = m;
      sums[lid] = s;
    }
  }
  workgroupBarrier();
  let rowMax = maxes[0];
  let rowSum = sums[0];

#if LOG
  let logSum = log(rowSum);
  for (var i = lid; i < cols; i += WG) {
    y[base + i] = (load(base + i) - rowMax) - logSum;
  }
#else
  let inverse = 1.0 / rowSum;
  for (var i = lid; i < cols; i += WG) {
    y[base + i] = exp(load(base + i) - rowMax) * inverse;
  }
#endif
}
