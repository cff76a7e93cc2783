import type { Command } from 'commander';
import { HookRunner, KvCache, LAYER_POINTS, selectRows, TAP_POINTS, type TapPoint } from '../index.ts';
import { printJson, UsageError, withModel } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { parsePositions } from './settings.ts';

export const TAPS_SETTINGS: CommandSettings = {
  name: 'taps',
  options: [
    { key: 'prompt', required: true },
    { key: 'chat', help: "format the prompt with the model's chat template (generation prompt on)" },
    { key: 'tap', help: `tap point: ${TAP_POINTS.join(', ')}` },
    'position',
    { key: 'json', help: 'print {"point", "positions", "layers"} as JSON' },
    'adapter',
  ],
};

export function registerTaps(program: Command): void {
  addSettingOptions(program.command('taps').description('read the residual stream at a tap point of every layer for one prompt').argument('<model-dir>'), TAPS_SETTINGS).action(
    async (dir: string, _o: unknown, command: Command) => {
    const options = await commandValues(command, TAPS_SETTINGS);
    const point: TapPoint = options.tap;
    const selector = parsePositions(options.position);
    await withModel(dir, options, async (model, gpu) => {
      const tokens = options.chat ? model.tokenizer.encodeChat(options.prompt!) : model.tokenizer.encode(options.prompt!);
      const sequences = [{ slot: 0, start: 0, length: tokens.length, firstPosition: 0 }];
      const rows = selectRows(selector, sequences);
      if (rows.length === 0) throw new UsageError(`--position ${options.position} selects no token of a ${tokens.length}-token prompt`);
      const layers = LAYER_POINTS.includes(point) ? model.config.numLayers : 1;
      const H = model.config.hiddenSize;
      const out = gpu.createBuffer(layers * rows.length * H * 4, 'tap output');
      const cache = new KvCache(gpu, model.config, 1, tokens.length);
      try {
        const hooks = new HookRunner([{ point, positions: selector, action: { kind: 'write', buffer: out, rowsPerLayer: rows.length } }], model.config.numLayers);
        await model.forward.run({ tokens, sequences, logits: 'none' }, cache, hooks);
        await model.forward.verifyFinite();
        const values = await gpu.readF32(out);
        const vectors = Array.from({ length: layers }, (_, l) =>
          rows.map((_, r) => Array.from(values.subarray((l * rows.length + r) * H, (l * rows.length + r + 1) * H))),
        );
        const positions = rows.map((r) => r);
        const result = { point, positions, layers: selector === 'last' ? vectors.map((v) => v[0]!) : vectors };
        if (options.json) printJson(result);
        else {
          for (const [l, v] of vectors.entries()) {
            for (const [r, vector] of v.entries()) {
              const norm = Math.hypot(...vector);
              process.stdout.write(`${point}${layers > 1 ? ` layer ${l}` : ''} position ${positions[r]}: norm ${norm.toFixed(4)} [${vector.slice(0, 4).map((x) => x.toFixed(4)).join(', ')}, …]\n`);
            }
          }
        }
      } finally {
        cache.dispose();
        gpu.destroyBuffer(out);
      }
    });
  });
}
