// G = DᵀD for the difference D = A − B of two row-major [count, dim] matrices: G[i, j] =
// Σ_k (A[k, i] − B[k, i]) · (A[k, j] − B[k, j]), a [dim, dim] Gram matrix (the covariance of paired
// differences without centring). The difference is formed on the fly, so D is never stored.
// One invocation per element of G; the lanes of a workgroup row read consecutive columns j
// (coalesced). Accumulation is f32, in the order k = 0, 1, …: deterministic.
struct Params {
  count: u32,
  dim: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> gram: array<f32>;

@compute @workgroup_size(WG, WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  let i = gid.y;
  let dim = params.dim;
  if (i >= dim || j >= dim) {
    return;
  }
  var acc = 0.0;
  for (var k = 0u; k < params.count; k++) {
    let row = k * dim;
    acc += (a[row + i] - b[row + i]) * (a[row + j] - b[row + j]);
  }
  gram[i * dim + j] = acc;
}
