import type { Command } from 'commander';
import { steeringHooks, type Steering } from '../abliterate/steer.ts';
import { generate } from '../model/generate.ts';
import { addGpuOptions, parseInteger, parseNumber, printJson, UsageError, withModel } from './common.ts';
import { fitDirections, openDirections, pointOf } from './directions.ts';

export function registerSteer(program: Command): void {
  addGpuOptions(
    program
      .command('steer')
      .description('generate with the direction ablated or added at run time (weights untouched)')
      .argument('<model-dir>')
      .requiredOption('--direction <file>', 'directions file')
      .requiredOption('--prompt <text>', 'the prompt')
      .option('--layer <n>', "use this point's direction instead of the file's chosen one", parseInteger('--layer', 0))
      .option('--mode <mode>', 'ablate (remove the direction) or add (push along it)', 'ablate')
      .option('--alpha <a>', 'ablation strength', parseNumber('--alpha', -100, 100), 1)
      .option('--scale <c>', 'for --mode add: h ← h + c · d̂', parseNumber('--scale', -1e6, 1e6), 4)
      .option('--threshold <t>', 'only where the projection h·d̂ exceeds t (conditional steering)', parseNumber('--threshold', -1e9, 1e9))
      .option('--no-chat', 'do not apply the chat template')
      .option('--max-tokens <n>', 'new tokens at most', parseInteger('--max-tokens', 1), 64)
      .option('--json', 'print JSON'),
  ).action(async (dir: string, options: { direction: string; prompt: string; layer?: number; mode: string; alpha: number; scale: number; threshold?: number; chat: boolean; maxTokens: number; json?: boolean; adapter?: 'auto' }) => {
    if (options.mode !== 'ablate' && options.mode !== 'add') throw new UsageError(`--mode must be ablate or add, got "${options.mode}"`);
    const directions = await openDirections(options.direction);
    const { layer, direction } = pointOf(directions, options.layer, options.direction);
    await withModel(dir, options, async (model, gpu) => {
      fitDirections(directions, options.direction, model.config);
      const steering: Steering = options.mode === 'ablate' ? { kind: 'ablate', alpha: options.alpha, threshold: options.threshold } : { kind: 'add', scale: options.scale, threshold: options.threshold };
      const { hooks, buffers } = steeringHooks(gpu, model.config, direction, layer, steering);
      try {
        const tokens = options.chat ? model.tokenizer.encodeChat(options.prompt) : model.tokenizer.encode(options.prompt);
        const [plain, steered] = [await generate(model, [tokens], { maxNewTokens: options.maxTokens }), await generate(model, [tokens], { maxNewTokens: options.maxTokens, hooks })];
        const decode = (ids: number[]) => model.tokenizer.decode(ids, { skipSpecialTokens: true });
        const result = { layer, mode: options.mode, original: decode(plain.tokens[0]!), steered: decode(steered.tokens[0]!) };
        if (options.json) printJson(result);
        else process.stdout.write(`original: ${result.original}\nsteered:  ${result.steered}\n`);
      } finally {
        for (const b of buffers) gpu.destroyBuffer(b);
      }
    });
  });
}
