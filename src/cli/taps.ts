import type { Command } from 'commander';
import { KvCache } from '../model/kvCache.ts';
import { HookRunner, LAYER_POINTS, TAP_POINTS, selectRows, type PositionSelector, type TapPoint } from '../model/taps.ts';
import { addGpuOptions, printJson, UsageError, withModel, type GpuOptions } from './common.ts';

interface TapsCliOptions extends GpuOptions {
  prompt: string;
  chat?: boolean;
  point: string;
  position: string;
  json?: boolean;
}

function parsePositions(value: string): PositionSelector {
  if (value === 'last' || value === 'all') return value;
  const positions = value.split(',').map((p) => Number(p.trim()));
  if (positions.length === 0 || positions.some((p) => !Number.isInteger(p))) {
    throw new UsageError(`--position must be last, all, or a comma-separated list of integers (negative counts from the end), got "${value}"`);
  }
  return positions;
}

export function registerTaps(program: Command): void {
  addGpuOptions(
    program
      .command('taps')
      .description('read the residual stream at a tap point of every layer for one prompt')
      .argument('<model-dir>')
      .requiredOption('--prompt <text>', 'the prompt')
      .option('--chat', "format the prompt with the model's chat template (generation prompt on)")
      .option('--point <name>', `tap point: ${TAP_POINTS.join(', ')}`, 'resid_post')
      .option('--position <which>', 'last, all, or positions like 0,3,-1', 'last')
      .option('--json', 'print {"point", "positions", "layers"} as JSON'),
  ).action(async (dir: string, options: TapsCliOptions) => {
    if (!(TAP_POINTS as readonly string[]).includes(options.point)) throw new UsageError(`--point must be one of ${TAP_POINTS.join(', ')}, got "${options.point}"`);
    const point = options.point as TapPoint;
    const selector = parsePositions(options.position);
    await withModel(dir, options, async (model, gpu) => {
      const tokens = options.chat ? model.tokenizer.encodeChat(options.prompt) : model.tokenizer.encode(options.prompt);
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
