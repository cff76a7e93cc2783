// One expert's projection for the tokens routed to it: for each token t whose routing weight
// r = route[t, expert] is not zero,
//   y[t, row_start + n] = Σ_k x[t, k] · W[n, k]          (the expert's gate and up projections)
//   y[t, row_start + n] += r · Σ_k x[t, k] · W[n, k]     (ACCUMULATE: its down projection, summed
//                                                         into the layer's output)
// Tokens not routed to the expert are skipped whole (their workgroups read no weights), so a step
// reads only the selected experts' weights. W is [n, k] in its file dtype. One workgroup per
// (token, block of TN output features); its WG invocations split the dot products along k.
struct Params {
  tokens: u32,
  k: u32,
  n: u32,
  out_stride: u32,
  row_start: u32,
  route_stride: u32,
  expert: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read> route: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> routed: f32;

#include "common/weights.wgsl"
#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let index = group.x + group.y * groups.x;
  let blocks = (params.n + TN - 1u) / TN;
  let t = index / blocks;
  let n0 = (index % blocks) * TN;
  if (t >= params.tokens) {
    return;
  }
  if (lane == 0u) {
    routed = route[t * params.route_stride + params.expert];
  }
  // Uniform across the workgroup, so returning keeps the barriers of the sum uniform.
  let r = workgroupUniformLoad(&routed);
  if (r == 0.0) {
    return;
  }
  let k = params.k;
  var sums: array<f32, TN>;
  for (var kk = lane; kk < k; kk += WG) {
    let xv = x[t * k + kk];
    for (var j = 0u; j < TN; j++) {
      // Rows past the end read the last row again; their sums are never stored.
      sums[j] += xv * weight_at(min(n0 + j, params.n - 1u) * k + kk);
    }
  }
  for (var j = 0u; j < TN; j++) {
    let total = workgroup_sum(sums[j], lane);
    if (lane == 0u && n0 + j < params.n) {
      let out = t * params.out_stride + params.row_start + n0 + j;
#if ACCUMULATE
      y[out] += r * total;
#else
      y[out] = total;
#endif
    }
  }
}
