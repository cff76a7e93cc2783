import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordArgmax } from '../../src/kernels/argmax.ts';
import { Random } from '../helpers/random.ts';
import { f32, testGpu } from '../helpers/gpu.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

function argmaxReference(x: Float32Array, rows: number, cols: number): Uint32Array {
  const out = new Uint32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let c = 1; c < cols; c++) if (x[r * cols + c]! > x[r * cols + best]!) best = c;
    out[r] = best;
  }
  return out;
}

async function runArgmax(x: Float32Array, rows: number, cols: number): Promise<Uint32Array> {
  const xBuf = gpu.upload(x, 'logits');
  const out = gpu.createBuffer(rows * 4, 'indices');
  gpu.write(out, new Uint32Array(rows).fill(0xdeadbeef));
  const batch = gpu.batch('argmax');
  recordArgmax(batch, { logits: xBuf, out, rows, cols });
  await batch.submit();
  const result = await gpu.readU32(out);
  gpu.destroyBuffer(xBuf);
  gpu.destroyBuffer(out);
  return result;
}

describe('argmax', () => {
  it.each([
    [1, 1],
    [3, 7],
    [17, 255],
    [8, 1000],
    [5, 32_000],
    [3, 128_256],
    [70_000, 3],
  ])('finds the maximum of %i rows of %i', async (rows, cols) => {
    const rng = new Random();
    const x = f32(rng.normals(rows * cols, 4));
    // Make a few rows hold their maximum at the very end or start.
    if (rows > 1) x[cols - 1] = 100;
    if (rows > 2) x[2 * cols] = 100;
    expect(await runArgmax(x, rows, cols)).toEqual(argmaxReference(x, rows, cols));
  });

  it('returns the lowest index among equal maxima', async () => {
    const rng = new Random();
    const [rows, cols] = [40, 5000];
    // Values on a coarse grid: many ties, including at the maximum.
    const x = Float32Array.from(rng.normals(rows * cols), (v) => Math.round(v * 2) / 2);
    for (let r = 0; r < rows; r++) {
      // Several copies of a clear maximum at random places in each row.
      for (let k = 0; k < 1 + (r % 5); k++) x[r * cols + rng.int(0, cols - 1)] = 9;
    }
    x.fill(-3, 0, cols); // row 0: all equal → index 0
    x.fill(-3, cols, 2 * cols);
    x[2 * cols - 1] = -2.5; // row 1: maximum at the last index
    expect(await runArgmax(x, rows, cols)).toEqual(argmaxReference(x, rows, cols));
  });

  it('handles negative and very large values', async () => {
    const cols = 1025;
    const x = new Float32Array(3 * cols).fill(-1e30);
    x[700] = -1e29;
    x[cols + 3] = 3e38;
    x[cols + 4] = 3e38;
    x[2 * cols + 1024] = -5;
    expect([...(await runArgmax(x, 3, cols))]).toEqual([700, 3, 1024]);
  });
});
