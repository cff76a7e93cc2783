import type { FileFolder } from '../io/byteSource.ts';
import { formatBytes, GpuOutOfMemoryError } from '../gpu/errors.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { SafetensorsModel } from '../io/safetensors.ts';
import { loadModelConfig, type ModelConfig } from './config.ts';
import { LlamaForward } from './forward.ts';
import { ChatTokenizer, TokenizerError } from './tokenizer.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import {
  checkTensors,
  destroyLlamaWeights,
  isResident,
  layerMatrices,
  StreamedWeights,
  TensorOverlay,
  uploadLlamaWeights,
  uploadVector,
  type LlamaWeights,
} from './weights.ts';

/**
 * Where the weights live: all on the GPU (resident), or uploaded one layer at a time for each
 * forward step (streamed) when they do not fit the GPU memory budget. 'auto' streams only then.
 */
export type Residency = 'auto' | 'resident' | 'streamed';

export interface LoadOptions {
  residency?: Residency;
  onProgress?: (done: number, total: number) => void;
  /** Chat prompts with the model's thinking on (the template's `enable_thinking`); default off. */
  thinking?: boolean;
  /** Told what the user should know that does not stop the work (prompts cut to fit the context). */
  onWarning?: (message: string) => void;
}

/** A model folder's config, tokenizer and weight headers, read and checked against each other: no GPU needed. */
export interface ModelFiles {
  folder: FileFolder;
  config: ModelConfig;
  /** Absent when the folder has no tokenizer.json: the forward pass can still run on token ids. */
  tokenizer: ChatTokenizer | undefined;
  tensors: SafetensorsModel;
}

/**
 * Reads and checks a model folder without touching the GPU: config.json, the tokenizer and its chat
 * template, and the safetensors headers against the config (every tensor present, of its shape and
 * a supported dtype, no layers beyond num_hidden_layers). A bad folder fails here, at once.
 */
export async function openModelFiles(folder: FileFolder): Promise<ModelFiles> {
  const config = await loadModelConfig(folder);
  const tokenizer = (await folder.has('tokenizer.json')) ? await ChatTokenizer.fromFolder(folder, { modelConfig: config }) : undefined;
  const tensors = await SafetensorsModel.open(folder);
  checkTensors(config, tensors);
  return { folder, config, tokenizer, tensors };
}

/** Share of the memory budget the weights may take before 'auto' streams them (the rest: activations, KV cache). */
const RESIDENT_SHARE = 0.75;

/** A Llama-family model on the GPU: config, tokenizer, weights, and its forward pass. */
export class LlamaModel {
  private disposed = false;
  private onWarning: ((message: string) => void) | undefined;
  private readonly warned = new Set<string>();
  /** Names of tensors changed since loading (by a cut); export writes these from the GPU or the overlay. */
  readonly modifiedTensors = new Set<string>();

  private constructor(
    readonly gpu: Gpu,
    readonly folder: FileFolder,
    readonly config: ModelConfig,
    private readonly chatTokenizer: ChatTokenizer | undefined,
    readonly tensors: SafetensorsModel,
    readonly weights: LlamaWeights | StreamedWeights,
    readonly forward: LlamaForward,
  ) {}

  /** Loads a model folder (or the files `openModelFiles` already read and checked) onto the GPU. */
  static async load(gpu: Gpu, source: FileFolder | ModelFiles, options: LoadOptions = {}): Promise<LlamaModel> {
    const { folder, config, tokenizer, tensors } = 'tensors' in source ? source : await openModelFiles(source);
    if (tokenizer) tokenizer.enableThinking = options.thinking ?? false;
    const residency = options.residency ?? 'auto';
    const total = [...tensors.tensors.values()].reduce((n, t) => n + t.byteLength, 0);
    const streamed = residency === 'streamed' || (residency === 'auto' && total > gpu.memoryBudget * RESIDENT_SHARE);
    let weights: LlamaWeights | StreamedWeights;
    if (streamed) {
      const peak = StreamedWeights.peakBytes(config, tensors);
      if (peak > gpu.memoryBudget) {
        throw new GpuOutOfMemoryError(
          `${folder.name}: even streamed one layer at a time, the weights need ${formatBytes(peak)} of GPU memory at once, more than the budget of ${formatBytes(gpu.memoryBudget)}; give it a larger memory budget`,
        );
      }
      weights = new StreamedWeights(gpu, config, new TensorOverlay(tensors), await uploadVector(gpu, tensors, 'model.norm.weight'));
      options.onProgress?.(1, 1);
    } else {
      weights = await uploadLlamaWeights(gpu, config, tensors, options.onProgress);
    }
    const model = new LlamaModel(gpu, folder, config, tokenizer, tensors, weights, new LlamaForward(gpu, config, weights));
    model.onWarning = options.onWarning;
    return model;
  }

  /** Passes a warning to `LoadOptions.onWarning`, each distinct message once. */
  warn(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    this.onWarning?.(message);
  }

  get residency(): 'resident' | 'streamed' {
    return isResident(this.weights) ? 'resident' : 'streamed';
  }

  get tokenizer(): ChatTokenizer {
    if (!this.chatTokenizer) throw new TokenizerError(`${this.folder.name}: tokenizer.json is missing`);
    return this.chatTokenizer;
  }

  /** Every weight matrix on the GPU by its tensor name (resident weights; the tied output projection appears once). */
  matrices(): Map<string, PackedMatrix> {
    const w = this.weights;
    if (!isResident(w)) throw new Error('the weights are streamed: no matrix stays on the GPU');
    const all = [w.embed, w.lmHead, ...w.layers.flatMap(layerMatrices)];
    return new Map(all.map((m) => [m.name, m]));
  }

  /**
   * The matrices on the GPU that hold a tensor of the files, in row order: the tensor itself, or
   * the parts a fused tensor was split into (Phi-3's `qkv_proj`, fused expert stacks), named
   * `tensor[rowStart:rowEnd]`.
   */
  tensorMatrices(tensor: string): PackedMatrix[] {
    const parts = [...this.matrices().values()].filter((m) => m.name === tensor || isPartOf(m.name, tensor));
    return parts.sort((a, b) => partStart(a.name) - partStart(b.name));
  }

  /** Whether a cut changed the tensor, or a part of it. */
  isTensorModified(tensor: string): boolean {
    if (this.modifiedTensors.has(tensor)) return true;
    for (const name of this.modifiedTensors) if (isPartOf(name, tensor)) return true;
    return false;
  }

  /** Bytes of the weights in their files. */
  get weightBytes(): number {
    let total = 0;
    for (const info of this.tensors.tensors.values()) total += info.byteLength;
    return total;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.forward.dispose();
    if (isResident(this.weights)) destroyLlamaWeights(this.gpu, this.weights);
    else this.weights.dispose();
  }
}

const PART = /^(.*)\[(\d+):(\d+)\]$/;
const isPartOf = (name: string, tensor: string) => PART.exec(name)?.[1] === tensor;
const partStart = (name: string) => Number(PART.exec(name)?.[2] ?? 0);
