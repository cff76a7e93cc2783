import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { ablationHooks, uploadBasis } from '../../src/abliterate/ablation.ts';
import { applyCut } from '../../src/abliterate/cut.ts';
import { exportModel } from '../../src/abliterate/export.ts';
import { BlobFolder } from '../../src/io/byteSource.ts';
import { MemoryTarget } from '../../src/io/safetensorsWriter.ts';
import { KvCache } from '../../src/model/kvCache.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { HookRunner, type Hook } from '../../src/model/taps.ts';
import { residualWriters } from '../../src/model/weights.ts';
import { randomModel, toSafetensors, type RandomModelOptions } from '../reference/randomModel.ts';
import { relativeError } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
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

function folderOf(random: ReturnType<typeof randomModel>): BlobFolder {
  return new BlobFolder(
    'random-model',
    new Map([
      ['config.json', new Blob([JSON.stringify(random.configJson)])],
      ['model.safetensors', new Blob([toSafetensors(random.tensors) as Uint8Array<ArrayBuffer>])],
    ]),
  );
}

async function exported(model: LlamaModel): Promise<BlobFolder> {
  const target = new MemoryTarget();
  await exportModel(model, target, { parameters: {} });
  return new BlobFolder('exported', target.blobs());
}

const FAMILIES: [string, RandomModelOptions, number][] = [
  // name, options, residual writers per layer (o_proj + every down_proj)
  ['qwen3, tied', { architecture: 'qwen3', tieWordEmbeddings: true }, 2],
  ['phi3, fused projections', { architecture: 'phi3' }, 2],
  ['mixtral, top-2 of 4', { architecture: 'mixtral', numExperts: 4, topK: 2 }, 1 + 4],
  ['qwen2-moe, shared expert', { architecture: 'qwen2_moe', numExperts: 4, topK: 2, expertIntermediateSize: 48 }, 1 + 4 + 1],
  ['qwen3-moe, fused expert tensors', { architecture: 'qwen3_moe', numExperts: 4, topK: 2, expertIntermediateSize: 40, fusedExperts: true }, 1 + 4],
];

describe('the cut in every family', () => {
  it.each(FAMILIES)('%s: the cut equals run-time ablation, and the exported model runs as the cut one', async (_, options, writersPerLayer) => {
    const random = randomModel({ hiddenSize: 64, intermediateSize: 128, numLayers: 2, vocabSize: 200, dtype: 'F32', ...options });
    const model = await LlamaModel.load(gpu, folderOf(random));
    try {
      const weights = model.weights;
      if (!('layers' in weights)) throw new Error('expected resident weights');
      for (const layer of weights.layers) {
        const writers = residualWriters(layer);
        expect(writers.attention.length + writers.mlp.length).toBe(writersPerLayer);
      }
      const rng = new Random(random.seed);
      const prompts = [9, 4, 13].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const v = rng.normals(random.config.hiddenSize);
      const norm = Math.hypot(...v);
      const direction = Float32Array.from(v, (x) => x / norm);
      const original = await lastLogits(model, prompts);
      const basis = uploadBasis(gpu, [direction]);
      const ablated = await lastLogits(model, prompts, ablationHooks(model.config, basis));
      gpu.destroyBuffer(basis);
      const cut = await applyCut(model, { direction, embedding: true });
      expect(cut.tensors.length).toBe(1 + random.config.numLayers * writersPerLayer);
      const afterCut = await lastLogits(model, prompts);
      const error = relativeError(afterCut, ablated);
      console.log(`${_}: cut vs run-time ablation relative error ${error.toExponential(2)}; change from the original ${relativeError(ablated, original).toExponential(2)}`);
      expect(error, `seed ${random.seed}`).toBeLessThan(1e-4);
      expect(relativeError(ablated, original)).toBeGreaterThan(1e-3);
      cut.release();

      const reloaded = await LlamaModel.load(gpu, await exported(model));
      try {
        expect(await lastLogits(reloaded, prompts)).toEqual(afterCut);
      } finally {
        reloaded.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it('a streamed MoE cut writes what the resident cut writes', async () => {
    const random = randomModel({ architecture: 'qwen2_moe', numExperts: 4, topK: 2, hiddenSize: 64, intermediateSize: 128, expertIntermediateSize: 48, numLayers: 2, vocabSize: 200, dtype: 'BF16' });
    const rng = new Random(random.seed);
    const v = rng.normals(64);
    const norm = Math.hypot(...v);
    const direction = Float32Array.from(v, (x) => x / norm);
    const files = async (residency: 'resident' | 'streamed') => {
      const model = await LlamaModel.load(gpu, folderOf(random), { residency });
      try {
        await applyCut(model, { direction, embedding: true, alpha: 0.8 });
        const target = new MemoryTarget();
        await exportModel(model, target, { parameters: {} });
        return new Uint8Array(await target.blobs().get('model.safetensors')!.arrayBuffer());
      } finally {
        model.dispose();
      }
    };
    const resident = await files('resident');
    const streamed = await files('streamed');
    expect(Buffer.compare(Buffer.from(resident), Buffer.from(streamed))).toBe(0);
    expect(Buffer.compare(Buffer.from(resident), Buffer.from(toSafetensors(random.tensors)))).not.toBe(0);
  });
});
