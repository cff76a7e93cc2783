// Correctly rounded w − s·b for f32 operands, in integer arithmetic, so the result is the same on
// every adapter whether or not it fuses fma (lavapipe and SwiftShader do not): the exact product
// (48 bits) and the exact sum are formed in 64-bit integers (vec2<u32>(lo, hi)) and rounded once.
//   to_odd = false: round to nearest, ties to even (the f32 result).
//   to_odd = true:  round to odd; a later round-to-nearest-even to bf16 or f16 (≥ 2 bits fewer) is
//                   then the correctly rounded 16-bit result of the exact value.
// NaN and Inf operands fall back to f32 arithmetic; results below the smallest f32 subnormal
// become ±0 (round to nearest) or the smallest subnormal (round to odd).

fn u64_shl(v: vec2<u32>, n: u32) -> vec2<u32> {
  if (n == 0u) {
    return v;
  }
  if (n >= 32u) {
    return vec2<u32>(0u, v.x << (n - 32u));
  }
  return vec2<u32>(v.x << n, (v.y << n) | (v.x >> (32u - n)));
}

fn u64_shr(v: vec2<u32>, n: u32) -> vec2<u32> {
  if (n == 0u) {
    return v;
  }
  if (n >= 32u) {
    return vec2<u32>(v.y >> (n - 32u), 0u);
  }
  return vec2<u32>((v.x >> n) | (v.y << (32u - n)), v.y >> n);
}

// v mod 2^n, n ≤ 64.
fn u64_low(v: vec2<u32>, n: u32) -> vec2<u32> {
  if (n >= 64u) {
    return v;
  }
  if (n >= 32u) {
    return vec2<u32>(v.x, v.y & ((1u << (n - 32u)) - 1u));
  }
  return vec2<u32>(v.x & ((1u << n) - 1u), 0u);
}

fn u64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let lo = a.x + b.x;
  return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn u64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

fn u64_less(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.y < b.y || (a.y == b.y && a.x < b.x);
}

fn u64_zero(v: vec2<u32>) -> bool {
  return (v.x | v.y) == 0u;
}

fn u64_clz(v: vec2<u32>) -> u32 {
  return select(32u + countLeadingZeros(v.x), countLeadingZeros(v.y), v.y != 0u);
}

// a·b for a, b < 2^24 (at most 48 bits).
fn mul_24x24(a: u32, b: u32) -> vec2<u32> {
  let ah = a >> 16u;
  let al = a & 0xffffu;
  let bh = b >> 16u;
  let bl = b & 0xffffu;
  let mid = ah * bl + al * bh;
  let low = al * bl;
  let lo = low + (mid << 16u);
  return vec2<u32>(lo, ah * bh + (mid >> 16u) + select(0u, 1u, lo < low));
}

// |x| = f32_mantissa(bits) · 2^f32_lsb_exponent(bits) for a finite f32.
fn f32_mantissa(bits: u32) -> u32 {
  let m = bits & 0x7fffffu;
  return select(m | 0x800000u, m, (bits & 0x7f800000u) == 0u);
}

fn f32_lsb_exponent(bits: u32) -> i32 {
  let field = i32((bits >> 23u) & 0xffu);
  return select(field - 150, -149, field == 0);
}

// Exponent given to a zero term, so that it always aligns below the other.
const EXACT_ZERO_EXPONENT = -1073741824;

fn exact_fms(w: f32, s: f32, b: f32, to_odd: bool) -> u32 {
  let wb = bitcast<u32>(w);
  let sb = bitcast<u32>(s);
  let bb = bitcast<u32>(b);
  let inf = 0x7f800000u;
  if ((wb & inf) == inf || (sb & inf) == inf || (bb & inf) == inf) {
    return bitcast<u32>(w - s * b);
  }
  // Terms A = w and B = −s·b, each ±m·2^e.
  var ma = vec2<u32>(f32_mantissa(wb), 0u);
  var ea = f32_lsb_exponent(wb);
  var na = (wb >> 31u) == 1u;
  var mb = mul_24x24(f32_mantissa(sb), f32_mantissa(bb));
  var eb = f32_lsb_exponent(sb) + f32_lsb_exponent(bb);
  var nb = ((sb ^ bb) >> 31u) == 0u;
  let za = u64_zero(ma);
  let zb = u64_zero(mb);
  if (za && zb) {
    return select(0u, 0x80000000u, na && nb);
  }
  // Normalise each nonzero term so that its top bit is bit 62 (room for the carry of a sum).
  if (za) {
    ea = EXACT_ZERO_EXPONENT;
  } else {
    let shift = u64_clz(ma) - 1u;
    ma = u64_shl(ma, shift);
    ea -= i32(shift);
  }
  if (zb) {
    eb = EXACT_ZERO_EXPONENT;
  } else {
    let shift = u64_clz(mb) - 1u;
    mb = u64_shl(mb, shift);
    eb -= i32(shift);
  }
  // A is the larger term in magnitude.
  if (eb > ea || (eb == ea && u64_less(ma, mb))) {
    let m = ma;
    ma = mb;
    mb = m;
    let e = ea;
    ea = eb;
    eb = e;
    let n = na;
    na = nb;
    nb = n;
  }
  // Align B to A; the bits shifted out only matter as a sticky bit (B has at most 48 significant
  // bits, so a shift by 0 or 1 loses nothing, and after a larger one the result keeps ≥ 61 bits).
  let d = ea - eb;
  var sticky = false;
  if (d >= 64) {
    sticky = !u64_zero(mb);
    mb = vec2<u32>(0u);
  } else if (d > 0) {
    sticky = !u64_zero(u64_low(mb, u32(d)));
    mb = u64_shr(mb, u32(d));
  }
  // r·2^ea, plus a fraction of 2^ea in (0, 1) when sticky.
  var r: vec2<u32>;
  if (na == nb) {
    r = u64_add(ma, mb);
  } else {
    r = u64_sub(ma, mb);
    if (sticky) {
      r = u64_sub(r, vec2<u32>(1u, 0u));
    }
  }
  if (u64_zero(r) && !sticky) {
    return 0u;
  }
  let sign = select(0u, 0x80000000u, na);
  let msb = 63 - i32(u64_clz(r));
  // Keep 24 significant bits, or fewer where the result is an f32 subnormal.
  let shift = max(msb - 23, -149 - ea);
  var m: u32;
  var e = ea + shift;
  if (shift <= 0) {
    // Fits exactly (r < 2^24, and no sticky bits: those come with r ≥ 2^61).
    m = r.x << u32(-shift);
  } else if (shift >= 64) {
    return sign | select(0u, 1u, to_odd);
  } else {
    let n = u32(shift);
    m = u64_shr(r, n).x;
    let rest = u64_low(r, n);
    if (to_odd) {
      if (sticky || !u64_zero(rest)) {
        m |= 1u;
      }
    } else {
      let half = u64_shl(vec2<u32>(1u, 0u), n - 1u);
      let tie = all(rest == half) && !sticky;
      if (u64_less(half, rest) || (all(rest == half) && sticky) || (tie && (m & 1u) == 1u)) {
        m += 1u;
      }
    }
  }
  if (m == 0u) {
    return sign;
  }
  // m·2^e with m < 2^24 (2^24 after a carry): bit 23 of m has the biased exponent e + 150.
  if (e + 150 >= 255) {
    return sign | inf;
  }
  let bits = (u32(e + 149) << 23u) + m;
  return sign | min(bits, inf);
}
