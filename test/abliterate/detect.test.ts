/**
 * Hardening detection: the weighing of the evidence on figures made up to sit on either side of each
 * threshold, and the whole detection on the bundled model, which an ordinary rank-1 cut abliterates
 * (so it must not be called hardened).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMatrixBytes } from '../../src/abliterate/cut.ts';
import { detectHardening, HARDENING_THRESHOLDS, topEffectiveRank, verdictOf, weighEvidence, type HardeningEvidence } from '../../src/abliterate/detect.ts';
import type { Measurement } from '../../src/abliterate/measure.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { formatDetection } from '../../src/cli/detect.ts';
import { loadPrompts } from '../../src/cli/settings.ts';
import { testGpu } from '../helpers/gpu.ts';
import { loadRandomChatModel } from '../helpers/models.ts';

/** A measurement with these effect sizes and, at point 1, directions at this angle (radians) and a harm-detection effect size. */
function figures(effects: number[], angle: number, hddEffect: number): Pick<Measurement, 'scores' | 'directions' | 'harmDetection'> {
  const score = (effectSize: number, point: number) => ({ point, gap: 1, relativeGap: 0.1, cosine: 0.5, effectSize });
  const red = effects.map(() => Float32Array.from([1, 0, 0]));
  const hdd = effects.map(() => Float32Array.from([Math.cos(angle), Math.sin(angle), 0]));
  return {
    scores: effects.map(score),
    directions: red,
    harmDetection: { directions: hdd, harmfulMeans: [], harmlessMeans: [], scores: effects.map((_, p) => score(hddEffect, p)), projections: { harmful: [], harmless: [] } },
  };
}

const byName = (evidence: HardeningEvidence[]) => Object.fromEntries(evidence.map((e) => [e.signal, e]));

describe('the evidence and the verdict', () => {
  it('the effective rank of the top-K spectrum counts the equally strong leading directions', () => {
    expect(topEffectiveRank([0.6, 0, 0, 0])).toBeCloseTo(1, 12);
    expect(topEffectiveRank([0.2, 0.2, 0.2])).toBeCloseTo(3, 12);
    // Shares among the top K only: the same shape at any total.
    expect(topEffectiveRank([0.02, 0.01])).toBeCloseTo(topEffectiveRank([0.4, 0.2]), 12);
    expect(topEffectiveRank([0.5, 0.25])).toBeGreaterThan(1.5);
    expect(topEffectiveRank([0.5, 0.25])).toBeLessThan(2);
  });

  it('an ordinary model (refusal gone after the cut, one strong direction, one standing-out point) is not hardened', () => {
    const evidence = weighEvidence(figures([0, 1, 2, 9, 3], 0.1, 3), { point: 1, hddPoint: 1, before: 0.95, after: 0.05, prompts: 40, spectra: [{ effectiveRank: 1.2 }], topK: 8 });
    const e = byName(evidence);
    expect(Object.values(e).map((x) => x.fires)).toEqual([false, false, false, false, false]);
    expect(e.hdd_red_distance!.value).toBeCloseTo(0.1, 6);
    expect(verdictOf(evidence)).toEqual({ verdict: 'not hardened', score: 0, confidence: 1 });
  });

  it('a hardened one (refusal left and raised by the cut, spread spectrum, flat scores, HDD apart from RED) is hardened', () => {
    const evidence = weighEvidence(figures([0, 5, 5.5, 6, 5], 1.2, 3), { point: 1, hddPoint: 1, before: 0.6, after: 0.9, prompts: 40, spectra: [{ effectiveRank: 3.5 }, { effectiveRank: 2.9 }], topK: 8 });
    expect(evidence.every((x) => x.fires)).toBe(true);
    expect(byName(evidence).effective_rank!.value).toBeCloseTo(3.2, 12);
    expect(verdictOf(evidence)).toEqual({ verdict: 'hardened', score: 1, confidence: 1 });
  });

  it('refusal left after the cut alone is uncertain; with the rise it causes, hardened; the HDD distance is not weighed when the HDD separates nothing', () => {
    const leftOnly = weighEvidence(figures([0, 1, 2, 9, 3], 1.5, 0.3), { point: 1, hddPoint: 1, before: 0.9, after: 0.85, prompts: 40, spectra: [{ effectiveRank: 1.2 }], topK: 8 });
    const e = byName(leftOnly);
    expect(e.refusal_after_cut!.fires).toBe(true);
    // A near-orthogonal HDD that barely separates the prompts: not applicable, weight 0.
    expect([e.hdd_red_distance!.fires, e.hdd_red_distance!.weight]).toEqual([false, 0]);
    const uncertain = verdictOf(leftOnly);
    expect(uncertain.verdict).toBe('uncertain');
    expect(uncertain.score).toBeCloseTo(0.4 / 0.85, 12);
    const raised = weighEvidence(figures([0, 1, 2, 9, 3], 1.5, 0.3), { point: 1, hddPoint: 1, before: 0.6, after: 0.85, prompts: 40, spectra: [{ effectiveRank: 1.2 }], topK: 8 });
    expect(verdictOf(raised).verdict).toBe('hardened');
    // A rise within two prompts' worth is noise, not a rise.
    const small = weighEvidence(figures([0, 1, 2, 9, 3], 0.1, 3), { point: 1, hddPoint: 1, before: 0.1, after: 0.14, prompts: 40, spectra: [{ effectiveRank: 1 }], topK: 8 });
    expect(byName(small).cut_raised_refusal!.fires).toBe(false);
    expect(HARDENING_THRESHOLDS.hardened).toBeGreaterThan(HARDENING_THRESHOLDS.notHardened);
  });
});

describe('detect on a template with no instruction-final token', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await testGpu();
  });
  afterAll(() => gpu?.dispose());

  it('goes on at the last token alone and leaves the HDD/RED distance out, saying why', async () => {
    // The message is the end of the prompt: nothing fixed follows it.
    const { model } = await loadRandomChatModel(gpu, {}, "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}");
    try {
      const prompts = (await loadPrompts('data/harmful_train.txt')).slice(0, 6);
      const benign = (await loadPrompts('data/harmless_train.txt')).slice(0, 6);
      const d = await detectHardening(model, { harmful: prompts, harmless: benign, testHarmful: prompts.slice(0, 3) }, { maxNewTokens: 3, topK: 3 });
      expect(d.hddPoint).toBeUndefined();
      expect(d.measurement.harmDetection).toBeUndefined();
      const distance = byName(d.evidence).hdd_red_distance!;
      expect([distance.weight, distance.fires]).toEqual([0, false]);
      expect(distance.note).toMatch(/^not weighed: no harm-detection direction \(cannot find the instruction-final token/);
      expect(formatDetection(d)).toMatch(/refusal-execution point \d+\n/);
    } finally {
      model.dispose();
    }
  });
});

describe('detect on the bundled model', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await testGpu();
  });
  afterAll(() => gpu?.dispose());

  it('is not hardened: the default rank-1 cut removes its refusals; the weights are left as they were', { timeout: 900_000 }, async () => {
    const model = await LlamaModel.load(gpu, new NodeFolder('models/tiny-chat'));
    try {
      const sample = async (file: string, n: number) => (await loadPrompts(file)).slice(0, n);
      const weight = 'model.layers.3.mlp.down_proj.weight';
      const before = await readMatrixBytes(gpu, model.matrices().get(weight)!);
      const d = await detectHardening(model, { harmful: await sample('data/harmful_train.txt', 64), harmless: await sample('data/harmless_train.txt', 64), testHarmful: await sample('data/harmful_test.txt', 32) }, { maxNewTokens: 24 });
      console.log(formatDetection(d));
      expect(d.verdict).toBe('not hardened');
      expect(d.refusal.before).toBeGreaterThan(0.8);
      expect(d.refusal.after).toBeLessThan(0.3);
      expect(d.recommendation).toMatchObject({ rank: 1, target: 'red', point: d.point });
      expect(d.evidence.map((e) => e.signal)).toEqual(['refusal_after_cut', 'cut_raised_refusal', 'effective_rank', 'score_concentration', 'hdd_red_distance']);
      expect(d.spectra).toHaveLength(3);
      // The test cut was undone.
      expect(Buffer.compare(Buffer.from(await readMatrixBytes(gpu, model.matrices().get(weight)!)), Buffer.from(before))).toBe(0);
    } finally {
      model.dispose();
    }
  });
});
