import type { FileFolder } from '../io/byteSource.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { SafetensorsModel } from '../io/safetensors.ts';
import { loadModelConfig, type ModelConfig } from './config.ts';
import { LlamaForward } from './forward.ts';
import { ChatTokenizer } from './tokenizer.ts';
import { destroyLlamaWeights, uploadLlamaWeights, type LlamaWeights } from './weights.ts';

export interface LoadOptions {
  onProgress?: (done: number, total: number) => void;
}

/** A Llama-family model on the GPU: config, tokenizer, weights, and its forward pass. */
export class LlamaModel {
  private disposed = false;

  private constructor(
    readonly gpu: Gpu,
    readonly folder: FileFolder,
    readonly config: ModelConfig,
    readonly tokenizer: ChatTokenizer,
    readonly tensors: SafetensorsModel,
    readonly weights: LlamaWeights,
    readonly forward: LlamaForward,
  ) {}

  static async load(gpu: Gpu, folder: FileFolder, options: LoadOptions = {}): Promise<LlamaModel> {
    const config = await loadModelConfig(folder);
    const tokenizer = await ChatTokenizer.fromFolder(folder);
    const tensors = await SafetensorsModel.open(folder);
    const weights = await uploadLlamaWeights(gpu, config, tensors, options.onProgress);
    return new LlamaModel(gpu, folder, config, tokenizer, tensors, weights, new LlamaForward(gpu, config, weights));
  }

  /** Bytes of weights on the GPU. */
  get weightBytes(): number {
    let total = 0;
    for (const info of this.tensors.tensors.values()) total += info.byteLength;
    return total;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.forward.dispose();
    destroyLlamaWeights(this.gpu, this.weights);
  }
}
