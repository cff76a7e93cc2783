// In-place rank-K update of one row chunk of a packed weight matrix:
//   W[i, j] ← W[i, j] − Σ_k s_ik · b[k, j],   s_ik = α · a[k, row_start + i] (rounded to f32),
// for K = `rank` pairs of vectors a[k] (length a_stride, the rows of the whole matrix) and b[k]
// (length cols), both row-major. Written back in the stored dtype, rounded once to nearest even:
// each step y ← y − s_ik·b[k, j] is formed exactly in integers (common/exact_fms.wgsl) and rounded
// to f32, the last one rounded to f32 (F32) or to odd in f32 and then to nearest even in 16 bits
// (BF16, F16; common/float_bits.wgsl), so the result is the same on every adapter. For K = 1 that is
// the correctly rounded w − s_i·b_j. NaN stays NaN.
// With PRESERVE_ROW_NORM the update is f32 arithmetic (a chain of fma) times the row's scale, then
// rounded. MULTI_STEP (K > 1) compiles the loop over the first K − 1 steps; without it K must be 1,
// and the kernel stays as small as a rank-1 update (compile time on software adapters).
//
// One workgroup per row. Lanes own u32 words, never elements: with 16-bit dtypes two elements share
// a word, so each word of the row is read, updated and written by exactly one invocation; the half
// of a boundary word that belongs to a neighbouring row is written back unchanged. Two neighbouring
// rows share a word when a 16-bit row has an odd length; the host then dispatches the even rows and
// the odd rows separately (row_first, row_step), so no two workgroups of a dispatch touch one word.
//
// PRESERVE_ROW_NORM: the updated row is rescaled to the Euclidean norm of the original row (both
//   norms reduced in f32 from the row as read). A row whose new norm is at most 1e-6 of the original
//   (in exact arithmetic, a row inside the removed subspace) is left unscaled: its f32 remainder is
//   rounding noise, and rescaling it would give a row of noise with the old norm.
struct Params {
  // Rows of this chunk.
  rows: u32,
  cols: u32,
  // First row of this chunk in the whole matrix (the index into a[k] of the chunk's row 0).
  row_start: u32,
  // Rows handled: row_first, row_first + row_step, … (count of them).
  row_first: u32,
  row_step: u32,
  count: u32,
  alpha: f32,
  // K, and the length of each vector a[k].
  rank: u32,
  a_stride: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> weight: array<u32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

var<workgroup> partial: array<f32, WG>;

#include "common/reduce.wgsl"
#include "common/float_bits.wgsl"
#include "common/exact_fms.wgsl"

#if WEIGHT_F32
#elif WEIGHT_BF16
fn decode_lo(word: u32) -> f32 {
  return bf16_bits_to_f32(word);
}
fn decode_hi(word: u32) -> f32 {
  return bf16_bits_to_f32(word >> 16u);
}
fn encode(x: f32) -> u32 {
  return f32_to_bf16_bits(x);
}
#else
fn decode_lo(word: u32) -> f32 {
  return f16_bits_to_f32(word);
}
fn decode_hi(word: u32) -> f32 {
  return f16_bits_to_f32(word >> 16u);
}
fn encode(x: f32) -> u32 {
  return f32_to_f16_bits(x);
}
#endif

// The elements of a word that belong to the row [begin, end), with their columns. Lanes visit the
// words first_word + lane, first_word + lane + WG, … up to last_word.
struct Word {
  // The decoded elements (hi unused for F32).
  lo: f32,
  hi: f32,
  // Columns of the low and high halves (0 when the half is outside the row).
  col_lo: u32,
  col_hi: u32,
  in_lo: bool,
  in_hi: bool,
}

fn first_word(begin: u32) -> u32 {
#if WEIGHT_F32
  return begin;
#else
  return begin >> 1u;
#endif
}

fn last_word(end: u32) -> u32 {
#if WEIGHT_F32
  return end - 1u;
#else
  return (end - 1u) >> 1u;
#endif
}

fn load_word(w: u32, begin: u32, end: u32) -> Word {
  var out: Word;
  let bits = weight[w];
#if WEIGHT_F32
  out.lo = bitcast<f32>(bits);
  out.hi = 0.0;
  out.col_lo = w - begin;
  out.col_hi = 0u;
  out.in_lo = true;
  out.in_hi = false;
#else
  // w ≤ (end − 1) / 2, so the low element is before the end and the high one after the beginning.
  let e = 2u * w;
  out.in_lo = e >= begin;
  out.in_hi = e + 1u < end;
  out.col_lo = select(0u, e - begin, out.in_lo);
  out.col_hi = select(0u, e + 1u - begin, out.in_hi);
  out.lo = decode_lo(bits);
  out.hi = decode_hi(bits);
#endif
  return out;
}

// s_ik = α · a[k, row_start + row].
fn scale_of(k: u32, row: u32) -> f32 {
  return params.alpha * a[k * params.a_stride + params.row_start + row];
}

// w − Σ_k s_ik b[k, col] as the bits of an f32: every step exact then rounded to nearest, the last
// one to odd when `to_odd` (for the later rounding to 16 bits).
fn exact_update(w: f32, row: u32, col: u32, to_odd: bool) -> u32 {
  let last = params.rank - 1u;
  var y = w;
#if MULTI_STEP
  for (var k = 0u; k < last; k++) {
    y = bitcast<f32>(exact_fms(y, scale_of(k, row), b[k * params.cols + col], false));
  }
#endif
  return exact_fms(y, scale_of(last, row), b[last * params.cols + col], to_odd);
}

#if PRESERVE_ROW_NORM
// w − Σ_k s_ik b[k, col] in f32 arithmetic.
fn f32_update(w: f32, row: u32, col: u32) -> f32 {
  var y = w;
  for (var k = 0u; k < params.rank; k++) {
    y = fma(-scale_of(k, row), b[k * params.cols + col], y);
  }
  return y;
}
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let g = wid.x + wid.y * groups.x;
  if (g >= params.count) {
    return;
  }
  let row = params.row_first + g * params.row_step;
  let begin = row * params.cols;
  let end = begin + params.cols;
  let w0 = first_word(begin);
  let w1 = last_word(end);

#if PRESERVE_ROW_NORM
  var old_sq = 0.0;
  var new_sq = 0.0;
  for (var w = w0 + lane; w <= w1; w += WG) {
    let word = load_word(w, begin, end);
    if (word.in_lo) {
      let x = f32_update(word.lo, row, word.col_lo);
      old_sq += word.lo * word.lo;
      new_sq += x * x;
    }
    if (word.in_hi) {
      let x = f32_update(word.hi, row, word.col_hi);
      old_sq += word.hi * word.hi;
      new_sq += x * x;
    }
  }
  let old_total = workgroup_sum(old_sq, lane);
  let new_total = workgroup_sum(new_sq, lane);
  let scale = select(1.0, sqrt(old_total / new_total), new_total > old_total * 1e-12);
#endif

  for (var w = w0 + lane; w <= w1; w += WG) {
    let word = load_word(w, begin, end);
#if PRESERVE_ROW_NORM
    let lo = f32_update(word.lo, row, word.col_lo) * scale;
#if WEIGHT_F32
    weight[w] = bitcast<u32>(lo);
#else
    let hi = f32_update(word.hi, row, word.col_hi) * scale;
    let lo_new = encode(lo);
    let hi_new = encode(hi);
#endif
#elif WEIGHT_F32
    weight[w] = exact_update(word.lo, row, word.col_lo, false);
#else
    let lo_new = encode(bitcast<f32>(exact_update(word.lo, row, word.col_lo, true)));
    let hi_new = encode(bitcast<f32>(exact_update(word.hi, row, word.col_hi, true)));
#endif
#if !WEIGHT_F32
    let old = weight[w];
    let lo_bits = select(old & 0xffffu, lo_new, word.in_lo);
    let hi_bits = select(old >> 16u, hi_new, word.in_hi);
    weight[w] = (hi_bits << 16u) | lo_bits;
#endif
  }
}
