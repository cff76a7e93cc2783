// out[t, :] = E[ids[t], :] for the tokens whose id falls in this chunk of the table's rows.
// Tables larger than one storage binding are split by rows into chunks, one dispatch per chunk.
// SCALED (Gemma): times `scale` (√hidden in the table's dtype), in f32.
struct Params {
  tokens: u32,
  dim: u32,
  row_start: u32,
  row_count: u32,
  scale: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

#include "common/weights.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * WG;
  if (i >= params.tokens * params.dim) {
    return;
  }
  let t = i / params.dim;
  let row = ids[t] - params.row_start;
  // Unsigned wrap-around makes ids below row_start fail this test too.
  if (row < params.row_count) {
#if SCALED
    out[i] = weight_at(row * params.dim + i % params.dim) * params.scale;
#else
    out[i] = weight_at(row * params.dim + i % params.dim);
#endif
  }
}
