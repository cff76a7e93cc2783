import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordSoftmax } from '../../src/kernels/softmax.ts';
import { Random } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';
import { f32, poisonedBuffer, testGpu } from '../helpers/gpu.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

function softmaxReference(x: Float32Array, rows: number, cols: number, log: boolean): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = x.subarray(r * cols, (r + 1) * cols);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    const logSum = Math.log(sum);
    for (let c = 0; c < cols; c++) out[r * cols + c] = log ? row[c]! - max - logSum : Math.exp(row[c]! - max) / sum;
  }
  return out;
}

/** Random logits; some rows shifted far from zero, where an unstable softmax overflows. */
function randomLogits(rng: Random, rows: number, cols: number): Float32Array {
  const x = f32(rng.normals(rows * cols, 3));
  for (let r = 0; r < rows; r += 3) {
    const shift = r % 2 === 0 ? 1000 : -1000;
    for (let c = 0; c < cols; c++) x[r * cols + c] = Math.fround(x[r * cols + c]! + shift);
  }
  return x;
}

describe('softmax', () => {
  // Relative to the largest output. Softmax: each output is one f32 exp times 1/sum, the sum a tree of
  // f32 adds, so a few 1e-7. Log-softmax: (x − max) − log(sum), values up to ~|30|, within 1e-6 of them.
  const BOUND = 2e-6;
  const shapes: [number, number][] = [
    [1, 1],
    [3, 7],
    [5, 255],
    [4, 1000],
    [300, 33],
    [2, 128_256],
    [70_000, 2], // more rows than one grid dimension holds
  ];

  for (const log of [false, true]) {
    it.each(shapes)(`${log ? 'log-softmax' : 'softmax'} of %i×%i into a separate buffer`, async (rows, cols) => {
      const rng = new Random();
      const x = randomLogits(rng, rows, cols);
      const xBuf = gpu.upload(x, 'x');
      const yBuf = poisonedBuffer(gpu, rows * cols, 'y');
      const batch = gpu.batch('softmax');
      recordSoftmax(batch, { input: xBuf, output: yBuf, rows, cols, log });
      await batch.submit();
      const y = await gpu.readF32(yBuf);
      expect(await gpu.readF32(xBuf)).toEqual(x);
      gpu.destroyBuffer(xBuf);
      gpu.destroyBuffer(yBuf);
      const error = expectClose(y, softmaxReference(x, rows, cols, log), BOUND, `${log ? 'log-' : ''}softmax ${rows}×${cols}`, rng.seed);
      console.log(`${log ? 'log-' : ''}softmax ${rows}×${cols}: relative error ${error.toExponential(2)}`);
    });
  }

  it.each([false, true])('works in place (log=%s)', async (log) => {
    const rng = new Random();
    const [rows, cols] = [9, 3001];
    const x = randomLogits(rng, rows, cols);
    const buffer = gpu.upload(x, 'x');
    const batch = gpu.batch('softmax in place');
    recordSoftmax(batch, { input: buffer, rows, cols, log });
    await batch.submit();
    const y = await gpu.readF32(buffer);
    gpu.destroyBuffer(buffer);
    expectClose(y, softmaxReference(x, rows, cols, log), BOUND, 'softmax in place', rng.seed);
  });

  it('gives rows that sum to 1', async () => {
    const rng = new Random();
    const [rows, cols] = [4, 50_000];
    const x = randomLogits(rng, rows, cols);
    const buffer = gpu.upload(x, 'x');
    const batch = gpu.batch('softmax');
    recordSoftmax(batch, { input: buffer, rows, cols });
    await batch.submit();
    const y = await gpu.readF32(buffer);
    gpu.destroyBuffer(buffer);
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      for (let c = 0; c < cols; c++) sum += y[r * cols + c]!;
      expect(Math.abs(sum - 1)).toBeLessThan(1e-5);
    }
  });
});
