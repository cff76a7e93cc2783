import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordEmbedding } from '../../src/kernels/embedding.ts';
import { recordSiluMul } from '../../src/kernels/elementwise.ts';
import { recordRmsNorm } from '../../src/kernels/rmsnorm.ts';
import { expectClose } from '../helpers/compare.ts';
import { destroyMatrix, f32, packedMatrix, poisonedBuffer, testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
let smallBindings: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
  smallBindings = await testGpu({ maxStorageBufferBindingSize: 2048 });
});
afterAll(() => {
  gpu?.dispose();
  smallBindings?.dispose();
});

describe('rmsnorm', () => {
  it.each([
    [1, 64],
    [7, 100],
    [33, 256],
    [3, 1000],
    [2, 5],
  ])('rows=%i dim=%i', async (rows, dim) => {
    const rng = new Random();
    // Rows of very different scales: the normalisation must remove the scale.
    const x = Float64Array.from(f32(rng.normals(rows * dim).map((v, i) => v * 10 ** ((Math.floor(i / dim) % 5) - 2))));
    const w = Float64Array.from(f32(rng.normals(dim).map((v) => 1 + 0.1 * v)));
    const eps = 1e-5;
    const xBuf = gpu.upload(f32(x), 'x');
    const wBuf = gpu.upload(f32(w), 'w');
    const yBuf = poisonedBuffer(gpu, rows * dim, 'y');
    const batch = gpu.batch('rmsnorm');
    recordRmsNorm(batch, { x: xBuf, weight: wBuf, y: yBuf, rows, dim, eps });
    await batch.submit();
    const got = await gpu.readF32(yBuf);
    for (let r = 0; r < rows; r++) {
      const row = x.subarray(r * dim, (r + 1) * dim);
      const scale = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / dim + eps);
      const expected = row.map((v, i) => v * scale * w[i]!);
      expectClose(got.subarray(r * dim, (r + 1) * dim), expected, 1e-5, `row ${r}`, rng.seed);
    }
    for (const b of [xBuf, wBuf, yBuf]) gpu.destroyBuffer(b);
  });
});

describe('silu_mul', () => {
  it.each([1, 63, 1000, 4099])('n=%i', async (n) => {
    const rng = new Random();
    const gate = Float64Array.from(f32(rng.normals(n, 4)));
    if (n > 1) gate[0] = -100; // exp(−g) overflows: the result must be −0, not NaN
    const up = Float64Array.from(f32(rng.normals(n)));
    const g = gpu.upload(f32(gate), 'gate');
    const u = gpu.upload(f32(up), 'up');
    const batch = gpu.batch('silu_mul');
    recordSiluMul(batch, { gate: g, up: u, n });
    await batch.submit();
    const expected = gate.map((v, i) => (v / (1 + Math.exp(-v))) * up[i]!);
    expectClose(await gpu.readF32(g), expected, 1e-6, 'silu(gate)·up', rng.seed);
    for (const b of [g, u]) gpu.destroyBuffer(b);
  });
});

describe('embedding', () => {
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    it(`gathers rows of a ${dtype} table, split into chunks or not`, async () => {
      for (const device of [gpu, smallBindings]) {
        const rng = new Random();
        const vocab = 301;
        const dim = 24;
        const { matrix, stored } = await packedMatrix(device, 'embed', dtype, vocab, dim, rng.normals(vocab * dim));
        if (device === smallBindings) expect(matrix.chunks.length).toBeGreaterThan(3);
        const ids = Array.from({ length: 37 }, () => rng.int(0, vocab - 1));
        ids[0] = 0;
        ids[1] = vocab - 1;
        const idBuf = device.upload(Uint32Array.from(ids), 'ids');
        const out = poisonedBuffer(device, ids.length * dim, 'out');
        const batch = device.batch('embedding');
        recordEmbedding(batch, { ids: idBuf, table: matrix, out, tokens: ids.length });
        await batch.submit();
        const got = await device.readF32(out);
        const expected = ids.flatMap((id) => Array.from(stored.subarray(id * dim, (id + 1) * dim)));
        expect(Array.from(got)).toEqual(expected);
        destroyMatrix(device, matrix);
        device.destroyBuffer(idBuf);
        device.destroyBuffer(out);
      }
    });
  }
});
