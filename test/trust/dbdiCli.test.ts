/**
 * measure --position both with the hygiene flags, and detect, through the CLI as a user runs them,
 * on a small random model with the bundled chat template: what the flags ask for reaches the
 * directions file and the printed figures.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readDirections } from '../../src/abliterate/directionsFile.ts';
import { MemorySource } from '../../src/io/byteSource.ts';
import { expectCliError, runCli, tempDir, writeModelDir, type ModelDir } from './helpers.ts';

let work: ReturnType<typeof tempDir>;
let model: ModelDir;
beforeAll(() => {
  work = tempDir('dbdi-cli');
  model = writeModelDir(join(work.path, 'model'));
});
afterAll(() => work?.remove());

describe('measure --position both with hygiene, through the CLI', () => {
  it('writes both sets with their points, the hygiene and the instruction offset, and prints the comparison per point', async () => {
    const out = join(work.path, 'both.safetensors');
    const args = ['measure', model.dir, '--position', 'both', '--measure-prompts', '12', '--clip-quantile', '0.05', '--sparsify', '16', '--projected', '--borderline', 'data/borderline_benign.txt', '--out', out];
    const result = await runCli([...args, '--json'], { timeoutMs: 300_000 });
    expect(result.code, result.stderr).toBe(0);
    const printed = JSON.parse(result.stdout) as { point: number; hdd: { point: number }; comparison: { point: number; cosine: number; grassmann: number }[]; instruction_offset: number; hygiene: object };
    // The tiny-chat template writes 4 tokens after the message.
    expect(printed.instruction_offset).toBe(5);
    expect(printed.hygiene).toEqual({ clipQuantile: 0.05, sparsify: 16, projected: true, borderlinePrompts: 32 });
    const file = await readDirections(new MemorySource(new Uint8Array(readFileSync(out)), 'both'));
    expect([file.version, file.position, file.point, file.harmDetection?.point, file.instructionOffset]).toEqual([4, 'last', printed.point, printed.hdd.point, 5]);
    expect(file.hygiene).toEqual(printed.hygiene);
    for (const set of [file.directions, file.harmDetection!.directions]) {
      for (const d of set.slice(1)) expect(d.filter((x) => x !== 0)).toHaveLength(16);
    }
    // One row per point after the embedding, the cosine that of the two stored directions.
    for (const c of printed.comparison) {
      const cos = file.directions[c.point]!.reduce((s, x, i) => s + x * file.harmDetection!.directions[c.point]![i]!, 0);
      expect(c.cosine).toBeCloseTo(cos, 4);
      expect(c.grassmann).toBeCloseTo(Math.acos(Math.min(1, Math.abs(cos))), 3);
    }
    expect(printed.comparison.map((c) => c.point)).toContain(printed.point);
    // The table says the same.
    const text = await runCli([...args, '--force'], { timeoutMs: 300_000 });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/harm-detection direction \(HDD\), at the instruction-final token/);
    expect(text.stdout).toMatch(/HDD vs RED\npoint\s+cosine\s+Grassmann distance\n/);
    expectCliError(await runCli(['measure', model.dir, '--clip-quantile', '0.7', '--out', join(work.path, 'x.safetensors')]), /--clip-quantile must be a number in \[0\.0001, 0\.4999\], got "0\.7"/);
  });
});

describe('detect through the CLI', () => {
  it('prints a verdict, the five signals with thresholds and weights, and a next step; --json the same', async () => {
    const args = ['detect', model.dir, '--measure-prompts', '12', '--limit', '12', '--max-tokens', '6', '--top-k', '4'];
    const result = await runCli([...args, '--json'], { timeoutMs: 300_000 });
    expect(result.code, result.stderr).toBe(0);
    const d = JSON.parse(result.stdout) as { verdict: string; score: number; confidence: number; evidence: { signal: string; weight: number }[]; refusal: { prompts: number }; recommendation: { commands: string[] }; thresholds: object; spectra: { explainedVariance: number[] }[] };
    expect(['hardened', 'not hardened', 'uncertain']).toContain(d.verdict);
    expect(d.score).toBeGreaterThanOrEqual(0);
    expect(d.confidence).toBeLessThanOrEqual(1);
    expect(d.evidence.map((e) => e.signal)).toEqual(['refusal_after_cut', 'cut_raised_refusal', 'effective_rank', 'score_concentration', 'hdd_red_distance']);
    expect(d.refusal.prompts).toBe(12);
    expect(d.spectra[0]!.explainedVariance).toHaveLength(4);
    expect(d.recommendation.commands.length).toBeGreaterThan(0);
    expect(d.thresholds).toMatchObject({ refusalAfterCut: 0.5, effectiveRank: 2 });
    const text = await runCli(args, { timeoutMs: 300_000 });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^verdict: ${d.verdict} \\(score ${d.score.toFixed(2)}, confidence ${d.confidence.toFixed(2)}\\)`));
    expect(text.stdout).toMatch(/\nsignal\s+value\s+threshold\s+fires\s+weight\s+note\n/);
    expect(text.stdout).toMatch(/\nnext: /);
    expectCliError(await runCli(['detect', model.dir, '--top-k', '1']), '--top-k must be at least 2: the effective rank is that of the top-K spectrum');
  });
});
