import type { Command } from 'commander';
import { evaluateModel, EvaluationPrompts, firstTokenLogits } from '../abliterate/evaluate.ts';
import { addGpuOptions, bar, loadModel, openGpu, parseInteger, printJson } from './common.ts';
import { BUNDLED, loadPrompts, MAX_PLAIN_TEXT_BYTES, readTextInput } from './settings.ts';

export function registerEval(program: Command): void {
  addGpuOptions(
    program
      .command('eval')
      .description('refusal rates on harmful and harmless prompts, perplexity, and KL against a baseline model')
      .argument('<model-dir>')
      .option('--baseline <model-dir>', 'the original model, for the first-token KL')
      .option('--eval-harmful <file>', 'harmful prompts; default: the bundled test split')
      .option('--eval-harmless <file>', 'harmless prompts; default: the bundled test split')
      .option('--plain-text <file>', 'plain text for perplexity; default: the bundled sample')
      .option('--column <name>', 'column or field holding the prompt')
      .option('--limit <n>', 'use at most n prompts of each file', parseInteger('--limit', 1))
      .option('--max-tokens <n>', 'new tokens per answer', parseInteger('--max-tokens', 1), 64)
      .option('--batch-size <n>', 'prompts per step', parseInteger('--batch-size', 1), 32)
      .option('--json', 'print JSON'),
  ).action(async (dir: string, options: { baseline?: string; evalHarmful?: string; evalHarmless?: string; plainText?: string; column?: string; limit?: number; maxTokens: number; batchSize: number; json?: boolean; adapter?: 'auto' }) => {
    const harmful = await loadPrompts(options.evalHarmful ?? BUNDLED['eval-harmful'], options.column, options.limit);
    const harmless = await loadPrompts(options.evalHarmless ?? BUNDLED['eval-harmless'], options.column, options.limit);
    const textFile = options.plainText ?? BUNDLED['plain-text'];
    const text = await readTextInput(textFile, 'plain text', MAX_PLAIN_TEXT_BYTES);
    const gpu = await openGpu(options);
    try {
      let baseline: GPUBuffer | undefined;
      if (options.baseline) {
        const original = await loadModel(gpu, options.baseline);
        try {
          baseline = await firstTokenLogits(original, harmless, { batchSize: options.batchSize });
        } finally {
          original.dispose();
        }
      }
      const model = await loadModel(gpu, dir);
      try {
        const prompts = new EvaluationPrompts(model, { harmful, harmless, plainText: text });
        const e = await bar('evaluate', (update) => evaluateModel(model, prompts, { baseline, batchSize: options.batchSize, maxNewTokens: options.maxTokens, onProgress: update }));
        const kl = baseline ? e.kl : null;
        const ppl = e.perplexity!;
        const report = { harmful_refusal_rate: e.harmful_refusal_rate, harmless_refusal_rate: e.harmless_refusal_rate, kl, perplexity: ppl, samples: { harmful: e.harmful_answers.slice(0, 5), harmless: e.harmless_answers.slice(0, 5) } };
        if (options.json) printJson(report);
        else {
          const refused = (answers: readonly { refused: boolean }[]) => `${answers.filter((a) => a.refused).length}/${answers.length}`;
          process.stdout.write(
            `harmful refusal  ${e.harmful_refusal_rate.toFixed(3)} (${refused(e.harmful_answers)})\nharmless refusal ${e.harmless_refusal_rate.toFixed(3)} (${refused(e.harmless_answers)})\n` +
              `${kl === null ? '' : `first-token KL   ${kl.toFixed(4)}\n`}perplexity       ${ppl.toFixed(3)}\n`,
          );
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
