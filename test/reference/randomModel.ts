/**
 * Random tiny Llama-family models for tests: a config.json object, the tensors as they go into a
 * safetensors file (bytes little-endian in their dtype), and a float64 view of exactly the stored
 * values for the reference. Seeded: the same options and seed give the same model.
 *
 * Scales keep activations O(1) over a few layers: embeddings ~ N(0, 1), matrices ~
 * N(0, 1/fan_in), rmsnorm weights 1 ± 0.1, biases ~ N(0, 0.1²).
 */
import { parseModelConfig, type ModelConfig } from '../../src/model/config.ts';
import { Random } from '../helpers/random.ts';
import type { ReferenceWeights } from './llama.ts';

export type StoredDtype = 'F32' | 'BF16' | 'F16';

export interface RandomModelOptions {
  /** Default: Random's (TEST_SEED, or a fresh one); the result says which. */
  seed?: number;
  architecture?: 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'phi3' | 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'gemma2' | 'gemma3_text';
  /** Gemma 2: attn_logit_softcapping and final_logit_softcapping (null: off); Gemma 3 has them off unless given. */
  attnLogitSoftcap?: number | null;
  finalLogitSoftcap?: number | null;
  /** Gemma: query_pre_attn_scalar (default head_dim). */
  queryPreAttnScalar?: number;
  /** Gemma 3: sliding_window_pattern, rope_local_base_freq. */
  slidingWindowPattern?: number;
  ropeLocalTheta?: number;
  /** MoE families: experts, experts per token, each expert's intermediate size (default intermediateSize). */
  numExperts?: number;
  topK?: number;
  expertIntermediateSize?: number;
  /** qwen2_moe: the shared expert's intermediate size (default 2 · expertIntermediateSize). */
  sharedExpertIntermediateSize?: number;
  /** Qwen-MoE `norm_topk_prob` (default: false for qwen2_moe, true for qwen3_moe). */
  normTopkProb?: boolean;
  /** Qwen-MoE `mlp_only_layers`: layers with a dense MLP. */
  mlpOnlyLayers?: number[];
  /** Experts written as fused 3-D stacks `experts.gate_up_proj`, `experts.down_proj` (newer transformers). */
  fusedExperts?: boolean;
  hiddenSize?: number;
  intermediateSize?: number;
  numLayers?: number;
  numHeads?: number;
  /** numHeads / numKvHeads is the GQA ratio; default numHeads / 2 (when even). */
  numKvHeads?: number;
  /** Default hiddenSize / numHeads; when given it is written to config.json as head_dim. */
  headDim?: number;
  vocabSize?: number;
  tieWordEmbeddings?: boolean;
  /** llama `attention_bias` (q, k, v and o biases); qwen2 always has q, k, v biases. */
  attentionBias?: boolean;
  /** llama `mlp_bias`. */
  mlpBias?: boolean;
  ropeTheta?: number;
  /** longrope: Phi-3's, with an original context of 64 positions and random short and long factors. */
  ropeScaling?: 'llama3' | 'linear' | 'longrope';
  rmsNormEps?: number;
  dtype?: StoredDtype;
  /** `sliding_window` (mistral, mixtral, phi3: every layer; qwen2: with use_sliding_window from `slidingWindowFromLayer`). */
  slidingWindow?: number;
  /** qwen2 `max_window_layers` (with use_sliding_window). */
  slidingWindowFromLayer?: number;
}

export interface RandomTensor {
  name: string;
  dtype: StoredDtype;
  shape: number[];
  /** Little-endian values in `dtype`. */
  bytes: Uint8Array;
}

export interface RandomModel {
  seed: number;
  /** The config.json object. */
  configJson: Record<string, unknown>;
  /** configJson parsed by src/model/config.ts. */
  config: ModelConfig;
  /** In a stable order: embeddings, then layer by layer, then the final norm and lm_head. */
  tensors: RandomTensor[];
  /** Float64 of exactly the stored (rounded) values. */
  weights: MapWeights;
}

/** ReferenceWeights over a Map, with `set` for tests that edit weights. */
export class MapWeights implements ReferenceWeights {
  constructor(readonly map: Map<string, Float64Array> = new Map()) {}

  get(name: string): Float64Array {
    const w = this.map.get(name);
    if (!w) throw new Error(`no tensor ${name}`);
    return w;
  }

  has(name: string): boolean {
    return this.map.has(name);
  }

  set(name: string, values: Float64Array): void {
    this.map.set(name, values);
  }
}

export function randomModel(options: RandomModelOptions = {}): RandomModel {
  const random = new Random(options.seed);
  const architecture = options.architecture ?? 'llama';
  const hidden = options.hiddenSize ?? 32;
  const heads = options.numHeads ?? 4;
  const kvHeads = options.numKvHeads ?? (heads % 2 === 0 ? heads / 2 : heads);
  const headDim = options.headDim ?? hidden / heads;
  const intermediate = options.intermediateSize ?? 2 * hidden;
  const layers = options.numLayers ?? 2;
  const vocab = options.vocabSize ?? 64;
  const tied = options.tieWordEmbeddings ?? false;
  const dtype = options.dtype ?? 'F32';
  const llama = architecture === 'llama';
  const gemma = architecture === 'gemma2' || architecture === 'gemma3_text';
  // Which tensors each family has, written out from the Hugging Face modelling code.
  const attentionBiasFamily = llama || architecture === 'qwen3' || architecture === 'qwen3_moe';
  const qkvBias = architecture === 'qwen2' || architecture === 'qwen2_moe' || (attentionBiasFamily && (options.attentionBias ?? false));
  const oBias = attentionBiasFamily && (options.attentionBias ?? false);
  const mlpBias = llama && (options.mlpBias ?? false);
  const qkNorm = architecture === 'qwen3' || architecture === 'qwen3_moe' || architecture === 'gemma3_text';
  const phi3 = architecture === 'phi3';
  const moe = architecture === 'mixtral' || architecture === 'qwen2_moe' || architecture === 'qwen3_moe';
  const numExperts = options.numExperts ?? 4;
  const topK = options.topK ?? 2;
  const expertIntermediate = options.expertIntermediateSize ?? intermediate;
  const sharedIntermediate = architecture === 'qwen2_moe' ? (options.sharedExpertIntermediateSize ?? 2 * expertIntermediate) : 0;
  const mlpOnly = new Set(options.mlpOnlyLayers ?? []);

  const configJson: Record<string, unknown> = {
    architectures: [
      {
        llama: 'LlamaForCausalLM',
        mistral: 'MistralForCausalLM',
        qwen2: 'Qwen2ForCausalLM',
        qwen3: 'Qwen3ForCausalLM',
        phi3: 'Phi3ForCausalLM',
        mixtral: 'MixtralForCausalLM',
        qwen2_moe: 'Qwen2MoeForCausalLM',
        qwen3_moe: 'Qwen3MoeForCausalLM',
        gemma2: 'Gemma2ForCausalLM',
        gemma3_text: 'Gemma3ForCausalLM',
      }[architecture],
    ],
    model_type: architecture,
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    vocab_size: vocab,
    hidden_act: 'silu',
    rms_norm_eps: options.rmsNormEps ?? 1e-5,
    rope_theta: options.ropeTheta ?? 10000,
    max_position_embeddings: 4096,
    tie_word_embeddings: tied,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: { F32: 'float32', BF16: 'bfloat16', F16: 'float16' }[dtype],
  };
  if (options.headDim !== undefined) configJson.head_dim = options.headDim;
  if (llama) {
    configJson.attention_bias = options.attentionBias ?? false;
    configJson.mlp_bias = options.mlpBias ?? false;
  }
  if (architecture === 'mistral' || architecture === 'mixtral' || phi3) configJson.sliding_window = options.slidingWindow ?? null;
  if (architecture === 'qwen2' && options.slidingWindow !== undefined) {
    configJson.use_sliding_window = true;
    configJson.sliding_window = options.slidingWindow;
    configJson.max_window_layers = options.slidingWindowFromLayer ?? 0;
  }
  if (attentionBiasFamily && !llama) configJson.attention_bias = options.attentionBias ?? false;
  if (qkNorm && options.headDim === undefined) configJson.head_dim = headDim;
  if (architecture === 'mixtral') {
    configJson.num_local_experts = numExperts;
    configJson.num_experts_per_tok = topK;
    configJson.intermediate_size = expertIntermediate;
  } else if (moe) {
    configJson.num_experts = numExperts;
    configJson.num_experts_per_tok = topK;
    configJson.moe_intermediate_size = expertIntermediate;
    configJson.norm_topk_prob = options.normTopkProb ?? architecture === 'qwen3_moe';
    configJson.mlp_only_layers = [...mlpOnly];
    configJson.decoder_sparse_step = 1;
    if (architecture === 'qwen2_moe') configJson.shared_expert_intermediate_size = sharedIntermediate;
  }
  if (gemma) {
    delete configJson.hidden_act;
    configJson.hidden_activation = 'gelu_pytorch_tanh';
    configJson.head_dim = headDim;
    configJson.query_pre_attn_scalar = options.queryPreAttnScalar ?? headDim;
    configJson.sliding_window = options.slidingWindow ?? 4096;
    configJson.bos_token_id = 2;
    configJson.eos_token_id = 1;
    configJson.pad_token_id = 0;
    if (architecture === 'gemma2') {
      configJson.attn_logit_softcapping = options.attnLogitSoftcap === undefined ? 50 : options.attnLogitSoftcap;
      configJson.final_logit_softcapping = options.finalLogitSoftcap === undefined ? 30 : options.finalLogitSoftcap;
    } else {
      configJson.attn_logit_softcapping = options.attnLogitSoftcap ?? null;
      configJson.final_logit_softcapping = options.finalLogitSoftcap ?? null;
      configJson.sliding_window_pattern = options.slidingWindowPattern ?? 6;
      configJson.rope_local_base_freq = options.ropeLocalTheta ?? 10000;
    }
  }
  if (options.ropeScaling === 'llama3') {
    // Llama 3.2's scaling on a short original context, so that all three regimes occur for small heads.
    configJson.rope_scaling = { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };
  } else if (options.ropeScaling === 'linear') {
    configJson.rope_scaling = { type: 'linear', factor: 4 };
  } else if (options.ropeScaling === 'longrope') {
    configJson.original_max_position_embeddings = 64;
    configJson.rope_scaling = { type: 'longrope', short_factor: Array.from(random.uniforms(headDim / 2, 1, 3)), long_factor: Array.from(random.uniforms(headDim / 2, 2, 20)) };
  }
  const config = parseModelConfig(configJson, 'random config.json');

  const tensors: RandomTensor[] = [];
  const weights = new MapWeights();
  const add = (name: string, shape: number[], values: Float64Array) => {
    const { bytes, stored } = encode(values, dtype);
    tensors.push({ name, dtype, shape, bytes });
    weights.set(name, stored);
  };
  const matrix = (name: string, out: number, inDim: number) => add(name, [out, inDim], random.normals(out * inDim, 1 / Math.sqrt(inDim)));
  // Gemma stores the offset w of its (1 + w) scales: values around 0.
  const norm = (name: string) => add(name, [hidden], gemma ? random.uniforms(hidden, -0.3, 0.3) : random.uniforms(hidden, 0.9, 1.1));
  const bias = (name: string, n: number) => add(name, [n], random.normals(n, 0.1));

  add('model.embed_tokens.weight', [vocab, hidden], random.normals(vocab * hidden, 1));
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    norm(`${p}.input_layernorm.weight`);
    if (phi3) {
      matrix(`${p}.self_attn.qkv_proj.weight`, (heads + 2 * kvHeads) * headDim, hidden);
    } else {
      matrix(`${p}.self_attn.q_proj.weight`, heads * headDim, hidden);
      if (qkvBias) bias(`${p}.self_attn.q_proj.bias`, heads * headDim);
      matrix(`${p}.self_attn.k_proj.weight`, kvHeads * headDim, hidden);
      if (qkvBias) bias(`${p}.self_attn.k_proj.bias`, kvHeads * headDim);
      matrix(`${p}.self_attn.v_proj.weight`, kvHeads * headDim, hidden);
      if (qkvBias) bias(`${p}.self_attn.v_proj.bias`, kvHeads * headDim);
    }
    if (qkNorm) {
      // Wider than the other norms so that a missing per-head norm shows clearly.
      const [low, high] = gemma ? [-0.5, 0.5] : [0.5, 1.5];
      add(`${p}.self_attn.q_norm.weight`, [headDim], random.uniforms(headDim, low, high));
      add(`${p}.self_attn.k_norm.weight`, [headDim], random.uniforms(headDim, low, high));
    }
    matrix(`${p}.self_attn.o_proj.weight`, hidden, heads * headDim);
    if (oBias) bias(`${p}.self_attn.o_proj.bias`, hidden);
    norm(`${p}.post_attention_layernorm.weight`);
    if (gemma) {
      norm(`${p}.pre_feedforward_layernorm.weight`);
      norm(`${p}.post_feedforward_layernorm.weight`);
    }
    if (moe && !mlpOnly.has(l)) {
      const module = architecture === 'mixtral' ? `${p}.block_sparse_moe` : `${p}.mlp`;
      // Router rows of norm ~3 spread the logits, so the top-k choice is far from ties.
      add(`${module}.gate.weight`, [numExperts, hidden], random.normals(numExperts * hidden, 3 / Math.sqrt(hidden)));
      if (options.fusedExperts) {
        const I = expertIntermediate;
        add(`${module}.experts.gate_up_proj`, [numExperts, 2 * I, hidden], random.normals(numExperts * 2 * I * hidden, 1 / Math.sqrt(hidden)));
        add(`${module}.experts.down_proj`, [numExperts, hidden, I], random.normals(numExperts * hidden * I, 1 / Math.sqrt(I)));
      } else {
        for (let e = 0; e < numExperts; e++) {
          const x = `${module}.experts.${e}`;
          const [g, u, d] = architecture === 'mixtral' ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
          matrix(`${x}.${g}.weight`, expertIntermediate, hidden);
          matrix(`${x}.${u}.weight`, expertIntermediate, hidden);
          matrix(`${x}.${d}.weight`, hidden, expertIntermediate);
        }
      }
      if (architecture === 'qwen2_moe') {
        matrix(`${module}.shared_expert.gate_proj.weight`, sharedIntermediate, hidden);
        matrix(`${module}.shared_expert.up_proj.weight`, sharedIntermediate, hidden);
        matrix(`${module}.shared_expert.down_proj.weight`, hidden, sharedIntermediate);
        matrix(`${module}.shared_expert_gate.weight`, 1, hidden);
      }
    } else if (phi3) {
      matrix(`${p}.mlp.gate_up_proj.weight`, 2 * intermediate, hidden);
      matrix(`${p}.mlp.down_proj.weight`, hidden, intermediate);
    } else {
      matrix(`${p}.mlp.gate_proj.weight`, intermediate, hidden);
      if (mlpBias) bias(`${p}.mlp.gate_proj.bias`, intermediate);
      matrix(`${p}.mlp.up_proj.weight`, intermediate, hidden);
      if (mlpBias) bias(`${p}.mlp.up_proj.bias`, intermediate);
      matrix(`${p}.mlp.down_proj.weight`, hidden, intermediate);
      if (mlpBias) bias(`${p}.mlp.down_proj.bias`, hidden);
    }
  }
  norm('model.norm.weight');
  if (!tied) matrix('lm_head.weight', vocab, hidden);

  return { seed: random.seed, configJson, config, tensors, weights };
}

// ---------------------------------------------------------------------------------------------
// Rounding to the stored dtypes (round to nearest, ties to even).

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** bf16 bits of x: x rounded to float32, then to bf16 with round-to-nearest-even. NaN stays NaN. */
export function toBfloat16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff) !== 0) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function fromBfloat16Bits(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}

/** IEEE half bits of x with round-to-nearest-even (from the float64 value directly); overflow gives ±Infinity. */
export function toFloat16Bits(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (Number.isNaN(x)) return 0x7e00;
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  // Quantum of the binade (or of the subnormals), then round a / quantum to the nearest even integer.
  const exponent = Math.max(Math.floor(Math.log2(a)), -14);
  let e = exponent;
  // Math.log2 may be off by one near powers of two; correct it.
  if (e > -14 && 2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const quantum = 2 ** (e - 10);
  let m = roundHalfEven(a / quantum);
  if (m === 2048) {
    e++;
    m = 1024;
  }
  if (e > 15) return sign | 0x7c00;
  if (m < 1024) return sign | m; // subnormal (e == -14)
  return sign | ((e + 15) << 10) | (m - 1024);
}

export function fromFloat16Bits(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const e = (bits >>> 10) & 0x1f;
  const m = bits & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  return sign * (1024 + m) * 2 ** (e - 25);
}

function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Encodes values in a dtype; returns the bytes and the float64 of the stored values. */
export function encode(values: Float64Array, dtype: StoredDtype): { bytes: Uint8Array; stored: Float64Array } {
  const stored = new Float64Array(values.length);
  if (dtype === 'F32') {
    const out = new Float32Array(values);
    stored.set(out);
    return { bytes: littleEndian(new Uint8Array(out.buffer), 4), stored };
  }
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    out[i] = dtype === 'BF16' ? toBfloat16Bits(values[i]!) : toFloat16Bits(values[i]!);
    stored[i] = dtype === 'BF16' ? fromBfloat16Bits(out[i]!) : fromFloat16Bits(out[i]!);
  }
  return { bytes: littleEndian(new Uint8Array(out.buffer), 2), stored };
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function littleEndian(bytes: Uint8Array, width: number): Uint8Array {
  if (LITTLE_ENDIAN) return bytes;
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += width) for (let j = 0; j < width; j++) out[i + j] = bytes[i + width - 1 - j]!;
  return out;
}

/** A safetensors file of the tensors: u64 header length, JSON header padded with spaces to 8 bytes, data. */
export function toSafetensors(tensors: readonly RandomTensor[], metadata: Record<string, string> = { format: 'pt' }): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
    offset += t.bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerBytes = new Uint8Array(json.length + ((8 - (json.length % 8)) % 8)).fill(0x20);
  headerBytes.set(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors) {
    out.set(t.bytes, at);
    at += t.bytes.length;
  }
  return out;
}
