import type { Dtype } from '../../src/io/dtype.ts';

/**
 * Fast pseudo-random contents for benchmark tensors. Timings do not depend on the values as long as
 * they are ordinary numbers (no NaN, infinities or subnormals, which are slow on CPU drivers), so a
 * random block is generated once and tiled.
 */
const BLOCK_WORDS = 1 << 16;

function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

/** A 16-bit float pattern: sign, and a magnitude in [2⁻⁷, 2⁻⁶) × (1 + m) (bf16) or similar (f16). */
function halfBits(r: number, dtype: 'BF16' | 'F16'): number {
  return dtype === 'BF16' ? (r & 0x807f) | 0x3c00 : (r & 0x83ff) | 0x2000;
}

/** `count` elements of `dtype` as little-endian bytes, values of magnitude about 0.01. */
export function randomWeights(count: number, dtype: Dtype, seed = 1): Uint8Array {
  const bytesPer = dtype === 'F32' ? 4 : 2;
  const out = new Uint8Array(Math.ceil((count * bytesPer) / 4) * 4);
  const words = new Uint32Array(out.buffer);
  const next = xorshift(seed);
  const block = new Uint32Array(Math.min(BLOCK_WORDS, words.length));
  for (let i = 0; i < block.length; i++) {
    const r = next();
    if (dtype === 'F32') block[i] = halfBits(r, 'BF16') << 16 | (r >>> 16 & 0xffff);
    else block[i] = (halfBits(r, dtype) | (halfBits(r >>> 16, dtype) << 16)) >>> 0;
  }
  for (let at = 0; at < words.length; at += block.length) words.set(block.subarray(0, Math.min(block.length, words.length - at)), at);
  return out.subarray(0, count * bytesPer);
}

/** f32 values uniform in [-scale, scale). */
export function randomFloats(count: number, scale = 1, seed = 2): Float32Array {
  const next = xorshift(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = ((next() / 2 ** 32) * 2 - 1) * scale;
  return out;
}
