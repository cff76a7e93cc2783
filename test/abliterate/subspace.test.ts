/**
 * The refusal subspace: the Gram kernel against float64, the spectrum tools on constructed inputs
 * with known answers, and `measure` with `topK` on a random model against a float64 SVD of the same
 * paired difference matrix, built from the independent CPU reference (test/reference/llama.ts).
 */
import { Matrix, SingularValueDecomposition } from 'ml-matrix';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordGramDifference } from '../../src/kernels/gram.ts';
import { measure } from '../../src/abliterate/measure.ts';
import { DIRECTIONS_VERSION, readDirections, writeDirections } from '../../src/abliterate/directionsFile.ts';
import { MemorySource } from '../../src/io/byteSource.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { MemorySink, writeSafetensors } from '../../src/io/safetensorsWriter.ts';
import { effectiveRank, grassmannDistance, principalAngles, silhouetteScore, subspaceOverlap, topSingularVectors } from '../../src/abliterate/subspace.ts';
import { expectClose } from '../helpers/compare.ts';
import { f32, poisonedBuffer, testGpu } from '../helpers/gpu.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { Random } from '../helpers/random.ts';
import { ReferenceLlama } from '../reference/llama.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

const dot64 = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};

/** An orthogonal [n, n] matrix (rows) from the QR of a Gaussian matrix, by Gram–Schmidt in float64. */
function randomRotation(rng: Random, n: number): Float64Array[] {
  const rows: Float64Array[] = [];
  while (rows.length < n) {
    const v = rng.normals(n);
    for (const r of rows) {
      const d = dot64(v, r);
      for (let i = 0; i < n; i++) v[i] = v[i]! - d * r[i]!;
    }
    const len = Math.sqrt(dot64(v, v));
    if (len > 1e-6) rows.push(v.map((x) => x / len));
  }
  return rows;
}

/** x rotated: Σ_i x_i · R[i]. */
function rotate(x: readonly number[], rotation: readonly Float64Array[]): Float64Array {
  const out = new Float64Array(rotation[0]!.length);
  x.forEach((c, i) => {
    for (let j = 0; j < out.length; j++) out[j] = out[j]! + c * rotation[i]![j]!;
  });
  return out;
}

describe('gram_difference kernel', () => {
  it.each([
    [37, 50],
    [5, 16],
    [64, 3],
  ])('(A − B)ᵀ(A − B) of %i × %i matrices matches float64', async (count, dim) => {
    const rng = new Random();
    const a = f32(rng.normals(count * dim));
    const b = f32(rng.normals(count * dim, 0.5));
    const expected = new Float64Array(dim * dim);
    for (let k = 0; k < count; k++) {
      for (let i = 0; i < dim; i++) {
        const di = a[k * dim + i]! - b[k * dim + i]!;
        for (let j = 0; j < dim; j++) expected[i * dim + j] = expected[i * dim + j]! + di * (a[k * dim + j]! - b[k * dim + j]!);
      }
    }
    const bufA = gpu.upload(a, 'a');
    const bufB = gpu.upload(b, 'b');
    const gram = poisonedBuffer(gpu, dim * dim, 'gram');
    try {
      const batch = gpu.batch('gram');
      recordGramDifference(batch, { a: { buffer: bufA }, b: { buffer: bufB }, count, dim, gram: { buffer: gram } });
      await batch.submit();
      expectClose(await gpu.readF32(gram), expected, 1e-5, `gram ${count}×${dim}`, rng.seed);
    } finally {
      for (const x of [bufA, bufB, gram]) gpu.destroyBuffer(x);
    }
  });

  it('refuses buffers too small for the shape', () => {
    const small = gpu.createBuffer(16, 'small');
    try {
      expect(() => recordGramDifference(gpu.batch('gram'), { a: { buffer: small }, b: { buffer: small }, count: 2, dim: 4, gram: { buffer: small } })).toThrow(/holds 4 f32 values, needs 8/);
    } finally {
      gpu.destroyBuffer(small);
    }
  });
});

describe('spectrum and subspace tools', () => {
  it('effective rank of spectra with known values', () => {
    expect(effectiveRank([1, 1, 1, 1])).toBeCloseTo(4, 12);
    expect(effectiveRank([5, 0, 0])).toBeCloseTo(1, 12);
    // Shares ½, ¼, ¼: entropy 1.5 ln 2, effective rank 2^1.5.
    expect(effectiveRank([2, 1, 1])).toBeCloseTo(2 ** 1.5, 12);
    expect(effectiveRank([3, 3, 0, 0, 0])).toBeCloseTo(2, 12);
    expect(() => effectiveRank([1, -1])).toThrow(RangeError);
  });

  it('principal angles, Grassmann distance and overlap of rotated subspaces with known angles', () => {
    const rng = new Random();
    const n = 9;
    const rotation = randomRotation(rng, n);
    const [alpha, beta] = [0.3 + rng.next(), 0.1 + 0.1 * rng.next()];
    const e = (i: number, scale = 1) => Array.from({ length: n }, (_, j) => (j === i ? scale : 0));
    // span(e0, e1) against span(cos α e0 + sin α e2, cos β e1 + sin β e3), in a random orientation;
    // the first given as a non-orthogonal basis of the same span.
    const first = [rotate(e(0, 2), rotation), rotate([1, 1, 0, 0, 0, 0, 0, 0, 0], rotation)];
    const second = [rotate([Math.cos(alpha), 0, Math.sin(alpha), 0, 0, 0, 0, 0, 0], rotation), rotate([0, Math.cos(beta), 0, Math.sin(beta), 0, 0, 0, 0, 0], rotation)];
    const angles = principalAngles(first, second);
    expect(angles).toHaveLength(2);
    expect(angles[0]).toBeCloseTo(beta, 9);
    expect(angles[1]).toBeCloseTo(alpha, 9);
    expect(grassmannDistance(angles)).toBeCloseTo(Math.hypot(alpha, beta), 9);
    expect(subspaceOverlap(angles)).toBeCloseTo((Math.cos(alpha) ** 2 + Math.cos(beta) ** 2) / 2, 9);
    // A line inside a plane: one angle, zero; orthogonal subspaces: π/2 each.
    expect(principalAngles([rotate(e(1), rotation)], first)[0]).toBeCloseTo(0, 7);
    expect(principalAngles([rotate(e(4), rotation), rotate(e(5), rotation)], first)).toEqual([expect.closeTo(Math.PI / 2, 9), expect.closeTo(Math.PI / 2, 9)]);
    expect(subspaceOverlap(principalAngles([rotate(e(4), rotation)], first))).toBeCloseTo(0, 12);
    expect(() => principalAngles([rotate(e(0), rotation), rotate(e(0, 3), rotation)], first)).toThrow(/span/);
  });

  it('silhouette of two classes with a known value', () => {
    // On a line: {0, 1} and {10, 11}. Point 0: a = 1, b = 10.5; point 1: a = 1, b = 9.5 (and mirrored).
    const expected = (9.5 / 10.5 + 8.5 / 9.5) / 2;
    expect(silhouetteScore([[0], [1]], [[10], [11]])).toBeCloseTo(expected, 12);
    // Interleaved classes score below zero.
    expect(silhouetteScore([[0], [2]], [[1], [3]])).toBeLessThan(0);
  });

  it('top singular vectors of a Gram matrix with a constructed spectrum', () => {
    const rng = new Random();
    const n = 7;
    const rotation = randomRotation(rng, n);
    const sigmas = [5, 3, 2, 1, 0.5, 0, 0];
    // D = Σ σ_i u_i v_iᵀ with v_i the rows of the rotation: G = Σ σ_i² v_i v_iᵀ.
    const gram = new Float64Array(n * n);
    sigmas.forEach((s, c) => {
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) gram[i * n + j] = gram[i * n + j]! + s * s * rotation[c]![i]! * rotation[c]![j]!;
    });
    const sub = topSingularVectors(gram, n, 3, rotation[0]);
    expect(sub.singularValues).toEqual([expect.closeTo(5, 9), expect.closeTo(3, 9), expect.closeTo(2, 9)]);
    const total = sigmas.reduce((s, x) => s + x * x, 0);
    expect(sub.explainedVariance).toEqual([25, 9, 4].map((x) => expect.closeTo(x / total, 9)));
    expect(sub.effectiveRank).toBeCloseTo(effectiveRank(sigmas.map((s) => s * s)), 9);
    sub.basis.forEach((v, c) => expect(Math.abs(dot64(v, rotation[c]!))).toBeCloseTo(1, 6));
    // Oriented along the given vector.
    expect(dot64(sub.basis[0]!, rotation[0]!)).toBeGreaterThan(0);
  });
});

/** [point][prompt] → the last-token residual (float64) at the embedding and after every layer. */
function referenceResiduals(reference: ReferenceLlama, hidden: number, points: number, prompts: readonly (readonly number[])[]): Float64Array[][] {
  const out: Float64Array[][] = Array.from({ length: points }, () => []);
  for (const prompt of prompts) {
    const run = reference.forward(prompt);
    const T = prompt.length;
    out[0]!.push(run.embed.slice((T - 1) * hidden, T * hidden));
    run.layers.forEach((layer, l) => out[l + 1]!.push(layer.residPost.slice((T - 1) * hidden, T * hidden)));
  }
  return out;
}

describe('measure --mode subspace', () => {
  it('spectrum, effective rank, singular vectors and silhouette at every point match a float64 SVD of the paired differences', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed + 2);
      const V = random.config.vocabSize;
      const H = random.config.hiddenSize;
      const points = random.config.numLayers + 1;
      const prompt = (lo: number, hi: number) => Array.from({ length: rng.int(2, 10) }, () => rng.int(lo, hi));
      // 9 harmful, 8 harmless: 8 pairs; the ninth harmful prompt is in the means but not in a pair.
      const harmful = Array.from({ length: 9 }, () => prompt(0, V / 2 - 1));
      const harmless = Array.from({ length: 8 }, () => prompt(V / 2, V - 1));
      const k = 3;
      const m = await measure(model, harmful, harmless, { batchSize: 4, topK: k });
      const reference = new ReferenceLlama(random.config, random.weights);
      const rH = referenceResiduals(reference, H, points, harmful);
      const rB = referenceResiduals(reference, H, points, harmless);
      expect(m.subspaces).toHaveLength(points);
      for (let p = 0; p < points; p++) {
        const got = m.subspaces![p]!;
        expect(got.point).toBe(p);
        expect(got.pairs).toBe(8);
        const D = new Matrix(rH[p]!.slice(0, 8).map((h, i) => Array.from(h, (x, j) => x - rB[p]![i]![j]!)));
        const svd = new SingularValueDecomposition(D, { autoTranspose: true });
        const sigma = svd.diagonal;
        const variances = sigma.map((s) => s * s);
        const total = variances.reduce((s, x) => s + x, 0);
        const what = `point ${p}`;
        expectClose(got.singularValues, sigma.slice(0, k), 1e-4, `${what}: singular values`, random.seed);
        expectClose(got.explainedVariance, variances.slice(0, k).map((x) => x / total), 1e-4, `${what}: explained variance`, random.seed);
        expect(Math.abs(got.effectiveRank - effectiveRank(variances)) / effectiveRank(variances), `${what}: effective rank`).toBeLessThan(1e-3);
        // Each vector against the reference's, up to sign, within a Davis–Kahan bound set by the eigengap.
        const refBasis: Float64Array[] = [];
        for (let c = 0; c < k; c++) {
          const ref = Float64Array.from({ length: H }, (_, i) => svd.rightSingularVectors.get(i, c));
          refBasis.push(ref);
          const gap = Math.min(c > 0 ? variances[c - 1]! - variances[c]! : Infinity, variances[c]! - (variances[c + 1] ?? 0));
          const sine = Math.sqrt(Math.max(0, 1 - dot64(got.basis[c]!, ref) ** 2));
          expect(sine, `${what}: singular vector ${c}`).toBeLessThan((1e-5 * variances[0]!) / gap + 1e-4);
          // Oriented along the difference of means.
          const meanDifference = m.harmfulMeans[p]!.map((x, i) => x - m.harmlessMeans[p]![i]!);
          expect(dot64(got.basis[c]!, meanDifference), `${what}: orientation of vector ${c}`).toBeGreaterThanOrEqual(0);
        }
        // Silhouette of the residuals' coordinates in the reference subspace (axis signs do not change distances).
        const coordinates = (rows: Float64Array[]) => rows.map((h) => refBasis.map((b) => dot64(h, b)));
        const silhouette = silhouetteScore(coordinates(rH[p]!), coordinates(rB[p]!));
        expect(Math.abs(got.silhouette - silhouette), `${what}: silhouette`).toBeLessThan(1e-3);
      }
      // Without topK, no subspace is measured.
      expect((await measure(model, harmful, harmless, { batchSize: 4 })).subspaces).toBeUndefined();
    } finally {
      model.dispose();
    }
  });
});

describe('directions file with a subspace', () => {
  /** The same file with some metadata replaced (or removed, for undefined). */
  async function withMetadata(bytes: Uint8Array, change: Record<string, string | undefined>): Promise<Uint8Array> {
    const file = await SafetensorsFile.open(new MemorySource(bytes, 'in.safetensors'));
    const metadata = Object.fromEntries(Object.entries({ ...file.metadata, ...change }).filter((e): e is [string, string] => e[1] !== undefined));
    const sink = new MemorySink('out');
    await writeSafetensors(sink, [...file.tensors.values()].map((info) => ({ name: info.name, dtype: info.dtype, shape: info.shape, bytes: () => file.read(info.name) })), metadata);
    return new Uint8Array(await sink.bytes());
  }

  it('version 3 round-trips the subspace and its spectra; mean-only files stay version 2; newer versions and bad spectra are refused', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed + 3);
      const V = random.config.vocabSize;
      const prompt = (lo: number, hi: number) => Array.from({ length: rng.int(2, 8) }, () => rng.int(lo, hi));
      const harmful = Array.from({ length: 5 }, () => prompt(0, V / 2 - 1));
      const harmless = Array.from({ length: 5 }, () => prompt(V / 2, V - 1));
      const m = await measure(model, harmful, harmless, { topK: 2 });
      const bytesOf = async (measurement: typeof m) => {
        const sink = new MemorySink('directions');
        await writeDirections(sink, measurement, 1);
        return new Uint8Array(await sink.bytes());
      };
      const bytes = await bytesOf(m);
      const read = await readDirections(new MemorySource(bytes, 'sub.safetensors'));
      // A subspace of last-token residuals is version 3 (version 4 only adds the instruction position).
      expect(read.version).toBe(3);
      expect(DIRECTIONS_VERSION).toBe(4);
      expect(read.subspaces).toHaveLength(m.points);
      read.subspaces!.forEach((s, p) => expect(s).toEqual(m.subspaces![p]));
      const { subspaces: _, ...meanOnly } = m;
      const meanRead = await readDirections(new MemorySource(await bytesOf(meanOnly), 'mean.safetensors'));
      expect(meanRead.version).toBe(2);
      expect(meanRead.subspaces).toBeUndefined();
      const read2 = (changed: Uint8Array) => readDirections(new MemorySource(changed, 'dir.safetensors'));
      await expect(read2(await withMetadata(bytes, { version: '5' }))).rejects.toThrow('dir.safetensors: written by a newer abliterate (directions format 5); this version reads formats up to 4: update abliterate');
      const spectra = JSON.parse((await SafetensorsFile.open(new MemorySource(bytes, 'x'))).metadata.subspace!) as Record<string, unknown>[];
      await expect(read2(await withMetadata(bytes, { subspace: undefined }))).rejects.toThrow(/metadata "subspace" is not JSON/);
      await expect(read2(await withMetadata(bytes, { subspace: JSON.stringify(spectra.slice(1)) }))).rejects.toThrow(new RegExp(`not a list of ${m.points} spectra`));
      const broken = spectra.map((s, p) => (p === 2 ? { ...s, effectiveRank: null } : s));
      await expect(read2(await withMetadata(bytes, { subspace: JSON.stringify(broken) }))).rejects.toThrow(/the spectrum of point 2 has no finite "effectiveRank"/);
      const short = spectra.map((s, p) => (p === 1 ? { ...s, explainedVariance: [0.5] } : s));
      await expect(read2(await withMetadata(bytes, { subspace: JSON.stringify(short) }))).rejects.toThrow(/the spectrum of point 1 has no list of 2 finite "explainedVariance"/);
    } finally {
      model.dispose();
    }
  });
});
