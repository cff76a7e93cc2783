/**
 * Side by side with PyTorch on the same machine and the same model files: the measure step (the
 * last-token residual of chat-formatted prompts at every point: embedding and each layer's output)
 * and a greedy decode, here on WebGPU and in bench/pytorch_compare.py on the CPU, in the same run.
 * Prints each time, the ratio ours / PyTorch, and how closely the hidden states agree; exits
 * non-zero if they disagree badly (max relative error above 1e-2) or the greedy tokens differ early.
 *
 *   npx tsx bench/compare.ts [--model DIR] [--prompts N] [--new-tokens N] [--random-shape NAME]
 *
 * The model: --model, else the bundled models/tiny-chat when it has weights, else a random model
 * (with the bundled tokenizer) written to a temporary folder.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { createNodeGpu, parseAdapterChoice } from '../src/gpu/node.ts';
import { NodeFolder } from '../src/io/nodeFolder.ts';
import type { SequenceStep } from '../src/model/forward.ts';
import { generate } from '../src/model/generate.ts';
import { KvCache } from '../src/model/kvCache.ts';
import { LlamaModel } from '../src/model/model.ts';
import { HookRunner, type Hook } from '../src/model/taps.ts';
import { ChatTokenizer } from '../src/model/tokenizer.ts';
import { SHAPES, writeSyntheticModel, type SyntheticShape } from './lib/syntheticModel.ts';

const PYTHON = '/usr/bin/python3';
const BUNDLED = 'models/tiny-chat';

const opts = new Command('compare')
  .option('--model <dir>', 'model folder (default: the bundled model if it has weights, else a random one)')
  .option('--prompts <n>', 'prompts in the measure step (half harmful, half harmless test prompts)', (v) => Number.parseInt(v, 10), 32)
  .option('--batch <n>', 'prompts per forward step, both sides', (v) => Number.parseInt(v, 10), 16)
  .option('--new-tokens <n>', 'greedy tokens decoded', (v) => Number.parseInt(v, 10), 32)
  .option('--random-shape <name>', `shape of the random model: ${Object.keys(SHAPES).join(', ')} (its vocabulary is the bundled tokenizer's)`, 'tiny')
  .option('--adapter <name>', 'auto, hardware, lavapipe or swiftshader')
  .option('--threads <n>', 'PyTorch threads (default: both 1 and every core, the faster counts)', (v) => Number.parseInt(v, 10))
  .option('--json <file>', 'write the figures as JSON')
  .parse()
  .opts<{ model?: string; prompts: number; batch: number; newTokens: number; randomShape: string; adapter?: string; threads?: number; json?: string }>();

const log = (text: string) => process.stderr.write(`${text}\n`);
const hasWeights = (dir: string) => existsSync(join(dir, 'config.json')) && (existsSync(join(dir, 'model.safetensors')) || existsSync(join(dir, 'model.safetensors.index.json')));

let dir = opts.model;
let temporary: string | undefined;
let modelName = dir ?? '';
if (!dir) {
  if (hasWeights(BUNDLED)) {
    dir = BUNDLED;
    modelName = 'bundled tiny-chat';
  } else {
    const base = SHAPES[opts.randomShape];
    if (!base) throw new Error(`unknown --random-shape ${opts.randomShape}`);
    if (!existsSync(join(BUNDLED, 'tokenizer.json'))) throw new Error(`${BUNDLED}/tokenizer.json is missing: a random model needs the bundled tokenizer for chat prompts`);
    const tokenizer = await ChatTokenizer.fromFolder(new NodeFolder(BUNDLED), { modelConfig: { eosTokenIds: [] } });
    const shape: SyntheticShape = { ...base, vocab: tokenizer.vocabSize };
    temporary = mkdtempSync(join(tmpdir(), 'abliterate-compare-'));
    dir = temporary;
    writeSyntheticModel(shape, dir);
    for (const file of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(BUNDLED, file), join(dir, file));
    modelName = `random ${shape.name} (vocab ${shape.vocab}) bf16`;
    log(`the bundled model has no weights yet: using ${modelName} in ${dir}`);
  }
}

try {
  process.exitCode = await run(dir, modelName);
} finally {
  if (temporary) rmSync(temporary, { recursive: true, force: true });
}

async function run(dir: string, modelName: string): Promise<number> {
  const gpu = await createNodeGpu({ adapter: parseAdapterChoice(opts.adapter) });
  const loadStart = performance.now();
  const model = await LlamaModel.load(gpu, new NodeFolder(dir));
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const { config } = model;
  const H = config.hiddenSize;
  const points = config.numLayers + 1;
  const lines = (file: string) => readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
  const half = Math.ceil(opts.prompts / 2);
  const texts = [...lines('data/harmful_test.txt').slice(0, half), ...lines('data/harmless_test.txt').slice(0, opts.prompts - half)];
  const prompts = texts.map((t) => model.tokenizer.encodeChat(t));
  const decodePrompt = model.tokenizer.encodeChat('Write a short story about a lighthouse keeper.');

  // Ours: the measure step as prefill steps of `batch` packed prompts, no logits, write taps at the
  // embedding and every layer's output (last position).
  const embedOut = gpu.createBuffer(prompts.length * H * 4, 'compare embed');
  const layersOut = gpu.createBuffer(config.numLayers * prompts.length * H * 4, 'compare layers');
  const measureOnce = async () => {
    const hooks: Hook[] = [
      { point: 'embed', positions: 'last', action: { kind: 'write', buffer: embedOut, rowsPerLayer: prompts.length } },
      { point: 'resid_post', positions: 'last', action: { kind: 'write', buffer: layersOut, rowsPerLayer: prompts.length } },
    ];
    const runner = new HookRunner(hooks, config.numLayers);
    const cache = new KvCache(gpu, config, Math.min(opts.batch, prompts.length), Math.max(...prompts.map((p) => p.length)));
    try {
      for (let first = 0; first < prompts.length; first += opts.batch) {
        const part = prompts.slice(first, first + opts.batch);
        const sequences: SequenceStep[] = [];
        const tokens: number[] = [];
        for (const [slot, p] of part.entries()) {
          sequences.push({ slot, start: tokens.length, length: p.length, firstPosition: 0 });
          tokens.push(...p);
        }
        const batch = gpu.batch('compare measure');
        model.forward.recordStep(batch, { tokens, sequences, logits: 'none' }, cache, runner);
        await batch.submit();
        runner.endStep(gpu, sequences);
      }
      await gpu.finish();
    } finally {
      cache.dispose();
    }
  };
  // Warm-up (pipelines, buffers), as PyTorch gets one.
  await measureOnce();
  const measureStart = performance.now();
  await measureOnce();
  const oursMeasure = (performance.now() - measureStart) / 1000;
  const ours = new Float32Array(prompts.length * points * H);
  {
    const embed = await gpu.readF32(embedOut);
    const layers = await gpu.readF32(layersOut);
    for (let p = 0; p < prompts.length; p++) {
      ours.set(embed.subarray(p * H, (p + 1) * H), (p * points) * H);
      for (let l = 0; l < config.numLayers; l++) ours.set(layers.subarray((l * prompts.length + p) * H, (l * prompts.length + p + 1) * H), (p * points + l + 1) * H);
    }
  }
  await generate(model, [decodePrompt], { maxNewTokens: 2, stopTokenIds: new Set() });
  const decodeStart = performance.now();
  const generated = await generate(model, [decodePrompt], { maxNewTokens: opts.newTokens, stopTokenIds: new Set() });
  const oursDecode = (performance.now() - decodeStart) / 1000;
  const adapter = gpu.adapter.name;
  model.dispose();
  gpu.dispose();

  // PyTorch, the same work on the same files.
  const work = mkdtempSync(join(tmpdir(), 'abliterate-torch-'));
  try {
    const job = join(work, 'job.json');
    const hiddenFile = join(work, 'hidden.f32');
    writeFileSync(job, JSON.stringify({ measure: prompts, batch: opts.batch, decode: decodePrompt, new_tokens: opts.newTokens }));
    type TorchRun = { torch: string; threads: number; load_s: number; measure_s: number; decode_s: number; tokens: number[] };
    const runTorch = (threads: number): TorchRun => {
      const args = ['bench/pytorch_compare.py', '--model', dir, '--job', job, '--hidden-out', hiddenFile, '--threads', String(threads)];
      return JSON.parse(execFileSync(PYTHON, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 })) as TorchRun;
    };
    // OpenMP threads spin, so on a busy machine one thread can beat all of them: try both, keep the faster.
    const cores = availableParallelism();
    const runs = opts.threads ? [runTorch(opts.threads)] : [...new Set([1, cores])].map(runTorch);
    const best = (key: 'measure_s' | 'decode_s') => runs.reduce((a, b) => (b[key] < a[key] ? b : a));
    const torch = { ...runs.at(-1)!, measure_s: best('measure_s').measure_s, decode_s: best('decode_s').decode_s, load_s: Math.min(...runs.map((r) => r.load_s)) };
    const threadNote = runs.map((r) => `${r.threads} thread${r.threads > 1 ? 's' : ''}: measure ${r.measure_s.toFixed(3)} s, decode ${r.decode_s.toFixed(3)} s`).join('; ');
    const theirs = new Float32Array(readFileSync(hiddenFile).buffer.slice(0));

    // Max relative error per point: max |ours − theirs| / max |theirs| over all prompts.
    const errors: number[] = [];
    for (let point = 0; point < points; point++) {
      let diff = 0;
      let scale = 0;
      for (let p = 0; p < prompts.length; p++) {
        const at = (p * points + point) * H;
        for (let i = 0; i < H; i++) {
          diff = Math.max(diff, Math.abs(ours[at + i]! - theirs[at + i]!));
          scale = Math.max(scale, Math.abs(theirs[at + i]!));
        }
      }
      errors.push(Number.isFinite(diff) ? diff / Math.max(scale, 1e-30) : Infinity);
    }
    const maxError = Math.max(...errors);
    const ourTokens = generated.tokens[0]!;
    let agree = 0;
    while (agree < ourTokens.length && ourTokens[agree] === torch.tokens[agree]) agree++;
    const promptTokens = prompts.reduce((a, p) => a + p.length, 0);

    const row = (what: string, oursS: number, theirsS: number, unit: string, count: number) =>
      `${what.padEnd(34)} ${oursS.toFixed(3).padStart(9)} s ${theirsS.toFixed(3).padStart(9)} s ${(oursS / theirsS).toFixed(2).padStart(8)}×   ${(count / oursS).toFixed(1)} vs ${(count / theirsS).toFixed(1)} ${unit}`;
    console.log(`side by side — model ${modelName}; ours on ${adapter} (WebGPU), PyTorch ${torch.torch} on the CPU (float32; the faster of ${threadNote}); load average ${loadavg()[0]!.toFixed(2)}`);
    console.log(`${''.padEnd(34)} ${'ours'.padStart(11)} ${'PyTorch'.padStart(11)} ${'ours/PT'.padStart(9)}   throughput (ours vs PyTorch)`);
    console.log(row(`measure: ${prompts.length} prompts, ${promptTokens} tokens, batch ${opts.batch}`, oursMeasure, torch.measure_s, 'prompts/s', prompts.length));
    console.log(row(`greedy decode: ${opts.newTokens} tokens, batch 1`, oursDecode, torch.decode_s, 'tokens/s', opts.newTokens));
    console.log(row('load', loadSeconds, torch.load_s, 'loads/s', 1));
    console.log(`hidden states: max relative error ${maxError.toExponential(2)} (per point: ${errors.map((e) => e.toExponential(1)).join(' ')})`);
    console.log(`greedy tokens: the first ${agree} of ${ourTokens.length} agree`);
    if (opts.json) {
      writeFileSync(
        opts.json,
        `${JSON.stringify({ model: modelName, adapter, torch, torchRuns: runs, ours: { load_s: loadSeconds, measure_s: oursMeasure, decode_s: oursDecode, tokens: ourTokens }, prompts: prompts.length, promptTokens, maxError, errors, agree, loadAverage: loadavg()[0] }, null, 1)}\n`,
      );
    }
    // Random weights can leave near-ties in the logits, where f32 rounding may pick another token late in a generation.
    const failed = !(maxError <= 1e-2) || agree < Math.min(4, ourTokens.length);
    if (failed) console.log('FAILED: the two implementations disagree');
    return failed ? 1 : 0;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
