import type { Gpu } from '../gpu/gpu.ts';
import { decodeToFloat32 } from '../io/dtype.ts';
import { bytesPerElement, SUPPORTED_DTYPES } from '../io/dtype.ts';
import type { SafetensorsModel } from '../io/safetensors.ts';
import type { ModelConfig } from './config.ts';
import { uploadMatrix, type PackedMatrix } from '../gpu/packedMatrix.ts';

export interface LayerWeights {
  inputNorm: GPUBuffer;
  postAttentionNorm: GPUBuffer;
  q: PackedMatrix;
  k: PackedMatrix;
  v: PackedMatrix;
  o: PackedMatrix;
  qBias: GPUBuffer | undefined;
  kBias: GPUBuffer | undefined;
  vBias: GPUBuffer | undefined;
  oBias: GPUBuffer | undefined;
  gate: PackedMatrix;
  up: PackedMatrix;
  down: PackedMatrix;
  gateBias: GPUBuffer | undefined;
  upBias: GPUBuffer | undefined;
  downBias: GPUBuffer | undefined;
}

export interface LlamaWeights {
  embed: PackedMatrix;
  layers: LayerWeights[];
  finalNorm: GPUBuffer;
  /** The output projection; the same object as `embed` when the embeddings are tied. */
  lmHead: PackedMatrix;
}

export class WeightError extends Error {
  override name = 'WeightError';
}

/** The tensors a model of this config must have, with their shapes, by Hugging Face name. */
export function expectedTensors(config: ModelConfig): Map<string, number[]> {
  const { hiddenSize: h, intermediateSize: i, numHeads, numKvHeads, headDim, vocabSize } = config;
  const expected = new Map<string, number[]>([['model.embed_tokens.weight', [vocabSize, h]], ['model.norm.weight', [h]]]);
  if (!config.tieWordEmbeddings) expected.set('lm_head.weight', [vocabSize, h]);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}`;
    expected.set(`${p}.input_layernorm.weight`, [h]);
    expected.set(`${p}.post_attention_layernorm.weight`, [h]);
    expected.set(`${p}.self_attn.q_proj.weight`, [numHeads * headDim, h]);
    expected.set(`${p}.self_attn.k_proj.weight`, [numKvHeads * headDim, h]);
    expected.set(`${p}.self_attn.v_proj.weight`, [numKvHeads * headDim, h]);
    expected.set(`${p}.self_attn.o_proj.weight`, [h, numHeads * headDim]);
    if (config.attentionBias) {
      expected.set(`${p}.self_attn.q_proj.bias`, [numHeads * headDim]);
      expected.set(`${p}.self_attn.k_proj.bias`, [numKvHeads * headDim]);
      expected.set(`${p}.self_attn.v_proj.bias`, [numKvHeads * headDim]);
    }
    if (config.oProjBias) expected.set(`${p}.self_attn.o_proj.bias`, [h]);
    expected.set(`${p}.mlp.gate_proj.weight`, [i, h]);
    expected.set(`${p}.mlp.up_proj.weight`, [i, h]);
    expected.set(`${p}.mlp.down_proj.weight`, [h, i]);
    if (config.mlpBias) {
      expected.set(`${p}.mlp.gate_proj.bias`, [i]);
      expected.set(`${p}.mlp.up_proj.bias`, [i]);
      expected.set(`${p}.mlp.down_proj.bias`, [h]);
    }
  }
  return expected;
}

/** Checks that every tensor the config needs is present with the right shape, before anything is uploaded. */
export function checkTensors(config: ModelConfig, model: SafetensorsModel): void {
  const problems: string[] = [];
  for (const [name, shape] of expectedTensors(config)) {
    const info = model.tensors.get(name);
    const stored = model.allTensors.get(name);
    if (!info && stored) problems.push(`${name} has dtype ${stored.dtype}, which is not supported (only ${SUPPORTED_DTYPES.join(', ')})`);
    else if (!info) problems.push(`${name} is missing`);
    else if (info.shape.length !== shape.length || info.shape.some((d, j) => d !== shape[j])) {
      problems.push(`${name} has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`);
    }
  }
  if (problems.length) {
    const shown = problems.slice(0, 5).join('; ');
    throw new WeightError(`${model.folder}: the weights do not match config.json: ${shown}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`);
  }
}

/** Reads tensors by name: the safetensors files, or those with some tensors replaced (a streamed cut). */
export type TensorSource = Pick<SafetensorsModel, 'tensor' | 'read' | 'readRange'>;

/** Uploads a 2-D tensor of the file in its dtype, reading it chunk by chunk. */
export function uploadTensorMatrix(gpu: Gpu, model: TensorSource, name: string): Promise<PackedMatrix> {
  const info = model.tensor(name);
  const [rows, cols] = info.shape as [number, number];
  const rowBytes = cols * bytesPerElement(info.dtype);
  return uploadMatrix(gpu, name, info.dtype, rows, cols, (rowStart, count) => model.readRange(name, rowStart * rowBytes, count * rowBytes));
}

/** Uploads a 1-D tensor (norm weights, biases) converted to f32: they are small and never modified. */
export async function uploadVector(gpu: Gpu, model: TensorSource, name: string): Promise<GPUBuffer> {
  return gpu.upload(decodeToFloat32(await model.read(name), model.tensor(name).dtype), name);
}

/** Uploads one decoder layer's weights; on failure (out of memory, a read error) frees what it uploaded. */
export async function uploadLayer(gpu: Gpu, config: ModelConfig, model: TensorSource, l: number): Promise<LayerWeights> {
  const p = `model.layers.${l}`;
  const uploaded: (GPUBuffer | PackedMatrix)[] = [];
  const track = async <T extends GPUBuffer | PackedMatrix>(upload: Promise<T>): Promise<T> => {
    const item = await upload;
    uploaded.push(item);
    return item;
  };
  const matrix = (name: string) => track(uploadTensorMatrix(gpu, model, `${p}.${name}.weight`));
  const vector = (name: string) => track(uploadVector(gpu, model, `${p}.${name}`));
  const bias = (present: boolean, name: string) => (present ? vector(`${name}.bias`) : undefined);
  try {
    return {
      inputNorm: await vector('input_layernorm.weight'),
      postAttentionNorm: await vector('post_attention_layernorm.weight'),
      q: await matrix('self_attn.q_proj'),
      k: await matrix('self_attn.k_proj'),
      v: await matrix('self_attn.v_proj'),
      o: await matrix('self_attn.o_proj'),
      qBias: await bias(config.attentionBias, 'self_attn.q_proj'),
      kBias: await bias(config.attentionBias, 'self_attn.k_proj'),
      vBias: await bias(config.attentionBias, 'self_attn.v_proj'),
      oBias: await bias(config.oProjBias, 'self_attn.o_proj'),
      gate: await matrix('mlp.gate_proj'),
      up: await matrix('mlp.up_proj'),
      down: await matrix('mlp.down_proj'),
      gateBias: await bias(config.mlpBias, 'mlp.gate_proj'),
      upBias: await bias(config.mlpBias, 'mlp.up_proj'),
      downBias: await bias(config.mlpBias, 'mlp.down_proj'),
    };
  } catch (error) {
    for (const item of uploaded) {
      if ('chunks' in item) destroyMatrix(gpu, item);
      else gpu.destroyBuffer(item);
    }
    throw error;
  }
}

export function layerMatrices(layer: LayerWeights): PackedMatrix[] {
  return [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down];
}

export function destroyMatrix(gpu: Gpu, matrix: PackedMatrix): void {
  for (const c of matrix.chunks) gpu.destroyBuffer(c.buffer);
}

export function destroyLayer(gpu: Gpu, layer: LayerWeights): void {
  for (const m of layerMatrices(layer)) destroyMatrix(gpu, m);
  for (const v of [layer.inputNorm, layer.postAttentionNorm, layer.qBias, layer.kBias, layer.vBias, layer.oBias, layer.gateBias, layer.upBias, layer.downBias]) {
    if (v) gpu.destroyBuffer(v);
  }
}

export async function uploadLlamaWeights(gpu: Gpu, config: ModelConfig, model: TensorSource, onProgress?: (done: number, total: number) => void): Promise<LlamaWeights> {
  const total = config.numLayers + 2;
  const layers: LayerWeights[] = [];
  let embed: PackedMatrix | undefined;
  let lmHead: PackedMatrix | undefined;
  let finalNorm: GPUBuffer | undefined;
  try {
    embed = await uploadTensorMatrix(gpu, model, 'model.embed_tokens.weight');
    onProgress?.(1, total);
    for (let l = 0; l < config.numLayers; l++) {
      layers.push(await uploadLayer(gpu, config, model, l));
      // Lets Dawn release the staging copies of this layer's uploads: host memory holds one layer, not the model.
      await gpu.finish();
      onProgress?.(l + 2, total);
    }
    finalNorm = await uploadVector(gpu, model, 'model.norm.weight');
    lmHead = config.tieWordEmbeddings ? embed : await uploadTensorMatrix(gpu, model, 'lm_head.weight');
    await gpu.finish();
  } catch (error) {
    // Out of memory half-way (or a read error): free what was uploaded.
    if (embed) destroyMatrix(gpu, embed);
    if (lmHead && lmHead !== embed) destroyMatrix(gpu, lmHead);
    if (finalNorm) gpu.destroyBuffer(finalNorm);
    for (const l of layers) destroyLayer(gpu, l);
    throw error;
  }
  onProgress?.(total, total);
  return { embed, layers, finalNorm, lmHead };
}

export function destroyLlamaWeights(gpu: Gpu, weights: LlamaWeights): void {
  destroyMatrix(gpu, weights.embed);
  if (weights.lmHead !== weights.embed) destroyMatrix(gpu, weights.lmHead);
  for (const l of weights.layers) destroyLayer(gpu, l);
  gpu.destroyBuffer(weights.finalNorm);
}

/**
 * Tensors read from the model's files, except those replaced by new bytes (the matrices a cut
 * changed while the weights are streamed): those stay in host memory until exported.
 */
export class TensorOverlay implements TensorSource {
  readonly replaced = new Map<string, Uint8Array>();

  constructor(private readonly files: SafetensorsModel) {}

  tensor(name: string) {
    return this.files.tensor(name);
  }

  async read(name: string): Promise<Uint8Array> {
    return this.replaced.get(name) ?? this.files.read(name);
  }

  async readRange(name: string, byteStart: number, byteLength: number): Promise<Uint8Array> {
    const bytes = this.replaced.get(name);
    return bytes ? bytes.subarray(byteStart, byteStart + byteLength) : this.files.readRange(name, byteStart, byteLength);
  }
}

/**
 * Weights kept off the GPU and uploaded when needed: one decoder layer (or the embedding, or the
 * output projection) at a time, for models larger than the GPU memory the run may use.
 */
export class StreamedWeights {
  constructor(
    private readonly gpu: Gpu,
    private readonly config: ModelConfig,
    readonly source: TensorOverlay,
    readonly finalNorm: GPUBuffer,
  ) {}

  async withEmbedding<T>(work: (embed: PackedMatrix) => Promise<T>): Promise<T> {
    return this.withMatrix('model.embed_tokens.weight', work);
  }

  async withOutputProjection<T>(work: (lmHead: PackedMatrix) => Promise<T>): Promise<T> {
    return this.withMatrix(this.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight', work);
  }

  async withMatrix<T>(name: string, work: (matrix: PackedMatrix) => Promise<T>): Promise<T> {
    const matrix = await uploadTensorMatrix(this.gpu, this.source, name);
    try {
      return await work(matrix);
    } finally {
      destroyMatrix(this.gpu, matrix);
    }
  }

  async withLayer<T>(l: number, work: (layer: LayerWeights) => Promise<T>): Promise<T> {
    const layer = await uploadLayer(this.gpu, this.config, this.source, l);
    try {
      return await work(layer);
    } finally {
      destroyLayer(this.gpu, layer);
    }
  }

  /** Largest set of weights on the GPU at once: the biggest of the embedding, the output projection and one layer. */
  static peakBytes(config: ModelConfig, files: SafetensorsModel): number {
    const bytes = (name: string) => (files.tensors.get(name)?.byteLength ?? 0);
    let layer = 0;
    for (let l = 0; l < config.numLayers; l++) {
      let sum = 0;
      for (const [name, info] of files.tensors) if (name.startsWith(`model.layers.${l}.`)) sum += info.byteLength;
      layer = Math.max(layer, sum);
    }
    return Math.max(bytes('model.embed_tokens.weight'), bytes('lm_head.weight'), layer);
  }

  dispose(): void {
    this.gpu.destroyBuffer(this.finalNorm);
  }
}

export function isResident(weights: LlamaWeights | StreamedWeights): weights is LlamaWeights {
  return !(weights instanceof StreamedWeights);
}
