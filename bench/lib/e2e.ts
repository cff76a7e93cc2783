import { existsSync } from 'node:fs';
import type { SequenceStep } from '../../src/model/forward.ts';
import { generate } from '../../src/model/generate.ts';
import { KvCache } from '../../src/model/kvCache.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { HookRunner } from '../../src/model/taps.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import type { FileFolder } from '../../src/io/byteSource.ts';
import type { Ceilings } from './ceilings.ts';
import type { Bench } from './runner.ts';
import { decodeWeightBytes, GEMMA3_1B, QWEN3_0_6B, SHAPES, syntheticModelFolder, withLayers, type SyntheticShape } from './syntheticModel.ts';

/** The families' cases run besides --e2e-model by default: their real widths, heads and vocabularies. */
export const FAMILY_SHAPES = [QWEN3_0_6B, GEMMA3_1B];
/** Layers of a family case under --quick: the per-layer work and the vocabulary are the real ones. */
const QUICK_FAMILY_LAYERS = 4;
import { renderTable } from './table.ts';

export interface EndToEndOptions {
  /** Random model shape name (SHAPES). */
  model: string;
  decodeTokens?: number | undefined;
  /** Also the bundled model when present (default true). */
  bundled?: boolean;
  /** Names of family shapes (FAMILY_SHAPES) to run as well; default all of them. */
  families?: readonly string[];
}

export interface ModelFigures {
  model: string;
  parameters: number;
  weightBytes: number;
  loadSeconds: number;
  measure: { batch: number; promptLength: number; seconds: number; promptsPerSecond: number; prefillTokensPerSecond: number; reps: number };
  decode: { batch: number; newTokens: number; seconds: number; tokensPerSecond: number; msPerStep: number }[];
  /** Weight bytes a decode step reads (every matrix once). */
  decodeBytesPerStep: number;
  /** streaming ceiling (best read kernel) / bytes per step: the tokens/s at batch 1 if weights streamed at that speed. */
  bandwidthLimitTokensPerSecond: number;
  /** decode tokens/s at batch 1 over that limit. */
  bandwidthFraction: number;
  cutSeconds: number | 'not available';
  exportSeconds: number | 'not available';
}

/** A bundled-model folder with weights, or undefined. */
function bundledFolder(): FileFolder | undefined {
  const dir = 'models/tiny-chat';
  if (!existsSync(`${dir}/config.json`) || !(existsSync(`${dir}/model.safetensors`) || existsSync(`${dir}/model.safetensors.index.json`))) return undefined;
  return new NodeFolder(dir);
}

function randomIds(count: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: count }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    // Avoid the low ids (BOS/EOS/specials of real tokenizers).
    return 3 + (s % (vocab - 3));
  });
}

/**
 * Throughput of the measure step: `batch` prompts of `length` tokens packed in one prefill, no
 * logits, an accumulating tap at resid_post (last position) in every layer. Median of timed steps.
 */
async function measureThroughput(bench: Bench, model: LlamaModel, batch: number, length: number): Promise<ModelFigures['measure']> {
  const { gpu, config } = model;
  const cache = new KvCache(gpu, config, batch, length);
  const sums = gpu.createBuffer(config.numLayers * config.hiddenSize * 4, 'bench tap sums');
  const hooks = new HookRunner([{ point: 'resid_post', positions: 'last', action: { kind: 'accumulate', sums } }], config.numLayers);
  const sequences: SequenceStep[] = Array.from({ length: batch }, (_, slot) => ({ slot, start: slot * length, length, firstPosition: 0 }));
  const tokens = randomIds(batch * length, config.vocabSize, 7);
  const times: number[] = [];
  try {
    const step = async () => {
      const start = performance.now();
      const b = gpu.batch('bench measure step');
      model.forward.recordStep(b, { tokens, sequences, logits: 'none' }, cache, hooks);
      await b.submit();
      await gpu.finish();
      hooks.endStep(gpu, sequences);
      return performance.now() - start;
    };
    const first = await step();
    const reps = first > 5000 ? 1 : bench.options.quick ? 2 : 3;
    for (let i = 0; i < reps; i++) times.push(await step());
  } finally {
    cache.dispose();
    gpu.destroyBuffer(sums);
  }
  times.sort((a, b) => a - b);
  const seconds = times[times.length >> 1]! / 1000;
  return { batch, promptLength: length, seconds, promptsPerSecond: batch / seconds, prefillTokensPerSecond: (batch * length) / seconds, reps: times.length };
}

/**
 * Greedy decode tokens/s: the same prompts generated with 1 and with 1 + N new tokens (no stop
 * tokens); the difference is N decode steps.
 */
async function decodeSpeed(model: LlamaModel, batch: number, newTokens: number, promptLength: number): Promise<ModelFigures['decode'][number]> {
  const prompts = Array.from({ length: batch }, (_, i) => randomIds(promptLength, model.config.vocabSize, 100 + i));
  const run = async (n: number) => {
    const start = performance.now();
    await generate(model, prompts, { maxNewTokens: n, batchSize: batch, stopTokenIds: new Set() });
    return performance.now() - start;
  };
  await run(2); // warm-up: pipelines and buffers of both step kinds
  const base = await run(1);
  const full = await run(1 + newTokens);
  const seconds = Math.max(1e-6, (full - base) / 1000);
  return { batch, newTokens, seconds, tokensPerSecond: (batch * newTokens) / seconds, msPerStep: (1000 * seconds) / newTokens };
}

async function cutAndExport(model: LlamaModel): Promise<{ cutSeconds: ModelFigures['cutSeconds']; exportSeconds: ModelFigures['exportSeconds'] }> {
  const cutUrl = new URL('../../src/abliterate/cut.ts', import.meta.url);
  const exportUrl = new URL('../../src/abliterate/export.ts', import.meta.url);
  if (!existsSync(cutUrl) || !existsSync(exportUrl)) return { cutSeconds: 'not available', exportSeconds: 'not available' };
  const { runCutAndExport } = await import('./cutExport.ts');
  return runCutAndExport(model, cutUrl.href, exportUrl.href);
}

async function benchModel(bench: Bench, ceilings: Ceilings, name: string, folder: FileFolder, shape: SyntheticShape | undefined, options: EndToEndOptions): Promise<ModelFigures> {
  const { gpu } = bench;
  const quick = bench.options.quick;
  const log = (t: string) => process.stderr.write(`e2e ${name}: ${t}\n`);
  const loadStart = performance.now();
  const model = await LlamaModel.load(gpu, folder);
  const loadSeconds = (performance.now() - loadStart) / 1000;
  log(`loaded in ${loadSeconds.toFixed(1)} s`);
  try {
    const c = model.config;
    const perToken = 2 * c.numLayers * (c.hiddenSize * (c.numHeads + 2 * c.numKvHeads) * c.headDim + c.numHeads * c.headDim * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize);
    // Keep one measure step to a few seconds on slow adapters: size it from the FLOP ceiling.
    const flopBudget = Math.max(1e9, ceilings.gflops * 1e9 * (quick ? 1 : 3));
    let batch = quick ? 4 : 16;
    let length = quick ? 16 : 64;
    while (batch * length * perToken > flopBudget && (batch > 2 || length > 16)) {
      if (length > 16) length /= 2;
      else batch /= 2;
    }
    const measure = await measureThroughput(bench, model, batch, length);
    log(`measure step ${measure.promptsPerSecond.toFixed(2)} prompts/s`);
    const newTokens = options.decodeTokens ?? (quick ? 4 : 16);
    const decode: ModelFigures['decode'] = [];
    for (const b of [1, 16]) {
      decode.push(await decodeSpeed(model, b, newTokens, quick ? 4 : 8));
      log(`decode batch ${b}: ${decode.at(-1)!.tokensPerSecond.toFixed(2)} tokens/s`);
    }
    // Every tensor is read once per decode step, except an untied embedding (one row a token).
    const embedBytes = model.tensors.tensors.get('model.embed_tokens.weight')?.byteLength ?? 0;
    const decodeBytesPerStep = shape ? decodeWeightBytes(shape) : model.weightBytes - (c.tieWordEmbeddings ? 0 : embedBytes);
    const bandwidthLimitTokensPerSecond = (ceilings.bandwidthGBs * 1e9) / decodeBytesPerStep;
    const { cutSeconds, exportSeconds } = await cutAndExport(model);
    return {
      model: name,
      parameters: [...model.tensors.tensors.values()].reduce((a, t) => a + t.byteLength, 0) / 2,
      weightBytes: model.weightBytes,
      loadSeconds,
      measure,
      decode,
      decodeBytesPerStep,
      bandwidthLimitTokensPerSecond,
      bandwidthFraction: decode[0]!.tokensPerSecond / bandwidthLimitTokensPerSecond,
      cutSeconds,
      exportSeconds,
    };
  } finally {
    model.dispose();
  }
}

export async function benchEndToEnd(bench: Bench, ceilings: Ceilings, options: EndToEndOptions): Promise<ModelFigures[]> {
  const figures: ModelFigures[] = [];
  const bundled = options.bundled === false ? undefined : bundledFolder();
  if (bundled && bench.wants('e2e', 'bundled tiny-chat')) figures.push(await benchModel(bench, ceilings, 'bundled tiny-chat', bundled, undefined, options));
  else if (!bundled) bench.note('models/tiny-chat has no weights yet: end-to-end figures for the bundled model are skipped');
  const shape = SHAPES[options.model];
  if (!shape) throw new Error(`unknown --e2e-model ${options.model}; choose one of ${Object.keys(SHAPES).join(', ')}`);
  const families = options.families ?? FAMILY_SHAPES.map((f) => f.name);
  for (const name of families) if (!FAMILY_SHAPES.some((f) => f.name === name)) throw new Error(`unknown family case ${name}; choose among ${FAMILY_SHAPES.map((f) => f.name).join(', ')}`);
  const shapes = [shape, ...FAMILY_SHAPES.filter((f) => families.includes(f.name) && f.name !== shape.name).map((f) => (bench.options.quick ? withLayers(f, QUICK_FAMILY_LAYERS) : f))];
  for (const s of shapes) {
    const name = `random ${s.name} bf16`;
    if (!bench.wants('e2e', name)) continue;
    const start = performance.now();
    const { folder } = syntheticModelFolder(s);
    process.stderr.write(`e2e ${name}: generated in ${((performance.now() - start) / 1000).toFixed(1)} s\n`);
    figures.push(await benchModel(bench, ceilings, name, folder, s, options));
  }
  for (const f of figures) {
    bench.record({
      section: 'e2e',
      kernel: 'decode b1',
      shape: f.model,
      dtype: 'BF16',
      bytes: f.decodeBytesPerStep,
      flops: 0,
      measured: { ms: f.decode[0]!.msPerStep, method: 'cpu', gpuMs: undefined, cpuMs: f.decode[0]!.msPerStep, minMs: f.decode[0]!.msPerStep, reps: f.decode[0]!.newTokens },
    });
  }
  return figures;
}

/** The end-to-end table and headlines; with `withheld`, no fraction of a ceiling. */
export function endToEndText(adapter: string, ceilings: Ceilings, figures: readonly ModelFigures[], withheld: boolean): string {
  const ofLimit = (f: ModelFigures) => (withheld ? `withheld (limit ${f.bandwidthLimitTokensPerSecond.toFixed(1)})` : `${(100 * f.bandwidthFraction).toFixed(1)}% of ${f.bandwidthLimitTokensPerSecond.toFixed(1)}`);
  const text =
    `end to end (adapter ${adapter}; measure = prefill with logits 'none' and an accumulating tap at resid_post, last position, every layer; ` +
    `decode = greedy generate, (time of 1 + N new tokens − time of 1) / N)\n` +
    renderTable(
      ['model', 'params', 'load s', 'measure B×L', 'prompts/s', 'prefill tok/s', 'decode b1 tok/s', 'decode b16 tok/s', 'b1 ms/step', 'b1 % of BW limit', 'cut s', 'export s'],
      figures.map((f) => [
        f.model,
        `${(f.parameters / 1e6).toFixed(0)}M`,
        f.loadSeconds.toFixed(1),
        `${f.measure.batch}×${f.measure.promptLength}`,
        f.measure.promptsPerSecond.toFixed(2),
        f.measure.prefillTokensPerSecond.toFixed(1),
        f.decode[0]!.tokensPerSecond.toFixed(2),
        f.decode[1]?.tokensPerSecond.toFixed(2) ?? '-',
        f.decode[0]!.msPerStep.toFixed(1),
        ofLimit(f),
        typeof f.cutSeconds === 'number' ? f.cutSeconds.toFixed(2) : f.cutSeconds,
        typeof f.exportSeconds === 'number' ? f.exportSeconds.toFixed(2) : f.exportSeconds,
      ]),
    );
  const headlines = figures.map(
    (f) =>
      `decode ${f.model} at batch 1: ${f.decode[0]!.tokensPerSecond.toFixed(2)} tokens/s = ${withheld ? '(ratio withheld)' : `${(100 * f.bandwidthFraction).toFixed(1)}%`} of the memory-bandwidth limit ` +
      `${f.bandwidthLimitTokensPerSecond.toFixed(1)} tokens/s (${(f.decodeBytesPerStep / 1e6).toFixed(1)} MB of weights per token at the streaming ceiling ${ceilings.bandwidthGBs.toFixed(2)} GB/s measured in this run; target above 60%)`,
  );
  return [text, ...headlines].join('\n');
}
