import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordEmbedding } from '../../src/kernels/embedding.ts';
import { recordGeluTanhMul, recordSiluMul, recordSoftCap } from '../../src/kernels/elementwise.ts';
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
    [1, 64, false],
    [7, 100, false],
    [33, 256, false],
    [3, 1000, false],
    [2, 5, false],
    [7, 100, true],
    [33, 256, true],
  ])('rows=%i dim=%i (1 + w: %s)', async (rows, dim, plusOne) => {
    const rng = new Random();
    // Rows of very different scales: the normalisation must remove the scale.
    const x = Float64Array.from(f32(rng.normals(rows * dim).map((v, i) => v * 10 ** ((Math.floor(i / dim) % 5) - 2))));
    // Gemma's stored weights are offsets around 0 (scale 1 + w); Llama's are scales around 1.
    const w = Float64Array.from(f32(rng.normals(dim).map((v) => (plusOne ? 0.3 * v : 1 + 0.1 * v))));
    const eps = 1e-5;
    const xBuf = gpu.upload(f32(x), 'x');
    const wBuf = gpu.upload(f32(w), 'w');
    const yBuf = poisonedBuffer(gpu, rows * dim, 'y');
    const batch = gpu.batch('rmsnorm');
    recordRmsNorm(batch, { x: xBuf, weight: wBuf, y: yBuf, rows, dim, eps, plusOne });
    await batch.submit();
    const got = await gpu.readF32(yBuf);
    for (let r = 0; r < rows; r++) {
      const row = x.subarray(r * dim, (r + 1) * dim);
      const scale = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / dim + eps);
      const expected = row.map((v, i) => v * scale * (plusOne ? 1 + w[i]! : w[i]!));
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

describe('gelu_tanh_mul', () => {
  // transformers' gelu_pytorch_tanh in float64.
  const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  it.each([1, 63, 1000, 4099])('n=%i', async (n) => {
    const rng = new Random();
    const gate = Float64Array.from(f32(rng.normals(n, 3)));
    if (n > 3) {
      // The limits: large negative (→ −0, not NaN), large positive (→ g), huge (g³ would overflow).
      gate[0] = -100;
      gate[1] = 50;
      gate[2] = 3e38;
    }
    const up = Float64Array.from(f32(rng.normals(n)));
    if (n > 3) up[2] = 1e-38;
    const g = gpu.upload(f32(gate), 'gate');
    const u = gpu.upload(f32(up), 'up');
    const batch = gpu.batch('gelu_tanh_mul');
    recordGeluTanhMul(batch, { gate: g, up: u, n });
    await batch.submit();
    const got = await gpu.readF32(g);
    const expected = gate.map((v, i) => geluTanh(v) * up[i]!);
    expect(got.every(Number.isFinite)).toBe(true);
    // Element by element, relative to each value's own size (plus a floor for values near 0).
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(got[i]! - expected[i]!) / (Math.abs(expected[i]!) + 1e-6 * Math.abs(up[i]!)));
    expect(worst, `gelu_tanh(gate)·up (seed ${rng.seed})`).toBeLessThan(1e-5);
    for (const b of [g, u]) gpu.destroyBuffer(b);
  });
});

describe('soft_cap', () => {
  it.each([30, 2.5])('cap %f', async (cap) => {
    const rng = new Random();
    const n = 2000;
    const x = Float64Array.from(f32(rng.normals(n, 2 * cap)));
    x[0] = 1e30;
    x[1] = -1e30;
    x[2] = 1e-30;
    const buffer = gpu.upload(f32(x), 'x');
    const batch = gpu.batch('soft_cap');
    recordSoftCap(batch, { x: buffer, n, cap });
    await batch.submit();
    const got = await gpu.readF32(buffer);
    const expected = x.map((v) => cap * Math.tanh(v / cap));
    expectClose(got, expected, 1e-6, `soft cap ${cap}`, rng.seed);
    expect([got[0], got[1]]).toEqual([cap, -cap].map((v) => Math.fround(v)));
    gpu.destroyBuffer(buffer);
  });
});

describe('embedding', () => {
  it('scales rows by a multiplier (Gemma), in f32', async () => {
    const rng = new Random();
    const [vocab, dim] = [50, 16];
    const { matrix, stored } = await packedMatrix(gpu, 'embed', 'BF16', vocab, dim, rng.normals(vocab * dim));
    const ids = Array.from({ length: 9 }, () => rng.int(0, vocab - 1));
    const idBuf = gpu.upload(Uint32Array.from(ids), 'ids');
    const out = poisonedBuffer(gpu, ids.length * dim, 'out');
    const batch = gpu.batch('embedding scaled');
    recordEmbedding(batch, { ids: idBuf, table: matrix, out, tokens: ids.length, scale: 55.5 });
    await batch.submit();
    const got = await gpu.readF32(out);
    const expected = ids.flatMap((id) => Array.from(stored.subarray(id * dim, (id + 1) * dim)).map((v) => Math.fround(v * 55.5)));
    expect(Array.from(got)).toEqual(expected);
    destroyMatrix(gpu, matrix);
    gpu.destroyBuffer(idBuf);
    gpu.destroyBuffer(out);
  });

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
