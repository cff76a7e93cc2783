import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordAttention, type AttentionVariant } from '../../src/kernels/attention.ts';
import { TILED_MAX_HEAD_DIM } from '../../src/kernels/tuning.ts';
import { recordKvCacheWrite } from '../../src/kernels/kvCacheWrite.ts';
import { Random } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';
import { f32, poisonedBuffer, testGpu } from '../helpers/gpu.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

/** A sequence in a step: `past` positions already cached in `slot`, then `length` new tokens. */
interface Sequence {
  slot: number;
  past: number;
  length: number;
}

interface Shape {
  heads: number;
  kvHeads: number;
  headDim: number;
  maxLen: number;
  numSlots: number;
  sequences: Sequence[];
  window?: number;
  softCap?: number;
}

function describeShape(s: Shape): string {
  const seqs = s.sequences.map((q) => `${q.past}+${q.length}@${q.slot}`).join(',');
  return `heads=${s.heads} kv=${s.kvHeads} dim=${s.headDim} seqs=[${seqs}]${s.window ? ` window=${s.window}` : ''}${s.softCap ? ` softCap=${s.softCap}` : ''}`;
}

/** Causal GQA attention in float64 over the cache contents (keys p − window < j ≤ p; scores soft-capped). */
function attentionReference(shape: Shape, q: Float32Array, kCache: Float32Array, vCache: Float32Array, positions: Uint32Array, slots: Uint32Array): Float64Array {
  const { heads, kvHeads, headDim: D, maxLen } = shape;
  const T = positions.length;
  const kvDim = kvHeads * D;
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(D);
  const out = new Float64Array(T * heads * D);
  for (let t = 0; t < T; t++) {
    const p = positions[t]!;
    const base = slots[t]! * maxLen * kvDim;
    for (let h = 0; h < heads; h++) {
      const kvh = Math.floor(h / group);
      const qRow = q.subarray(t * heads * D + h * D, t * heads * D + (h + 1) * D);
      const scores = new Float64Array(p + 1);
      const first = shape.window ? Math.max(0, p - shape.window + 1) : 0;
      let max = -Infinity;
      for (let j = first; j <= p; j++) {
        let s = 0;
        const at = base + j * kvDim + kvh * D;
        for (let d = 0; d < D; d++) s += qRow[d]! * kCache[at + d]!;
        scores[j] = shape.softCap ? shape.softCap * Math.tanh((s * scale) / shape.softCap) : s * scale;
        max = Math.max(max, scores[j]!);
      }
      let sum = 0;
      for (let j = first; j <= p; j++) {
        scores[j] = Math.exp(scores[j]! - max);
        sum += scores[j]!;
      }
      for (let j = first; j <= p; j++) {
        const w = scores[j]! / sum;
        const at = base + j * kvDim + kvh * D;
        for (let d = 0; d < D; d++) out[t * heads * D + h * D + d]! += w * vCache[at + d]!;
      }
    }
  }
  return out;
}

/**
 * Fills the cache with NaN except the `past` positions of each sequence, writes the step's new keys and
 * values with kv_cache_write, runs attention, and checks both against float64.
 */
async function checkStep(shape: Shape, bound: number, seed?: number, variant?: AttentionVariant): Promise<{ error: number; ms: number; out: Float32Array; seed: number }> {
  const rng = new Random(seed);
  const { heads, kvHeads, headDim: D, maxLen, numSlots, sequences } = shape;
  const kvDim = kvHeads * D;
  const cacheSize = numSlots * maxLen * kvDim;
  const kCache = new Float32Array(cacheSize).fill(Number.NaN);
  const vCache = new Float32Array(cacheSize).fill(Number.NaN);
  for (const s of sequences) {
    const from = s.slot * maxLen * kvDim;
    kCache.set(f32(rng.normals(s.past * kvDim)), from);
    vCache.set(f32(rng.normals(s.past * kvDim)), from);
    // With a window, keys older than every query's window stay NaN: reading one would show.
    if (shape.window) {
      const oldest = Math.max(0, s.past - shape.window + 1);
      kCache.fill(Number.NaN, from, from + oldest * kvDim);
      vCache.fill(Number.NaN, from, from + oldest * kvDim);
    }
  }
  const T = sequences.reduce((n, s) => n + s.length, 0);
  const positions = new Uint32Array(T);
  const slots = new Uint32Array(T);
  let t = 0;
  for (const s of sequences) {
    for (let i = 0; i < s.length; i++, t++) {
      positions[t] = s.past + i;
      slots[t] = s.slot;
    }
  }
  // Scores of spread 2 to 3 after scaling, so the softmax is neither flat nor one-hot.
  const q = f32(rng.normals(T * heads * D, 2.5));
  const k = f32(rng.normals(T * kvDim));
  const v = f32(rng.normals(T * kvDim));

  const buffers = {
    q: gpu.upload(q, 'q'),
    k: gpu.upload(k, 'k'),
    v: gpu.upload(v, 'v'),
    kCache: gpu.upload(kCache, 'kCache'),
    vCache: gpu.upload(vCache, 'vCache'),
    positions: gpu.upload(positions, 'positions'),
    slots: gpu.upload(slots, 'slots'),
    out: poisonedBuffer(gpu, T * heads * D, 'out'),
  };
  const batch = gpu.batch('attention step');
  recordKvCacheWrite(batch, { ...buffers, tokens: T, kvHeads, headDim: D, maxLen, numSlots });
  recordAttention(batch, { ...buffers, tokens: T, heads, kvHeads, headDim: D, maxLen, window: shape.window, softCap: shape.softCap, sequences: sequences.length, variant });
  const started = performance.now();
  await batch.submit();
  const out = await gpu.readF32(buffers.out);
  const ms = performance.now() - started;
  const kAfter = await gpu.readF32(buffers.kCache);
  const vAfter = await gpu.readF32(buffers.vCache);
  for (const b of Object.values(buffers)) gpu.destroyBuffer(b);

  // kv_cache_write: the new rows land exactly at (slot, position); nothing else changes.
  for (let t = 0; t < T; t++) {
    const at = (slots[t]! * maxLen + positions[t]!) * kvDim;
    kCache.set(k.subarray(t * kvDim, (t + 1) * kvDim), at);
    vCache.set(v.subarray(t * kvDim, (t + 1) * kvDim), at);
  }
  expect(sameBits(kAfter, kCache), 'key cache after kv_cache_write').toBe(true);
  expect(sameBits(vAfter, vCache), 'value cache after kv_cache_write').toBe(true);

  const expected = attentionReference(shape, q, kCache, vCache, positions, slots);
  const error = expectClose(out, expected, bound, `attention ${variant ?? 'tuned'} ${describeShape(shape)}`, rng.seed);
  return { error, ms, out, seed: rng.seed };
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.length === y.length && x.every((value, i) => value === y[i]);
}

describe('attention', () => {
  // Relative to the largest output. Scores, exponentials and the weighted sums are f32; over a few
  // thousand keys the accumulated rounding stays near 1e-6.
  const BOUND = 1e-5;

  const shapes: [string, Shape][] = [
    ['prefill of three prompts, ratio 1', { heads: 4, kvHeads: 4, headDim: 64, maxLen: 128, numSlots: 4, sequences: [{ slot: 2, past: 0, length: 1 }, { slot: 0, past: 0, length: 17 }, { slot: 1, past: 0, length: 100 }] }],
    ['prefill, ratio 2, dim 40', { heads: 8, kvHeads: 4, headDim: 40, maxLen: 80, numSlots: 3, sequences: [{ slot: 1, past: 0, length: 33 }, { slot: 0, past: 0, length: 65 }, { slot: 2, past: 0, length: 7 }] }],
    ['decode, ratio 4, dim 128, up to 3000 keys', { heads: 16, kvHeads: 4, headDim: 128, maxLen: 3072, numSlots: 3, sequences: [{ slot: 0, past: 100, length: 1 }, { slot: 2, past: 2999, length: 1 }, { slot: 1, past: 0, length: 1 }] }],
    ['decode, ratio 8, dim 48', { heads: 8, kvHeads: 1, headDim: 48, maxLen: 600, numSlots: 2, sequences: [{ slot: 1, past: 500, length: 1 }, { slot: 0, past: 1, length: 1 }] }],
    ['decode, ratio 8, dim 64, 32 heads', { heads: 32, kvHeads: 4, headDim: 64, maxLen: 1100, numSlots: 5, sequences: [0, 1, 2, 3, 4].map((slot) => ({ slot, past: [1000, 63, 64, 65, 7][slot]!, length: 1 })) }],
    ['prefill continuing a cache plus decode, dim 32', { heads: 6, kvHeads: 3, headDim: 32, maxLen: 300, numSlots: 2, sequences: [{ slot: 0, past: 50, length: 30 }, { slot: 1, past: 200, length: 1 }] }],
    ['long prefill, 1200 tokens', { heads: 4, kvHeads: 2, headDim: 64, maxLen: 1200, numSlots: 1, sequences: [{ slot: 0, past: 0, length: 1200 }] }],
    ['dim 42 (f32 loads), ratio 2', { heads: 4, kvHeads: 2, headDim: 42, maxLen: 90, numSlots: 2, sequences: [{ slot: 1, past: 0, length: 77 }, { slot: 0, past: 11, length: 1 }] }],
    ['dim 96, ratio 2, odd lengths', { heads: 10, kvHeads: 5, headDim: 96, maxLen: 200, numSlots: 2, sequences: [{ slot: 1, past: 0, length: 129 }, { slot: 0, past: 70, length: 3 }] }],
  ];

  const variants: AttentionVariant[] = ['rows', 'tiled'];
  // The tiled kernel takes head_dim up to TILED_MAX_HEAD_DIM.
  const cases = (list: [string, Shape][]) =>
    variants.flatMap((v) => list.filter(([, shape]) => v === 'rows' || shape.headDim <= TILED_MAX_HEAD_DIM).map(([name, shape]) => [`${v}: ${name}`, shape, v] as [string, Shape, AttentionVariant]));

  it.each(cases(shapes))('%s', async (_name, shape, variant) => {
    const { error, ms } = await checkStep(shape, BOUND, undefined, variant);
    console.log(`attention ${variant} ${describeShape(shape)}: relative error ${error.toExponential(2)}, ${ms.toFixed(1)} ms on ${gpu.adapter.name}`);
  });

  // The tiled kernel's edges: prompt lengths 1, 7, 64 and 300 (partial tiles and key blocks, runs of
  // slots that change inside a tile), odd head counts, GQA ratios 1, 3 and 4.
  const tiledEdges: [string, Shape][] = [
    ['lengths 1, 7, 64, 300 packed, ratio 3, 9 heads', { heads: 9, kvHeads: 3, headDim: 64, maxLen: 320, numSlots: 4, sequences: [{ slot: 3, past: 0, length: 1 }, { slot: 1, past: 0, length: 7 }, { slot: 0, past: 0, length: 64 }, { slot: 2, past: 0, length: 300 }] }],
    ['ratio 1, 5 heads, dim 40, lengths 7 and 64', { heads: 5, kvHeads: 5, headDim: 40, maxLen: 80, numSlots: 2, sequences: [{ slot: 0, past: 0, length: 7 }, { slot: 1, past: 0, length: 64 }] }],
    ['ratio 4, 12 heads, dim 32, 300 tokens after 20 cached', { heads: 12, kvHeads: 3, headDim: 32, maxLen: 330, numSlots: 1, sequences: [{ slot: 0, past: 20, length: 300 }] }],
    ['ratio 3, 3 heads, dim 42 (f32 loads), window 5, lengths 1 and 7', { heads: 3, kvHeads: 1, headDim: 42, maxLen: 40, numSlots: 3, window: 5, sequences: [{ slot: 2, past: 3, length: 1 }, { slot: 0, past: 0, length: 7 }, { slot: 1, past: 10, length: 20 }] }],
    ['ratio 4, window 48 and soft cap over 300 tokens', { heads: 8, kvHeads: 2, headDim: 64, maxLen: 300, numSlots: 1, window: 48, softCap: 4, sequences: [{ slot: 0, past: 0, length: 300 }] }],
  ];

  it.each(cases(tiledEdges))('%s', async (_name, shape, variant) => {
    const { error } = await checkStep(shape, BOUND, undefined, variant);
    console.log(`attention ${variant} ${describeShape(shape)}: relative error ${error.toExponential(2)} on ${gpu.adapter.name}`);
  });

  const windowed: [string, Shape][] = [
    ['window 16 over a 100-token prefill and a continued prefill', { heads: 4, kvHeads: 2, headDim: 32, maxLen: 160, numSlots: 2, window: 16, sequences: [{ slot: 0, past: 0, length: 100 }, { slot: 1, past: 40, length: 9 }] }],
    ['window 100 across chunk boundaries, decode', { heads: 8, kvHeads: 2, headDim: 64, maxLen: 700, numSlots: 3, window: 100, sequences: [{ slot: 0, past: 650, length: 1 }, { slot: 1, past: 99, length: 1 }, { slot: 2, past: 5, length: 1 }] }],
    ['window 7, dim 42 (f32 loads)', { heads: 4, kvHeads: 4, headDim: 42, maxLen: 64, numSlots: 1, window: 7, sequences: [{ slot: 0, past: 0, length: 50 }] }],
    ['soft-capped scores (cap 3)', { heads: 4, kvHeads: 2, headDim: 32, maxLen: 96, numSlots: 2, softCap: 3, sequences: [{ slot: 0, past: 0, length: 70 }, { slot: 1, past: 30, length: 1 }] }],
    ['soft-capping and a window together', { heads: 6, kvHeads: 3, headDim: 64, maxLen: 200, numSlots: 1, window: 33, softCap: 2, sequences: [{ slot: 0, past: 0, length: 150 }] }],
  ];

  it.each(cases(windowed))('%s', async (_name, shape, variant) => {
    const { error } = await checkStep(shape, BOUND, undefined, variant);
    console.log(`attention ${describeShape(shape)}: relative error ${error.toExponential(2)} on ${gpu.adapter.name}`);
  });

  it.each(variants)('%s: a window covering every key gives the bits of full causal attention', async (variant) => {
    const shape: Shape = { heads: 8, kvHeads: 2, headDim: 64, maxLen: 300, numSlots: 2, sequences: [{ slot: 0, past: 0, length: 130 }, { slot: 1, past: 200, length: 1 }] };
    const full = await checkStep(shape, BOUND, undefined, variant);
    const covering = await checkStep({ ...shape, window: 300 }, BOUND, full.seed, variant);
    expect(sameBits(covering.out, full.out)).toBe(true);
  });

  it.each(variants.flatMap((v) => [8, 6].map((extra) => [v, extra] as const)))('%s: reads a fused QKV buffer through strides and offsets and writes output rows %i wider', async (variant, extra) => {
    // Extra 8: vec4 loads; extra 6: an output stride that is not a multiple of 4 selects f32 loads.
    const rng = new Random();
    const [heads, kvHeads, D, maxLen] = [4, 2, 32, 40];
    const T = 23;
    const qDim = heads * D;
    const kvDim = kvHeads * D;
    const stride = qDim + 2 * kvDim;
    const qkv = f32(rng.normals(T * stride, 2));
    const positions = Uint32Array.from({ length: T }, (_, i) => i);
    const slots = new Uint32Array(T);
    const outStride = qDim + extra;
    const buffers = {
      qkv: gpu.upload(qkv, 'qkv'),
      kCache: poisonedBuffer(gpu, maxLen * kvDim, 'kCache'),
      vCache: poisonedBuffer(gpu, maxLen * kvDim, 'vCache'),
      positions: gpu.upload(positions, 'positions'),
      slots: gpu.upload(slots, 'slots'),
      out: poisonedBuffer(gpu, T * outStride, 'out'),
    };
    const batch = gpu.batch('fused');
    recordKvCacheWrite(batch, { ...buffers, k: buffers.qkv, v: buffers.qkv, tokens: T, kvHeads, headDim: D, maxLen, kRowStride: stride, kOffset: qDim, vRowStride: stride, vOffset: qDim + kvDim });
    recordAttention(batch, { ...buffers, q: buffers.qkv, tokens: T, heads, kvHeads, headDim: D, maxLen, qRowStride: stride, outRowStride: outStride, variant });
    await batch.submit();
    const out = await gpu.readF32(buffers.out);
    for (const b of Object.values(buffers)) gpu.destroyBuffer(b);

    const q = new Float32Array(T * qDim);
    const kCache = new Float32Array(maxLen * kvDim).fill(Number.NaN);
    const vCache = new Float32Array(maxLen * kvDim).fill(Number.NaN);
    for (let t = 0; t < T; t++) {
      q.set(qkv.subarray(t * stride, t * stride + qDim), t * qDim);
      kCache.set(qkv.subarray(t * stride + qDim, t * stride + qDim + kvDim), t * kvDim);
      vCache.set(qkv.subarray(t * stride + qDim + kvDim, (t + 1) * stride), t * kvDim);
    }
    const expected = attentionReference({ heads, kvHeads, headDim: D, maxLen, numSlots: 1, sequences: [] }, q, kCache, vCache, positions, slots);
    const actual = new Float32Array(T * qDim);
    for (let t = 0; t < T; t++) {
      actual.set(out.subarray(t * outStride, t * outStride + qDim), t * qDim);
      expect(out.subarray(t * outStride + qDim, (t + 1) * outStride).every(Number.isNaN)).toBe(true);
    }
    expectClose(actual, expected, BOUND, 'attention on fused QKV', rng.seed);
  });

  it('refuses the tiled kernel for heads longer than it takes', () => {
    const buffers = { q: poisonedBuffer(gpu, 4, 'q'), kCache: poisonedBuffer(gpu, 4, 'k'), vCache: poisonedBuffer(gpu, 4, 'v'), positions: poisonedBuffer(gpu, 4, 'p'), slots: poisonedBuffer(gpu, 4, 's'), out: poisonedBuffer(gpu, 4, 'o') };
    const batch = gpu.batch('refused');
    expect(() => recordAttention(batch, { ...buffers, tokens: 2, heads: 2, kvHeads: 1, headDim: 128, maxLen: 8, variant: 'tiled' })).toThrow(/head_dim up to 64, not 128/);
    for (const b of Object.values(buffers)) gpu.destroyBuffer(b);
  });

  it('skips tokens whose slot or position is outside the cache', async () => {
    const [kvHeads, D, maxLen, numSlots] = [1, 4, 3, 2];
    const kvDim = kvHeads * D;
    const k = f32([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    const buffers = {
      k: gpu.upload(k, 'k'),
      v: gpu.upload(k, 'v'),
      kCache: poisonedBuffer(gpu, numSlots * maxLen * kvDim + 16, 'kCache'),
      vCache: poisonedBuffer(gpu, numSlots * maxLen * kvDim + 16, 'vCache'),
      positions: gpu.upload(new Uint32Array([3, 0, 2]), 'positions'),
      slots: gpu.upload(new Uint32Array([0, 2, 1]), 'slots'),
    };
    const batch = gpu.batch('out of range');
    recordKvCacheWrite(batch, { ...buffers, tokens: 3, kvHeads, headDim: D, maxLen, numSlots });
    await batch.submit();
    const cache = await gpu.readF32(buffers.kCache);
    for (const b of Object.values(buffers)) gpu.destroyBuffer(b);
    const written = [...cache].map((x, i) => (Number.isNaN(x) ? -1 : i));
    expect(written.filter((i) => i >= 0)).toEqual([20, 21, 22, 23]); // slot 1, position 2
    expect([...cache.subarray(20, 24)]).toEqual([9, 10, 11, 12]);
  });
});
