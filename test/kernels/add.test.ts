import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { workgroups1D } from '../../src/gpu/dispatch.ts';
import { recordAdd } from '../../src/kernels/elementwise.ts';
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
    const kernel = gpu.kernel('add.wgsl', { WG: 64, CHECK_FINITE: false });
    await gpu.batch('add').dispatch(kernel, { params: { n, slot: 0 }, x: xBuf, y: yBuf }, workgroups1D(n, 64), `n=${n}`).submit();
    const out = await gpu.readF32(xBuf);
    expectClose(out, x.map((v, i) => Math.fround(v) + Math.fround(y[i]!)), 1e-6, 'x + y', rng.seed);
    gpu.destroyBuffer(xBuf);
    gpu.destroyBuffer(yBuf);
  });

  it.each([1, 64, 1000, 70_001])('with CHECK_FINITE, adds and flags the first NaN or ±Inf sum, n=%i', async (n) => {
    const rng = new Random();
    const bad = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];
    for (const placement of ['none', 'random', 'last', 'overflow'] as const) {
      const x = f32(rng.normals(n));
      const y = f32(rng.normals(n));
      if (placement === 'random') y[rng.int(0, n - 1)] = bad[rng.int(0, 2)]!;
      if (placement === 'last') x[n - 1] = bad[rng.int(0, 2)]!;
      // Two finite values whose f32 sum overflows to +Inf.
      if (placement === 'overflow') {
        const i = rng.int(0, n - 1);
        x[i] = 3e38;
        y[i] = 3e38;
      }
      const expected = Float64Array.from(x, (v, i) => Math.fround(v + y[i]!));
      const firstBad = expected.findIndex((v) => !Number.isFinite(v));
      // The other slots hold random values that must stay; the checked slot starts "all finite".
      const slot = rng.int(0, 3);
      const before = Uint32Array.from({ length: 4 }, () => rng.int(0, 2 ** 32 - 1));
      before[slot] = 0xffffffff;
      const [xBuf, yBuf, flags] = [gpu.upload(x, 'x'), gpu.upload(y, 'y'), gpu.upload(before, 'flags')];
      const batch = gpu.batch('add and check');
      recordAdd(batch, { x: xBuf, y: yBuf, n, check: { flags, slot } });
      await batch.submit();
      const out = await gpu.readF32(xBuf);
      const finite = (v: ArrayLike<number>) => Array.from(v, (e) => (Number.isFinite(e) ? e : 0));
      expectClose(finite(out), finite(expected), 1e-6, 'x + y', rng.seed);
      const after = await gpu.readU32(flags);
      const context = `n=${n} ${placement} seed=${rng.seed}`;
      expect(after[slot], context).toBe(firstBad < 0 ? 0xffffffff : firstBad);
      for (let s = 0; s < 4; s++) if (s !== slot) expect(after[s], context).toBe(before[s]);
      for (const b of [xBuf, yBuf, flags]) gpu.destroyBuffer(b);
    }
  });

  it('names the kernel and the shapes when WebGPU rejects a dispatch', async () => {
    const small = gpu.createBuffer(16, 'small');
    const kernel = gpu.kernel('add.wgsl', { WG: 64, CHECK_FINITE: false });
    const batch = gpu.batch('bad').dispatch(kernel, { params: { n: 4, slot: 0 }, x: small, y: { buffer: small, offset: 3 } }, [1], 'n=4');
    await expect(batch.submit()).rejects.toThrow(GpuValidationError);
    await expect(
      gpu.batch('bad').dispatch(kernel, { params: { n: 4, slot: 0 }, x: small, y: { buffer: small, offset: 3 } }, [1], 'n=4').submit(),
    ).rejects.toThrow(/add\.wgsl\{WG=64,CHECK_FINITE=false\} \[n=4\]/);
    gpu.destroyBuffer(small);
  });
});
