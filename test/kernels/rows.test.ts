import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordAccumulateRows, recordAddVector, recordGatherRows, recordProjectOut } from '../../src/kernels/rows.ts';
import { expectClose } from '../helpers/compare.ts';
import { f32, poisonedBuffer, testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

function pickRows(rng: Random, tokens: number, count: number): number[] {
  return Array.from({ length: count }, () => rng.int(0, tokens - 1));
}

/** Orthonormal rows by Gram–Schmidt in float64, rounded to f32. */
function orthonormal(rng: Random, k: number, dim: number): Float64Array {
  const basis = new Float64Array(k * dim);
  for (let j = 0; j < k; j++) {
    const v = rng.normals(dim);
    for (let i = 0; i < j; i++) {
      const u = basis.subarray(i * dim, (i + 1) * dim);
      const d = v.reduce((s, x, c) => s + x * u[c]!, 0);
      for (let c = 0; c < dim; c++) v[c] = v[c]! - d * u[c]!;
    }
    const norm = Math.hypot(...v);
    for (let c = 0; c < dim; c++) basis[j * dim + c] = Math.fround(v[c]! / norm);
  }
  return basis;
}

describe('row kernels', () => {
  it.each([
    [10, 3, 64],
    [50, 17, 100],
    [7, 7, 5],
  ])('gather_rows copies rows exactly (tokens=%i count=%i dim=%i)', async (tokens, count, dim) => {
    const rng = new Random();
    const x = f32(rng.normals(tokens * dim));
    const rows = pickRows(rng, tokens, count);
    const out = poisonedBuffer(gpu, (count + 2) * dim, 'out');
    const batch = gpu.batch('gather');
    recordGatherRows(batch, { x: gpu.upload(x, 'x'), rows: gpu.upload(Uint32Array.from(rows), 'rows'), count, dim, out, outRow: 1 });
    await batch.submit();
    const got = await gpu.readF32(out);
    expect(Array.from(got.subarray(dim, (count + 1) * dim))).toEqual(rows.flatMap((r) => Array.from(x.subarray(r * dim, (r + 1) * dim))));
    expect(got.subarray(0, dim).every(Number.isNaN)).toBe(true);
    expect(got.subarray((count + 1) * dim).every(Number.isNaN)).toBe(true);
  });

  it.each([
    [10, 3, 64],
    [300, 129, 100],
  ])('accumulate_rows adds row sums into running sums over several steps (tokens=%i count=%i dim=%i)', async (tokens, count, dim) => {
    const rng = new Random();
    const sums = gpu.upload(new Float32Array(3 * dim), 'sums');
    const expected = new Float64Array(3 * dim);
    for (let step = 0; step < 3; step++) {
      const x = f32(rng.normals(tokens * dim));
      const rows = pickRows(rng, tokens, count);
      const layer = step % 2 === 0 ? 1 : 2;
      const batch = gpu.batch('accumulate');
      recordAccumulateRows(batch, { x: gpu.upload(x, 'x'), rows: gpu.upload(Uint32Array.from(rows), 'rows'), count, dim, sums, offset: layer * dim });
      await batch.submit();
      for (const r of rows) for (let c = 0; c < dim; c++) expected[layer * dim + c] = expected[layer * dim + c]! + x[r * dim + c]!;
    }
    const got = await gpu.readF32(sums);
    expectClose(got, expected, 1e-5, 'running sums', rng.seed);
    expect(Array.from(got.subarray(0, dim)).every((v) => v === 0)).toBe(true);
  });

  it.each([
    [1, 64, 1.0],
    [3, 100, 1.0],
    [2, 2048, 0.5],
  ])('project_out removes %i direction(s) (dim=%i, alpha=%f)', async (k, dim, alpha) => {
    const rng = new Random();
    const tokens = 9;
    const x = f32(rng.normals(tokens * dim, 3));
    const basis = orthonormal(rng, k, dim);
    const rows = [0, 4, 8, 5];
    const xBuf = gpu.upload(x, 'x');
    const batch = gpu.batch('project_out');
    recordProjectOut(batch, { x: xBuf, rows: gpu.upload(Uint32Array.from(rows), 'rows'), count: rows.length, dim, basis: gpu.upload(f32(basis), 'basis'), directions: k, alpha });
    await batch.submit();
    const got = await gpu.readF32(xBuf);
    const expected = Float64Array.from(x);
    for (const r of rows) {
      const h = expected.subarray(r * dim, (r + 1) * dim);
      const dots = Array.from({ length: k }, (_, j) => h.reduce((s, v, c) => s + v * basis[j * dim + c]!, 0));
      for (let j = 0; j < k; j++) for (let c = 0; c < dim; c++) h[c] = h[c]! - alpha * dots[j]! * basis[j * dim + c]!;
    }
    expectClose(got, expected, 1e-5, 'ablated rows', rng.seed);
    if (alpha === 1) {
      for (const r of rows) {
        const h = got.subarray(r * dim, (r + 1) * dim);
        const norm = Math.hypot(...h);
        for (let j = 0; j < k; j++) expect(Math.abs(h.reduce((s, v, c) => s + v * basis[j * dim + c]!, 0)) / norm).toBeLessThan(1e-5);
      }
    }
  });

  it('project_out with a threshold changes only rows whose projection exceeds it', async () => {
    const rng = new Random();
    const dim = 48;
    const basis = orthonormal(rng, 1, dim);
    const x = f32(rng.normals(4 * dim));
    // Rows 0, 2 get a strong positive component, rows 1, 3 a negative one.
    for (let r = 0; r < 4; r++) for (let c = 0; c < dim; c++) x[r * dim + c] = x[r * dim + c]! + (r % 2 === 0 ? 5 : -5) * basis[c]!;
    const xBuf = gpu.upload(x, 'x');
    const batch = gpu.batch('project_out conditional');
    recordProjectOut(batch, { x: xBuf, rows: gpu.upload(Uint32Array.from([0, 1, 2, 3]), 'rows'), count: 4, dim, basis: gpu.upload(f32(basis), 'basis'), directions: 1, alpha: 1, threshold: 1 });
    await batch.submit();
    const got = await gpu.readF32(xBuf);
    for (let r = 0; r < 4; r++) {
      const projection = got.subarray(r * dim, (r + 1) * dim).reduce((s, v, c) => s + v * basis[c]!, 0);
      if (r % 2 === 0) expect(Math.abs(projection)).toBeLessThan(1e-4);
      else expect(Array.from(got.subarray(r * dim, (r + 1) * dim))).toEqual(Array.from(x.subarray(r * dim, (r + 1) * dim)));
    }
  });

  it('add_vector adds a scaled vector, optionally only past a threshold', async () => {
    const rng = new Random();
    const dim = 70;
    const x = f32(rng.normals(5 * dim));
    const vector = f32(rng.normals(dim));
    const direction = orthonormal(rng, 1, dim);
    // Row 1 gets projection 0 on the direction (below the threshold), row 3 projection 4 (above it);
    // left random, either could land on the other side of 2 a few times in a hundred.
    for (const [row, projection] of [[1, 0], [3, 4]] as const) {
      let dot = 0;
      for (let c = 0; c < dim; c++) dot += x[row * dim + c]! * direction[c]!;
      for (let c = 0; c < dim; c++) x[row * dim + c] = x[row * dim + c]! + (projection - dot) * direction[c]!;
    }
    for (const conditional of [false, true]) {
      const xBuf = gpu.upload(x, 'x');
      const batch = gpu.batch('add_vector');
      recordAddVector(batch, {
        x: xBuf,
        rows: gpu.upload(Uint32Array.from([1, 3]), 'rows'),
        count: 2,
        dim,
        vector: gpu.upload(vector, 'vector'),
        scale: -2.5,
        condition: conditional ? { direction: gpu.upload(f32(direction), 'direction'), threshold: 2 } : undefined,
      });
      await batch.submit();
      const got = await gpu.readF32(xBuf);
      const expected = Float64Array.from(x);
      for (const r of conditional ? [3] : [1, 3]) for (let c = 0; c < dim; c++) expected[r * dim + c] = expected[r * dim + c]! - 2.5 * vector[c]!;
      expectClose(got, expected, 1e-6, `conditional=${conditional}`, rng.seed);
    }
  });
});
