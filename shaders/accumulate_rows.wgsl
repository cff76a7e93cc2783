// sums[offset + c] += Σ_r x[rows[r], c] — an accumulating tap: running sums over many prompts
// stay on the GPU. Rows are summed in order, so results do not depend on scheduling.
struct Params {
  count: u32,
  dim: u32,
  offset: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  if (c >= params.dim) {
    return;
  }
  var sum = 0.0;
  for (var r = 0u; r < params.count; r++) {
    sum += x[rows[r] * params.dim + c];
  }
  sums[params.offset + c] += sum;
}
