import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { ALL_FINITE, recordCheckFinite } from '../../src/kernels/checkFinite.ts';
import { Random } from '../helpers/random.ts';
import { testGpu } from '../helpers/gpu.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

const SLOTS = 5;

/** Index of the first NaN or ±Inf, or ALL_FINITE: the CPU reference. */
function firstNonFinite(values: Float32Array): number {
  const i = values.findIndex((v) => !Number.isFinite(v));
  return i < 0 ? ALL_FINITE : i;
}

/** Runs the kernel on `values` into `slot` of a flag buffer whose other slots hold random values. */
async function check(values: Float32Array, slot: number, initial: number, rng: Random): Promise<{ flags: Uint32Array; before: Uint32Array }> {
  const x = gpu.upload(values, 'x');
  const before = Uint32Array.from({ length: SLOTS }, () => rng.int(0, 2 ** 32 - 1));
  before[slot] = initial;
  const flags = gpu.upload(before, 'flags');
  const batch = gpu.batch('check finite');
  recordCheckFinite(batch, { x, n: values.length, flags, slot });
  await batch.submit();
  const out = await gpu.readU32(flags);
  gpu.destroyBuffer(x);
  gpu.destroyBuffer(flags);
  return { flags: out, before };
}

describe('check_finite', () => {
  const bad = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];

  it.each([1, 255, 256, 1000, 70_001, 300_000])('finds the first NaN or ±Inf among n=%i values, the other flags untouched', async (n) => {
    const rng = new Random();
    for (const placement of ['none', 'random', 'last', 'several'] as const) {
      const values = Float32Array.from(rng.normals(n, 100));
      if (placement === 'random') values[rng.int(0, n - 1)] = bad[rng.int(0, 2)]!;
      if (placement === 'last') values[n - 1] = bad[rng.int(0, 2)]!;
      if (placement === 'several') for (let k = 0; k < 5; k++) values[rng.int(0, n - 1)] = bad[rng.int(0, 2)]!;
      const slot = rng.int(0, SLOTS - 1);
      const { flags, before } = await check(values, slot, ALL_FINITE, rng);
      const context = `n=${n} ${placement} seed=${rng.seed}`;
      expect(flags[slot], context).toBe(firstNonFinite(values));
      for (let s = 0; s < SLOTS; s++) if (s !== slot) expect(flags[s], `${context}: slot ${s}`).toBe(before[s]);
    }
  });

  it('takes the extremes of the finite range as finite', async () => {
    const rng = new Random();
    const values = Float32Array.from([3.4028234663852886e38, -3.4028234663852886e38, 1e-45, -1e-45, 0, -0, 1.1754943508222875e-38]);
    const { flags } = await check(values, 2, ALL_FINITE, rng);
    expect(flags[2]).toBe(ALL_FINITE);
  });

  it('keeps an earlier find: the flag is the minimum over every check into it', async () => {
    const rng = new Random();
    const values = Float32Array.from(rng.normals(5000));
    values[4000] = Number.NaN;
    expect((await check(values, 1, 17, rng)).flags[1]).toBe(17);
    expect((await check(values, 1, 4500, rng)).flags[1]).toBe(4000);
  });
});
