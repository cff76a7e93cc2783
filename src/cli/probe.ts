import type { Command } from 'commander';
import { chatTokens, evaluateRefusals, probe } from '../index.ts';
import { bar, printJson, UsageError, withModel } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { fitDirections, openDirections } from './directions.ts';
import { loadPrompts } from './settings.ts';

export const PROBE_SETTINGS: CommandSettings = {
  name: 'probe',
  options: [
    { key: 'direction', help: 'directions file', required: true },
    'prompts',
    { key: 'harmful', help: 'prompts labelled harmful' },
    { key: 'harmless', help: 'prompts labelled harmless' },
    'per-layer',
    'column',
    'limit',
    { key: 'max-tokens', help: 'new tokens when labelling by refusal', default: 32 },
    'json',
    'adapter',
  ],
};

export function registerProbe(program: Command): void {
  addSettingOptions(
    program.command('probe').description("project prompts on the refusal direction at every point of the residual stream; with labelled sets, each point's AUROC").argument('<model-dir>'),
    PROBE_SETTINGS,
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const options = await commandValues(command, PROBE_SETTINGS);
    if (!options.prompts && !(options.harmful && options.harmless)) throw new UsageError('give --prompts, or both --harmful and --harmless');
    const directions = await openDirections(options.direction!);
    await withModel(dir, options, async (model) => {
      fitDirections(directions, options.direction!, model.config);
      let prompts: string[];
      let labels: boolean[];
      let labelled: string;
      if (options.prompts) {
        prompts = await loadPrompts(options.prompts, options.column, options.limit);
        const answers = await bar('label', (update) => evaluateRefusals(model, prompts, { maxNewTokens: options['max-tokens'], onProgress: update }));
        labels = answers.answers.map((a) => a.refused);
        labelled = 'refused';
      } else {
        const harmful = await loadPrompts(options.harmful!, options.column, options.limit);
        const harmless = await loadPrompts(options.harmless!, options.column, options.limit);
        prompts = [...harmful, ...harmless];
        labels = [...harmful.map(() => true), ...harmless.map(() => false)];
        labelled = 'harmful';
      }
      const result = await bar('probe', (update) => probe(model, chatTokens(model, prompts), options['per-layer'] ? directions.directions : [directions.direction], labels, { onProgress: update }));
      const perPoint = result.projections.map((p, point) => ({ point, auroc: result.auroc![point]!, mean_positive: mean(p, labels, true), mean_negative: mean(p, labels, false) }));
      if (options.json) printJson({ label: labelled, positives: labels.filter(Boolean).length, negatives: labels.filter((l) => !l).length, points: perPoint, prompts: prompts.map((prompt, i) => ({ prompt, label: labels[i], projections: result.projections.map((p) => p[i]) })) });
      else {
        process.stdout.write(`label: ${labelled} (${labels.filter(Boolean).length} yes, ${labels.filter((l) => !l).length} no)\n${'point'.padEnd(7)}${'AUROC'.padEnd(9)}${'mean yes'.padEnd(11)}mean no\n`);
        for (const p of perPoint) process.stdout.write(`${String(p.point).padEnd(7)}${p.auroc.toFixed(3).padEnd(9)}${p.mean_positive.toFixed(3).padEnd(11)}${p.mean_negative.toFixed(3)}\n`);
      }
    });
  });
}

function mean(values: Float32Array, labels: readonly boolean[], which: boolean): number {
  let sum = 0;
  let n = 0;
  values.forEach((v, i) => {
    if (labels[i] === which) {
      sum += v;
      n++;
    }
  });
  return n ? sum / n : NaN;
}
