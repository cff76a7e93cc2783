import type { Command } from 'commander';
import { abliterationSettings, detectHardening, HARDENING_THRESHOLDS, samplePrompts, type DetectStage, type HardeningDetection } from '../index.ts';
import { printJson, progressBar, status, UsageError, withModel, type Progress } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { BUNDLED, loadPrompts } from './settings.ts';

export const DETECT_SETTINGS: CommandSettings = {
  name: 'detect',
  config: true,
  options: [
    'harmful',
    'harmless',
    { key: 'eval-harmful', help: 'harmful prompts the test cut is evaluated on; default: the bundled test split' },
    'column',
    'limit',
    'measure-prompts',
    'batch-size',
    { key: 'top-k', help: 'singular vectors measured per point: the spectrum the effective rank is taken over', default: 8 },
    'window',
    'metric',
    'max-tokens',
    'markers',
    { key: 'json', help: 'print the verdict, the evidence and the recommendation as JSON' },
    'adapter',
  ],
};

export function registerDetect(program: Command): void {
  addSettingOptions(
    program
      .command('detect')
      .description('is the model hardened against abliteration? Weighs the effective rank of the refusal subspace, the concentration of the per-point scores, the distance of the harm-detection and refusal-execution directions, and the refusal left after a test cut')
      .argument('<model-dir>'),
    DETECT_SETTINGS,
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const config = await commandValues(command, DETECT_SETTINGS);
    const settings = abliterationSettings(config);
    if (config['top-k'] < 2) throw new UsageError('--top-k must be at least 2: the effective rank is that of the top-K spectrum');
    const harmful = samplePrompts(await loadPrompts(config.harmful ?? BUNDLED.harmful, config.column, config.limit), settings.measurePrompts);
    const harmless = samplePrompts(await loadPrompts(config.harmless ?? BUNDLED.harmless, config.column, config.limit), settings.measurePrompts);
    const testHarmful = await loadPrompts(config['eval-harmful'] ?? BUNDLED['eval-harmful'], config.column, config.limit);
    // One progress bar per stage on a terminal; a status line per stage otherwise.
    let progress: Progress | undefined;
    const onStage = (stage: DetectStage) => {
      progress?.stop();
      if (!process.stderr.isTTY) status(`${stage}…`);
      progress = progressBar(stage, 1);
    };
    const detection = await withModel(dir, { adapter: config.adapter }, (model) =>
      detectHardening(
        model,
        { harmful, harmless, testHarmful },
        { topK: config['top-k'], batchSize: settings.batchSize, maxNewTokens: settings.maxNewTokens, markers: settings.markers, window: settings.window, metric: settings.metric, onStage, onProgress: (done, total) => progress?.update(done, total) },
      ),
    ).finally(() => progress?.stop());
    if (config.json) {
      const { measurement: _, ...rest } = detection;
      printJson({ ...rest, thresholds: HARDENING_THRESHOLDS });
    } else process.stdout.write(formatDetection(detection));
  });
}

/** The verdict, the evidence table and the recommendation, as text. */
export function formatDetection(d: HardeningDetection): string {
  const lines = [`verdict: ${d.verdict} (score ${d.score.toFixed(2)}, confidence ${d.confidence.toFixed(2)})`, ''];
  lines.push(`${'signal'.padEnd(22)}${'value'.padEnd(10)}${'threshold'.padEnd(11)}${'fires'.padEnd(7)}${'weight'.padEnd(8)}note`);
  for (const e of d.evidence) {
    const value = Number.isFinite(e.value) ? e.value.toFixed(3) : '–';
    const comparison = e.signal === 'score_concentration' ? `< ${e.threshold}` : `> ${e.threshold}`;
    lines.push(`${e.signal.padEnd(22)}${value.padEnd(10)}${comparison.padEnd(11)}${(e.weight === 0 ? '–' : e.fires ? 'yes' : 'no').padEnd(7)}${e.weight.toFixed(2).padEnd(8)}${e.note}`);
  }
  lines.push('', `refusal-execution point ${d.point}${d.hddPoint === undefined ? '' : `, harm-detection point ${d.hddPoint}`}`);
  lines.push(`${'point'.padEnd(7)}${'eff.rank'.padEnd(10)}explained variance of the top ${d.spectra[0]?.explainedVariance.length ?? 0}`);
  for (const s of d.spectra) lines.push(`${String(s.point).padEnd(7)}${s.effectiveRank.toFixed(2).padEnd(10)}${s.explainedVariance.map((x) => x.toFixed(3)).join(' ')}`);
  lines.push('', `next: ${d.recommendation.reason}`, ...d.recommendation.commands.map((c) => `  ${c}`));
  lines.push('', `measured in ${d.timings.measure.toFixed(1)} s, evaluated in ${d.timings.evaluate.toFixed(1)} s`, '');
  return lines.join('\n');
}
