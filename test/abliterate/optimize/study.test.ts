import { describe, expect, it } from 'vitest';
import { chooseTrial, paretoTrials, type TrialRecord } from '../../../src/abliterate/optimize/search.ts';
import { checkStudySettings, headerLine, parseStudy, trialLine } from '../../../src/abliterate/optimize/study.ts';
import { componentWeights, parsePin, searchSpace, type CutParameters } from '../../../src/abliterate/optimize/space.ts';

const params: CutParameters = {
  scope: 'global',
  direction_index: 3.25,
  attn_max_weight: 1.1,
  attn_peak: 4,
  attn_min_fraction: 0.5,
  attn_falloff: 2,
  mlp_max_weight: -0.1,
  mlp_peak: 3,
  mlp_min_fraction: 0.2,
  mlp_falloff: 3,
  projected: true,
  preserve_norm: false,
  embedding: true,
};
const trial = (number: number, refusals: number, kl: number, harmless_refusals = 0): TrialRecord => ({ number, params, refusals, kl, harmless_refusals, seconds: 1 });
const original = { refusals: 44, kl: 0, harmless_refusals: 2 };

describe('study file', () => {
  it('round-trips trials, drops a half-written last line and refuses other settings', () => {
    const settings = { seed: 1, model: { path: '/m', config_sha256: 'ab' } };
    const text = headerLine(settings) + trialLine(trial(0, 5, 0.2), original) + trialLine(trial(1, 3, 0.4), original);
    const parsed = parseStudy(text);
    expect(parsed.trials.map((t) => t.number)).toEqual([0, 1]);
    expect(parsed.trials[1]).toEqual(trial(1, 3, 0.4));
    expect(parsed.completeLength).toBe(text.length);
    const killed = text + trialLine(trial(2, 1, 0.5), original).slice(0, 30);
    expect(parseStudy(killed).trials).toHaveLength(2);
    expect(parseStudy(killed).completeLength).toBe(text.length);
    // Key order does not matter; values do.
    expect(() => checkStudySettings(parsed.header, { model: { config_sha256: 'ab', path: '/m' }, seed: 1 })).not.toThrow();
    expect(() => checkStudySettings(parsed.header, { ...settings, seed: 2 })).toThrow(/seed/);
    expect(() => checkStudySettings(parsed.header, { ...settings, extra: true })).toThrow(/extra/);
    expect(() => parseStudy(headerLine(settings) + trialLine(trial(1, 3, 0.4), original))).toThrow(/trial 1 where trial 0/);
    expect(() => parseStudy('{"a":1}\n')).toThrow(/not a study/);
  });
});

describe('choosing a trial', () => {
  it('takes the lowest KL within one refusal of the fewest, among trials that do not over-refuse', () => {
    const trials = [trial(0, 0, 0.9), trial(1, 1, 0.3), trial(2, 2, 0.1), trial(3, 0, 0.05, 3), trial(4, 5, 0.01)];
    expect(chooseTrial(trials, original)?.number).toBe(1);
    expect(chooseTrial(trials, original, 0)?.number).toBe(0);
    expect(paretoTrials(trials, original).map((t) => t.number)).toEqual([0, 1, 2, 4]);
    // When every trial over-refuses, the rule still picks among all of them.
    expect(chooseTrial([trial(0, 1, 0.2, 5), trial(1, 1, 0.1, 6)], original)?.number).toBe(1);
    expect(chooseTrial([], original)).toBeUndefined();
  });
});

describe('search space', () => {
  it('shapes a linear fall-off per component and leaves layers past it alone; max ≤ 0 switches it off', () => {
    expect(componentWeights(6, 1.2, 4, 0.5, 2)).toEqual([0, 0, 0.6, expect.closeTo(0.9, 12), 1.2, expect.closeTo(0.9, 12)]);
    expect(componentWeights(4, -0.1, 2, 1, 3)).toEqual([0, 0, 0, 0]);
  });

  it('leaves pinned parameters out and parses pins strictly', () => {
    const names = searchSpace(6, { pinned: { projected: false, scope: 'global' } }).map((p) => p.name);
    expect(names).not.toContain('projected');
    expect(names).not.toContain('scope');
    expect(names).toHaveLength(11);
    expect(parsePin('direction_index=3.5')).toEqual({ direction_index: 3.5 });
    expect(parsePin('embedding=false')).toEqual({ embedding: false });
    expect(() => parsePin('embedding=no')).toThrow(/true or false/);
    expect(() => parsePin('alpha=1')).toThrow(/unknown/);
    expect(() => parsePin('attn_peak=')).toThrow();
    expect(() => searchSpace(6, { directionWindow: [0.8, 0.2] })).toThrow(/window/);
  });
});
