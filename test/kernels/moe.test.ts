import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordExpertMatvec, recordMoeRoute } from '../../src/kernels/moe.ts';
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

/** Routing weights in float64, from the definitions: softmax over all, top-k, renormalised or not; sigmoid of the shared gate. */
function routeFloat64(logits: Float64Array, tokens: number, experts: number, topK: number, norm: boolean, shared: boolean): Float64Array {
  const stride = experts + (shared ? 1 : 0);
  const out = new Float64Array(tokens * stride);
  for (let t = 0; t < tokens; t++) {
    const row = logits.subarray(t * stride, t * stride + experts);
    const max = Math.max(...row);
    const exps = Array.from(row, (z) => Math.exp(z - max));
    const total = exps.reduce((a, b) => a + b, 0);
    const order = [...exps.keys()].sort((i, j) => exps[j]! - exps[i]! || i - j).slice(0, topK);
    const selected = order.reduce((a, e) => a + exps[e]!, 0);
    for (const e of order) out[t * stride + e] = exps[e]! / (norm ? selected : total);
    if (shared) out[t * stride + experts] = 1 / (1 + Math.exp(-logits[t * stride + experts]!));
  }
  return out;
}

describe('moe_route', () => {
  it.each([
    [5, 4, 2, true, false],
    [17, 8, 3, false, false],
    [3, 60, 4, false, true],
    [70, 128, 8, true, false],
    [2, 4, 4, true, true],
  ])('tokens=%i experts=%i top-%i renormalised=%s shared=%s', async (tokens, experts, topK, norm, shared) => {
    const rng = new Random();
    const stride = experts + (shared ? 1 : 0);
    const logits = Float64Array.from(f32(rng.normals(tokens * stride, 2)));
    const logitsBuf = gpu.upload(f32(logits), 'logits');
    const weights = poisonedBuffer(gpu, tokens * stride, 'weights');
    const batch = gpu.batch('moe_route');
    recordMoeRoute(batch, { logits: logitsBuf, weights, tokens, experts, topK, normTopK: norm, shared });
    await batch.submit();
    const got = await gpu.readF32(weights);
    const expected = routeFloat64(logits, tokens, experts, topK, norm, shared);
    // Exactly the selected experts are non-zero.
    for (let i = 0; i < got.length; i++) expect(got[i] !== 0, `element ${i} (seed ${rng.seed})`).toBe(expected[i] !== 0);
    expectClose(got, expected, 1e-6, 'routing weights', rng.seed);
    for (const b of [logitsBuf, weights]) gpu.destroyBuffer(b);
  });
});

describe('expert_matvec', () => {
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    it(`${dtype}: only routed tokens, written or accumulated with their weight, split into chunks or not`, async () => {
      for (const device of [gpu, smallBindings]) {
        const rng = new Random();
        const tokens = 9;
        const [n, k] = [37, 50];
        const experts = 3;
        const expert = 1;
        const { matrix, stored } = await packedMatrix(device, 'expert', dtype, n, k, rng.normals(n * k));
        if (device === smallBindings) expect(matrix.chunks.length).toBeGreaterThan(1);
        const x = Float64Array.from(f32(rng.normals(tokens * k)));
        // Tokens 0, 3, 4 and 8 are routed to the expert.
        const route = new Float64Array(tokens * experts);
        for (const t of [0, 3, 4, 8]) route[t * experts + expert] = Math.fround(rng.uniforms(1, 0.1, 1)[0]!);
        for (let t = 0; t < tokens; t++) route[t * experts + ((expert + 1) % experts)] = 0.5;
        const xBuf = device.upload(f32(x), 'x');
        const routeBuf = device.upload(f32(route), 'route');
        const start = Float64Array.from(f32(rng.normals(tokens * n)));
        const written = poisonedBuffer(device, tokens * n, 'written');
        const summed = device.upload(f32(start), 'summed');
        const batch = device.batch('expert_matvec');
        recordExpertMatvec(batch, { x: xBuf, tokens, weight: matrix, route: routeBuf, routeStride: experts, expert, y: written, accumulate: false });
        recordExpertMatvec(batch, { x: xBuf, tokens, weight: matrix, route: routeBuf, routeStride: experts, expert, y: summed, accumulate: true });
        await batch.submit();
        const gotWritten = await device.readF32(written);
        const gotSummed = await device.readF32(summed);
        for (let t = 0; t < tokens; t++) {
          const r = route[t * experts + expert]!;
          const product = Array.from({ length: n }, (_, j) => {
            let sum = 0;
            for (let i = 0; i < k; i++) sum += x[t * k + i]! * stored[j * k + i]!;
            return sum;
          });
          const rowWritten = gotWritten.subarray(t * n, (t + 1) * n);
          const rowSummed = gotSummed.subarray(t * n, (t + 1) * n);
          const startRow = start.subarray(t * n, (t + 1) * n);
          if (r === 0) {
            // Not routed: left as it was (poison stays, the sum is unchanged).
            expect(rowWritten.every(Number.isNaN), `token ${t}`).toBe(true);
            expect(Array.from(rowSummed)).toEqual(Array.from(f32(startRow)));
          } else {
            expectClose(rowWritten, product, 1e-5, `token ${t} written`, rng.seed);
            expectClose(rowSummed, product.map((v, j) => startRow[j]! + r * v), 1e-5, `token ${t} accumulated`, rng.seed);
          }
        }
        destroyMatrix(device, matrix);
        for (const b of [xBuf, routeBuf, written, summed]) device.destroyBuffer(b);
      }
    });
  }
});
