// Rotary position embedding in place, Hugging Face Llama "rotate half" convention.
//
// x holds one row per token; within a row, `heads` heads of 2*half values start at element
// `offset` (so Q and K of a fused QKV buffer can be rotated in place). For head h and pair i < half:
//   a = x[i], b = x[i + half], θ = positions[t] · invFreq[i]
//   x[i] ← a·cos θ − b·sin θ,   x[i + half] ← b·cos θ + a·sin θ
//
// One invocation per (token, i): it computes cos θ and sin θ once and rotates that pair in every head.
//
// Precision. A plain f32 `cos(pos * f)` is poor at long contexts: the f32 product pos·f has an
// absolute error up to 2^-8 rad at pos ≈ 100k, and WGSL only bounds `cos`/`sin` on [-π, π]. So the
// angle is reduced exactly in integer arithmetic (no floating-point tricks a compiler could contract
// or reassociate), as turns in 0.32 fixed point:
//   F = f · 2^48 (exact for f ≥ 2^-25: the f32 significand shifted), M = pos · F (96 bits),
//   turns = frac(M · 2^-48 / 2π), using 1/(2π) to 80 bits.
// The dropped low-order products bound the error by 6 · 2^-32 turns (9e-9 rad). The remainder within
// the nearest quarter turn, |r| ≤ π/4, goes through Taylor polynomials (error < 2e-9 before f32
// rounding), and the quadrant selects signs and swaps. cos θ and sin θ come out within a few f32
// ulps of the float64 values of the exact product, at any position below 2^32.

struct Params {
  tokens: u32,
  heads: u32,
  half: u32,
  // Elements from one token's row to the next, and from the row start to head 0.
  rowStride: u32,
  offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> invFreq: array<f32>;

// Full 64-bit product of two u32 values, as (low word, high word).
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p00 = a0 * b0;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let p11 = a1 * b1;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  let lo = (p00 & 0xffffu) | (mid << 16u);
  let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
  return vec2<u32>(lo, hi);
}

// 1/(2π) = 0x0.28BE 60DB9391 054A7F09 D5F4...: W1 holds its first 16 bits, W2 and W3 the next 64,
// so that 2^-48/(2π) = W1·2^-64 + W2·2^-96 + W3·2^-128 + (less than 2^-128).
const INV_2PI_W1: u32 = 0x28beu;
const INV_2PI_W2: u32 = 0x60db9391u;
const INV_2PI_W3: u32 = 0x054a7f09u;

// frac(pos · f / 2π) in 0.32 fixed point, for 0 ≤ f < 2^16.
fn angle_turns(pos: u32, f: f32) -> u32 {
  let bits = bitcast<u32>(f);
  let exponent = i32((bits >> 23u) & 0xffu);
  if (exponent == 0) {
    return 0u; // zero, or a denormal frequency: below 2^-126, no visible rotation within 2^32 positions
  }
  let m = (bits & 0x7fffffu) | 0x800000u;
  // F = m · 2^s = f · 2^48 exactly (truncated for f < 2^-25, where the loss is below 2^-48 per position),
  // as two words (fl, fh).
  let s = exponent - 102;
  var fl = 0u;
  var fh = 0u;
  if (s >= 32) {
    fh = m << u32(min(s - 32, 31));
  } else if (s > 0) {
    fl = m << u32(s);
    fh = m >> u32(32 - s);
  } else if (s > -24) {
    fl = m >> u32(-s);
  }
  // M = pos · F, three words (m0, m1, m2).
  let low = mul_wide(pos, fl);
  let high = mul_wide(pos, fh);
  let m0 = low.x;
  let m1 = low.y + high.x;
  let m2 = high.y + select(0u, 1u, m1 < low.y);
  // turns · 2^32 = M · (W1·2^-32 + W2·2^-64 + W3·2^-96) mod 2^32, keeping the terms at or above 2^0;
  // the six dropped fractions cost at most 6 · 2^-32 turns (9e-9 rad).
  return m1 * INV_2PI_W1 + mul_wide(m0, INV_2PI_W1).y +
    m2 * INV_2PI_W2 + mul_wide(m1, INV_2PI_W2).y +
    mul_wide(m2, INV_2PI_W3).y;
}

// (cos θ, sin θ) for θ = turns · 2π / 2^32.
fn cos_sin_turns(turns: u32) -> vec2<f32> {
  let quadrant = (turns + 0x20000000u) >> 30u;
  let rest = bitcast<i32>(turns - (quadrant << 30u)); // in [-2^29, 2^29): at most an eighth of a turn
  let r = f32(rest) * 1.4629180792671596e-9; // 2π / 2^32
  let r2 = r * r;
  let s = r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0))));
  let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0)))));
  switch (quadrant) {
    case 0u: { return vec2<f32>(c, s); }
    case 1u: { return vec2<f32>(-s, c); }
    case 2u: { return vec2<f32>(-c, -s); }
    default: { return vec2<f32>(s, -c); }
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let index = gid.x + gid.y * groups.x * WG;
  let half = params.half;
  if (index >= params.tokens * half) {
    return;
  }
  let t = index / half;
  let i = index % half;
  let cs = cos_sin_turns(angle_turns(positions[t], invFreq[i]));
  let headSize = 2u * half;
  var at = t * params.rowStride + params.offset + i;
  for (var h = 0u; h < params.heads; h++) {
    let a = x[at];
    let b = x[at + half];
    x[at] = a * cs.x - b * cs.y;
    x[at + half] = b * cs.x + a * cs.y;
    at += headSize;
  }
}
