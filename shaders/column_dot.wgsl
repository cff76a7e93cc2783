// V[k, j] = Σ_i B[k, row_start + i] · W[i, j] over the rows of one chunk of a packed weight matrix,
// for the K vectors of a basis B (K × total_rows, row-major): V = BᵀW (with B as columns), the first
// half of the cut W ← W − α B (BᵀW). Workgroup row y of the grid computes V[y, ·]; the arithmetic of
// each vector is that of a single one (K = 1 is the rank-1 cut's v = dᵀW).
//
// Each invocation owns four consecutive columns and walks the chunk's rows with a stride of WG_Y,
// so the WG_X lanes of a row read WG_X·4 consecutive elements (coalesced). The WG_Y partial sums
// of a column are then added by a fixed tree in workgroup memory: the result is deterministic.
// A matrix split into row chunks takes one dispatch per chunk, in order: the first writes V
// (accumulate = 0), the others add to it (accumulate = 1). Accumulation is f32 throughout.
struct Params {
  // Rows of this chunk.
  rows: u32,
  cols: u32,
  // First row of this chunk in the whole matrix: the chunk's row i multiplies B[k, row_start + i].
  row_start: u32,
  // 0: V = Σ over this chunk; 1: V += Σ over this chunk.
  accumulate: u32,
  // Rows of the whole matrix: the length of each basis vector.
  total_rows: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weight: array<u32>;
@group(0) @binding(2) var<storage, read> basis: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;

#include "common/weights.wgsl"

var<workgroup> partial: array<vec4<f32>, WG_X * WG_Y>;

@compute @workgroup_size(WG_X, WG_Y)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let cols = params.cols;
  let rows = params.rows;
  let j0 = (wid.x * WG_X + lid.x) * 4u;
  // Vector k of the basis starts at d0 in `basis`; its sums go to row k of V.
  let d0 = wid.y * params.total_rows + params.row_start;
  let v0 = wid.y * cols;
  var acc = vec4<f32>(0.0);
  if (j0 < cols) {
    if (cols % 4u == 0u) {
      // Whole vec4s: for 16-bit dtypes r·cols + j0 is even, so two aligned words.
      for (var r = lid.y; r < rows; r += WG_Y) {
        acc += basis[d0 + r] * weight4(r * cols + j0);
      }
    } else {
      // Rows straddle words (odd 16-bit rows) or the vec4 passes the row's end: element by
      // element, with columns past the end clamped to the last one and their sums never stored.
      let last = cols - 1u;
      let c = min(vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u), vec4<u32>(last));
      for (var r = lid.y; r < rows; r += WG_Y) {
        let base = r * cols;
        let w = vec4<f32>(weight_at(base + c.x), weight_at(base + c.y), weight_at(base + c.z), weight_at(base + c.w));
        acc += basis[d0 + r] * w;
      }
    }
  }
  let slot = lid.y * WG_X + lid.x;
  partial[slot] = acc;
  for (var stride = WG_Y / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid.y < stride) {
      acc += partial[slot + stride * WG_X];
      partial[slot] = acc;
    }
  }
  if (lid.y == 0u) {
    for (var k = 0u; k < 4u; k++) {
      let j = j0 + k;
      if (j < cols) {
        v[v0 + j] = select(0.0, v[v0 + j], params.accumulate != 0u) + acc[k];
      }
    }
  }
}
