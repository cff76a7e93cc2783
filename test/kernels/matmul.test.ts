import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import type { Dtype } from '../../src/io/dtype.ts';
import { recordMatmul, type MatmulTiling, type MatmulVariant } from '../../src/kernels/matmul.ts';
import { expectClose } from '../helpers/compare.ts';
import { destroyMatrix, f32, packedMatrix, poisonedBuffer, testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
let smallBindings: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
  // Forces weight matrices to be split into row chunks of at most 4 KiB.
  smallBindings = await testGpu({ maxStorageBufferBindingSize: 4096 });
});
afterAll(() => {
  gpu?.dispose();
  smallBindings?.dispose();
});

/** y = x Wᵀ (+ b) in float64 from the values the GPU holds. */
function reference(x: Float64Array, w: Float64Array, bias: Float64Array | undefined, tokens: number, k: number, n: number): Float64Array {
  const y = new Float64Array(tokens * n);
  for (let t = 0; t < tokens; t++) {
    for (let j = 0; j < n; j++) {
      let sum = bias ? bias[j]! : 0;
      for (let i = 0; i < k; i++) sum += x[t * k + i]! * w[j * k + i]!;
      y[t * n + j] = sum;
    }
  }
  return y;
}

const DECODE: MatmulTiling = { TM: 1, TN: 4, WG_X: 64, WG_Y: 1 };
const PREFILL: MatmulTiling = { TM: 4, TN: 4, WG_X: 8, WG_Y: 8 };

async function check(device: Gpu, dtype: Dtype, tokens: number, k: number, n: number, withBias: boolean, tiling?: MatmulVariant) {
  const rng = new Random();
  const x = Float64Array.from(f32(rng.normals(tokens * k)));
  const { matrix, stored } = await packedMatrix(device, 'w', dtype, n, k, rng.normals(n * k, 1 / Math.sqrt(k)));
  const bias = withBias ? Float64Array.from(f32(rng.normals(n))) : undefined;
  const xBuf = device.upload(f32(x), 'x');
  const biasBuf = bias && device.upload(f32(bias), 'bias');
  // Written into the middle columns of a wider output, as the vocabulary chunks and fused outputs are.
  const stride = n + 3;
  const yBuf = poisonedBuffer(device, tokens * stride, 'y');
  const batch = device.batch('matmul');
  recordMatmul(batch, { x: xBuf, tokens, weight: matrix, bias: biasBuf, y: yBuf, outStride: stride, outOffset: 2, tiling });
  await batch.submit();
  const out = await device.readF32(yBuf);
  const got = new Float64Array(tokens * n);
  for (let t = 0; t < tokens; t++) for (let j = 0; j < n; j++) got[t * n + j] = out[t * stride + 2 + j]!;
  // f32 accumulation of k products: error grows like √k · 2⁻²⁴ relative to the row scale.
  const error = expectClose(got, reference(x, stored, bias, tokens, k, n), 1e-5, `${dtype} t=${tokens} k=${k} n=${n}`, rng.seed);
  // Columns outside [2, 2 + n) are never written.
  expect(Number.isNaN(out[0]!) && Number.isNaN(out[1]!) && Number.isNaN(out[stride - 1]!)).toBe(true);
  destroyMatrix(device, matrix);
  for (const b of [xBuf, biasBuf, yBuf]) if (b) device.destroyBuffer(b);
  return { error, chunks: matrix.chunks.length };
}

describe('matmul over packed weights', () => {
  const shapes: [number, number, number][] = [
    [1, 64, 37],
    [2, 96, 130],
    [3, 63, 100],
    [17, 128, 129],
    [33, 256, 96],
    [5, 7, 5],
  ];
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    it.each(shapes)(`${dtype} tokens=%i k=%i n=%i`, async (tokens, k, n) => {
      await check(gpu, dtype, tokens, k, n, false);
      await check(gpu, dtype, tokens, k, n, true);
    });
  }

  it.each([
    ['decode', DECODE],
    ['prefill', PREFILL],
  ] as const)('gives the same results with the %s tiling on any token count', async (_, tiling) => {
    for (const tokens of [1, 4, 9]) await check(gpu, 'BF16', tokens, 64, 70, true, tiling);
  });

  // Every variant the tuning can choose: register blocks with scalar or 16-byte loads (matmul.wgsl,
  // matmul_vec4.wgsl) and split-k with and without subgroup sums (matvec.wgsl, the GPU decode default).
  const VARIANTS: [string, MatmulVariant][] = [
    ['vec4 1×4', { TM: 1, TN: 4, WG_X: 16, WG_Y: 1, VEC4: true }],
    ['vec4 8×8', { TM: 8, TN: 8, WG_X: 16, WG_Y: 4, VEC4: true }],
    ['split-k', { TM: 1, TN: 4, WG: 64, SUBGROUPS: false }],
    ['split-k with subgroups', { TM: 2, TN: 2, WG: 64, SUBGROUPS: true }],
  ];
  it.each(VARIANTS)('the %s variant agrees with the reference for every dtype', async (_, tiling) => {
    for (const dtype of ['F32', 'BF16', 'F16'] as const) {
      for (const [tokens, k, n] of [
        [1, 64, 37],
        [3, 128, 130],
        [17, 256, 33],
        [2, 63, 20],
      ] as const) {
        await check(gpu, dtype, tokens, k, n, tokens !== 3, tiling);
      }
    }
    await check(smallBindings, 'BF16', 5, 96, 101, true, tiling);
  });

  it('splits matrices larger than a storage binding into row chunks', async () => {
    for (const dtype of ['F32', 'BF16', 'F16'] as const) {
      const { chunks } = await check(smallBindings, dtype, 5, 100, 77, true);
      expect(chunks).toBeGreaterThan(3);
    }
    // Odd column counts in 16-bit dtypes: chunks must still begin on a whole u32 word.
    const { chunks } = await check(smallBindings, 'BF16', 3, 33, 301, false);
    expect(chunks).toBeGreaterThan(3);
  });
});
