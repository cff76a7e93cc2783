// Exact conversions between f32 and the 16-bit storage formats, done on the bits so that the result
// is the same on every adapter (WGSL lets pack2x16float round either way, and SwiftShader does not
// round f16 subnormals to nearest even). They match src/io/dtype.ts bit for bit.

// f32 → bf16 bits (low 16 bits of the result), round to nearest, ties to even; NaN stays a quiet
// NaN with its sign, values past the largest bf16 become ±Inf.
fn f32_to_bf16_bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) {
    return ((b >> 16u) | 0x40u) & 0xffffu;
  }
  return ((b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u) & 0xffffu;
}

// f32 → f16 bits, round to nearest, ties to even, with f16 subnormals; NaN stays a quiet NaN,
// |x| ≥ 65520 becomes ±Inf.
fn f32_to_f16_bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let sign = (b >> 16u) & 0x8000u;
  let exponent = (b >> 23u) & 0xffu;
  let mantissa = b & 0x7fffffu;
  if (exponent == 0xffu) {
    return select(sign | 0x7e00u | (mantissa >> 13u), sign | 0x7c00u, mantissa == 0u);
  }
  let e = i32(exponent) - 112;
  if (e >= 31) {
    return sign | 0x7c00u;
  }
  if (e <= 0) {
    if (e < -10) {
      return sign;
    }
    // Subnormal result: m·2^(e−14) in units of 2^−24, m with its hidden bit.
    let m = mantissa | 0x800000u;
    let shift = u32(14 - e);
    let kept = m >> shift;
    let rest = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    let up = rest > half || (rest == half && (kept & 1u) == 1u);
    return sign | (kept + select(0u, 1u, up));
  }
  let kept = (u32(e) << 10u) | (mantissa >> 13u);
  let rest = mantissa & 0x1fffu;
  let up = rest > 0x1000u || (rest == 0x1000u && (kept & 1u) == 1u);
  // A carry runs into the exponent, and from 0x7bff to Inf.
  return sign | (kept + select(0u, 1u, up));
}

// The value of bf16 bits (exact).
fn bf16_bits_to_f32(h: u32) -> f32 {
  return bitcast<f32>((h & 0xffffu) << 16u);
}

// The value of f16 bits (exact, subnormals included, NaN payload kept).
fn f16_bits_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    return bitcast<f32>(sign | bitcast<u32>(ldexp(f32(m), -24)));
  }
  if (e == 31u) {
    return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
  }
  return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}
