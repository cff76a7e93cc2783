import { readFile } from 'node:fs/promises';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { exportModel } from '../../src/abliterate/export.ts';
import { BlobFolder } from '../../src/io/byteSource.ts';
import { MemoryTarget } from '../../src/io/safetensorsWriter.ts';
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

/**
 * A random-weight model with the bundled model's tokenizer and chat template (or `chatTemplate`
 * instead), served from memory, loaded on the GPU: chat prompts for models with random weights.
 */
export async function loadRandomChatModel(gpu: Gpu, options: RandomModelOptions = {}, chatTemplate?: string): Promise<{ random: RandomModel; model: LlamaModel }> {
  const random = randomModel({ hiddenSize: 64, intermediateSize: 128, numLayers: 3, vocabSize: 1024, dtype: 'F32', ...options });
  const config = JSON.parse(await readFile('models/tiny-chat/tokenizer_config.json', 'utf8')) as Record<string, unknown>;
  const folder = new BlobFolder(
    'random-chat-model',
    new Map([
      ['config.json', new Blob([JSON.stringify(random.configJson)])],
      ['model.safetensors', new Blob([toSafetensors(random.tensors) as Uint8Array<ArrayBuffer>])],
      ['tokenizer.json', new Blob([await readFile('models/tiny-chat/tokenizer.json')])],
      ['tokenizer_config.json', new Blob([JSON.stringify(chatTemplate === undefined ? config : { ...config, chat_template: chatTemplate })])],
    ]),
  );
  return { random, model: await LlamaModel.load(gpu, folder) };
}

/** The model as `exportModel` writes it now, as a folder in memory. */
export async function exportedFolder(model: LlamaModel): Promise<BlobFolder> {
  const target = new MemoryTarget();
  await exportModel(model, target, { parameters: {} });
  return new BlobFolder('exported', target.blobs());
}
