import type { Command } from 'commander';
import { evaluateModel, EvaluationPrompts, firstTokenLogits } from '../index.ts';
import { bar, checkModelFolder, loadModel, openGpu, printJson } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { BUNDLED, loadPrompts, MAX_PLAIN_TEXT_BYTES, readTextInput } from './settings.ts';

export const EVAL_SETTINGS: CommandSettings = {
  name: 'eval',
  options: [
    'baseline',
    { key: 'eval-harmful', help: 'harmful prompts; default: the bundled test split' },
    { key: 'eval-harmless', help: 'harmless prompts; default: the bundled test split' },
    'eval-borderline',
    'plain-text',
    'column',
    'limit',
    { key: 'max-tokens', help: 'new tokens per answer' },
    'batch-size',
    'json',
    'adapter',
  ],
};

export function registerEval(program: Command): void {
  addSettingOptions(
    program.command('eval').description('refusal rates on harmful and harmless prompts, perplexity, and KL against a baseline model').argument('<model-dir>'),
    EVAL_SETTINGS,
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const options = await commandValues(command, EVAL_SETTINGS);
    const harmful = await loadPrompts(options['eval-harmful'] ?? BUNDLED['eval-harmful'], options.column, options.limit);
    const harmless = await loadPrompts(options['eval-harmless'] ?? BUNDLED['eval-harmless'], options.column, options.limit);
    const borderline = await loadPrompts(options['eval-borderline'] ?? BUNDLED['eval-borderline'], options.column, options.limit);
    const textFile = options['plain-text'] ?? BUNDLED['plain-text'];
    const text = await readTextInput(textFile, 'plain text', MAX_PLAIN_TEXT_BYTES);
    // Both folders are checked before the GPU is opened.
    const originalFiles = options.baseline ? await checkModelFolder(options.baseline) : undefined;
    const files = await checkModelFolder(dir);
    const gpu = await openGpu(options);
    try {
      let baseline: GPUBuffer | undefined;
      if (originalFiles) {
        const original = await loadModel(gpu, originalFiles);
        try {
          baseline = await firstTokenLogits(original, harmless, { batchSize: options['batch-size'] });
        } finally {
          original.dispose();
        }
      }
      const model = await loadModel(gpu, files);
      try {
        const prompts = new EvaluationPrompts(model, { harmful, harmless, borderline, plainText: text });
        const e = await bar('evaluate', (update) => evaluateModel(model, prompts, { baseline, batchSize: options['batch-size'], maxNewTokens: options['max-tokens'], onProgress: update }));
        const kl = baseline ? e.kl : null;
        const ppl = e.perplexity!;
        const report = { harmful_refusal_rate: e.harmful_refusal_rate, harmless_refusal_rate: e.harmless_refusal_rate, borderline_refusal_rate: e.borderline_refusal_rate, kl, perplexity: ppl, samples: { harmful: e.harmful_answers.slice(0, 5), harmless: e.harmless_answers.slice(0, 5) } };
        if (options.json) printJson(report);
        else {
          const refused = (answers: readonly { refused: boolean }[]) => `${answers.filter((a) => a.refused).length}/${answers.length}`;
          const rows: [string, string][] = [
            ['harmful refusal', `${e.harmful_refusal_rate.toFixed(3)} (${refused(e.harmful_answers)})`],
            ['harmless refusal', `${e.harmless_refusal_rate.toFixed(3)} (${refused(e.harmless_answers)})`],
          ];
          if (e.borderline_refusal_rate !== null) rows.push(['borderline refusal', `${e.borderline_refusal_rate.toFixed(3)} (${refused(e.borderline_answers)})`]);
          if (kl !== null) rows.push(['first-token KL', kl.toFixed(4)]);
          rows.push(['perplexity', ppl.toFixed(3)]);
          process.stdout.write(rows.map(([name, value]) => `${name.padEnd(19)}${value}\n`).join(''));
        }
      } finally {
        model.dispose();
        if (baseline) gpu.destroyBuffer(baseline);
      }
    } finally {
      gpu.dispose();
    }
  });
}
