import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { GpuOutOfMemoryError } from '../../src/gpu/errors.ts';
import { BlobFolder } from '../../src/io/byteSource.ts';
import { SafetensorsModel } from '../../src/io/safetensors.ts';
import { MemoryTarget } from '../../src/io/safetensorsWriter.ts';
import { applyCut } from '../../src/abliterate/cut.ts';
import { exportModel } from '../../src/abliterate/export.ts';
import { measure } from '../../src/abliterate/measure.ts';
import { generate } from '../../src/model/generate.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { StreamedWeights } from '../../src/model/weights.ts';
import { randomModel, toSafetensors } from '../reference/randomModel.ts';
import { testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

function folderOf(random: ReturnType<typeof randomModel>): BlobFolder {
  return new BlobFolder(
    'random-model',
    new Map([
      ['config.json', new Blob([JSON.stringify(random.configJson)])],
      ['model.safetensors', new Blob([toSafetensors(random.tensors) as Uint8Array<ArrayBuffer>])],
    ]),
  );
}

async function exported(model: LlamaModel): Promise<Map<string, Uint8Array>> {
  const target = new MemoryTarget();
  await exportModel(model, target, { parameters: {} });
  const files = new Map<string, Uint8Array>();
  for (const [name, blob] of target.blobs()) files.set(name, new Uint8Array(await blob.arrayBuffer()));
  return files;
}

describe('streamed weights', () => {
  it('measure, generation, cut and export give exactly what resident weights give, within a memory budget the whole model exceeds', async () => {
    const random = randomModel({ hiddenSize: 64, intermediateSize: 256, numLayers: 8, vocabSize: 512, numHeads: 4, numKvHeads: 2, dtype: 'BF16' });
    const folder = folderOf(random);
    const rng = new Random(random.seed);
    const prompts = (n: number) => Array.from({ length: n }, () => Array.from({ length: rng.int(3, 12) }, () => rng.int(0, 511)));
    const harmful = prompts(10);
    const harmless = prompts(10);
    const direction = Float32Array.from(rng.normals(64));
    const norm = Math.hypot(...direction);
    direction.forEach((v, i) => (direction[i] = v / norm));

    const resident = await LlamaModel.load(gpu, folder, { residency: 'resident' });
    const residentMeasure = await measure(resident, harmful, harmless, { batchSize: 4 });
    const residentText = await generate(resident, harmful.slice(0, 3), { maxNewTokens: 10, stopTokenIds: new Set() });
    await applyCut(resident, { direction, embedding: true, alpha: 0.9, strengths: [0, 1, 1, 0.5, 1, 0, 1, 1] });
    const residentAfter = await generate(resident, harmful.slice(0, 3), { maxNewTokens: 10, stopTokenIds: new Set() });
    const residentFiles = await exported(resident);
    const weightBytes = resident.weightBytes;
    resident.dispose();

    // A device that may hold less than the weights: resident loading fails, streaming fits.
    const { config } = random;
    // Room for one step's activations, the KV cache and the measured residuals (a few hundred KiB here).
    const activations = 320 * 1024;
    const budget = StreamedWeights.peakBytes(config, await SafetensorsModel.open(folder)) + activations;
    expect(budget).toBeLessThan(weightBytes);
    const small = await testGpu({ memoryBudget: budget });
    try {
      await expect(LlamaModel.load(small, folder, { residency: 'resident' })).rejects.toThrow(GpuOutOfMemoryError);
      expect(small.bufferCount).toBe(0);
      const streamed = await LlamaModel.load(small, folder);
      expect(streamed.residency).toBe('streamed');
      const streamedMeasure = await measure(streamed, harmful, harmless, { batchSize: 4 });
      expect(streamedMeasure.scores).toEqual(residentMeasure.scores);
      expect(streamedMeasure.directions).toEqual(residentMeasure.directions);
      expect((await generate(streamed, harmful.slice(0, 3), { maxNewTokens: 10, stopTokenIds: new Set() })).tokens).toEqual(residentText.tokens);
      const cut = await applyCut(streamed, { direction, embedding: true, alpha: 0.9, strengths: [0, 1, 1, 0.5, 1, 0, 1, 1] });
      expect((await generate(streamed, harmful.slice(0, 3), { maxNewTokens: 10, stopTokenIds: new Set() })).tokens).toEqual(residentAfter.tokens);
      const streamedFiles = await exported(streamed);
      expect([...streamedFiles.keys()]).toEqual([...residentFiles.keys()]);
      for (const [name, bytes] of residentFiles) expect(Buffer.compare(Buffer.from(bytes), Buffer.from(streamedFiles.get(name)!)), name).toBe(0);
      // Undo restores the original weights exactly.
      await cut.undo();
      expect(streamed.modifiedTensors.size).toBe(0);
      expect((await generate(streamed, harmful.slice(0, 3), { maxNewTokens: 10, stopTokenIds: new Set() })).tokens).toEqual(residentText.tokens);
      streamed.dispose();
      expect(small.bufferCount).toBe(0);
    } finally {
      small.dispose();
    }
  });

  it('cuts each expert of a fused expert stack into the streamed overlay: the same bytes as a resident cut, and undo restores them', async () => {
    const random = randomModel({ architecture: 'qwen3_moe', numExperts: 4, topK: 2, expertIntermediateSize: 40, fusedExperts: true, hiddenSize: 64, numLayers: 3, vocabSize: 256, numHeads: 4, numKvHeads: 2, dtype: 'BF16' });
    const folder = folderOf(random);
    const rng = new Random(random.seed);
    const prompts = Array.from({ length: 3 }, () => Array.from({ length: rng.int(3, 9) }, () => rng.int(0, 255)));
    const direction = Float32Array.from(rng.normals(64));
    const norm = Math.hypot(...direction);
    direction.forEach((v, i) => (direction[i] = v / norm));
    const cutOptions = { direction, embedding: true, alpha: 1.1, strengths: [1, 0.5, 1] };

    const resident = await LlamaModel.load(gpu, folder, { residency: 'resident' });
    await applyCut(resident, cutOptions);
    const residentAfter = await generate(resident, prompts, { maxNewTokens: 6, stopTokenIds: new Set() });
    const residentFiles = await exported(resident);
    const residentModified = [...resident.modifiedTensors].sort();
    resident.dispose();

    const streamed = await LlamaModel.load(gpu, folder, { residency: 'streamed' });
    try {
      expect(streamed.residency).toBe('streamed');
      const original = await exported(streamed);
      const before = await generate(streamed, prompts, { maxNewTokens: 6, stopTokenIds: new Set() });
      const cut = await applyCut(streamed, cutOptions);
      // Every expert's down_proj lives in one fused tensor per layer: that tensor is what changed.
      expect([...streamed.modifiedTensors].sort()).toEqual(residentModified);
      expect(residentModified.filter((name) => name.startsWith('model.layers.0.mlp.experts.down_proj[')).length).toBe(4);
      expect((await generate(streamed, prompts, { maxNewTokens: 6, stopTokenIds: new Set() })).tokens).toEqual(residentAfter.tokens);
      const streamedFiles = await exported(streamed);
      for (const [name, bytes] of residentFiles) expect(Buffer.compare(Buffer.from(bytes), Buffer.from(streamedFiles.get(name)!)), name).toBe(0);
      await cut.undo();
      expect(streamed.modifiedTensors.size).toBe(0);
      const restored = await exported(streamed);
      for (const [name, bytes] of original) expect(Buffer.compare(Buffer.from(bytes), Buffer.from(restored.get(name)!)), name).toBe(0);
      expect((await generate(streamed, prompts, { maxNewTokens: 6, stopTokenIds: new Set() })).tokens).toEqual(before.tokens);
    } finally {
      streamed.dispose();
    }
  });
});
