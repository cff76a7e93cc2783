import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { IGNORED_TARGET, recordCrossEntropy, recordKlDivergence } from '../../src/kernels/losses.ts';
import { f32, poisonedBuffer, testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

/** log Σ exp(z) of row r in float64. */
function logSumExp(z: Float64Array, r: number, vocab: number): number {
  let max = -Infinity;
  for (let v = 0; v < vocab; v++) max = Math.max(max, z[r * vocab + v]!);
  let sum = 0;
  for (let v = 0; v < vocab; v++) sum += Math.exp(z[r * vocab + v]! - max);
  return max + Math.log(sum);
}

/** KL(softmax(p_r) ‖ softmax(q_r)) in float64. */
function klReference(p: Float64Array, q: Float64Array, r: number, vocab: number): number {
  const lp = logSumExp(p, r, vocab);
  const lq = logSumExp(q, r, vocab);
  let kl = 0;
  for (let v = 0; v < vocab; v++) {
    const logP = p[r * vocab + v]! - lp;
    const logQ = q[r * vocab + v]! - lq;
    kl += Math.exp(logP) * (logP - logQ);
  }
  return kl;
}

/** Random logits rounded to f32; some rows peaked (one logit `gap` above the rest). */
function logits(rng: Random, rows: number, vocab: number, scale: number, peaked: (r: number) => number): Float64Array {
  const z = Float64Array.from(f32(rng.normals(rows * vocab, scale)));
  for (let r = 0; r < rows; r++) {
    const gap = peaked(r);
    if (gap > 0) z[r * vocab + rng.int(0, vocab - 1)] = Math.fround(scale * 3 + gap);
  }
  return z;
}

/** |got − want| ≤ 1e-5 (1 + |want|) for every row; returns the worst absolute error. */
function expectRowsClose(got: Float32Array, want: Float64Array, what: string, seed: number): number {
  let worst = 0;
  for (let r = 0; r < want.length; r++) {
    const error = Math.abs(got[r]! - want[r]!);
    worst = Math.max(worst, error);
    expect(error, `${what} row ${r}: got ${got[r]}, want ${want[r]}; reproduce with TEST_SEED=${seed}`).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(want[r]!)));
  }
  return worst;
}

const errors: string[] = [];
afterAll(() => {
  if (errors.length) console.log(`largest absolute errors against float64:\n  ${errors.join('\n  ')}`);
});

describe('cross_entropy', () => {
  async function check(rows: number, vocab: number, scale: number, gap: number) {
    const rng = new Random();
    const z = logits(rng, rows, vocab, scale, (r) => (r % 2 === 1 ? gap : 0));
    const targets = Uint32Array.from({ length: rows }, () => rng.int(0, vocab - 1));
    // Peaked rows: half target the peak (small nll), half elsewhere (about `gap`).
    const want = Float64Array.from({ length: rows }, (_, r) => logSumExp(z, r, vocab) - z[r * vocab + targets[r]!]!);
    const nll = poisonedBuffer(gpu, rows + 1, 'nll');
    const batch = gpu.batch('cross_entropy');
    recordCrossEntropy(batch, { logits: gpu.upload(f32(z), 'logits'), targets: gpu.upload(targets, 'targets'), nll, rows, vocab });
    await batch.submit();
    const got = await gpu.readF32(nll);
    expect(Number.isNaN(got[rows]!)).toBe(true);
    const worst = expectRowsClose(got.subarray(0, rows), want, `rows=${rows} vocab=${vocab}`, rng.seed);
    errors.push(`cross_entropy rows=${rows} vocab=${vocab} gap=${gap}: ${worst.toExponential(2)}`);
  }

  it.each([
    [1, 1, 1, 0],
    [3, 7, 2, 0],
    [5, 1000, 3, 60],
    [67, 301, 1, 50],
    [300, 64, 5, 100],
  ])('matches float64 (rows=%i vocab=%i scale=%f peak gap=%f)', async (rows, vocab, scale, gap) => {
    await check(rows, vocab, scale, gap);
  });

  it('handles a Llama-3 vocabulary of 128256', async () => {
    await check(3, 128256, 3, 50);
  });

  it('gives 0 for ignored positions and NaN for targets outside the vocabulary', async () => {
    const vocab = 10;
    const z = f32(new Random().normals(3 * vocab));
    const nll = poisonedBuffer(gpu, 3, 'nll');
    const batch = gpu.batch('cross_entropy targets');
    recordCrossEntropy(batch, { logits: gpu.upload(z, 'logits'), targets: gpu.upload(Uint32Array.from([IGNORED_TARGET, vocab, 9]), 'targets'), nll, rows: 3, vocab });
    await batch.submit();
    const got = await gpu.readF32(nll);
    expect(got[0]).toBe(0);
    expect(Number.isNaN(got[1]!)).toBe(true);
    expect(Number.isFinite(got[2]!)).toBe(true);
  });
});

describe('kl_divergence', () => {
  async function run(p: Float64Array, q: Float64Array, rows: number, vocab: number): Promise<Float32Array> {
    const kl = poisonedBuffer(gpu, rows + 1, 'kl');
    const batch = gpu.batch('kl_divergence');
    recordKlDivergence(batch, { logitsP: gpu.upload(f32(p), 'p'), logitsQ: gpu.upload(f32(q), 'q'), kl, rows, vocab });
    await batch.submit();
    const got = await gpu.readF32(kl);
    expect(Number.isNaN(got[rows]!)).toBe(true);
    return got.subarray(0, rows);
  }

  it.each([
    [1, 1],
    [4, 5],
    [9, 1000],
    [3, 128256],
  ])('is exactly 0 for identical rows (rows=%i vocab=%i)', async (rows, vocab) => {
    const rng = new Random();
    const p = logits(rng, rows, vocab, 3, (r) => (r % 2 === 1 ? 80 : 0));
    const got = await run(p, p, rows, vocab);
    expect(Array.from(got)).toEqual(new Array(rows).fill(0));
  });

  it.each([
    // rows, vocab, logit scale, P peak gap, Q peak gap, how far Q is from P (0: independent)
    [7, 5, 2, 0, 0, 0],
    [16, 1000, 3, 0, 0, 0],
    [16, 1000, 3, 0, 0, 0.01],
    [10, 4099, 1, 50, 0, 0],
    [10, 4099, 1, 0, 50, 0],
    [10, 4099, 1, 60, 60, 0],
    [10, 777, 2, 100, 0, 0.1],
    [2, 128256, 3, 50, 0, 0.05],
  ])('matches float64 (rows=%i vocab=%i scale=%f gaps P=%f Q=%f, Q−P noise %f)', async (rows, vocab, scale, gapP, gapQ, noise) => {
    const rng = new Random();
    const p = logits(rng, rows, vocab, scale, (r) => (r % 2 === 0 ? gapP : 0));
    const q =
      noise > 0
        ? Float64Array.from(f32(p.map((x) => x + noise * rng.normal())))
        : logits(rng, rows, vocab, scale, (r) => (r % 3 !== 1 ? gapQ : 0));
    const want = Float64Array.from({ length: rows }, (_, r) => klReference(p, q, r, vocab));
    const got = await run(p, q, rows, vocab);
    const worst = expectRowsClose(got, want, `rows=${rows} vocab=${vocab}`, rng.seed);
    errors.push(`kl rows=${rows} vocab=${vocab} gaps=${gapP}/${gapQ} noise=${noise}: ${worst.toExponential(2)} (KL up to ${Math.max(...want).toPrecision(3)})`);
  });
});
