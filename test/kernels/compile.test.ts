import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { shaderSources } from '../../src/gpu/shaderSources.generated.ts';
import { applyCut } from '../../src/abliterate/cut.ts';
import { ablationHooks, uploadBasis } from '../../src/abliterate/ablation.ts';
import { recordSoftmax } from '../../src/kernels/softmax.ts';
import { recordCrossEntropy, recordKlDivergence } from '../../src/kernels/losses.ts';
import { generate } from '../../src/model/generate.ts';
import { recordMatmul } from '../../src/kernels/matmul.ts';
import { recordGramDifference } from '../../src/kernels/gram.ts';
import { packedMatrix, testGpu } from '../helpers/gpu.ts';
import { loadRandomModel } from '../helpers/models.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

describe('every shader compiles through Dawn without a message', () => {
  it('compiles each kernel variant the engine uses', async () => {
    // Exercise the engine's paths so that every variant it builds gets compiled: dtypes, biases,
    // decode and prefill tilings, hooks, sampling, the cut (ranks 1 and 2, with and without norm preservation), losses.
    for (const options of [
      { dtype: 'BF16', attentionBias: true, mlpBias: true },
      { dtype: 'F16', tieWordEmbeddings: true },
      { dtype: 'F32', architecture: 'qwen2' },
      { dtype: 'BF16', architecture: 'qwen2_moe', numExperts: 4, topK: 2 },
      { dtype: 'F16', architecture: 'qwen3_moe', numExperts: 4, topK: 2 },
      { dtype: 'BF16', architecture: 'gemma2', tieWordEmbeddings: true, slidingWindow: 2 },
      { dtype: 'F32', architecture: 'gemma3_text', tieWordEmbeddings: true, slidingWindow: 2, slidingWindowPattern: 2 },
    ] as const) {
      const { model } = await loadRandomModel(gpu, options);
      const basis = uploadBasis(gpu, [Float32Array.from({ length: model.config.hiddenSize }, (_, i) => (i === 0 ? 1 : 0))]);
      const hooks = [
        ...ablationHooks(model.config, basis),
        { point: 'resid_post' as const, positions: 'last' as const, action: { kind: 'add' as const, vector: basis, scale: 1, condition: { direction: basis, threshold: 0 } } },
        { point: 'resid_mid' as const, positions: 'last' as const, action: { kind: 'project_out' as const, basis, directions: 1, alpha: 1, threshold: 0.5 } },
        { point: 'resid_pre' as const, positions: 'last' as const, action: { kind: 'accumulate' as const, sums: gpu.createBuffer(model.config.numLayers * model.config.hiddenSize * 4, 'sums') } },
        { point: 'mlp_out' as const, positions: 'last' as const, action: { kind: 'write' as const, buffer: gpu.createBuffer(20 * model.config.numLayers * model.config.hiddenSize * 4, 'rows'), rowsPerLayer: 20 } },
      ];
      await generate(model, [[1, 2, 3], [4, 5]], { maxNewTokens: 2, hooks, stopTokenIds: new Set() });
      // A prompt long enough for the tiled prefill attention (where the adapter uses it).
      await generate(model, [Array.from({ length: 12 }, (_, i) => 1 + (i % 7))], { maxNewTokens: 1, stopTokenIds: new Set() });
      await generate(model, [[1, 2, 3]], { maxNewTokens: 2, temperature: 0.8, topK: 5, topP: 0.9, stopTokenIds: new Set() });
      const direction = Float32Array.from({ length: model.config.hiddenSize }, (_, i) => (i === 1 ? 1 : 0));
      (await applyCut(model, { direction, embedding: true })).release();
      (await applyCut(model, { direction, embedding: true, preserveRowNorm: true })).release();
      // Rank 2: the multi-step update.
      const plane = [0, 2].map((j) => Float32Array.from({ length: model.config.hiddenSize }, (_, i) => (i === j ? 1 : 0)));
      (await applyCut(model, { basis: plane, embedding: true })).release();
      (await applyCut(model, { basis: plane, embedding: true, preserveRowNorm: true })).release();
      model.dispose();
    }
    const rows = 3;
    const vocab = 50;
    const logits = gpu.upload(new Float32Array(rows * vocab).map((_, i) => Math.sin(i)), 'logits');
    const out = gpu.createBuffer(rows * vocab * 4, 'out');
    const batch = gpu.batch('losses');
    recordSoftmax(batch, { input: logits, output: out, rows, cols: vocab });
    recordSoftmax(batch, { input: logits, output: out, rows, cols: vocab, log: true });
    recordSoftmax(batch, { input: out, rows, cols: vocab });
    recordCrossEntropy(batch, { logits, targets: gpu.upload(new Uint32Array([1, 2, 3]), 'targets'), nll: gpu.createBuffer(rows * 4, 'nll'), rows, vocab });
    recordKlDivergence(batch, { logitsP: logits, logitsQ: out, kl: gpu.createBuffer(rows * 4, 'kl'), rows, vocab });
    // The Gram matrix of paired differences (measure --mode subspace).
    recordGramDifference(batch, { a: { buffer: logits }, b: { buffer: out }, count: rows, dim: vocab, gram: { buffer: gpu.createBuffer(vocab * vocab * 4, 'gram') } });
    // The split-k decode kernel that adapters without a tuning file (real GPUs) use.
    const { matrix } = await packedMatrix(gpu, 'w', 'BF16', 8, 64, new Float32Array(8 * 64).fill(0.5));
    for (const SUBGROUPS of [false, true]) {
      recordMatmul(batch, { x: gpu.createBuffer(64 * 4, 'x'), tokens: 1, weight: matrix, y: gpu.createBuffer(8 * 4, 'y'), tiling: { TM: 1, TN: 4, WG: 64, SUBGROUPS } });
    }
    await batch.submit();

    const kernels = gpu.compiledKernels();
    const messages = (await Promise.all(kernels.map((k) => k.compilation))).flat();
    expect(messages).toEqual([]);
    const compiled = new Set(kernels.map((k) => k.name));
    const files = Object.keys(shaderSources).filter((f) => !f.startsWith('common/'));
    expect(files.filter((f) => !compiled.has(f)), 'shaders that no engine path compiled').toEqual([]);
    console.log(`${kernels.length} kernel variants of ${compiled.size} shaders compiled without a message`);
  });
});
