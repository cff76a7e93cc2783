// y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) · weight — one workgroup per row.
// PLUS_ONE (Gemma): · (1 + weight), with 1 + weight formed in f32 as transformers does.
struct Params {
  rows: u32,
  dim: u32,
  eps: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let row = group.x + group.y * groups.x;
  if (row >= params.rows) {
    return;
  }
  let base = row * params.dim;
  var sum = 0.0;
  for (var i = lane; i < params.dim; i += WG) {
    let v = x[base + i];
    sum += v * v;
  }
  let scale = inverseSqrt(workgroup_sum(sum, lane) / f32(params.dim) + params.eps);
  for (var i = lane; i < params.dim; i += WG) {
#if PLUS_ONE
    y[base + i] = x[base + i] * scale * (1.0 + weight[i]);
#else
    y[base + i] = x[base + i] * scale * weight[i];
#endif
  }
}
