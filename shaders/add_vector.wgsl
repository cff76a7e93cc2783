// Activation addition on selected rows: h ← h + c · v.
// With CONDITIONAL, a row is changed only when h·d > threshold, d a unit direction (conditional
// steering). One workgroup per row.
struct Params {
  count: u32,
  dim: u32,
  scale: f32,
  threshold: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> vector: array<f32>;
#if CONDITIONAL
@group(0) @binding(4) var<storage, read> condition: array<f32>;
#endif

var<workgroup> partial: array<f32, WG>;

#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let r = group.x + group.y * groups.x;
  if (r >= params.count) {
    return;
  }
  let base = rows[r] * params.dim;
#if CONDITIONAL
  var sum = 0.0;
  for (var i = lane; i < params.dim; i += WG) {
    sum += x[base + i] * condition[i];
  }
  if (workgroup_sum(sum, lane) <= params.threshold) {
    return;
  }
#endif
  for (var i = lane; i < params.dim; i += WG) {
    x[base + i] += params.scale * vector[i];
  }
}
