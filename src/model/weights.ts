import type { Gpu } from '../gpu/gpu.ts';
import { decodeToFloat32 } from '../io/dtype.ts';
import { bytesPerElement, SUPPORTED_DTYPES } from '../io/dtype.ts';
import type { SafetensorsModel } from '../io/safetensors.ts';
import type { ModelConfig } from './config.ts';
import { detectExpertStorage, expectedTensors, layerLayout, residualWriterSlices, type DenseMlpLayout, type MatrixSlice } from './layout.ts';
import { uploadMatrix, type PackedMatrix } from '../gpu/packedMatrix.ts';

export { expectedTensors } from './layout.ts';

export interface DenseMlpWeights {
  gate: PackedMatrix;
  up: PackedMatrix;
  down: PackedMatrix;
  gateBias: GPUBuffer | undefined;
  upBias: GPUBuffer | undefined;
  downBias: GPUBuffer | undefined;
}

export interface MoeWeights {
  /** [numExperts, hidden] */
  router: PackedMatrix;
  experts: DenseMlpWeights[];
  /** Qwen2-MoE's shared expert and its gate [1, hidden]. */
  shared: DenseMlpWeights | undefined;
  sharedGate: PackedMatrix | undefined;
}

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
  /** Qwen3's per-head RMSNorm weights of q and k ([headDim], f32). */
  qNorm: GPUBuffer | undefined;
  kNorm: GPUBuffer | undefined;
  /** Gemma's norms of the MLP's input and output (f32). */
  preFeedforwardNorm: GPUBuffer | undefined;
  postFeedforwardNorm: GPUBuffer | undefined;
  mlp: ({ kind: 'dense' } & DenseMlpWeights) | ({ kind: 'moe' } & MoeWeights);
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

/** Checks that every tensor the config needs is present with the right shape, before anything is uploaded. */
export function checkTensors(config: ModelConfig, model: SafetensorsModel): void {
  const problems: string[] = [];
  // Layers past num_hidden_layers would be ignored, and missing ones listed tensor by tensor: say it first.
  let weightLayers = 0;
  for (const name of model.allTensors.keys()) {
    const layer = /^model\.layers\.(\d+)\./.exec(name)?.[1];
    if (layer !== undefined) weightLayers = Math.max(weightLayers, Number(layer) + 1);
  }
  if (weightLayers !== config.numLayers) problems.push(`the weights have ${weightLayers} layers but num_hidden_layers is ${config.numLayers}`);
  for (const [name, shape] of expectedTensors(config, detectExpertStorage(config, (name) => model.allTensors.has(name)))) {
    const info = model.tensors.get(name);
    const stored = model.allTensors.get(name);
    if (!info && stored) problems.push(`${name} has dtype ${stored.dtype}, which is not supported (only ${SUPPORTED_DTYPES.join(', ')})`);
    else if (!info) {
      const unlisted = model.sharded ? [...model.shards].find(([, shard]) => shard.has(name))?.[0] : undefined;
      problems.push(unlisted ? `${name} is in ${unlisted} but not listed in ${model.indexFile}` : `${name} is missing`);
    } else if (info.shape.length !== shape.length || info.shape.some((d, j) => d !== shape[j])) {
      problems.push(`${name} has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`);
    }
  }
  if (problems.length) {
    const shown = problems.slice(0, 5).join('; ');
    throw new WeightError(`${model.folder}: the weights do not match config.json: ${shown}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`);
  }
}

/** Reads tensors by name: the safetensors files, or those with some tensors replaced (a streamed cut). */
export type TensorSource = Pick<SafetensorsModel, 'tensor' | 'read' | 'readRange' | 'allTensors'>;

/** Uploads a 2-D tensor of the file in its dtype, reading it chunk by chunk. */
export function uploadTensorMatrix(gpu: Gpu, model: TensorSource, name: string): Promise<PackedMatrix> {
  const info = model.tensor(name);
  const [rows, cols] = info.shape as [number, number];
  return uploadSlice(gpu, model, { tensor: name, rowStart: 0, rows, cols, whole: true });
}

/**
 * The name of a matrix on the GPU: its tensor's, or for a part of a fused tensor the tensor's with
 * the row range, e.g. `…qkv_proj.weight[0:2048]`.
 */
export function sliceName(slice: MatrixSlice): string {
  return slice.whole ? slice.tensor : `${slice.tensor}[${slice.rowStart}:${slice.rowStart + slice.rows}]`;
}

/** Uploads rows of a tensor (all of it, or one part of a fused tensor) in its dtype. */
export function uploadSlice(gpu: Gpu, model: TensorSource, slice: MatrixSlice): Promise<PackedMatrix> {
  const info = model.tensor(slice.tensor);
  const rowBytes = slice.cols * bytesPerElement(info.dtype);
  const first = slice.rowStart * rowBytes;
  return uploadMatrix(gpu, sliceName(slice), info.dtype, slice.rows, slice.cols, (rowStart, count) => model.readRange(slice.tensor, first + rowStart * rowBytes, count * rowBytes));
}

/** Uploads a 1-D tensor (norm weights, biases) converted to f32: they are small and never modified. */
export async function uploadVector(gpu: Gpu, model: TensorSource, name: string): Promise<GPUBuffer> {
  return gpu.upload(decodeToFloat32(await model.read(name), model.tensor(name).dtype), name);
}

/** Uploads one decoder layer's weights; on failure (out of memory, a read error) frees what it uploaded. */
export async function uploadLayer(gpu: Gpu, config: ModelConfig, model: TensorSource, l: number): Promise<LayerWeights> {
  const layout = layerLayout(config, l, detectExpertStorage(config, (name) => model.allTensors.has(name)));
  const uploaded: (GPUBuffer | PackedMatrix)[] = [];
  const track = async <T extends GPUBuffer | PackedMatrix>(upload: Promise<T>): Promise<T> => {
    const item = await upload;
    uploaded.push(item);
    return item;
  };
  const matrix = (slice: MatrixSlice) => track(uploadSlice(gpu, model, slice));
  const vector = (name: string) => track(uploadVector(gpu, model, name));
  const optional = (name: string | undefined) => (name === undefined ? undefined : vector(name));
  const denseMlp = async (m: DenseMlpLayout): Promise<DenseMlpWeights> => ({
    gate: await matrix(m.gate),
    up: await matrix(m.up),
    down: await matrix(m.down),
    gateBias: await optional(m.gateBias),
    upBias: await optional(m.upBias),
    downBias: await optional(m.downBias),
  });
  try {
    const attention = {
      inputNorm: await vector(layout.inputNorm),
      postAttentionNorm: await vector(layout.postAttentionNorm),
      q: await matrix(layout.q),
      k: await matrix(layout.k),
      v: await matrix(layout.v),
      o: await matrix(layout.o),
      qBias: await optional(layout.qBias),
      kBias: await optional(layout.kBias),
      vBias: await optional(layout.vBias),
      oBias: await optional(layout.oBias),
      qNorm: await optional(layout.qNorm),
      kNorm: await optional(layout.kNorm),
      preFeedforwardNorm: await optional(layout.preFeedforwardNorm),
      postFeedforwardNorm: await optional(layout.postFeedforwardNorm),
    };
    const m = layout.mlp;
    if (m.kind === 'dense') return { ...attention, mlp: { kind: 'dense', ...(await denseMlp(m)) } };
    const router = await track(uploadTensorMatrix(gpu, model, m.router));
    const experts: DenseMlpWeights[] = [];
    for (const e of m.experts) experts.push(await denseMlp(e));
    const shared = m.shared ? await denseMlp(m.shared) : undefined;
    const sharedGate = m.sharedGate ? await track(uploadTensorMatrix(gpu, model, m.sharedGate)) : undefined;
    return { ...attention, mlp: { kind: 'moe', router, experts, shared, sharedGate } };
  } catch (error) {
    for (const item of uploaded) {
      if ('chunks' in item) destroyMatrix(gpu, item);
      else gpu.destroyBuffer(item);
    }
    throw error;
  }
}

function mlpList(layer: LayerWeights): DenseMlpWeights[] {
  const m = layer.mlp;
  return m.kind === 'dense' ? [m] : [...m.experts, ...(m.shared ? [m.shared] : [])];
}

/** Every weight matrix of a layer (the parts of fused tensors separately). */
export function layerMatrices(layer: LayerWeights): PackedMatrix[] {
  const m = layer.mlp;
  const routers = m.kind === 'moe' ? [m.router, ...(m.sharedGate ? [m.sharedGate] : [])] : [];
  return [layer.q, layer.k, layer.v, layer.o, ...routers, ...mlpList(layer).flatMap((x) => [x.gate, x.up, x.down])];
}

/**
 * The matrices of a layer that write into the residual stream, which a cut changes: `o_proj`, and
 * `down_proj` of the MLP or of every expert and the shared expert. See `residualWriterSlices`.
 */
export function residualWriters(layer: LayerWeights): ResidualWriters<PackedMatrix> {
  return { attention: [layer.o], mlp: mlpList(layer).map((m) => m.down) };
}

/** A layer's residual writers by component: the attention's `o_proj`, and the MLP's (or experts') `down_proj`s. */
export interface ResidualWriters<T> {
  attention: T[];
  mlp: T[];
}

/**
 * The names of layer l's residual writers as the matrices on the GPU are named (`sliceName`): the
 * tensor names, or for fused expert stacks the name of each expert's part.
 */
export function residualWriterNames(config: ModelConfig, files: Pick<TensorSource, 'allTensors'>, l: number): ResidualWriters<string> {
  const layout = layerLayout(config, l, detectExpertStorage(config, (name) => files.allTensors.has(name)));
  const mlp = residualWriterSlices(layout).filter((s) => s !== layout.o);
  return { attention: [sliceName(layout.o)], mlp: mlp.map(sliceName) };
}

export function destroyMatrix(gpu: Gpu, matrix: PackedMatrix): void {
  for (const c of matrix.chunks) gpu.destroyBuffer(c.buffer);
}

export function destroyLayer(gpu: Gpu, layer: LayerWeights): void {
  for (const m of layerMatrices(layer)) destroyMatrix(gpu, m);
  const biases = mlpList(layer).flatMap((m) => [m.gateBias, m.upBias, m.downBias]);
  for (const v of [layer.inputNorm, layer.postAttentionNorm, layer.qBias, layer.kBias, layer.vBias, layer.oBias, layer.qNorm, layer.kNorm, layer.preFeedforwardNorm, layer.postFeedforwardNorm, ...biases]) {
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

  get allTensors(): SafetensorsModel['allTensors'] {
    return this.files.allTensors;
  }

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
