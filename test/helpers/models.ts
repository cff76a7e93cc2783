import type { Gpu } from '../../src/gpu/gpu.ts';
import { BlobFolder } from '../../src/io/byteSource.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { randomModel, toSafetensors, type RandomModel, type RandomModelOptions } from '../reference/randomModel.ts';

/** A random-weight model served from memory, loaded on the GPU. */
export async function loadRandomModel(gpu: Gpu, options: RandomModelOptions = {}): Promise<{ random: RandomModel; model: LlamaModel; folder: BlobFolder }> {
  const random = randomModel({ hiddenSize: 64, intermediateSize: 160, numLayers: 3, vocabSize: 300, ...options });
  const folder = new BlobFolder(
    'random-model',
    new Map([
      ['config.json', new Blob([JSON.stringify(random.configJson)])],
      ['model.safetensors', new Blob([toSafetensors(random.tensors) as Uint8Array<ArrayBuffer>])],
    ]),
  );
  return { random, model: await LlamaModel.load(gpu, folder), folder };
}
