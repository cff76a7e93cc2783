import { describe, expect, it } from 'vitest';
import {
  bf16ToF32,
  bytesPerElement,
  decodeToFloat32,
  decodeToFloat64,
  elementCount,
  encodeFromFloat32,
  f16ToF32,
  f32Bits,
  f32BitsToBf16,
  f32BitsToF16,
  f32FromBits,
  f32ToBf16,
  f32ToF16,
  packToU32,
  unpackFromU32,
} from '../../src/io/dtype.ts';
import { Random } from '../helpers/random.ts';

/** All 65536 16-bit patterns as little-endian bytes. */
function allHalves(): Uint8Array {
  const bytes = new Uint8Array(65536 * 2);
  for (let h = 0; h < 65536; h++) {
    bytes[2 * h] = h & 0xff;
    bytes[2 * h + 1] = h >>> 8;
  }
  return bytes;
}

/** bf16 value from its fields, with no bit tricks. */
function bf16Reference(h: number): number {
  const sign = h >>> 15 ? -1 : 1;
  const e = (h >>> 7) & 0xff;
  const m = h & 0x7f;
  if (e === 0xff) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** -133;
  return sign * (1 + m / 128) * 2 ** (e - 127);
}

/** f16 value built as f32 bits (normals) or from fields (subnormals): independent of `f16ToF32`. */
function f16Reference(h: number): number {
  const sign = h >>> 15;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return m === 0 ? (sign ? -Infinity : Infinity) : NaN;
  if (e === 0) return (sign ? -1 : 1) * m * Math.pow(2, -24);
  return f32FromBits((sign << 31) | ((e - 15 + 127) << 23) | (m << 13));
}

function sameValue(actual: number, expected: number): boolean {
  return Number.isNaN(expected) ? Number.isNaN(actual) : Object.is(actual, expected);
}

/** Round-to-nearest-even by search over every finite non-negative value of a 16-bit format. */
function nearestReference(positives: Float64Array, infinityBits: number, overflowAt: number) {
  return (bits: number): number => {
    const x = f32FromBits(bits);
    if (Number.isNaN(x)) return -1;
    const sign = bits >>> 31 ? 0x8000 : 0;
    const a = Math.abs(x);
    if (a >= overflowAt) return sign | infinityBits;
    let lo = 0;
    let hi = positives.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >>> 1;
      if (positives[mid]! <= a) lo = mid;
      else hi = mid;
    }
    const dLo = a - positives[lo]!;
    const dHi = positives[hi]! - a;
    const pick = dLo < dHi ? lo : dHi < dLo ? hi : lo % 2 === 0 ? lo : hi;
    return sign | pick;
  };
}

const f16Positives = Float64Array.from({ length: 0x7c00 }, (_, h) => f16Reference(h));
const bf16Positives = Float64Array.from({ length: 0x7f80 }, (_, h) => bf16Reference(h));
const f16Nearest = nearestReference(f16Positives, 0x7c00, 65520);
// Halfway between the largest bf16 (0x7f7f) and 2^128 ties to the even pattern 0x7f80 = Inf.
const bf16Nearest = nearestReference(bf16Positives, 0x7f80, (2 - 2 ** -8) * 2 ** 127);

describe('decoding', () => {
  it('decodes all 65536 bf16 patterns exactly', () => {
    const decoded = decodeToFloat32(allHalves(), 'BF16');
    for (let h = 0; h < 65536; h++) {
      const expected = bf16Reference(h);
      if (!sameValue(decoded[h]!, expected) || !sameValue(bf16ToF32(h), expected)) {
        expect.fail(`bf16 0x${h.toString(16)}: got ${decoded[h]} / ${bf16ToF32(h)}, expected ${expected}`);
      }
    }
  });

  it('decodes all 65536 f16 patterns exactly', () => {
    const decoded = decodeToFloat32(allHalves(), 'F16');
    const wide = decodeToFloat64(allHalves(), 'F16');
    for (let h = 0; h < 65536; h++) {
      const expected = f16Reference(h);
      if (!sameValue(decoded[h]!, expected) || !sameValue(f16ToF32(h), expected) || !sameValue(wide[h]!, expected)) {
        expect.fail(`f16 0x${h.toString(16)}: got ${decoded[h]} / ${f16ToF32(h)} / ${wide[h]}, expected ${expected}`);
      }
    }
  });

  it('decodes f32 bit for bit, NaN payloads included', () => {
    const bits = new Uint32Array([0, 0x80000000, 0x3f800000, 0x7f800000, 0xff800000, 0x7fc00001, 0x00000001, 0x7f7fffff]);
    const out = decodeToFloat32(new Uint8Array(bits.buffer), 'F32');
    expect([...new Uint32Array(out.buffer)]).toEqual([...bits]);
  });

  it('decodes from unaligned views', () => {
    const values = new Float32Array([1.5, -2.25, 3e-40, 65504]);
    for (const dtype of ['F32', 'F16', 'BF16'] as const) {
      const bytes = encodeFromFloat32(values, dtype);
      const shifted = new Uint8Array(bytes.byteLength + 3);
      shifted.set(bytes, 3);
      expect([...decodeToFloat32(shifted.subarray(3), dtype)]).toEqual([...decodeToFloat32(bytes, dtype)]);
    }
  });

  it('rejects partial elements', () => {
    expect(() => decodeToFloat32(new Uint8Array(3), 'F16')).toThrow(RangeError);
    expect(() => decodeToFloat32(new Uint8Array(6), 'F32')).toThrow(/not a whole number of F32/);
    expect(elementCount(12, 'BF16')).toBe(6);
    expect(bytesPerElement('F32')).toBe(4);
  });
});

describe('encoding with round-to-nearest-even', () => {
  it('rounds bf16 ties to even and keeps specials', () => {
    const cases: [number, number][] = [
      [0x3f808000, 0x3f80], // tie, even below
      [0x3f818000, 0x3f82], // tie, odd below: up
      [0x3f808001, 0x3f81],
      [0x3f807fff, 0x3f80],
      [0x3f80ffff, 0x3f81],
      [0x7f7fffff, 0x7f80], // overflow to Inf
      [0x7f7f8000, 0x7f80], // tie at the top: to even = Inf
      [0x7f7f7fff, 0x7f7f],
      [0x7f800000, 0x7f80],
      [0xff800000, 0xff80],
      [0x80000000, 0x8000],
      [0x00000001, 0x0000], // tiny subnormal
      [0x00008000, 0x0000], // tie to even zero
      [0x00018000, 0x0002],
    ];
    for (const [input, expected] of cases) expect(f32BitsToBf16(input), `0x${input.toString(16)}`).toBe(expected);
    for (const nan of [0x7f800001, 0x7fc00000, 0xffffffff, 0x7f80ffff]) {
      const out = f32BitsToBf16(nan);
      expect(Number.isNaN(bf16ToF32(out)), `0x${nan.toString(16)}`).toBe(true);
      expect(out >>> 15).toBe(nan >>> 31);
    }
  });

  it('rounds f16 ties to even, with subnormals and overflow', () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [1 + 2 ** -11, 0x3c00], // tie, even below
      [1 + 3 * 2 ** -11, 0x3c02], // tie, odd below: up
      [65504, 0x7bff],
      [65519, 0x7bff],
      [65520, 0x7c00], // tie at the top: to even = Inf
      [1e10, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -14 - 2 ** -25, 0x0400], // tie between largest subnormal and smallest normal: even
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // tie to even zero
      [1.5 * 2 ** -25, 0x0001],
      [3 * 2 ** -25, 0x0002], // 1.5 units: tie to even 2
      [5 * 2 ** -25, 0x0002], // 2.5 units: tie to even 2
      [2 ** -26, 0x0000],
      [-0, 0x8000],
      [-(2 ** -24), 0x8001],
    ];
    for (const [input, expected] of cases) expect(f32ToF16(input), String(input)).toBe(expected);
    for (const nan of [0x7f800001, 0x7fc00000, 0xffffffff, 0x7f801fff]) {
      const out = f32BitsToF16(nan);
      expect(Number.isNaN(f16ToF32(out)), `0x${nan.toString(16)}`).toBe(true);
      expect(out >>> 15).toBe(nan >>> 31);
    }
    expect(f32ToBf16(NaN) & 0x7fff).toBeGreaterThan(0x7f80);
  });

  it('maps every 16-bit value back to itself', () => {
    for (let h = 0; h < 65536; h++) {
      const bf = bf16ToF32(h);
      const half = f16ToF32(h);
      if (Number.isNaN(bf)) expect(Number.isNaN(bf16ToF32(f32ToBf16(bf)))).toBe(true);
      else if (f32ToBf16(bf) !== h) expect.fail(`bf16 0x${h.toString(16)} → ${bf} → 0x${f32ToBf16(bf).toString(16)}`);
      if (Number.isNaN(half)) expect(Number.isNaN(f16ToF32(f32ToF16(half)))).toBe(true);
      else if (f32ToF16(half) !== h) expect.fail(`f16 0x${h.toString(16)} → ${half} → 0x${f32ToF16(half).toString(16)}`);
    }
  });

  it('matches a nearest-value search on random f32 inputs (within half an ulp, ties to even)', () => {
    const random = new Random();
    const n = 100_000;
    const inputs = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      let bits = Math.floor(random.next() * 2 ** 32) >>> 0;
      const kind = i % 4;
      // Concentrate on ties and on the f16 range, where rounding is subtle.
      if (kind === 1) bits = (bits & 0xffff0000) | 0x8000;
      if (kind === 2) bits = (bits & 0x807fe000) | ((random.int(100, 145) << 23) >>> 0) | 0x1000;
      if (kind === 3) bits = ((bits & 0x807fffff) | ((random.int(90, 145) << 23) >>> 0)) >>> 0;
      inputs[i] = bits;
    }
    const encodedBf16 = new Uint16Array(encodeFromFloat32(new Float32Array(inputs.buffer), 'BF16').buffer);
    const encodedF16 = new Uint16Array(encodeFromFloat32(new Float32Array(inputs.buffer), 'F16').buffer);
    for (let i = 0; i < n; i++) {
      const bits = inputs[i]!;
      const wantBf = bf16Nearest(bits);
      const wantHalf = f16Nearest(bits);
      const gotBf = encodedBf16[i]!;
      const gotHalf = encodedF16[i]!;
      if (wantBf < 0) {
        if (!Number.isNaN(bf16ToF32(gotBf)) || !Number.isNaN(f16ToF32(gotHalf))) expect.fail(`NaN 0x${bits.toString(16)} lost (seed ${random.seed})`);
        continue;
      }
      if (gotBf !== wantBf) expect.fail(`bf16 of 0x${bits.toString(16)}: got 0x${gotBf.toString(16)}, expected 0x${wantBf.toString(16)} (seed ${random.seed})`);
      if (gotHalf !== wantHalf) expect.fail(`f16 of 0x${bits.toString(16)}: got 0x${gotHalf.toString(16)}, expected 0x${wantHalf.toString(16)} (seed ${random.seed})`);
    }
  });

  it('round-trips F32 exactly and plain number arrays through f32', () => {
    const values = new Float32Array([0, -0, 1, -1.5, 3.4e38, 1e-45, Infinity]);
    expect([...decodeToFloat32(encodeFromFloat32(values, 'F32'), 'F32')]).toEqual([...values]);
    expect([...decodeToFloat32(encodeFromFloat32([0.1, 2], 'F32'), 'F32')]).toEqual([Math.fround(0.1), 2]);
    expect(f32Bits(1)).toBe(0x3f800000);
  });
});

describe('packing for the GPU', () => {
  it('pads an odd count of 16-bit elements with a zero half', () => {
    const bytes = encodeFromFloat32(new Float32Array([1, 2, 3]), 'BF16');
    const words = packToU32(bytes, 'BF16');
    expect(words.length).toBe(2);
    expect(words[0]).toBe((0x4000 << 16) | 0x3f80);
    expect(words[1]).toBe(0x4040);
    expect([...unpackFromU32(words, 'BF16', 3)]).toEqual([...bytes]);
  });

  it('shares memory when aligned, copies when not', () => {
    const bytes = new Uint8Array(16).map((_, i) => i);
    const view = packToU32(bytes, 'F16');
    expect(view.buffer).toBe(bytes.buffer);
    const odd = packToU32(bytes.subarray(2, 10), 'F16');
    expect(odd.buffer).not.toBe(bytes.buffer);
    expect([...new Uint8Array(odd.buffer)]).toEqual([2, 3, 4, 5, 6, 7, 8, 9]);
    const f32 = packToU32(encodeFromFloat32(new Float32Array([1.5]), 'F32'), 'F32');
    expect(f32[0]).toBe(0x3fc00000);
    expect(() => packToU32(new Uint8Array(3), 'F16')).toThrow(RangeError);
    expect(() => unpackFromU32(new Uint32Array(1), 'F32', 2)).toThrow(RangeError);
  });
});
