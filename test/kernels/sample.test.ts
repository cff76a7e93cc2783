import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { recordSample } from '../../src/kernels/sample.ts';
import { Random } from '../helpers/random.ts';
import { f32, testGpu } from '../helpers/gpu.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

interface Settings {
  temperature: number;
  topK: number;
  topP: number;
}

/** The kept set of the float64 reference, in token index order, with its normalised CDF. */
interface Kept {
  tokens: number[];
  cdf: number[];
  /** How close the top-p mass criterion came to flipping (relative to the top-k mass). */
  topPMargin: number;
}

/**
 * Float64 reference: order by (logit desc, index asc); top-k keeps the first k; top-p then keeps the
 * shortest prefix whose mass reaches topP of the top-k mass; the kept set is renormalised.
 */
function keptSet(logits: ArrayLike<number>, { temperature, topK, topP }: Settings): Kept {
  const n = logits.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i]!);
  const p = (i: number) => Math.exp((logits[i]! - max) / temperature);
  let length = topK > 0 && topK < n ? topK : n;
  let massK = 0;
  for (let j = 0; j < length; j++) massK += p(order[j]!);
  let topPMargin = Infinity;
  if (topP < 1) {
    let cum = 0;
    for (let j = 0; j < length; j++) {
      const before = cum;
      cum += p(order[j]!);
      if (cum >= topP * massK) {
        topPMargin = Math.min(Math.abs(cum - topP * massK), Math.abs(topP * massK - before)) / massK;
        length = j + 1;
        break;
      }
    }
  }
  const tokens = order.slice(0, length).sort((a, b) => a - b);
  const mass = tokens.reduce((s, i) => s + p(i), 0);
  const cdf: number[] = [];
  let cum = 0;
  for (const i of tokens) {
    cum += p(i);
    cdf.push(cum / mass);
  }
  return { tokens, cdf, topPMargin };
}

/** The reference choice for u, and the distance of u to the nearest CDF boundary. */
function choose(kept: Kept, u: number): { token: number; margin: number } {
  let j = kept.cdf.findIndex((c) => c > u);
  if (j < 0) j = kept.cdf.length - 1;
  const lower = j === 0 ? 0 : kept.cdf[j - 1]!;
  return { token: kept.tokens[j]!, margin: Math.min(u - lower, kept.cdf[j]! - u) };
}

/** Runs the kernel on rows of logits (one per u) and returns the sampled tokens. */
async function sampleRows(rows: Float32Array[], us: number[], settings: Settings, workgroupSize?: number): Promise<Uint32Array> {
  const cols = rows[0]!.length;
  const logits = new Float32Array(rows.length * cols);
  rows.forEach((row, r) => logits.set(row, r * cols));
  const logitsBuf = gpu.upload(logits, 'logits');
  const random = gpu.upload(f32(us), 'uniforms');
  const out = gpu.createBuffer(rows.length * 4, 'tokens');
  gpu.write(out, new Uint32Array(rows.length).fill(0xdeadbeef));
  const batch = gpu.batch('sample');
  recordSample(batch, { logits: logitsBuf, random, out, rows: rows.length, cols, ...settings, workgroupSize });
  await batch.submit();
  const tokens = await gpu.readU32(out);
  for (const b of [logitsBuf, random, out]) gpu.destroyBuffer(b);
  return tokens;
}

/** f32 uniforms in [0, 1): Math.fround can round a double just below 1 up to 1. */
function uniform(rng: Random): number {
  return Math.min(Math.fround(rng.next()), 0.99999994);
}

// A sampled token may differ from the reference only where u lies this close to a boundary of the
// normalised CDF: the kernel's masses are f32 sums (over up to 128k tokens, in a different order).
const BOUNDARY = 1e-5;

type LogitKind = 'normal' | 'ties';

function makeLogits(rng: Random, cols: number, kind: LogitKind): Float32Array {
  // 'ties': values on a grid of 0.25, so many tokens share a logit, including at the cut-offs.
  return kind === 'normal' ? f32(rng.normals(cols, 3)) : Float32Array.from(rng.normals(cols, 1.5), (v) => Math.round(v * 4) / 4);
}

describe('sample', () => {
  const cases: [string, number, LogitKind, Settings, number][] = [
    ['full distribution', 10, 'normal', { temperature: 1, topK: 0, topP: 1 }, 3],
    ['a single token', 1, 'normal', { temperature: 1, topK: 3, topP: 0.5 }, 1],
    ['top-k', 100, 'normal', { temperature: 0.7, topK: 5, topP: 1 }, 3],
    ['top-p', 1000, 'normal', { temperature: 1.3, topK: 0, topP: 0.9 }, 3],
    ['top-k then top-p', 1000, 'normal', { temperature: 1, topK: 50, topP: 0.8 }, 3],
    ['top-k with ties at the cut', 5000, 'ties', { temperature: 1, topK: 37, topP: 1 }, 3],
    ['top-p with ties at the cut', 5000, 'ties', { temperature: 1, topK: 0, topP: 0.6 }, 3],
    ['top-k and top-p with ties', 5000, 'ties', { temperature: 0.8, topK: 100, topP: 0.95 }, 3],
    ['top-k = 1 (greedy, lowest index on ties)', 3000, 'ties', { temperature: 1, topK: 1, topP: 1 }, 3],
    ['top-k ≥ vocabulary (off)', 50, 'normal', { temperature: 2, topK: 50, topP: 1 }, 2],
    ['tiny top-p', 2000, 'normal', { temperature: 1, topK: 0, topP: 0.001 }, 2],
    ['Llama 3 vocabulary, top-k and top-p', 128_256, 'normal', { temperature: 0.8, topK: 40, topP: 0.95 }, 1],
    ['Llama 3 vocabulary, top-p only', 128_256, 'normal', { temperature: 1, topK: 0, topP: 0.5 }, 1],
  ];

  // Each case runs with 32 invocations per row (the software adapters' default) or 128 (the GPUs').
  const runs = cases.map(([name, ...rest], i) => [`${name}, workgroup ${i % 2 === 0 ? 32 : 128}`, ...rest, i % 2 === 0 ? 32 : 128] as const);
  it.each(runs)('%s: vocabulary %i (%s logits)', async (name, cols, kind, settings, logitRows, workgroupSize) => {
    const rng = new Random();
    const rows: Float32Array[] = [];
    const us: number[] = [];
    const sets: Kept[] = [];
    const setOf: number[] = [];
    for (let r = 0; r < logitRows; r++) {
      // A top-p cut within 1e-4 of flipping is moved (f32 masses could flip it): re-draw the logits.
      let logits = makeLogits(rng, cols, kind);
      let kept = keptSet(logits, settings);
      while (kept.topPMargin < 1e-4) {
        logits = makeLogits(rng, cols, kind);
        kept = keptSet(logits, settings);
      }
      sets.push(kept);
      // The middle of every kept token's CDF interval (at most 60 of them), the ends, random points.
      const picks = new Set<number>([0, 0.99999994]);
      const step = Math.max(1, Math.floor(kept.tokens.length / 60));
      for (let j = 0; j < kept.tokens.length; j += step) picks.add(Math.fround(((j === 0 ? 0 : kept.cdf[j - 1]!) + kept.cdf[j]!) / 2));
      const random = cols > 10_000 ? 8 : 40;
      for (let i = 0; i < random; i++) picks.add(uniform(rng));
      for (const u of picks) {
        rows.push(logits);
        us.push(u);
        setOf.push(r);
      }
    }
    const tokens = await sampleRows(rows, us, settings, workgroupSize);
    let checked = 0;
    for (let i = 0; i < rows.length; i++) {
      const kept = sets[setOf[i]!]!;
      const { token, margin } = choose(kept, us[i]!);
      if (tokens[i] !== token) {
        expect(margin, `row ${i}: u=${us[i]} gave ${tokens[i]}, reference ${token}; seed ${rng.seed}`).toBeLessThan(BOUNDARY);
        expect(kept.tokens.includes(tokens[i]!), `row ${i}: token ${tokens[i]} outside the kept set; seed ${rng.seed}`).toBe(true);
      } else checked++;
    }
    console.log(`sample ${name}: ${checked}/${rows.length} draws equal to the reference, kept sets of ${sets.map((s) => s.tokens.length).join(', ')} tokens`);
    expect(checked).toBeGreaterThan(rows.length * 0.9);
  });

  it('draws with the reference probabilities (chi-square over 4000 draws)', async () => {
    const rng = new Random();
    for (const [settings, workgroupSize] of [
      [{ temperature: 0.9, topK: 0, topP: 1 }, 32],
      [{ temperature: 1.2, topK: 8, topP: 0.9 }, 128],
    ] as const) {
      const cols = 12;
      const logits = f32(rng.normals(cols, 1.5));
      const kept = keptSet(logits, settings);
      const draws = 4000;
      const us = Array.from({ length: draws }, () => uniform(rng));
      const tokens = await sampleRows(Array.from({ length: draws }, () => logits), us, settings, workgroupSize);
      const counts = new Map<number, number>();
      for (const t of tokens) {
        expect(kept.tokens.includes(t), `token ${t} outside the kept set; seed ${rng.seed}`).toBe(true);
        counts.set(t, (counts.get(t) ?? 0) + 1);
      }
      let chi2 = 0;
      kept.tokens.forEach((t, j) => {
        const expected = draws * (kept.cdf[j]! - (j === 0 ? 0 : kept.cdf[j - 1]!));
        chi2 += ((counts.get(t) ?? 0) - expected) ** 2 / expected;
      });
      const df = kept.tokens.length - 1;
      // Wilson–Hilferty: the chi-square quantile that a correct sampler exceeds with probability 1e-6.
      const z = 4.753;
      const limit = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
      console.log(`sample chi-square ${chi2.toFixed(1)} (df ${df}, limit ${limit.toFixed(1)}) with k=${settings.topK} p=${settings.topP}`);
      expect(chi2, `seed ${rng.seed}`).toBeLessThan(limit);
    }
  });

  it('rejects a non-positive temperature and a top-p outside (0, 1]', () => {
    const buffer = gpu.createBuffer(16, 'x');
    const batch = gpu.batch('bad');
    const args = { logits: buffer, random: buffer, out: buffer, rows: 1, cols: 4, topK: 0 };
    expect(() => recordSample(batch, { ...args, temperature: 0, topP: 1 })).toThrow(/temperature/);
    expect(() => recordSample(batch, { ...args, temperature: 1, topP: 0 })).toThrow(/topP/);
    expect(() => recordSample(batch, { ...args, temperature: 1, topP: 1.5 })).toThrow(/topP/);
    gpu.destroyBuffer(buffer);
  });
});
