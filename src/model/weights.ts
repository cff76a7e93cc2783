import type { Gpu } from '../gpu/gpu.ts';
import { decodeToFloat32 } from '../io/dtype.ts';
import { bytesPerElement } from '../io/dtype.ts';
import type { SafetensorsModel } from '../io/safetensors.ts';
import type { ModelConfig } from './config.ts';
import { uploadMatrix, type PackedMatrix } from './packedMatrix.ts';

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
    if (!info) problems.push(`${name} is missing`);
    else if (info.shape.length !== shape.length || info.shape.some((d, j) => d !== shape[j])) {
      problems.push(`${name} has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`);
    }
  }
  if (problems.length) {
    const shown = problems.slice(0, 5).join('; ');
    throw new WeightError(`the weights do not match config.json: ${shown}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`);
  }
}

/** Uploads a 2-D tensor of the file in its dtype, reading it chunk by chunk. */
export function uploadTensorMatrix(gpu: Gpu, model: SafetensorsModel, name: string): Promise<PackedMatrix> {
  const info = model.tensor(name);
  const [rows, cols] = info.shape as [number, number];
  const rowBytes = cols * bytesPerElement(info.dtype);
  return uploadMatrix(gpu, name, info.dtype, rows, cols, (rowStart, count) => model.readRange(name, rowStart * rowBytes, count * rowBytes));
}

/** Uploads a 1-D tensor (norm weights, biases) converted to f32: they are small and never modified. */
export async function uploadVector(gpu: Gpu, model: SafetensorsModel, name: string): Promise<GPUBuffer> {
  return gpu.upload(decodeToFloat32(await model.read(name), model.tensor(name).dtype), name);
}

export async function uploadLlamaWeights(gpu: Gpu, config: ModelConfig, model: SafetensorsModel, onProgress?: (done: number, total: number) => void): Promise<LlamaWeights> {
  checkTensors(config, model);
  const total = config.numLayers + 2;
  const embed = await uploadTensorMatrix(gpu, model, 'model.embed_tokens.weight');
  onProgress?.(1, total);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}`;
    const bias = (present: boolean, name: string) => (present ? uploadVector(gpu, model, `${p}.${name}.bias`) : undefined);
    layers.push({
      inputNorm: await uploadVector(gpu, model, `${p}.input_layernorm.weight`),
      postAttentionNorm: await uploadVector(gpu, model, `${p}.post_attention_layernorm.weight`),
      q: await uploadTensorMatrix(gpu, model, `${p}.self_attn.q_proj.weight`),
      k: await uploadTensorMatrix(gpu, model, `${p}.self_attn.k_proj.weight`),
      v: await uploadTensorMatrix(gpu, model, `${p}.self_attn.v_proj.weight`),
      o: await uploadTensorMatrix(gpu, model, `${p}.self_attn.o_proj.weight`),
      qBias: await bias(config.attentionBias, 'self_attn.q_proj'),
      kBias: await bias(config.attentionBias, 'self_attn.k_proj'),
      vBias: await bias(config.attentionBias, 'self_attn.v_proj'),
      oBias: await bias(config.oProjBias, 'self_attn.o_proj'),
      gate: await uploadTensorMatrix(gpu, model, `${p}.mlp.gate_proj.weight`),
      up: await uploadTensorMatrix(gpu, model, `${p}.mlp.up_proj.weight`),
      down: await uploadTensorMatrix(gpu, model, `${p}.mlp.down_proj.weight`),
      gateBias: await bias(config.mlpBias, 'mlp.gate_proj'),
      upBias: await bias(config.mlpBias, 'mlp.up_proj'),
      downBias: await bias(config.mlpBias, 'mlp.down_proj'),
    });
    onProgress?.(l + 2, total);
  }
  const finalNorm = await uploadVector(gpu, model, 'model.norm.weight');
  const lmHead = config.tieWordEmbeddings ? embed : await uploadTensorMatrix(gpu, model, 'lm_head.weight');
  onProgress?.(total, total);
  return { embed, layers, finalNorm, lmHead };
}

export function destroyLlamaWeights(gpu: Gpu, weights: LlamaWeights): void {
  const matrices = [weights.embed, weights.lmHead, ...weights.layers.flatMap((l) => [l.q, l.k, l.v, l.o, l.gate, l.up, l.down])];
  for (const m of matrices) for (const c of m.chunks) gpu.destroyBuffer(c.buffer);
  const vectors = [
    weights.finalNorm,
    ...weights.layers.flatMap((l) => [l.inputNorm, l.postAttentionNorm, l.qBias, l.kBias, l.vBias, l.oBias, l.gateBias, l.upBias, l.downBias]),
  ];
  for (const v of vectors) if (v) gpu.destroyBuffer(v);
}
