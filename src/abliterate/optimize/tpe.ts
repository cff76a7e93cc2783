import { mulberry32 } from '../../util/random.ts';
import { hypervolume2d, nondominatedRanks } from './pareto.ts';

/**
 * A multivariate, multi-objective Tree-structured Parzen Estimator, after Optuna's TPESampler with
 * `multivariate=True` (Watanabe et al., "Tree-structured Parzen estimator: understanding its
 * algorithm components"; Ozaki et al., MOTPE): after a few random trials, the finished trials are
 * split into a good and a bad group by non-domination rank, a Parzen estimator (a mixture of one
 * kernel per trial, every parameter of a trial drawn together from its kernel) is fitted to each,
 * and the next trial is the candidate drawn from the good one that maximises l(x) / g(x).
 */

export type ParameterValue = number | string | boolean;

export type Parameter =
  | { kind: 'float'; name: string; low: number; high: number }
  | { kind: 'categorical'; name: string; choices: readonly ParameterValue[] };

export type Params = Record<string, ParameterValue>;

export interface Observation {
  params: Params;
  /** Objective values, all minimised. */
  values: readonly number[];
  /** How far the trial breaks a constraint; 0 or absent when it is feasible. */
  violation?: number;
}

export interface TpeOptions {
  seed: number;
  /** Trials drawn uniformly at random before the estimators take over. Default 10. */
  startupTrials?: number;
  /** Candidates drawn from the good estimator per suggestion. Default 24. */
  candidates?: number;
  /** Size of the good group for n finished trials. Default min(⌈0.1 n⌉, 25), as Optuna. */
  gamma?: (n: number) => number;
  /** Weight of the prior kernel (the whole range) in each mixture. Default 1. */
  priorWeight?: number;
}

/** A random number stream: uniform in [0, 1). */
export type Random = () => number;

export function uniformParams(space: readonly Parameter[], random: Random): Params {
  const params: Params = {};
  for (const p of space) {
    params[p.name] = p.kind === 'float' ? p.low + (p.high - p.low) * random() : p.choices[Math.min(p.choices.length - 1, Math.floor(random() * p.choices.length))]!;
  }
  return params;
}

/** A 32-bit seed from a seed and a trial number, so that a suggestion depends only on both. */
export function mixSeed(seed: number, index: number): number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  return h >>> 0;
}

export class TpeSampler {
  readonly startupTrials: number;
  private readonly candidates: number;
  private readonly gamma: (n: number) => number;
  private readonly priorWeight: number;

  constructor(
    readonly space: readonly Parameter[],
    private readonly options: TpeOptions,
  ) {
    for (const p of space) {
      if (p.kind === 'float' && !(Number.isFinite(p.low) && Number.isFinite(p.high) && p.low <= p.high)) throw new RangeError(`parameter ${p.name}: bad range [${p.low}, ${p.high}]`);
      if (p.kind === 'categorical' && p.choices.length === 0) throw new RangeError(`parameter ${p.name} has no choices`);
    }
    this.startupTrials = options.startupTrials ?? 10;
    this.candidates = options.candidates ?? 24;
    this.gamma = options.gamma ?? ((n) => Math.min(Math.ceil(0.1 * n), 25));
    this.priorWeight = options.priorWeight ?? 1;
  }

  /**
   * The parameters of trial number `index` given the finished trials. The result depends only on
   * the seed, the index and the history, so a resumed search suggests what the first would have.
   */
  suggest(history: readonly Observation[], index = history.length): Params {
    const random = mulberry32(mixSeed(this.options.seed, index));
    const usable = history.filter((o) => o.values.every(Number.isFinite) && this.space.every((p) => p.name in o.params));
    if (usable.length < this.startupTrials || usable.length < 2) return uniformParams(this.space, random);
    const { below, above, belowWeights } = this.split(usable);
    const good = new ParzenEstimator(this.space, below.map((o) => o.params), belowWeights, this.priorWeight);
    const bad = new ParzenEstimator(this.space, above.map((o) => o.params), above.map(() => 1), this.priorWeight);
    let best: Params | undefined;
    let bestScore = -Infinity;
    for (let i = 0; i < this.candidates; i++) {
      const x = good.sample(random);
      const score = good.logDensity(x) - bad.logDensity(x);
      if (score > bestScore || best === undefined) {
        best = x;
        bestScore = score;
      }
    }
    return best!;
  }

  /**
   * The good group: feasible trials by non-domination rank (the last rank that does not fit whole is
   * thinned by greedy hypervolume contribution), then infeasible ones by least violation. Each good
   * trial's kernel is weighted by its hypervolume contribution, as MOTPE does.
   */
  split(history: readonly Observation[]): { below: Observation[]; above: Observation[]; belowWeights: number[] } {
    const nBelow = Math.max(1, Math.min(history.length - 1, this.gamma(history.length)));
    const feasible = history.filter((o) => !(o.violation! > 0));
    const infeasible = history.filter((o) => o.violation! > 0).sort((a, b) => a.violation! - b.violation!);
    const below: Observation[] = [];
    const ranks = nondominatedRanks(feasible.map((o) => o.values));
    const maxRank = Math.max(-1, ...ranks);
    for (let rank = 0; rank <= maxRank && below.length < nBelow; rank++) {
      const front = feasible.filter((_, i) => ranks[i] === rank);
      if (below.length + front.length <= nBelow) below.push(...front);
      else below.push(...selectByHypervolume(front, nBelow - below.length));
    }
    for (const o of infeasible) if (below.length < nBelow) below.push(o);
    const chosen = new Set(below);
    const above = history.filter((o) => !chosen.has(o));
    return { below, above, belowWeights: hypervolumeWeights(below.map((o) => o.values)) };
  }
}

/** Greedily the `k` points that add the most hypervolume (two objectives; otherwise the first k). */
function selectByHypervolume(front: readonly Observation[], k: number): Observation[] {
  if (front[0]!.values.length !== 2) return front.slice(0, k);
  const reference = referencePoint(front.map((o) => o.values));
  const chosen: Observation[] = [];
  const left = [...front];
  while (chosen.length < k) {
    const base = hypervolume2d(chosen.map((o) => o.values), reference);
    let bestIndex = 0;
    let bestGain = -Infinity;
    for (const [i, o] of left.entries()) {
      const gain = hypervolume2d([...chosen.map((c) => c.values), o.values], reference) - base;
      if (gain > bestGain) {
        bestGain = gain;
        bestIndex = i;
      }
    }
    chosen.push(left.splice(bestIndex, 1)[0]!);
  }
  return chosen;
}

function referencePoint(points: readonly (readonly number[])[]): [number, number] {
  const worst = [0, 1].map((d) => Math.max(...points.map((p) => p[d]!)));
  const best = [0, 1].map((d) => Math.min(...points.map((p) => p[d]!)));
  return [0, 1].map((d) => worst[d]! + 0.1 * (worst[d]! - best[d]!) + 1e-9 * Math.max(1, Math.abs(worst[d]!))) as [number, number];
}

/** Each point's share of the hypervolume it alone dominates (leave-one-out), floored so no kernel vanishes. */
function hypervolumeWeights(points: readonly (readonly number[])[]): number[] {
  if (points.length <= 1 || points[0]!.length !== 2) return points.map(() => 1);
  const reference = referencePoint(points);
  const total = hypervolume2d(points, reference);
  const contributions = points.map((_, i) => total - hypervolume2d(points.filter((__, j) => j !== i), reference));
  const max = Math.max(...contributions);
  if (!(max > 0)) return points.map(() => 1);
  return contributions.map((c) => Math.max(c / max, 1e-2));
}

const SIGMA0 = 0.2;

/**
 * A mixture of one kernel per observation plus a prior kernel over the whole space. A float's kernel
 * is a normal truncated to the range (bandwidth by Scott's rule for the dimension, clipped as
 * Optuna's "magic clip"); a categorical's puts most of its mass on the observed choice.
 */
class ParzenEstimator {
  private readonly weights: number[];
  /** Per kernel, per parameter: [mu, sigma] or choice probabilities. */
  private readonly kernels: (readonly [number, number] | number[])[][];

  constructor(
    private readonly space: readonly Parameter[],
    observations: readonly Params[],
    observationWeights: readonly number[],
    priorWeight: number,
  ) {
    const n = observations.length;
    const kernelCount = n + 1;
    const raw = [...observationWeights, priorWeight];
    const sum = raw.reduce((s, w) => s + w, 0);
    this.weights = raw.map((w) => w / sum);
    this.kernels = Array.from({ length: kernelCount }, () => []);
    for (const p of space) {
      if (p.kind === 'float') {
        const range = p.high - p.low;
        const sigma = SIGMA0 * Math.max(n, 1) ** (-1 / (space.length + 4)) * range;
        const minSigma = range / Math.min(100, 1 + kernelCount);
        const clipped = Math.min(Math.max(sigma, minSigma), range);
        observations.forEach((o, k) => this.kernels[k]!.push([o[p.name] as number, clipped] as const));
        this.kernels[n]!.push([(p.low + p.high) / 2, range] as const);
      } else {
        const m = p.choices.length;
        observations.forEach((o, k) => {
          const probs = new Array<number>(m).fill(priorWeight / kernelCount);
          const index = p.choices.indexOf(o[p.name]!);
          if (index >= 0) probs[index]! += 1;
          const total = probs.reduce((s, x) => s + x, 0);
          this.kernels[k]!.push(probs.map((x) => x / total));
        });
        this.kernels[n]!.push(new Array<number>(m).fill(1 / m));
      }
    }
  }

  sample(random: Random): Params {
    let u = random();
    let k = 0;
    while (k < this.weights.length - 1 && u >= this.weights[k]!) u -= this.weights[k++]!;
    const params: Params = {};
    for (const [d, p] of this.space.entries()) {
      const kernel = this.kernels[k]![d]!;
      if (p.kind === 'float') {
        const [mu, sigma] = kernel as readonly [number, number];
        params[p.name] = sampleTruncatedNormal(mu, sigma, p.low, p.high, random);
      } else {
        const probs = kernel as number[];
        let v = random();
        let c = 0;
        while (c < probs.length - 1 && v >= probs[c]!) v -= probs[c++]!;
        params[p.name] = p.choices[c]!;
      }
    }
    return params;
  }

  logDensity(params: Params): number {
    const terms = this.kernels.map((kernel, k) => {
      let log = Math.log(this.weights[k]!);
      for (const [d, p] of this.space.entries()) {
        if (p.kind === 'float') {
          const [mu, sigma] = kernel[d] as readonly [number, number];
          log += logTruncatedNormal(params[p.name] as number, mu, sigma, p.low, p.high);
        } else {
          log += Math.log((kernel[d] as number[])[p.choices.indexOf(params[p.name]!)] ?? 0);
        }
      }
      return log;
    });
    const max = Math.max(...terms);
    if (max === -Infinity) return -Infinity;
    return max + Math.log(terms.reduce((s, t) => s + Math.exp(t - max), 0));
  }
}

function normalCdf(z: number): number {
  return 0.5 * erfc(-z / Math.SQRT2);
}

/** Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7). */
function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? r : 2 - r;
}

function logTruncatedNormal(x: number, mu: number, sigma: number, low: number, high: number): number {
  if (x < low || x > high) return -Infinity;
  if (sigma === 0) return x === mu ? 0 : -Infinity;
  const z = (x - mu) / sigma;
  const mass = normalCdf((high - mu) / sigma) - normalCdf((low - mu) / sigma);
  return -0.5 * z * z - Math.log(sigma * Math.sqrt(2 * Math.PI)) - Math.log(Math.max(mass, 1e-300));
}

/** A normal truncated to [low, high], by inverting its CDF (rejection would stall far in a tail). */
function sampleTruncatedNormal(mu: number, sigma: number, low: number, high: number, random: Random): number {
  if (sigma === 0 || low === high) return Math.min(Math.max(mu, low), high);
  const a = normalCdf((low - mu) / sigma);
  const b = normalCdf((high - mu) / sigma);
  if (!(b - a > 1e-12)) return mu < low ? low : high;
  const u = a + (b - a) * random();
  const x = mu + sigma * inverseNormalCdf(u);
  return Math.min(Math.max(x, low), high);
}

/** Acklam's rational approximation of the standard normal quantile, refined by one Newton step. */
function inverseNormalCdf(p: number): number {
  const q = Math.min(Math.max(p, 1e-15), 1 - 1e-15);
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  let x: number;
  if (q < 0.02425) {
    const r = Math.sqrt(-2 * Math.log(q));
    x = (((((c[0]! * r + c[1]!) * r + c[2]!) * r + c[3]!) * r + c[4]!) * r + c[5]!) / ((((d[0]! * r + d[1]!) * r + d[2]!) * r + d[3]!) * r + 1);
  } else if (q > 1 - 0.02425) {
    const r = Math.sqrt(-2 * Math.log(1 - q));
    x = -(((((c[0]! * r + c[1]!) * r + c[2]!) * r + c[3]!) * r + c[4]!) * r + c[5]!) / ((((d[0]! * r + d[1]!) * r + d[2]!) * r + d[3]!) * r + 1);
  } else {
    const r = q - 0.5;
    const s = r * r;
    x = ((((((a[0]! * s + a[1]!) * s + a[2]!) * s + a[3]!) * s + a[4]!) * s + a[5]!) * r) / (((((b[0]! * s + b[1]!) * s + b[2]!) * s + b[3]!) * s + b[4]!) * s + 1);
  }
  const e = normalCdf(x) - q;
  return x - e * Math.sqrt(2 * Math.PI) * Math.exp((x * x) / 2);
}
