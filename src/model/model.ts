import type { FileFolder } from '../io/byteSource.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { SafetensorsModel } from '../io/safetensors.ts';
import { loadModelConfig, type ModelConfig } from './config.ts';
import { LlamaForward } from './forward.ts';
import { ChatTokenizer, TokenizerError } from './tokenizer.ts';
import type { PackedMatrix } from './packedMatrix.ts';
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
    private readonly chatTokenizer: ChatTokenizer | undefined,
    readonly tensors: SafetensorsModel,
    readonly weights: LlamaWeights,
    readonly forward: LlamaForward,
  ) {}

  static async load(gpu: Gpu, folder: FileFolder, options: LoadOptions = {}): Promise<LlamaModel> {
    const config = await loadModelConfig(folder);
    // The forward pass needs no tokenizer: a folder of weights alone can still be run on token ids.
    const tokenizer = (await folder.has('tokenizer.json')) ? await ChatTokenizer.fromFolder(folder, { modelConfig: config }) : undefined;
    const tensors = await SafetensorsModel.open(folder);
    const weights = await uploadLlamaWeights(gpu, config, tensors, options.onProgress);
    return new LlamaModel(gpu, folder, config, tokenizer, tensors, weights, new LlamaForward(gpu, config, weights));
  }

  get tokenizer(): ChatTokenizer {
    if (!this.chatTokenizer) throw new TokenizerError(`${this.folder.name}: tokenizer.json is missing`);
    return this.chatTokenizer;
  }

  /** Names of tensors changed on the GPU since loading (by a cut); export writes these from the GPU. */
  readonly modifiedTensors = new Set<string>();

  /** Every weight matrix on the GPU by its tensor name (the tied output projection appears once). */
  matrices(): Map<string, PackedMatrix> {
    const w = this.weights;
    const all = [w.embed, w.lmHead, ...w.layers.flatMap((l) => [l.q, l.k, l.v, l.o, l.gate, l.up, l.down])];
    return new Map(all.map((m) => [m.name, m]));
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
