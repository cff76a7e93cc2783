import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordRope } from '../../src/kernels/rope.ts';
import { Random } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';
import { f32, poisonedBuffer, testGpu } from '../helpers/gpu.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

/** Rotary frequencies as f32, as a model would pass them: base^(-2i/d), long wavelengths divided by 8 (llama3-like). */
function inverseFrequencies(headDim: number, base: number, scaled: boolean): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const inv = Math.pow(base, (-2 * i) / headDim);
    out[i] = scaled && (2 * Math.PI) / inv > 8192 ? inv / 8 : inv;
  }
  return out;
}

/** The rotation in float64 of the exact angle position × invFreq (invFreq as the f32 the kernel reads). */
function ropeReference(x: Float32Array, positions: Uint32Array, invFreq: Float32Array, heads: number, headDim: number, rowStride: number, offset: number): Float64Array {
  const out = Float64Array.from(x);
  const half = headDim / 2;
  for (let t = 0; t < positions.length; t++) {
    for (let i = 0; i < half; i++) {
      const angle = positions[t]! * invFreq[i]!;
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      for (let h = 0; h < heads; h++) {
        const at = t * rowStride + offset + h * headDim + i;
        const a = x[at]!;
        const b = x[at + half]!;
        out[at] = a * c - b * s;
        out[at + half] = b * c + a * s;
      }
    }
  }
  return out;
}

async function runRope(x: Float32Array, positions: Uint32Array, invFreq: Float32Array, tokens: number, heads: number, headDim: number, rowStride?: number, offset?: number): Promise<Float32Array> {
  const xBuf = gpu.upload(x, 'x');
  const posBuf = gpu.upload(positions, 'positions');
  const freqBuf = gpu.upload(invFreq, 'invFreq');
  const batch = gpu.batch('rope');
  recordRope(batch, { x: xBuf, positions: posBuf, invFreq: freqBuf, tokens, heads, headDim, rowStride, offset });
  await batch.submit();
  const out = await gpu.readF32(xBuf);
  for (const b of [xBuf, posBuf, freqBuf]) gpu.destroyBuffer(b);
  return out;
}

function randomPositions(rng: Random, n: number, max: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.int(0, max);
  out[0] = 0;
  if (n > 1) out[n - 1] = max;
  return out;
}

describe('rope', () => {
  // Output error relative to the largest output. The angle is exact to 9e-9 rad (integer range
  // reduction) and cos/sin to a few f32 ulps, so the error is that of the f32 products a·cos − b·sin:
  // a few 1e-7. A plain f32 angle would be off by up to 4e-3 rad at position 100k.
  const BOUND = 1e-6;

  it.each([
    [1, 1, 2, 10_000, false],
    [7, 3, 64, 10_000, false],
    [37, 8, 128, 500_000, true],
    [5, 2, 40, 10_000, false],
    [130, 4, 48, 1_000_000, false],
    [65, 32, 128, 500_000, true],
    [3, 5, 96, 10_000, true],
  ])('rotates T=%i heads=%i dim=%i (base %i, scaled %s) at positions up to 100k', async (tokens, heads, headDim, base, scaled) => {
    const rng = new Random();
    const invFreq = inverseFrequencies(headDim, base, scaled);
    const positions = randomPositions(rng, tokens, 100_000);
    const x = f32(rng.normals(tokens * heads * headDim));
    const out = await runRope(x, positions, invFreq, tokens, heads, headDim);
    const expected = ropeReference(x, positions, invFreq, heads, headDim, heads * headDim, 0);
    const error = expectClose(out, expected, BOUND, 'rope', rng.seed);
    console.log(`rope T=${tokens} heads=${heads} dim=${headDim}: relative error ${error.toExponential(2)}`);
  });

  it('computes cos and sin of position × invFreq to f32 precision up to position 2^24', async () => {
    const rng = new Random();
    const headDim = 128;
    const invFreq = inverseFrequencies(headDim, 500_000, true);
    invFreq[1] = 1.7; // a frequency above 1 as well
    const positions = new Uint32Array([0, 1, 2, 1000, 4095, 4096, 65_535, 65_536, 99_999, 100_000, 131_071, 131_072, 1_000_003, 16_777_215, ...randomPositions(rng, 50, 200_000)]);
    const tokens = positions.length;
    // a = 1, b = 0 in every pair: the kernel writes (cos θ, sin θ).
    const x = new Float32Array(tokens * headDim);
    for (let t = 0; t < tokens; t++) for (let i = 0; i < headDim / 2; i++) x[t * headDim + i] = 1;
    const out = await runRope(x, positions, invFreq, tokens, 1, headDim);
    let worst = 0;
    let naiveWorst = 0;
    for (let t = 0; t < tokens; t++) {
      for (let i = 0; i < headDim / 2; i++) {
        const angle = positions[t]! * invFreq[i]!;
        worst = Math.max(worst, Math.abs(out[t * headDim + i]! - Math.cos(angle)), Math.abs(out[t * headDim + headDim / 2 + i]! - Math.sin(angle)));
        if (positions[t]! <= 200_000) naiveWorst = Math.max(naiveWorst, Math.abs(Math.cos(Math.fround(positions[t]! * invFreq[i]!)) - Math.cos(angle)));
      }
    }
    console.log(`rope: max |cos/sin error| ${worst.toExponential(2)} up to position 2^24 (a plain f32 angle: ${naiveWorst.toExponential(2)} up to 200k); seed ${rng.seed}`);
    expect(worst).toBeLessThan(3e-7);
  });

  it('rotates only its part of a fused QKV row (rowStride, offset)', async () => {
    const rng = new Random();
    const [tokens, heads, kvHeads, headDim] = [9, 4, 2, 64];
    const rowStride = (heads + 2 * kvHeads) * headDim;
    const offset = heads * headDim; // the K part
    const invFreq = inverseFrequencies(headDim, 10_000, false);
    const positions = randomPositions(rng, tokens, 5000);
    const x = f32(rng.normals(tokens * rowStride));
    const out = await runRope(x, positions, invFreq, tokens, kvHeads, headDim, rowStride, offset);
    const expected = ropeReference(x, positions, invFreq, kvHeads, headDim, rowStride, offset);
    expectClose(out, expected, BOUND, 'rope on the K part', rng.seed);
    for (let t = 0; t < tokens; t++) {
      for (let j = 0; j < rowStride; j++) {
        if (j < offset || j >= offset + kvHeads * headDim) expect(out[t * rowStride + j]).toBe(x[t * rowStride + j]);
      }
    }
  });

  it('rotates every pair and nothing beyond when T·dim/2 is not a multiple of the workgroup', async () => {
    // The elements after the tensor are NaN and must stay so.
    const rng = new Random();
    const [tokens, heads, headDim] = [3, 3, 42];
    const n = tokens * heads * headDim;
    const buffer = poisonedBuffer(gpu, n + 64, 'x');
    const x = f32(rng.normals(n));
    gpu.write(buffer, x);
    const positions = randomPositions(rng, tokens, 300);
    const posBuf = gpu.upload(positions, 'positions');
    const invFreq = inverseFrequencies(headDim, 10_000, false);
    const freqBuf = gpu.upload(invFreq, 'invFreq');
    const batch = gpu.batch('rope');
    recordRope(batch, { x: buffer, positions: posBuf, invFreq: freqBuf, tokens, heads, headDim });
    await batch.submit();
    const out = await gpu.readF32(buffer);
    expectClose(out.subarray(0, n), ropeReference(x, positions, invFreq, heads, headDim, heads * headDim, 0), BOUND, 'rope', rng.seed);
    expect(out.subarray(n).every(Number.isNaN)).toBe(true);
    for (const b of [buffer, posBuf, freqBuf]) gpu.destroyBuffer(b);
  });
});
