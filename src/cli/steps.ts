import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { readDirections, writeDirections, type Directions } from '../abliterate/directionsFile.ts';
import { applyCut, layerWeights } from '../abliterate/cut.ts';
import { evaluateRefusals, firstTokenKl, firstTokenLogits, perplexity } from '../abliterate/evaluate.ts';
import { exportModel } from '../abliterate/export.ts';
import { measure } from '../abliterate/measure.ts';
import { samplePrompts } from '../abliterate/pipeline.ts';
import { chatTokens } from '../abliterate/prefill.ts';
import { probe } from '../abliterate/probe.ts';
import { rankLayers } from '../abliterate/select.ts';
import { steeringHooks, type Steering } from '../abliterate/steer.ts';
import { generate } from '../model/generate.ts';
import { FileMissingError } from '../io/byteSource.ts';
import { NodeFolder } from '../io/nodeFolder.ts';
import { MemorySink } from '../io/safetensorsWriter.ts';
import { addGpuOptions, loadModel, openGpu, parseInteger, parseNumber, printJson, progressBar, UsageError, withModel } from './common.ts';
import { withOutputFolder } from './output.ts';
import { addRunOptions, configFromCommand } from './runOptions.ts';
import { BUNDLED, loadPrompts, settingsFrom } from './settings.ts';

async function openDirections(file: string): Promise<Directions> {
  const path = resolve(file);
  const source = await new NodeFolder(dirname(path)).open(basename(path)).catch((error: unknown) => {
    throw error instanceof FileMissingError ? new UsageError(`the directions file ${file} does not exist`) : error;
  });
  // Messages name the file as the user gave it.
  return readDirections({ name: file, size: source.size, read: (offset, length) => source.read(offset, length) });
}

/** Writes a small file under a temporary name and renames it, refusing to replace one unless forced. */
async function writeFileAtomic(path: string, data: Uint8Array, force: boolean): Promise<void> {
  const exists = await stat(path).then(() => true, () => false);
  if (exists && !force) throw new UsageError(`${path} exists; use --force to replace it`);
  const temp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`);
  try {
    await writeFile(temp, data);
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

function bar<T>(label: string, work: (update: (done: number, total: number) => void) => Promise<T>): Promise<T> {
  const progress = progressBar(label, 1);
  return work((done, total) => progress.update(done, total)).finally(() => progress.stop());
}

function pointOf(directions: Directions, layer: number | undefined): { layer: number; direction: Float32Array } {
  if (layer === undefined) return { layer: directions.layer, direction: directions.direction };
  const direction = directions.directions[layer];
  if (!direction) throw new UsageError(`--layer ${layer} is outside the file's points 0..${directions.directions.length - 1}`);
  return { layer, direction };
}

export function registerSteps(program: Command): void {
  addGpuOptions(
    addRunOptions(
      program
        .command('measure')
        .description('measure the refusal direction at every layer and choose one; writes a directions file')
        .argument('<model-dir>')
        .requiredOption('--out <file>', 'directions file to write (.safetensors)')
        .option('--force', 'replace --out if it exists')
        .option('--config <file>', 'a TOML file whose keys are the long flags')
        .option('--json', 'print the scores as JSON'),
    ),
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const config = await configFromCommand(command);
    const settings = settingsFrom(config);
    const harmful = samplePrompts(await loadPrompts(config.harmful ?? BUNDLED.harmful, config.column, config.limit), settings.measurePrompts);
    const harmless = samplePrompts(await loadPrompts(config.harmless ?? BUNDLED.harmless, config.column, config.limit), settings.measurePrompts);
    await withModel(dir, { adapter: config.adapter }, async (model) => {
      const measurement = await bar('measure', (update) =>
        measure(model, chatTokens(model, harmful, { set: 'harmful' }), chatTokens(model, harmless, { set: 'harmless' }), { batchSize: settings.batchSize, onProgress: update }),
      );
      const layer = settings.layer ?? rankLayers(measurement, { window: settings.window, metric: settings.metric })[0]!.layer;
      const sink = new MemorySink('directions');
      await writeDirections(sink, measurement, layer, { model: resolve(dir) });
      const out = resolve(config.out!);
      await writeFileAtomic(out, await sink.bytes(), config.force ?? false);
      if (config.json) printJson({ layer, scores: measurement.scores, output: out });
      else {
        process.stdout.write(`${'point'.padEnd(7)}${'gap'.padEnd(10)}${'rel.gap'.padEnd(10)}${'cosine'.padEnd(10)}effect size\n`);
        for (const s of measurement.scores) {
          process.stdout.write(`${String(s.layer).padEnd(7)}${s.gap.toFixed(3).padEnd(10)}${s.relativeGap.toFixed(3).padEnd(10)}${s.cosine.toFixed(4).padEnd(10)}${s.effectSize.toFixed(2)}${s.layer === layer ? '  ← chosen' : ''}\n`);
        }
        process.stdout.write(`directions written to ${out}\n`);
      }
    });
  });

  addGpuOptions(
    program
      .command('cut')
      .description('remove a measured direction from the weights and write the model')
      .argument('<model-dir>')
      .requiredOption('--direction <file>', 'directions file from abliterate measure or run')
      .option('--layer <n>', "use this point's direction instead of the file's chosen one", parseInteger('--layer', 0))
      .option('--alpha <a>', 'cut strength', parseNumber('--alpha', -100, 100), 1)
      .option('--layers <which>', 'layers to cut: all, FROM-TO, 1,4,9, above_median, top_k:N', 'all')
      .option('--kernel <shape>', 'per-layer strength: constant or tent:PEAK,WIDTH[,MIN[,MAX]]', 'constant')
      .option('--preserve-norm', 'keep each cut row at its original norm')
      .option('--no-embedding', 'leave the embedding alone')
      .requiredOption('--out <dir>', 'new folder for the cut model')
      .option('--force', 'replace --out if it exists')
      .option('--json', 'print a JSON summary'),
  ).action(async (dir: string, options: { direction: string; layer?: number; alpha: number; layers: string; kernel: string; preserveNorm?: boolean; embedding: boolean; out: string; force?: boolean; json?: boolean; adapter?: 'auto' }) => {
    const directions = await openDirections(options.direction);
    const { layer, direction } = pointOf(directions, options.layer);
    const settings = settingsFrom({ layers: options.layers, kernel: options.kernel });
    // The summary is printed once the output is in place under its final name.
    const summary = await withOutputFolder(options.out, resolve(dir), options.force ?? false, (out) => withModel(dir, options, async (model) => {
      if (direction.length !== model.config.hiddenSize) throw new UsageError(`the direction has ${direction.length} values but the model's hidden size is ${model.config.hiddenSize}`);
      const scores = directions.scores.slice(1).map((s) => s.effectSize);
      const weights = layerWeights(model.config.numLayers, settings.layers, settings.kernel, scores.length === model.config.numLayers ? scores : undefined);
      const start = performance.now();
      await applyCut(model, { direction, alpha: options.alpha, layerWeights: weights, preserveRowNorm: options.preserveNorm ?? false, embedding: options.embedding });
      const cutSeconds = (performance.now() - start) / 1000;
      const parameters = { layer, alpha: options.alpha, layer_weights: weights, embedding: options.embedding, preserve_row_norm: options.preserveNorm ?? false, source_model: resolve(dir) };
      const exportStart = performance.now();
      await bar('export', (update) => exportModel(model, out, { parameters, onProgress: update }));
      return { layer, output: out.path, tensors: [...model.modifiedTensors], cut_s: cutSeconds, export_s: (performance.now() - exportStart) / 1000 };
    }));
    if (options.json) printJson(summary);
    else process.stdout.write(`cut ${summary.tensors.length} tensors with the direction of point ${summary.layer} in ${summary.cut_s.toFixed(2)} s; written to ${summary.output}\n`);
  });

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
    const text = await readFile(textFile, 'utf8').catch(() => {
      throw new UsageError(`cannot read the plain text ${textFile}`);
    });
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
        const run = { batchSize: options.batchSize, maxNewTokens: options.maxTokens };
        const h = await bar('harmful', (update) => evaluateRefusals(model, harmful, { ...run, set: 'harmful', onProgress: update }));
        const b = await bar('harmless', (update) => evaluateRefusals(model, harmless, { ...run, set: 'harmless', onProgress: update }));
        const kl = baseline ? (await firstTokenKl(model, baseline, harmless, { batchSize: options.batchSize })).mean : null;
        const ppl = (await perplexity(model, text)).perplexity;
        const report = { harmful_refusal_rate: h.rate, harmless_refusal_rate: b.rate, kl, perplexity: ppl, samples: { harmful: h.answers.slice(0, 5), harmless: b.answers.slice(0, 5) } };
        if (options.json) printJson(report);
        else {
          process.stdout.write(
            `harmful refusal  ${h.rate.toFixed(3)} (${h.refused}/${h.total})\nharmless refusal ${b.rate.toFixed(3)} (${b.refused}/${b.total})\n` +
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

  addGpuOptions(
    program
      .command('probe')
      .description("project prompts on the refusal direction at every layer; with labelled sets, each layer's AUROC")
      .argument('<model-dir>')
      .requiredOption('--direction <file>', 'directions file')
      .option('--prompts <file>', 'prompts to probe, labelled by whether the model refuses them')
      .option('--harmful <file>', 'prompts labelled harmful')
      .option('--harmless <file>', 'prompts labelled harmless')
      .option('--per-layer', "project each point on its own direction, not the file's chosen one")
      .option('--column <name>', 'column or field holding the prompt')
      .option('--limit <n>', 'use at most n prompts of each file', parseInteger('--limit', 1))
      .option('--max-tokens <n>', 'new tokens when labelling by refusal', parseInteger('--max-tokens', 1), 32)
      .option('--json', 'print JSON'),
  ).action(async (dir: string, options: { direction: string; prompts?: string; harmful?: string; harmless?: string; perLayer?: boolean; column?: string; limit?: number; maxTokens: number; json?: boolean; adapter?: 'auto' }) => {
    if (!options.prompts && !(options.harmful && options.harmless)) throw new UsageError('give --prompts, or both --harmful and --harmless');
    const directions = await openDirections(options.direction);
    await withModel(dir, options, async (model) => {
      let prompts: string[];
      let labels: boolean[];
      let labelled: string;
      if (options.prompts) {
        prompts = await loadPrompts(options.prompts, options.column, options.limit);
        const answers = await bar('label', (update) => evaluateRefusals(model, prompts, { maxNewTokens: options.maxTokens, onProgress: update }));
        labels = answers.answers.map((a) => a.refused);
        labelled = 'refused';
      } else {
        const harmful = await loadPrompts(options.harmful!, options.column, options.limit);
        const harmless = await loadPrompts(options.harmless!, options.column, options.limit);
        prompts = [...harmful, ...harmless];
        labels = [...harmful.map(() => true), ...harmless.map(() => false)];
        labelled = 'harmful';
      }
      const result = await bar('probe', (update) => probe(model, chatTokens(model, prompts), options.perLayer ? directions.directions : [directions.direction], labels, { onProgress: update }));
      const perPoint = result.projections.map((p, layer) => ({ layer, auroc: result.auroc![layer]!, mean_positive: mean(p, labels, true), mean_negative: mean(p, labels, false) }));
      if (options.json) printJson({ label: labelled, positives: labels.filter(Boolean).length, negatives: labels.filter((l) => !l).length, layers: perPoint, prompts: prompts.map((prompt, i) => ({ prompt, label: labels[i], projections: result.projections.map((p) => p[i]) })) });
      else {
        process.stdout.write(`label: ${labelled} (${labels.filter(Boolean).length} yes, ${labels.filter((l) => !l).length} no)\n${'point'.padEnd(7)}${'AUROC'.padEnd(9)}${'mean yes'.padEnd(11)}mean no\n`);
        for (const p of perPoint) process.stdout.write(`${String(p.layer).padEnd(7)}${p.auroc.toFixed(3).padEnd(9)}${p.mean_positive.toFixed(3).padEnd(11)}${p.mean_negative.toFixed(3)}\n`);
      }
    });
  });

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
    const { layer, direction } = pointOf(directions, options.layer);
    await withModel(dir, options, async (model, gpu) => {
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

function mean(values: Float32Array, labels: readonly boolean[], which: boolean): number {
  let sum = 0;
  let n = 0;
  values.forEach((v, i) => {
    if (labels[i] === which) {
      sum += v;
      n++;
    }
  });
  return n ? sum / n : NaN;
}
