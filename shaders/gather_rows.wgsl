// out[out_row + r, :] = x[rows[r], :] — copies selected token rows (a tap, or the last token of
// each sequence before the final norm and the output projection).
struct Params {
  count: u32,
  dim: u32,
  out_row: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * WG;
  if (i >= params.count * params.dim) {
    return;
  }
  let r = i / params.dim;
  let c = i % params.dim;
  out[(params.out_row + r) * params.dim + c] = x[rows[r] * params.dim + c];
}
