import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../../../src/util/random.ts';
import { dominates, hypervolume2d, nondominatedRanks, paretoFront } from '../../../src/abliterate/optimize/pareto.ts';
import { TpeSampler, uniformParams, type Observation, type Parameter, type Params } from '../../../src/abliterate/optimize/tpe.ts';

interface Problem {
  name: string;
  space: Parameter[];
  objectives: (p: Params) => [number, number];
  reference: [number, number];
}

/** ZDT1 in four dimensions: the front is f2 = 1 − √f1, reached when every x after the first is 0. */
const zdt1: Problem = {
  name: 'ZDT1',
  space: ['x0', 'x1', 'x2', 'x3'].map((name) => ({ kind: 'float', name, low: 0, high: 1 })),
  objectives: (p) => {
    const x = [p.x0, p.x1, p.x2, p.x3] as number[];
    const g = 1 + (9 * (x[1]! + x[2]! + x[3]!)) / 3;
    const f1 = x[0]!;
    return [f1, g * (1 - Math.sqrt(f1 / g))];
  },
  reference: [1.1, 11],
};

/** Two objectives in tension along `t`, both made worse by `u`, `v` and by the wrong one of three modes. */
const mixed: Problem = {
  name: 'mixed with a categorical',
  space: [
    { kind: 'float', name: 't', low: 0, high: 1 },
    { kind: 'float', name: 'u', low: -2, high: 2 },
    { kind: 'float', name: 'v', low: 0, high: 3 },
    { kind: 'categorical', name: 'mode', choices: ['a', 'b', 'c'] },
  ],
  objectives: (p) => {
    const penalty = (p.u as number) ** 2 + ((p.v as number) - 1) ** 2 + (p.mode === 'b' ? 0 : 1.5);
    return [(p.t as number) + penalty, (1 - (p.t as number)) ** 2 + penalty];
  },
  reference: [12, 12],
};

/** A count and a continuous loss, like refusals against KL: the count is a step function of a strength. */
const counted: Problem = {
  name: 'counted refusals against a divergence',
  space: [
    { kind: 'float', name: 'strength', low: 0, high: 2 },
    { kind: 'float', name: 'position', low: 0, high: 5 },
    { kind: 'categorical', name: 'flag', choices: [false, true] },
  ],
  objectives: (p) => {
    const s = p.strength as number;
    const off = Math.abs((p.position as number) - 3.3);
    const effective = s * Math.exp(-off * off) * (p.flag ? 1 : 0.7);
    const refusals = Math.round(40 * Math.max(0, 1 - effective));
    return [refusals, 0.05 * s * s + 0.1 * off + (p.flag ? 0 : 0.1)];
  },
  reference: [41, 1],
};

function search(problem: Problem, budget: number, seed: number, sampler: 'tpe' | 'random'): Observation[] {
  const tpe = new TpeSampler(problem.space, { seed, startupTrials: 10 });
  const random = mulberry32(seed);
  const history: Observation[] = [];
  for (let i = 0; i < budget; i++) {
    const params = sampler === 'tpe' ? tpe.suggest(history) : uniformParams(problem.space, random);
    history.push({ params, values: problem.objectives(params) });
  }
  return history;
}

describe('Pareto helpers', () => {
  it('ranks points by non-domination and measures the dominated area', () => {
    const points = [
      [1, 5],
      [2, 2],
      [5, 1],
      [3, 3],
      [6, 6],
      [2, 2],
    ];
    expect(dominates([2, 2], [3, 3])).toBe(true);
    expect(dominates([2, 2], [2, 2])).toBe(false);
    expect(nondominatedRanks(points)).toEqual([0, 0, 0, 1, 2, 0]);
    expect(paretoFront(points)).toEqual([0, 1, 2, 5]);
    // Staircase under (7, 7): (7−1)(7−5) + (7−2)(5−2) + (7−5)(2−1) = 12 + 15 + 2.
    expect(hypervolume2d(points, [7, 7])).toBeCloseTo(29, 12);
    expect(hypervolume2d([[8, 0]], [7, 7])).toBe(0);
  });
});

describe('multivariate TPE', () => {
  it('gives the same suggestions for the same seed and history, and others for another seed', () => {
    const a = search(zdt1, 30, 7, 'tpe');
    const b = search(zdt1, 30, 7, 'tpe');
    const c = search(zdt1, 30, 8, 'tpe');
    expect(b.map((o) => o.params)).toEqual(a.map((o) => o.params));
    expect(c.map((o) => o.params)).not.toEqual(a.map((o) => o.params));
    // A suggestion depends on the trial number and the history only: resuming suggests the same.
    const sampler = new TpeSampler(zdt1.space, { seed: 7, startupTrials: 10 });
    expect(sampler.suggest(a.slice(0, 20))).toEqual(a[20]!.params);
  });

  it('keeps every suggestion inside the space', () => {
    for (const o of search(mixed, 60, 3, 'tpe')) {
      for (const p of mixed.space) {
        const value = o.params[p.name]!;
        if (p.kind === 'float') {
          expect(value as number).toBeGreaterThanOrEqual(p.low);
          expect(value as number).toBeLessThanOrEqual(p.high);
        } else expect(p.choices).toContain(value);
      }
    }
  });

  it.each([zdt1, mixed, counted])('beats random search at the same budget on $name (hypervolume over 6 seeds)', (problem) => {
    const budget = 60;
    const seeds = [1, 2, 3, 4, 5, 6];
    const volume = (history: Observation[]) => hypervolume2d(history.map((o) => o.values), problem.reference);
    const tpe = seeds.map((seed) => volume(search(problem, budget, seed, 'tpe')));
    const random = seeds.map((seed) => volume(search(problem, budget, seed + 1000, 'random')));
    const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
    console.log(`${problem.name}: TPE ${tpe.map((x) => x.toFixed(3)).join(' ')}; random ${random.map((x) => x.toFixed(3)).join(' ')}`);
    expect(mean(tpe)).toBeGreaterThan(mean(random));
    // Not only on average: TPE's worst seed beats random search's median.
    const sorted = [...random].sort((x, y) => x - y);
    expect(Math.min(...tpe)).toBeGreaterThan((sorted[2]! + sorted[3]!) / 2);
  });

  it('prefers feasible trials: the good group holds no infeasible trial while feasible ones are left', () => {
    const sampler = new TpeSampler(mixed.space, { seed: 1, startupTrials: 2 });
    const random = mulberry32(5);
    const history: Observation[] = Array.from({ length: 30 }, (_, i) => {
      const params = uniformParams(mixed.space, random);
      // The best-looking trials are the infeasible ones.
      return i % 3 === 0 ? { params, values: [-10, -10], violation: 1 } : { params, values: mixed.objectives(params) };
    });
    const { below } = sampler.split(history);
    expect(below.length).toBe(3);
    expect(below.every((o) => !o.violation)).toBe(true);
  });
});
