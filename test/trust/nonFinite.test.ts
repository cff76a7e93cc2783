/**
 * Weights holding NaN or ±Inf: every command that runs the model stops with one line naming the
 * first point where non-finite values appear, instead of printing NUL characters, reporting a NaN
 * perplexity or exporting a report, and the library throws a NonFiniteError. The checks run on the
 * GPU (shaders/check_finite.wgsl) in every forward step.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { perplexity } from '../../src/abliterate/evaluate.ts';
import { measure } from '../../src/abliterate/measure.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { NonFiniteError } from '../../src/model/finiteCheck.ts';
import { generate } from '../../src/model/generate.ts';
import { LlamaModel, type Residency } from '../../src/model/model.ts';
import { toSafetensors } from '../reference/randomModel.ts';
import { testGpu } from '../helpers/gpu.ts';
import { exists, expectCliError, outputTraces, runCli, snapshot, tempDir, writeModelDir, type ModelDir } from './helpers.ts';

const NAN_BF16 = 0x7fc0;
const INF_BF16 = 0x7f80;

/** Writes a random bf16 model whose tensor `name` holds `bits` at the given element indices. */
function poisonedModel(dir: string, name: string, bits: number, indices: (cols: number, rows: number) => number[]): ModelDir {
  const model = writeModelDir(dir, { seed: 5 });
  const tensor = model.random.tensors.find((t) => t.name === name)!;
  const words = new Uint16Array(tensor.bytes.buffer, tensor.bytes.byteOffset, tensor.bytes.byteLength / 2);
  const [rows, cols = 1] = tensor.shape as [number, number?];
  for (const i of indices(cols, rows)) words[i] = bits;
  writeFileSync(join(dir, 'model.safetensors'), toSafetensors(model.random.tensors));
  return model;
}

const afterLayer = (layer: number) => new RegExp(`^non-finite values \\(NaN or infinity\\) in the residual stream after layer ${layer} \\(row \\d+, column \\d+\\): the weights of layer ${layer} hold NaN or infinity, or its activations overflow$`);

let work: ReturnType<typeof tempDir>;
let nanInLayer1: ModelDir;
let infInLayer0: ModelDir;
let nanEmbedding: ModelDir;
let nanFinalNorm: ModelDir;

beforeAll(() => {
  work = tempDir('non-finite');
  nanInLayer1 = poisonedModel(join(work.path, 'nan-layer-1'), 'model.layers.1.mlp.down_proj.weight', NAN_BF16, (cols) => [3 * cols + 7]);
  infInLayer0 = poisonedModel(join(work.path, 'inf-layer-0'), 'model.layers.0.self_attn.o_proj.weight', INF_BF16, () => [0]);
  // Column 0 of every token's embedding, so that any prompt meets it.
  nanEmbedding = poisonedModel(join(work.path, 'nan-embedding'), 'model.embed_tokens.weight', NAN_BF16, (cols, rows) => Array.from({ length: rows }, (_, r) => r * cols));
  nanFinalNorm = poisonedModel(join(work.path, 'nan-final-norm'), 'model.norm.weight', NAN_BF16, () => [5]);
});
afterAll(() => work?.remove());

describe('the library', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await testGpu();
  });
  afterAll(() => gpu?.dispose());

  async function load(model: ModelDir, residency: Residency = 'resident'): Promise<LlamaModel> {
    return LlamaModel.load(gpu, new NodeFolder(model.dir), { residency });
  }

  async function failure(work: Promise<unknown>): Promise<Error> {
    const error = await work.then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(NonFiniteError);
    return error as Error;
  }

  it.each(['resident', 'streamed'] as const)('generate names the first layer whose output is not finite (%s weights)', async (residency) => {
    for (const [poisoned, layer] of [[nanInLayer1, 1], [infInLayer0, 0]] as const) {
      const model = await load(poisoned, residency);
      try {
        expect((await failure(generate(model, [[1, 5, 9, 13]], { maxNewTokens: 3, stopTokenIds: new Set() }))).message).toMatch(afterLayer(layer));
        // The flags were cleared by the report: the next call reports again, not a stale find.
        expect((await failure(generate(model, [[2, 4]], { maxNewTokens: 1, stopTokenIds: new Set() }))).message).toMatch(afterLayer(layer));
      } finally {
        model.dispose();
      }
    }
  });

  it('names the embedding and the logits when they are the first points', async () => {
    const embedding = await load(nanEmbedding);
    try {
      expect((await failure(generate(embedding, [[1, 2, 3]], { maxNewTokens: 2, stopTokenIds: new Set() }))).message).toMatch(
        /^non-finite values \(NaN or infinity\) in the token embeddings \(row \d+, column 0\): model\.embed_tokens\.weight holds them$/,
      );
    } finally {
      embedding.dispose();
    }
    const norm = await load(nanFinalNorm);
    try {
      expect((await failure(generate(norm, [[1, 2, 3]], { maxNewTokens: 2, stopTokenIds: new Set() }))).message).toMatch(/^non-finite logits \(NaN or infinity\) at row 0, column \d+: the final norm or the output projection/);
    } finally {
      norm.dispose();
    }
  });

  it('perplexity and measure throw instead of returning NaN', async () => {
    const model = await load(nanInLayer1);
    try {
      expect((await failure(perplexity(model, 'plain text long enough to have a few tokens in it'))).message).toMatch(afterLayer(1));
      const prompts = [[1, 2, 3], [4, 5]];
      expect((await failure(measure(model, prompts, prompts))).message).toMatch(afterLayer(1));
    } finally {
      model.dispose();
    }
  });

  it('a clean model passes the same checks', async () => {
    const clean = writeModelDir(join(work.path, 'clean'), { seed: 5 });
    const model = await load(clean);
    try {
      const result = await generate(model, [[1, 5, 9, 13]], { maxNewTokens: 3, stopTokenIds: new Set() });
      expect(result.tokens[0]).toHaveLength(3);
      expect(Number.isFinite((await perplexity(model, 'plain text long enough to have a few tokens in it')).perplexity)).toBe(true);
    } finally {
      model.dispose();
    }
  });
});

describe('the CLI', () => {
  it('generate: one line naming the layer, exit 1, no NUL characters printed', async () => {
    const result = await runCli(['generate', nanInLayer1.dir, '--prompt', 'hello there', '--max-tokens', '4']);
    expectCliError(result, afterLayer(1));
    expect(result.stdout).toBe('');
    expect(result.stdout.includes('\u0000')).toBe(false);
  });

  it('eval: one line naming the layer, exit 1, no NaN perplexity', async () => {
    const result = await runCli(['eval', infInLayer0.dir, '--limit', '2', '--max-tokens', '2']);
    expectCliError(result, afterLayer(0));
    expect(result.stdout).not.toMatch(/NaN/);
  });

  it('run: one line naming the layer, exit 1, nothing exported, input untouched', async () => {
    const before = snapshot(nanInLayer1.dir);
    const out = join(work.path, 'run-out');
    expectCliError(await runCli(['run', nanInLayer1.dir, '--no-optimize', '--out', out, '--limit', '2', '--max-tokens', '2']), afterLayer(1));
    expect(exists(out)).toBe(false);
    expect(outputTraces(work.path, 'run-out')).toEqual([]);
    expect(snapshot(nanInLayer1.dir)).toEqual(before);
  });
});
