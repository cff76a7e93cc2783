import type { Command } from 'commander';
import { generate } from '../model/generate.ts';
import { addGpuOptions, parseInteger, parseNumber, printJson, withModel, type GpuOptions } from './common.ts';

interface GenerateCliOptions extends GpuOptions {
  prompt: string;
  chat?: boolean;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  json?: boolean;
}

export function registerGenerate(program: Command): void {
  addGpuOptions(
    program
      .command('generate')
      .description('continue a prompt (with --chat: answer it as the chat model)')
      .argument('<model-dir>')
      .requiredOption('--prompt <text>', 'the prompt')
      .option('--chat', "format the prompt with the model's chat template as one user message")
      .option('--max-tokens <n>', 'new tokens at most', parseInteger('--max-tokens', 1), 64)
      .option('--temperature <t>', 'sampling temperature; 0 decodes greedily', parseNumber('--temperature', 0), 0)
      .option('--top-k <k>', 'sample among the k most likely tokens (0: all)', parseInteger('--top-k', 0), 0)
      .option('--top-p <p>', 'sample among the most likely tokens of total probability p', parseNumber('--top-p', 0, 1), 1)
      .option('--seed <n>', 'random seed for sampling', parseInteger('--seed', 0), 0)
      .option('--json', 'print {"text", "tokens"} as JSON'),
  ).action(async (dir: string, options: GenerateCliOptions) => {
    await withModel(dir, options, async (model) => {
      const tokenizer = model.tokenizer;
      const prompt = options.chat ? tokenizer.encodeChat(options.prompt) : tokenizer.encode(options.prompt);
      const result = await generate(model, [prompt], {
        maxNewTokens: options.maxTokens,
        temperature: options.temperature,
        topK: options.topK,
        topP: options.topP,
        seed: options.seed,
      });
      const tokens = result.tokens[0]!;
      const text = tokenizer.decode(tokens, { skipSpecialTokens: true });
      if (options.json) printJson({ text, tokens });
      else process.stdout.write(`${text}\n`);
    });
  });
}
