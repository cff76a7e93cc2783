import type { Command } from 'commander';
import { generate } from '../index.ts';
import { printJson, withModel } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';

export const GENERATE_SETTINGS: CommandSettings = {
  name: 'generate',
  options: [
    { key: 'prompt', required: true },
    { key: 'chat', help: "format the prompt with the model's chat template as one user message" },
    { key: 'max-tokens', help: 'new tokens at most' },
    'temperature',
    'top-k',
    'top-p',
    'seed',
    { key: 'json', help: 'print {"text", "tokens"} as JSON' },
    'adapter',
  ],
};

export function registerGenerate(program: Command): void {
  addSettingOptions(program.command('generate').description('continue a prompt (with --chat: answer it as the chat model)').argument('<model-dir>'), GENERATE_SETTINGS).action(
    async (dir: string, _o: unknown, command: Command) => {
    const options = await commandValues(command, GENERATE_SETTINGS);
    await withModel(dir, options, async (model) => {
      const tokenizer = model.tokenizer;
      const prompt = options.chat ? tokenizer.encodeChat(options.prompt!) : tokenizer.encode(options.prompt!);
      const result = await generate(model, [prompt], {
        maxNewTokens: options['max-tokens'],
        temperature: options.temperature,
        topK: options['top-k'],
        topP: options['top-p'],
        seed: options.seed,
      });
      const tokens = result.tokens[0]!;
      const text = tokenizer.decode(tokens, { skipSpecialTokens: true });
      if (options.json) printJson({ text, tokens });
      else process.stdout.write(`${text}\n`);
    });
  });
}
