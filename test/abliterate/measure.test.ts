/**
 * measure, probe and layer selection on random-weight models, against float64 figures computed here
 * from the independent CPU reference (test/reference/llama.ts): the last-token residual of every
 * prompt at the embedding and after every layer.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { measure, type PointScore, type Measurement } from '../../src/abliterate/measure.ts';
import { probe } from '../../src/abliterate/probe.ts';
import { rankPoints, selectPoint, type SelectionMetric } from '../../src/abliterate/select.ts';
import { auroc } from '../../src/abliterate/stats.ts';
import { expectClose } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { Random } from '../helpers/random.ts';
import { ReferenceLlama } from '../reference/llama.ts';
import type { RandomModel } from '../reference/randomModel.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

// ---------------------------------------------------------------------------------------------
// Float64 figures, written from the definitions (ARCHITECTURE.md, "Abliteration on the GPU"), not from src.

/** [point][prompt] → the last-token residual (float64) at the embedding and after every layer. */
function referenceResiduals(random: RandomModel, prompts: readonly (readonly number[])[]): Float64Array[][] {
  const reference = new ReferenceLlama(random.config, random.weights);
  const H = random.config.hiddenSize;
  const points = random.config.numLayers + 1;
  const out: Float64Array[][] = Array.from({ length: points }, () => []);
  for (const prompt of prompts) {
    const run = reference.forward(prompt);
    const T = prompt.length;
    out[0]!.push(run.embed.slice((T - 1) * H, T * H));
    run.layers.forEach((layer, l) => out[l + 1]!.push(layer.residPost.slice((T - 1) * H, T * H)));
  }
  return out;
}

function meanRow(rows: readonly Float64Array[]): Float64Array {
  const out = new Float64Array(rows[0]!.length);
  for (const r of rows) for (let i = 0; i < out.length; i++) out[i]! += r[i]!;
  return out.map((v) => v / rows.length);
}

const dot64 = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};
const norm64 = (a: ArrayLike<number>): number => Math.sqrt(dot64(a, a));

/** Cohen's d with the pooled (n − 1) standard deviation, computed in two passes. */
function cohensD(a: readonly number[], b: readonly number[]): number {
  const m = (x: readonly number[]) => x.reduce((s, v) => s + v, 0) / x.length;
  const ss = (x: readonly number[]) => {
    const mx = m(x);
    return x.reduce((s, v) => s + (v - mx) ** 2, 0);
  };
  return (m(a) - m(b)) / Math.sqrt((ss(a) + ss(b)) / (a.length + b.length - 2));
}

interface ReferenceMeasurement {
  harmfulMeans: Float64Array[];
  harmlessMeans: Float64Array[];
  directions: Float64Array[];
  gap: number[];
  relativeGap: number[];
  cosine: number[];
  effectSize: number[];
  harmfulProjections: number[][];
  harmlessProjections: number[][];
}

function referenceMeasurement(random: RandomModel, harmful: number[][], harmless: number[][]): ReferenceMeasurement {
  const rH = referenceResiduals(random, harmful);
  const rB = referenceResiduals(random, harmless);
  const out: ReferenceMeasurement = {
    harmfulMeans: [],
    harmlessMeans: [],
    directions: [],
    gap: [],
    relativeGap: [],
    cosine: [],
    effectSize: [],
    harmfulProjections: [],
    harmlessProjections: [],
  };
  for (let p = 0; p < rH.length; p++) {
    const mH = meanRow(rH[p]!);
    const mB = meanRow(rB[p]!);
    const d = mH.map((v, i) => v - mB[i]!);
    const n = norm64(d);
    const unit = d.map((v) => v / n);
    const pH = rH[p]!.map((h) => dot64(h, unit));
    const pB = rB[p]!.map((h) => dot64(h, unit));
    const gap = dot64(mH, unit) - dot64(mB, unit);
    out.harmfulMeans.push(mH);
    out.harmlessMeans.push(mB);
    out.directions.push(unit);
    out.gap.push(gap);
    out.relativeGap.push(gap / ((norm64(mH) + norm64(mB)) / 2));
    out.cosine.push(dot64(mH, mB) / (norm64(mH) * norm64(mB)));
    out.effectSize.push(cohensD(pH, pB));
    out.harmfulProjections.push(pH);
    out.harmlessProjections.push(pB);
  }
  return out;
}

/** Prompts of random lengths; tokens drawn from [lo, hi]. */
function randomPrompts(rng: Random, count: number, minLength: number, maxLength: number, lo: number, hi: number): number[][] {
  return Array.from({ length: count }, () => Array.from({ length: rng.int(minLength, maxLength) }, () => rng.int(lo, hi)));
}

const concat = (arrays: readonly ArrayLike<number>[]): number[] => arrays.flatMap((a) => Array.from(a));

/** Pairwise AUROC: P(score of a positive > score of a negative), ties counting half. */
function pairwiseAuroc(scores: ArrayLike<number>, labels: readonly boolean[]): number {
  let wins = 0;
  let pairs = 0;
  for (let i = 0; i < labels.length; i++) {
    if (!labels[i]) continue;
    for (let j = 0; j < labels.length; j++) {
      if (labels[j]) continue;
      pairs++;
      wins += scores[i]! > scores[j]! ? 1 : scores[i]! === scores[j]! ? 0.5 : 0;
    }
  }
  return wins / pairs;
}

function unitVector(rng: Random, n: number): Float32Array {
  const v = rng.normals(n);
  const length = norm64(v);
  return Float32Array.from(v, (x) => x / length);
}

// ---------------------------------------------------------------------------------------------

describe('measure', () => {
  it.each([
    ['F32', 1e-5],
    ['BF16', 1e-5],
  ] as const)('means, direction, gap, cosine, effect size and projections at every point match float64 (%s weights)', async (dtype, bound) => {
    const { random, model } = await loadRandomModel(gpu, { dtype });
    try {
      const rng = new Random(random.seed + 1);
      const V = random.config.vocabSize;
      // The two kinds draw from different halves of the vocabulary, so their means really differ.
      const harmful = randomPrompts(rng, 7, 2, 13, 0, V / 2 - 1);
      const harmless = randomPrompts(rng, 6, 1, 11, V / 2, V - 1);
      const progress: [number, number][] = [];
      // 3 prompts per step: 3 steps for the harmful set, 2 for the harmless one.
      const m = await measure(model, harmful, harmless, { batchSize: 3, onProgress: (done, total) => progress.push([done, total]) });
      const ref = referenceMeasurement(random, harmful, harmless);
      const points = random.config.numLayers + 1;
      const seed = random.seed;

      expect(m.points).toBe(points);
      expect(m.hiddenSize).toBe(random.config.hiddenSize);
      expect([m.harmfulCount, m.harmlessCount]).toEqual([7, 6]);
      expect(progress).toEqual([
        [3, 13],
        [6, 13],
        [7, 13],
        [10, 13],
        [13, 13],
      ]);
      for (const key of ['harmfulMeans', 'harmlessMeans', 'directions'] as const) expect(m[key]).toHaveLength(points);
      expect(m.scores.map((s) => s.point)).toEqual(Array.from({ length: points }, (_, i) => i));

      const errors: Record<string, number> = {};
      const track = (what: string, e: number) => (errors[what] = Math.max(errors[what] ?? 0, e));
      for (let p = 0; p < points; p++) {
        const at = `${dtype} point ${p}`;
        track('means', expectClose(m.harmfulMeans[p]!, ref.harmfulMeans[p]!, bound, `${at} harmful mean`, seed));
        track('means', expectClose(m.harmlessMeans[p]!, ref.harmlessMeans[p]!, bound, `${at} harmless mean`, seed));
        track('direction', expectClose(m.directions[p]!, ref.directions[p]!, bound, `${at} direction`, seed));
        expect(Math.abs(norm64(m.directions[p]!) - 1), `${at} |d̂|`).toBeLessThan(1e-6);
        track('projections', expectClose(m.projections.harmful[p]!, ref.harmfulProjections[p]!, bound, `${at} harmful projections`, seed));
        track('projections', expectClose(m.projections.harmless[p]!, ref.harmlessProjections[p]!, bound, `${at} harmless projections`, seed));
      }
      const scores = (key: keyof PointScore) => m.scores.map((s) => s[key]);
      track('gap', expectClose(scores('gap'), ref.gap, bound, `${dtype} gap`, seed));
      track('relativeGap', expectClose(scores('relativeGap'), ref.relativeGap, bound, `${dtype} relative gap`, seed));
      track('cosine', expectClose(scores('cosine'), ref.cosine, bound, `${dtype} cosine`, seed));
      track('effectSize', expectClose(scores('effectSize'), ref.effectSize, bound, `${dtype} effect size`, seed));
      // The gap is ‖μ_H − μ_B‖ (the figures are not degenerate).
      for (let p = 0; p < points; p++) expect(ref.gap[p]!).toBeCloseTo(norm64(ref.harmfulMeans[p]!.map((v, i) => v - ref.harmlessMeans[p]![i]!)), 10);
      expect(Math.min(...ref.effectSize)).toBeGreaterThan(0);
      console.log(`measure ${dtype} (seed ${seed}): max relative errors ${Object.entries(errors).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', ')}`);
    } finally {
      model.dispose();
    }
  });

  it('the batch size does not change the result beyond rounding, and fewer than 2 prompts of a kind is refused', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed + 2);
      const V = random.config.vocabSize;
      const harmful = randomPrompts(rng, 5, 1, 9, 0, V - 1);
      const harmless = randomPrompts(rng, 4, 1, 9, 0, V - 1);
      const one = await measure(model, harmful, harmless, { batchSize: 1 });
      const all = await measure(model, harmful, harmless, { batchSize: 32 });
      for (let p = 0; p < one.points; p++) {
        expectClose(one.directions[p]!, all.directions[p]!, 1e-5, `direction at ${p}`, random.seed);
        expectClose(one.projections.harmful[p]!, all.projections.harmful[p]!, 1e-5, `harmful projections at ${p}`, random.seed);
      }
      await expect(measure(model, harmful.slice(0, 1), harmless)).rejects.toThrow(/at least 2 prompts/);
      await expect(measure(model, harmful, [])).rejects.toThrow(/at least 2 prompts/);
    } finally {
      model.dispose();
    }
  });
});

describe('probe', () => {
  it('projects every prompt at every point on its direction (float64 check), and its AUROC counts ties as half', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed + 3);
      const V = random.config.vocabSize;
      const H = random.config.hiddenSize;
      const points = random.config.numLayers + 1;
      const prompts = randomPrompts(rng, 7, 1, 12, 0, V - 1);
      // The same prompt labelled both ways: equal projections (when the GPU rounds both alike), a tie
      // between a positive and a negative; the stats.auroc test below covers ties for certain.
      prompts.push([...prompts[0]!]);
      const labels = [true, false, true, true, false, false, true, false];
      const directions = Array.from({ length: points }, () => unitVector(rng, H));
      const result = await probe(model, prompts, directions, labels, { batchSize: 3 });
      const residuals = referenceResiduals(random, prompts);
      let worst = 0;
      expect(result.projections).toHaveLength(points);
      for (let p = 0; p < points; p++) {
        const expected = residuals[p]!.map((h) => dot64(h, directions[p]!));
        worst = Math.max(worst, expectClose(result.projections[p]!, expected, 1e-5, `projections at point ${p}`, random.seed));
        expect(result.auroc![p], `AUROC at point ${p}`).toBeCloseTo(pairwiseAuroc(result.projections[p]!, labels), 12);
      }
      console.log(`probe (seed ${random.seed}): max relative error of the projections ${worst.toExponential(2)}`);

      // One direction serves every point; no labels, no AUROC.
      const single = await probe(model, prompts.slice(0, 4), [directions[1]!]);
      expect(single.auroc).toBeUndefined();
      for (let p = 0; p < points; p++) {
        expectClose(single.projections[p]!, residuals[p]!.slice(0, 4).map((h) => dot64(h, directions[1]!)), 1e-5, `single direction at ${p}`, random.seed);
      }

      await expect(probe(model, prompts, directions.slice(0, 2))).rejects.toThrow(/one per point/);
      await expect(probe(model, prompts, directions, labels.slice(1))).rejects.toThrow(/labels/);
    } finally {
      model.dispose();
    }
  });

  it('the measured direction separates its own prompts: probing them again gives the measured projections', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed + 4);
      const V = random.config.vocabSize;
      const harmful = randomPrompts(rng, 4, 2, 8, 0, V / 2 - 1);
      const harmless = randomPrompts(rng, 4, 2, 8, V / 2, V - 1);
      const m = await measure(model, harmful, harmless, { batchSize: 2 });
      const labels = [...harmful.map(() => true), ...harmless.map(() => false)];
      const result = await probe(model, [...harmful, ...harmless], m.directions, labels, { batchSize: 5 });
      for (let p = 0; p < m.points; p++) {
        const measured = concat([m.projections.harmful[p]!, m.projections.harmless[p]!]);
        expectClose(result.projections[p]!, measured, 1e-6, `projections at ${p}`, random.seed);
        expect(result.auroc![p]).toBeCloseTo(pairwiseAuroc(measured, labels), 12);
      }
    } finally {
      model.dispose();
    }
  });

  it('stats.auroc equals the pairwise count on scores with many ties', () => {
    const rng = new Random();
    for (let trial = 0; trial < 50; trial++) {
      const n = rng.int(2, 30);
      const scores = Array.from({ length: n }, () => rng.int(0, 4));
      const labels = Array.from({ length: n }, () => rng.next() < 0.5);
      labels[0] = true;
      labels[1] = false;
      expect(auroc(scores, labels), `seed ${rng.seed}, trial ${trial}`).toBeCloseTo(pairwiseAuroc(scores, labels), 12);
    }
    expect(auroc([1, 1, 1, 1], [true, false, true, false])).toBe(0.5);
    expect(auroc([0, 1, 2], [false, true, true])).toBe(1);
    expect(auroc([0, 1, 2], [true, true, false])).toBe(0);
    expect(auroc([0, 1], [true, true])).toBeNaN();
  });
});

describe('select', () => {
  const METRICS: [SelectionMetric, keyof PointScore][] = [
    ['effect_size', 'effectSize'],
    ['gap', 'gap'],
    ['relative_gap', 'relativeGap'],
  ];

  /** A measurement of `points` points (point 0 the embedding) with random scores. */
  function fakeMeasurement(rng: Random, points: number): Measurement {
    const scores: PointScore[] = Array.from({ length: points }, (_, point) => ({
      point,
      gap: rng.next() * 10,
      relativeGap: rng.next(),
      cosine: rng.next(),
      effectSize: rng.next() * 5,
    }));
    return { points, scores } as unknown as Measurement;
  }

  it('chooses the best score inside the depth window, for each metric', () => {
    const rng = new Random();
    for (let trial = 0; trial < 20; trial++) {
      const m = fakeMeasurement(rng, 11);
      // Outside the window [0.2, 0.8] of depth 10 (layers 2..8): the best of every metric, so the
      // window must be what keeps them out.
      for (const [, key] of METRICS) {
        m.scores[1]![key] = 100;
        m.scores[9]![key] = 100;
        m.scores[10]![key] = 100;
        m.scores[0]![key] = 200;
      }
      for (const [metric, key] of METRICS) {
        const inside = m.scores.filter((s) => s.point >= 2 && s.point <= 8);
        const best = inside.reduce((a, b) => (b[key] > a[key] ? b : a));
        expect(selectPoint(m, { metric }).point, `${metric}, seed ${rng.seed}`).toBe(best.point);
        const ranked = rankPoints(m, { metric });
        expect(ranked.map((s) => s.point).sort((a, b) => a - b)).toEqual([2, 3, 4, 5, 6, 7, 8]);
        for (let i = 1; i < ranked.length; i++) expect(ranked[i - 1]![key]).toBeGreaterThanOrEqual(ranked[i]![key]);
        // A window given explicitly: [0.5, 1] is layers 5..10, where layer 9 (or 10) wins.
        expect([9, 10]).toContain(selectPoint(m, { metric, window: [0.5, 1] }).point);
      }
      // The default metric is the effect size.
      expect(selectPoint(m)).toBe(selectPoint(m, { metric: 'effect_size' }));
    }
  });

  it('never chooses the embedding; a window with no decoder layer falls back to all of them; no point after a layer at all is an error', () => {
    const rng = new Random();
    const m = fakeMeasurement(rng, 6);
    m.scores[0]!.effectSize = 1000;
    m.scores[3]!.effectSize = 50;
    expect(selectPoint(m, { window: [0, 1] }).point).toBe(3);
    expect(rankPoints(m, { window: [0, 1] }).map((s) => s.point)).not.toContain(0);
    // [0, 0.05] of depth 5 holds only the embedding.
    expect(selectPoint(m, { window: [0, 0.05] }).point).toBe(3);
    expect(() => selectPoint({ points: 1, scores: [{ point: 0, gap: 1, relativeGap: 1, cosine: 0, effectSize: 1 }] } as unknown as Measurement)).toThrow(/no point/);
  });

  it('on a real measurement, the chosen layer has the largest effect size in the window', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32', numLayers: 5 });
    try {
      const rng = new Random(random.seed + 5);
      const V = random.config.vocabSize;
      const m = await measure(model, randomPrompts(rng, 3, 2, 6, 0, V / 2 - 1), randomPrompts(rng, 3, 2, 6, V / 2, V - 1));
      // Depth 5, window [0.2, 0.8]: layers 1..4.
      const inside = m.scores.slice(1, 5).map((s) => s.effectSize);
      expect(selectPoint(m).effectSize).toBe(Math.max(...inside));
      expect(selectPoint(m).point).toBe(1 + inside.indexOf(Math.max(...inside)));
    } finally {
      model.dispose();
    }
  });
});
