import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { workgroups1D } from '../../src/gpu/dispatch.ts';
import { GpuValidationError } from '../../src/gpu/errors.ts';
import { Random } from '../helpers/random.ts';
import { expectClose } from '../helpers/compare.ts';
import { f32, testGpu } from '../helpers/gpu.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

describe('add', () => {
  it.each([1, 63, 64, 1000, 70_001])('adds in place, n=%i', async (n) => {
    const rng = new Random();
    const x = rng.normals(n);
    const y = rng.normals(n);
    const xBuf = gpu.upload(f32(x), 'x');
    const yBuf = gpu.upload(f32(y), 'y');
    const kernel = gpu.kernel('add.wgsl', { WG: 64 });
    await gpu.batch('add').dispatch(kernel, { params: { n }, x: xBuf, y: yBuf }, workgroups1D(n, 64), `n=${n}`).submit();
    const out = await gpu.readF32(xBuf);
    expectClose(out, x.map((v, i) => Math.fround(v) + Math.fround(y[i]!)), 1e-6, 'x + y', rng.seed);
    gpu.destroyBuffer(xBuf);
    gpu.destroyBuffer(yBuf);
  });

  it('names the kernel and the shapes when WebGPU rejects a dispatch', async () => {
    const small = gpu.createBuffer(16, 'small');
    const kernel = gpu.kernel('add.wgsl', { WG: 64 });
    const batch = gpu.batch('bad').dispatch(kernel, { params: { n: 4 }, x: small, y: { buffer: small, offset: 3 } }, [1], 'n=4');
    await expect(batch.submit()).rejects.toThrow(GpuValidationError);
    await expect(
      gpu.batch('bad').dispatch(kernel, { params: { n: 4 }, x: small, y: { buffer: small, offset: 3 } }, [1], 'n=4').submit(),
    ).rejects.toThrow(/add\.wgsl\{WG=64\} \[n=4\]/);
    gpu.destroyBuffer(small);
  });
});
