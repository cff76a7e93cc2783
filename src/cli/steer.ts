import type { Command } from 'commander';
import { generate, type Steering, steeringHooks } from '../index.ts';
import { printJson, withModel } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { fitDirections, openDirections, pointOf } from './directions.ts';

export const STEER_SETTINGS: CommandSettings = {
  name: 'steer',
  options: [
    { key: 'direction', help: 'directions file', required: true },
    { key: 'prompt', required: true },
    { key: 'point', help: "use this point's direction instead of the file's chosen one" },
    'mode',
    { key: 'alpha', help: 'ablation strength' },
    'scale',
    'threshold',
    { key: 'chat', help: 'do not apply the chat template', default: true },
    { key: 'max-tokens', help: 'new tokens at most' },
    'json',
    'adapter',
  ],
};

export function registerSteer(program: Command): void {
  addSettingOptions(
    program.command('steer').description('generate with the direction ablated or added at run time (weights untouched)').argument('<model-dir>'),
    STEER_SETTINGS,
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const options = await commandValues(command, STEER_SETTINGS);
    const directions = await openDirections(options.direction!);
    const { point, direction } = pointOf(directions, options.point, options.direction!);
    await withModel(dir, options, async (model, gpu) => {
      fitDirections(directions, options.direction!, model.config);
      const steering: Steering = options.mode === 'ablate' ? { kind: 'ablate', alpha: options.alpha, threshold: options.threshold } : { kind: 'add', scale: options.scale, threshold: options.threshold };
      const { hooks, buffers } = steeringHooks(gpu, model.config, direction, point, steering);
      try {
        const tokens = options.chat ? model.tokenizer.encodeChat(options.prompt!) : model.tokenizer.encode(options.prompt!);
        const [plain, steered] = [await generate(model, [tokens], { maxNewTokens: options['max-tokens'] }), await generate(model, [tokens], { maxNewTokens: options['max-tokens'], hooks })];
        const decode = (ids: number[]) => model.tokenizer.decode(ids, { skipSpecialTokens: true });
        const result = { point, mode: options.mode, original: decode(plain.tokens[0]!), steered: decode(steered.tokens[0]!) };
        if (options.json) printJson(result);
        else process.stdout.write(`original: ${result.original}\nsteered:  ${result.steered}\n`);
      } finally {
        for (const b of buffers) gpu.destroyBuffer(b);
      }
    });
  });
}
