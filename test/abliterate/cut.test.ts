import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { ablationHooks, uploadBasis } from '../../src/abliterate/ablation.ts';
import { applyCut, layerWeights } from '../../src/abliterate/cut.ts';
import { KvCache } from '../../src/model/kvCache.ts';
import type { LlamaModel } from '../../src/model/model.ts';
import type { LlamaWeights } from '../../src/model/weights.ts';
import { HookRunner, type Hook } from '../../src/model/taps.ts';
import { relativeError } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

async function lastLogits(model: LlamaModel, prompts: number[][], hooks: Hook[] = []): Promise<Float32Array> {
  const cache = new KvCache(gpu, model.config, prompts.length, Math.max(...prompts.map((p) => p.length)));
  let start = 0;
  const sequences = prompts.map((p, slot) => {
    const s = { slot, start, length: p.length, firstPosition: 0 };
    start += p.length;
    return s;
  });
  const batch = gpu.batch('logits');
  const runner = new HookRunner(hooks, model.config.numLayers);
  const logits = model.forward.recordStep(batch, { tokens: prompts.flat(), sequences, logits: 'last' }, cache, runner)!;
  await batch.submit();
  runner.endStep(gpu, sequences);
  const out = await gpu.readF32(logits, 0, prompts.length * model.config.vocabSize);
  cache.dispose();
  return out;
}

async function allWeights(model: LlamaModel): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const [name, matrix] of model.matrices()) {
    for (const [i, chunk] of matrix.chunks.entries()) out.set(`${name}#${i}`, new Uint8Array(await gpu.read(chunk.buffer)));
  }
  return out;
}

function unit(rng: Random, n: number): Float32Array {
  const v = rng.normals(n);
  const norm = Math.hypot(...v);
  return Float32Array.from(v, (x) => x / norm);
}

describe('cut', () => {
  it.each([
    ['untied', false],
    ['tied', true],
  ])('cutting the embedding, o_proj and down_proj with α = 1 equals ablating d̂ at run time (%s embeddings)', async (_, tied) => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32', tieWordEmbeddings: tied });
    try {
      const rng = new Random(random.seed);
      const prompts = [9, 4, 13].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const direction = unit(rng, random.config.hiddenSize);
      const original = await lastLogits(model, prompts);
      const basis = uploadBasis(gpu, [direction]);
      const ablated = await lastLogits(model, prompts, ablationHooks(model.config, basis));
      const cut = await applyCut(model, { direction, embedding: true });
      const afterCut = await lastLogits(model, prompts);
      const error = relativeError(afterCut, ablated);
      console.log(`${_}: cut vs runtime ablation relative error ${error.toExponential(2)}; change from the original ${relativeError(ablated, original).toExponential(2)}`);
      expect(error, `seed ${random.seed}`).toBeLessThan(1e-4);
      // The intervention really changed the model.
      expect(relativeError(ablated, original)).toBeGreaterThan(1e-3);
      cut.release();
      gpu.destroyBuffer(basis);
    } finally {
      model.dispose();
    }
  });

  it('undo from a snapshot restores every weight bit for bit; the inverse update comes back within rounding', async () => {
    for (const dtype of ['BF16', 'F32'] as const) {
      const { random, model } = await loadRandomModel(gpu, { dtype });
      try {
        const rng = new Random(random.seed);
        const before = await allWeights(model);
        const direction = unit(rng, random.config.hiddenSize);
        const exact = await applyCut(model, { direction, embedding: true, snapshot: true, alpha: 0.8 });
        expect(model.modifiedTensors.size).toBe(1 + 2 * random.config.numLayers);
        const changed = await allWeights(model);
        expect([...before].some(([k, v]) => !equalBytes(v, changed.get(k)!))).toBe(true);
        await exact.undo();
        const restored = await allWeights(model);
        for (const [k, v] of before) expect(equalBytes(v, restored.get(k)!), k).toBe(true);
        expect(model.modifiedTensors.size).toBe(0);

        if (dtype === 'F32') {
          const inverse = await applyCut(model, { direction, embedding: true, alpha: 0.8 });
          await inverse.undo();
          for (const [name, matrix] of model.matrices()) {
            const now = new Float32Array(await gpu.read(matrix.chunks[0]!.buffer));
            const was = new Float32Array(before.get(`${name}#0`)!.buffer);
            expect(relativeError(now, was), name).toBeLessThan(1e-6);
          }
        }
      } finally {
        model.dispose();
      }
    }
  });

  it('a cut removes the direction from what each cut matrix writes', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed);
      const direction = unit(rng, random.config.hiddenSize);
      const cut = await applyCut(model, { direction, layerWeights: [1, 0, 0.5] });
      for (const [l, layer] of (model.weights as LlamaWeights).layers.entries()) {
        const w = new Float32Array(await gpu.read(layer.o.chunks[0]!.buffer));
        const cols = layer.o.cols;
        // dᵀW after the cut is (1 − α_l) times dᵀW before.
        const dw = Array.from({ length: cols }, (_, j) => direction.reduce((s, d, i) => s + d * w[i * cols + j]!, 0));
        const original = random.weights.get(`model.layers.${l}.self_attn.o_proj.weight`);
        const dw0 = Array.from({ length: cols }, (_, j) => direction.reduce((s, d, i) => s + d * original[i * cols + j]!, 0));
        const expected = dw0.map((v) => v * (1 - [1, 0, 0.5][l]!));
        expect(relativeError(dw, expected), `layer ${l}`).toBeLessThan(1e-4);
      }
      expect(cut.tensors).toHaveLength(4);
      cut.release();
    } finally {
      model.dispose();
    }
  });

  it('o_proj and down_proj take their own per-layer strengths', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed);
      const direction = unit(rng, random.config.hiddenSize);
      const strengths = { o_proj: [1, 0, 0.5], down_proj: [0, 1.25, 0.3] };
      const cut = await applyCut(model, { direction, attentionLayerWeights: strengths.o_proj, mlpLayerWeights: strengths.down_proj, snapshot: true });
      for (const [l, layer] of (model.weights as LlamaWeights).layers.entries()) {
        for (const [matrix, name, tensor] of [
          [layer.o, 'o_proj', `model.layers.${l}.self_attn.o_proj.weight`],
          [layer.down, 'down_proj', `model.layers.${l}.mlp.down_proj.weight`],
        ] as const) {
          const w = new Float32Array(await gpu.read(matrix.chunks[0]!.buffer));
          const original = random.weights.get(tensor);
          const cols = matrix.cols;
          const dw = Array.from({ length: cols }, (_, j) => direction.reduce((s, d, i) => s + d * w[i * cols + j]!, 0));
          const dw0 = Array.from({ length: cols }, (_, j) => direction.reduce((s, d, i) => s + d * original[i * cols + j]!, 0));
          const expected = dw0.map((v) => v * (1 - strengths[name][l]!));
          expect(relativeError(dw, expected), `${name} of layer ${l}`).toBeLessThan(1e-4);
        }
      }
      expect(cut.tensors).toHaveLength(4);
      await cut.undo();
    } finally {
      model.dispose();
    }
  });
});

describe('layer weights', () => {
  it('selects layers by range, list, median and top-k, and shapes them with a tent', () => {
    expect(layerWeights(5, { kind: 'all' })).toEqual([1, 1, 1, 1, 1]);
    expect(layerWeights(5, { kind: 'range', from: 1, to: 3 })).toEqual([0, 1, 1, 1, 0]);
    expect(layerWeights(5, { kind: 'list', layers: [0, 4] })).toEqual([1, 0, 0, 0, 1]);
    const scores = [0.1, 0.9, 0.5, 0.7, 0.2];
    expect(layerWeights(5, { kind: 'above_median' }, { kind: 'constant' }, scores)).toEqual([0, 1, 0, 1, 0]);
    expect(layerWeights(5, { kind: 'top_k', k: 2 }, { kind: 'constant' }, scores)).toEqual([0, 1, 0, 1, 0]);
    expect(layerWeights(5, { kind: 'all' }, { kind: 'tent', peak: 2, width: 2, min: 0.2, max: 1 })).toEqual([0.2, 0.6, 1, 0.6, 0.2]);
    expect(() => layerWeights(5, { kind: 'range', from: 3, to: 9 })).toThrow(/outside/);
    expect(() => layerWeights(5, { kind: 'top_k', k: 2 })).toThrow(/score/);
  });
});

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
