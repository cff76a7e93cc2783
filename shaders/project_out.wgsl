// Directional ablation on selected rows: h ← h − α Σ_j (h·d_j) d_j for orthonormal directions d_j.
// With CONDITIONAL, a row is changed only when h·d_0 > threshold (conditional steering).
// One workgroup per row.
struct Params {
  count: u32,
  dim: u32,
  directions: u32,
  alpha: f32,
  threshold: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> basis: array<f32>;

var<workgroup> partial: array<f32, WG>;

#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let r = group.x + group.y * groups.x;
  if (r >= params.count) {
    return;
  }
  let base = rows[r] * params.dim;
  for (var j = 0u; j < params.directions; j++) {
    let d = j * params.dim;
    var sum = 0.0;
    for (var i = lane; i < params.dim; i += WG) {
      sum += x[base + i] * basis[d + i];
    }
    let projection = workgroup_sum(sum, lane);
#if CONDITIONAL
    if (j == 0u && projection <= params.threshold) {
      return;
    }
#endif
    for (var i = lane; i < params.dim; i += WG) {
      x[base + i] -= params.alpha * projection * basis[d + i];
    }
  }
}
