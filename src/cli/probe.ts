import type { Command } from 'commander';
import { evaluateRefusals } from '../abliterate/evaluate.ts';
import { chatTokens } from '../abliterate/prefill.ts';
import { probe } from '../abliterate/probe.ts';
import { addGpuOptions, bar, parseInteger, printJson, UsageError, withModel } from './common.ts';
import { fitDirections, openDirections } from './directions.ts';
import { loadPrompts } from './settings.ts';

export function registerProbe(program: Command): void {
  addGpuOptions(
    program
      .command('probe')
      .description("project prompts on the refusal direction at every layer; with labelled sets, each layer's AUROC")
      .argument('<model-dir>')
      .requiredOption('--direction <file>', 'directions file')
      .option('--prompts <file>', 'prompts to probe, labelled by whether the model refuses them')
      .option('--harmful <file>', 'prompts labelled harmful')
      .option('--harmless <file>', 'prompts labelled harmless')
      .option('--per-layer', "project each point on its own direction, not the file's chosen one")
      .option('--column <name>', 'column or field holding the prompt')
      .option('--limit <n>', 'use at most n prompts of each file', parseInteger('--limit', 1))
      .option('--max-tokens <n>', 'new tokens when labelling by refusal', parseInteger('--max-tokens', 1), 32)
      .option('--json', 'print JSON'),
  ).action(async (dir: string, options: { direction: string; prompts?: string; harmful?: string; harmless?: string; perLayer?: boolean; column?: string; limit?: number; maxTokens: number; json?: boolean; adapter?: 'auto' }) => {
    if (!options.prompts && !(options.harmful && options.harmless)) throw new UsageError('give --prompts, or both --harmful and --harmless');
    const directions = await openDirections(options.direction);
    await withModel(dir, options, async (model) => {
      fitDirections(directions, options.direction, model.config);
      let prompts: string[];
      let labels: boolean[];
      let labelled: string;
      if (options.prompts) {
        prompts = await loadPrompts(options.prompts, options.column, options.limit);
        const answers = await bar('label', (update) => evaluateRefusals(model, prompts, { maxNewTokens: options.maxTokens, onProgress: update }));
        labels = answers.answers.map((a) => a.refused);
        labelled = 'refused';
      } else {
        const harmful = await loadPrompts(options.harmful!, options.column, options.limit);
        const harmless = await loadPrompts(options.harmless!, options.column, options.limit);
        prompts = [...harmful, ...harmless];
        labels = [...harmful.map(() => true), ...harmless.map(() => false)];
        labelled = 'harmful';
      }
      const result = await bar('probe', (update) => probe(model, chatTokens(model, prompts), options.perLayer ? directions.directions : [directions.direction], labels, { onProgress: update }));
      const perPoint = result.projections.map((p, layer) => ({ layer, auroc: result.auroc![layer]!, mean_positive: mean(p, labels, true), mean_negative: mean(p, labels, false) }));
      if (options.json) printJson({ label: labelled, positives: labels.filter(Boolean).length, negatives: labels.filter((l) => !l).length, layers: perPoint, prompts: prompts.map((prompt, i) => ({ prompt, label: labels[i], projections: result.projections.map((p) => p[i]) })) });
      else {
        process.stdout.write(`label: ${labelled} (${labels.filter(Boolean).length} yes, ${labels.filter((l) => !l).length} no)\n${'point'.padEnd(7)}${'AUROC'.padEnd(9)}${'mean yes'.padEnd(11)}mean no\n`);
        for (const p of perPoint) process.stdout.write(`${String(p.layer).padEnd(7)}${p.auroc.toFixed(3).padEnd(9)}${p.mean_positive.toFixed(3).padEnd(11)}${p.mean_negative.toFixed(3)}\n`);
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
