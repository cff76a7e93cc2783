/**
 * Direction hygiene in measure (winsorized residuals, sparsified directions, directions orthogonal
 * to the harmless mean and to a false-refusal direction) against float64 figures computed here from
 * the reference model's last-token residuals, written from the definitions, not from src.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { measure } from '../../src/abliterate/measure.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import type { LlamaModel } from '../../src/model/model.ts';
import { expectClose } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { Random } from '../helpers/random.ts';
import { ReferenceLlama } from '../reference/llama.ts';
import type { RandomModel } from '../reference/randomModel.ts';

let gpu: Gpu;
let random: RandomModel;
let model: LlamaModel;
let harmful: number[][];
let harmless: number[][];
let borderline: number[][];
/** [point][prompt] float64 last-token residuals. */
let rH: Float64Array[][];
let rB: Float64Array[][];
let rX: Float64Array[][];

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};
const unit = (a: ArrayLike<number>) => {
  const n = Math.sqrt(dot(a, a));
  return Float64Array.from(a as ArrayLike<number>, (x) => x / n);
};
const mean = (rows: readonly Float64Array[]) => {
  const out = new Float64Array(rows[0]!.length);
  for (const r of rows) r.forEach((v, i) => (out[i]! += v));
  return out.map((v) => v / rows.length);
};
const minus = (a: Float64Array, b: ArrayLike<number>) => a.map((v, i) => v - b[i]!);

function residuals(prompts: number[][]): Float64Array[][] {
  const reference = new ReferenceLlama(random.config, random.weights);
  const H = random.config.hiddenSize;
  const out: Float64Array[][] = Array.from({ length: random.config.numLayers + 1 }, () => []);
  for (const prompt of prompts) {
    const run = reference.forward(prompt);
    const t = prompt.length - 1;
    [run.embed, ...run.layers.map((l) => l.residPost)].forEach((r, p) => out[p]!.push(r.slice(t * H, (t + 1) * H)));
  }
  return out;
}

beforeAll(async () => {
  gpu = await testGpu();
  ({ random, model } = await loadRandomModel(gpu, { dtype: 'F32' }));
  const rng = new Random(random.seed + 3);
  const V = random.config.vocabSize;
  // Three kinds from three parts of the vocabulary, so that every pair of means differs.
  const prompts = (count: number, lo: number, hi: number) => Array.from({ length: count }, () => Array.from({ length: rng.int(2, 9) }, () => rng.int(lo, hi)));
  harmful = prompts(6, 0, V / 3 - 1);
  harmless = prompts(5, V / 3, (2 * V) / 3 - 1);
  borderline = prompts(4, (2 * V) / 3, V - 1);
  rH = residuals(harmful);
  rB = residuals(harmless);
  rX = residuals(borderline);
});
afterAll(() => {
  model?.dispose();
  gpu?.dispose();
});

describe('measure with direction hygiene', () => {
  it("--clip-quantile: the means are those of residuals winsorized at their own quantiles; the directions and projections follow", async () => {
    const q = 0.1;
    // Linear interpolation between order statistics, as NumPy's default quantile.
    const quantile = (sorted: number[], p: number) => {
      const at = p * (sorted.length - 1);
      const i = Math.floor(at);
      return sorted[i]! + (at - i) * ((sorted[Math.min(i + 1, sorted.length - 1)] ?? 0) - sorted[i]!);
    };
    const clip = (row: Float64Array) => {
      const sorted = [...row].sort((a, b) => a - b);
      const [low, high] = [quantile(sorted, q), quantile(sorted, 1 - q)];
      return row.map((v) => Math.min(high, Math.max(low, v)));
    };
    const m = await measure(model, harmful, harmless, { clipQuantile: q, batchSize: 4 });
    const plain = await measure(model, harmful, harmless, { batchSize: 4 });
    expect(m.hygiene).toEqual({ clipQuantile: q });
    for (let p = 1; p < m.points; p++) {
      const cH = rH[p]!.map(clip);
      const cB = rB[p]!.map(clip);
      expectClose(m.harmfulMeans[p]!, mean(cH), 1e-5, `clipped harmful mean, point ${p}`, random.seed);
      expectClose(m.harmlessMeans[p]!, mean(cB), 1e-5, `clipped harmless mean, point ${p}`, random.seed);
      const d = unit(minus(mean(cH), mean(cB)));
      expectClose(m.directions[p]!, d, 1e-4, `clipped direction, point ${p}`, random.seed);
      expectClose(m.projections.harmful[p]!, cH.map((h) => dot(h, d)), 1e-4, `projections of the clipped residuals, point ${p}`, random.seed);
      // Clipping changed something: the test would notice it doing nothing.
      const change = Math.sqrt(dot(minus(Float64Array.from(m.harmfulMeans[p]!), plain.harmfulMeans[p]!), minus(Float64Array.from(m.harmfulMeans[p]!), plain.harmfulMeans[p]!)));
      expect(change, `point ${p}`).toBeGreaterThan(1e-3 * Math.sqrt(dot(plain.harmfulMeans[p]!, plain.harmfulMeans[p]!)));
    }
    await expect(measure(model, harmful, harmless, { clipQuantile: 0.5 })).rejects.toThrow(/clipping quantile must be in \(0, 0.5\), got 0.5/);
  });

  it('--sparsify: each direction keeps its k largest |components| (a count or a fraction), renormalised', async () => {
    for (const [keep, count] of [
      [5, 5],
      [0.25, 16],
    ] as const) {
      const m = await measure(model, harmful, harmless, { sparsify: keep });
      for (let p = 1; p < m.points; p++) {
        const d = minus(mean(rH[p]!), mean(rB[p]!));
        const kept = [...d.keys()].sort((a, b) => Math.abs(d[b]!) - Math.abs(d[a]!)).slice(0, count);
        const expected = unit(d.map((v, i) => (kept.includes(i) ? v : 0)));
        expect(m.directions[p]!.filter((x) => x !== 0), `sparsify ${keep}, point ${p}`).toHaveLength(count);
        expectClose(m.directions[p]!, expected, 1e-4, `sparsify ${keep}, point ${p}`, random.seed);
        // The scores are those of the direction kept: the gap is the mean difference along it.
        expect(m.scores[p]!.gap).toBeCloseTo(dot(d, expected), 3);
      }
    }
    await expect(measure(model, harmful, harmless, { sparsify: 2.5 })).rejects.toThrow(/sparsify keeps a count/);
  });

  it('--projected and --borderline: the direction orthogonal to the harmless mean and to the false-refusal direction (borderline mean − harmless mean)', async () => {
    const m = await measure(model, harmful, harmless, { projected: true, borderline, batchSize: 3 });
    const onlyBorderline = await measure(model, harmful, harmless, { borderline });
    expect(m.hygiene).toEqual({ projected: true, borderlinePrompts: 4 });
    for (let p = 1; p < m.points; p++) {
      const mB = mean(rB[p]!);
      const d = minus(mean(rH[p]!), mB);
      const f = unit(minus(mean(rX[p]!), mB));
      expectClose(m.falseRefusal!.last![p]!, f, 1e-4, `false-refusal direction, point ${p}`, random.seed);
      // Against f alone: d less its component along f.
      const alone = unit(minus(d, f.map((x) => x * dot(d, f))));
      expectClose(onlyBorderline.directions[p]!, alone, 1e-4, `orthogonal to the false-refusal direction, point ${p}`, random.seed);
      // Against both: d less its projection on span{μ_B, f} (solved from the 2×2 normal equations).
      const [a11, a12, a22] = [dot(mB, mB), dot(mB, f), dot(f, f)];
      const [b1, b2] = [dot(d, mB), dot(d, f)];
      const det = a11 * a22 - a12 * a12;
      const [c1, c2] = [(b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det];
      const both = unit(d.map((v, i) => v - c1 * mB[i]! - c2 * f[i]!));
      expectClose(m.directions[p]!, both, 1e-3, `orthogonal to the harmless mean and the false-refusal direction, point ${p}`, random.seed);
      expect(Math.abs(dot(m.directions[p]!, unit(mB)))).toBeLessThan(1e-4);
      expect(Math.abs(dot(m.directions[p]!, f))).toBeLessThan(1e-4);
      // The raw direction was not orthogonal to either: the constraints did something.
      expect(Math.abs(dot(unit(d), f))).toBeGreaterThan(1e-2);
    }
    await expect(measure(model, harmful, harmless, { borderline: borderline.slice(0, 1) })).rejects.toThrow(/at least 2 borderline prompts/);
  });
});
