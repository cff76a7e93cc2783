// Index of the largest value in each row of [rows, cols] (the lowest index among equal maxima).
// Greedy decoding. NaN values never win unless the row holds nothing else.
//
// One workgroup per row: each invocation scans a strided slice, keeping its first best index; a tree in
// workgroup memory merges the candidates, preferring the lower index on ties.

struct Params {
  rows: u32,
  cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> indices: array<u32>;

var<workgroup> bestValue: array<f32, WG>;
var<workgroup> bestIndex: array<u32, WG>;

const NONE: u32 = 0xffffffffu;

// Whether (v, i) beats (bv, bi): larger, or equal with a lower index; a candidate beats no candidate.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
  return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
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
  var bv = 0.0;
  var bi = NONE;
  for (var i = lid; i < cols; i += WG) {
    let v = logits[base + i];
    // Strided order is increasing, so a strict > keeps the first of equal values.
    if (bi == NONE || v > bv || bv != bv) {
      bv = v;
      bi = i;
    }
  }
  bestValue[lid] = bv;
  bestIndex[lid] = bi;
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) {
      let v = bestValue[lid + stride];
      let i = bestIndex[lid + stride];
      if (beats(v, i, bv, bi) || (bv != bv && i != NONE && v == v)) {
        bv = v;
        bi = i;
        bestValue[lid] = bv;
        bestIndex[lid] = bi;
      }
    }
  }
  if (lid == 0u) {
    indices[row] = select(bi, 0u, bi == NONE);
  }
}
