/**
 * `config.json` of a Hugging Face decoder model of a supported family, parsed and validated.
 *
 * Defaults follow transformers' config classes of each family (`LlamaConfig`, `MistralConfig`,
 * `Qwen2Config`, `Qwen3Config`, `Phi3Config`, `MixtralConfig`, `Qwen2MoeConfig`, `Qwen3MoeConfig`),
 * so a config that transformers loads describes the same model here. The fields that fix the shapes of the weights
 * (`hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`, `vocab_size`)
 * are required: transformers would fill them with the sizes of a 7B model, which never matches the
 * weights of a model whose config lacks them.
 */
import * as v from 'valibot';
import { FileMissingError, type FileFolder } from '../io/byteSource.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../io/dtype.ts';
import { jsonErrorReason } from '../io/json.ts';

export type Architecture = 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'phi3' | 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'gemma2' | 'gemma3_text';

/** The `architectures` class of each supported `model_type`. */
export const SUPPORTED_ARCHITECTURES: Readonly<Record<Architecture, string>> = {
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
};

/**
 * How each family builds its decoder block, as data: the forward pass, the weight loader and the
 * cut read these fields instead of asking which family a model is.
 */
export interface BlockDescription {
  /** q, k and v stored as one `self_attn.qkv_proj` (Phi-3); split into row ranges on load. */
  fusedQkv: boolean;
  /** Per-head RMSNorm of q and k over head_dim before RoPE (Qwen3 `q_norm`, `k_norm`). */
  qkNorm: boolean;
  /** gate and up stored as one `mlp.gate_up_proj` (Phi-3), gate first; split on load. */
  fusedGateUp: boolean;
  /** The module holding the MLP or the experts: `mlp`, or `block_sparse_moe` (Mixtral). */
  mlpModule: 'mlp' | 'block_sparse_moe';
  /** Every RMSNorm scales by (1 + w) instead of w (Gemma). */
  normPlusOne: boolean;
  /**
   * Norms before and after attention and the MLP (Gemma 2, 3): `post_attention_layernorm` normalises
   * the attention's output (not the MLP's input, as in Llama), `pre_feedforward_layernorm` the MLP's
   * input, `post_feedforward_layernorm` its output.
   */
  sandwichNorms: boolean;
  /** The gated MLP's activation: silu, or GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`). */
  activation: 'silu' | 'gelu_tanh';
  /** The embeddings are multiplied by √hidden_size (Gemma; see `embeddingMultiplier`). */
  scaledEmbedding: boolean;
}

/** A sparse mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE). */
export interface MoeConfig {
  numExperts: number;
  /** Experts each token is routed to. */
  topK: number;
  /**
   * true: the selected experts' weights are renormalised to sum to one (= softmax over the top-k
   * logits; Mixtral, and Qwen-MoE with `norm_topk_prob`); false: softmax over all experts, the
   * top-k probabilities used as they are (Qwen-MoE's default).
   */
  normTopkProb: boolean;
  /** Each expert's intermediate size. */
  expertIntermediateSize: number;
  /** Qwen2-MoE's shared expert (always active, scaled by sigmoid(shared_expert_gate · x)); 0 when absent. */
  sharedExpertIntermediateSize: number;
  /** Per decoder layer: true for a sparse (MoE) layer, false for a dense MLP (Qwen-MoE `mlp_only_layers`, `decoder_sparse_step`). */
  sparseLayers: boolean[];
  /** Expert tensor names: Mixtral's `experts.N.w1/w3/w2`, or `experts.N.gate_proj/up_proj/down_proj`. */
  expertNaming: 'w1w2w3' | 'gate_up_down';
}

const SUPPORTED_LIST = Object.entries(SUPPORTED_ARCHITECTURES)
  .map(([type, cls]) => `${cls} (model_type "${type}")`)
  .join(', ');

/** RoPE frequency scaling (`rope_scaling`, or `rope_parameters` in configs written by transformers 5). */
export type RopeScaling =
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  | { type: 'linear'; factor: number }
  /**
   * Phi-3's long-context RoPE (`longrope`, formerly `su`): per-frequency divisors, and cos and sin
   * scaled by `attentionFactor`. The engine runs sequences up to `originalMaxPositionEmbeddings`,
   * where transformers uses `shortFactor`; `longFactor` (beyond) is kept for the record.
   */
  | { type: 'longrope'; shortFactor: number[]; longFactor: number[]; originalMaxPositionEmbeddings: number; attentionFactor: number };

export interface ModelConfig {
  architecture: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** How the decoder block is built (fused projections, q/k norms, where the MLP lives). */
  block: BlockDescription;
  /** The mixture of experts, for MoE families. */
  moe?: MoeConfig;
  /** Per-head dimension: `head_dim`, else hiddenSize / numHeads. Always even. */
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | undefined;
  maxPositionEmbeddings: number;
  /** lm_head shares `model.embed_tokens.weight` (no `lm_head.weight` in the files). */
  tieWordEmbeddings: boolean;
  /** q_proj, k_proj and v_proj have biases: always for qwen2, `attention_bias` for llama, never for mistral. */
  attentionBias: boolean;
  /** o_proj has a bias: llama with `attention_bias` only (qwen2 has q/k/v biases but none on o_proj). */
  oProjBias: boolean;
  /** gate_proj, up_proj and down_proj have biases (llama `mlp_bias`). */
  mlpBias: boolean;
  bosTokenId?: number;
  /** Every end-of-sequence id of the config (`eos_token_id` may be a list); may be empty. */
  eosTokenIds: number[];
  padTokenId?: number;
  /**
   * Sliding attention window: mistral `sliding_window`; qwen2 only with `use_sliding_window` (and
   * then only in layers from `max_window_layers` on, see `slidingWindowFromLayer`).
   */
  slidingWindow?: number;
  slidingWindowFromLayer?: number;
  /** `torch_dtype` (or `dtype`) as written, e.g. "bfloat16". Informative: the weights' own dtypes rule. */
  torchDtype?: string;
  /**
   * Per layer, whether it uses the sliding window (Gemma 2: every other layer from the first; Gemma 3:
   * `layer_types`, else all but every `sliding_window_pattern`-th). Absent: see `attentionWindow`.
   */
  slidingLayers?: boolean[];
  /** Gemma 2, 3: scores are scaled by 1/√query_pre_attn_scalar instead of 1/√head_dim. */
  queryPreAttnScalar?: number;
  /** Gemma 2: attention scores become c · tanh(s / c). */
  attnLogitSoftcap?: number;
  /** Gemma 2: logits become c · tanh(logits / c). */
  finalLogitSoftcap?: number;
  /** Gemma 3: the RoPE base of the sliding-window layers (`rope_local_base_freq`; no scaling there). */
  ropeLocalTheta?: number;
}

export class ModelConfigError extends Error {
  override name = 'ModelConfigError';
}

// ---------------------------------------------------------------------------------------------
// Field schemas. Each message names the field and shows the offending value.

function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  try {
    const text = JSON.stringify(value);
    return text.length > 60 ? `${text.slice(0, 57)}...` : text;
  } catch {
    return String(value);
  }
}

const isPositiveInteger = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x > 0;
const isTokenId = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
const isPositiveNumber = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x > 0;

function check<T>(field: string, what: string, test: (x: unknown) => x is T) {
  return v.custom<T>(test, (issue) => `${field} must be ${what} (got ${show(issue.input)})`);
}
const positiveInteger = (field: string) => check(field, 'a positive integer', isPositiveInteger);
const positiveNumber = (field: string) => check(field, 'a positive number', isPositiveNumber);
const boolean = (field: string) => check(field, 'true or false', (x): x is boolean => typeof x === 'boolean');
const string = (field: string) => check(field, 'a string', (x): x is string => typeof x === 'string');
const tokenId = (field: string) => check(field, 'a token id (an integer ≥ 0)', isTokenId);
const tokenIds = (field: string) =>
  check(field, 'a token id or a list of token ids', (x): x is number | number[] => isTokenId(x) || (Array.isArray(x) && x.every(isTokenId)));
const record = (field: string) =>
  check(field, 'an object', (x): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x));

const ConfigSchema = v.looseObject(
  {
    model_type: v.nullish(string('model_type')),
    architectures: v.nullish(
      check('architectures', 'a list of class names', (x): x is string[] => Array.isArray(x) && x.every((a) => typeof a === 'string')),
    ),
    hidden_size: positiveInteger('hidden_size'),
    intermediate_size: positiveInteger('intermediate_size'),
    num_hidden_layers: positiveInteger('num_hidden_layers'),
    num_attention_heads: positiveInteger('num_attention_heads'),
    vocab_size: positiveInteger('vocab_size'),
    num_key_value_heads: v.nullish(positiveInteger('num_key_value_heads')),
    head_dim: v.nullish(positiveInteger('head_dim')),
    hidden_act: v.nullish(string('hidden_act')),
    rms_norm_eps: v.nullish(positiveNumber('rms_norm_eps')),
    rope_theta: v.nullish(positiveNumber('rope_theta')),
    rope_scaling: v.nullish(record('rope_scaling')),
    rope_parameters: v.nullish(record('rope_parameters')),
    partial_rotary_factor: v.nullish(positiveNumber('partial_rotary_factor')),
    max_position_embeddings: v.nullish(positiveInteger('max_position_embeddings')),
    tie_word_embeddings: v.nullish(boolean('tie_word_embeddings')),
    attention_bias: v.nullish(boolean('attention_bias')),
    mlp_bias: v.nullish(boolean('mlp_bias')),
    bos_token_id: v.nullish(tokenId('bos_token_id')),
    eos_token_id: v.nullish(tokenIds('eos_token_id')),
    pad_token_id: v.nullish(tokenId('pad_token_id')),
    sliding_window: v.nullish(positiveInteger('sliding_window')),
    use_sliding_window: v.nullish(boolean('use_sliding_window')),
    max_window_layers: v.nullish(check('max_window_layers', 'an integer ≥ 0', isTokenId)),
    torch_dtype: v.nullish(string('torch_dtype')),
    dtype: v.nullish(string('dtype')),
    num_local_experts: v.nullish(positiveInteger('num_local_experts')),
    num_experts: v.nullish(positiveInteger('num_experts')),
    num_experts_per_tok: v.nullish(positiveInteger('num_experts_per_tok')),
    moe_intermediate_size: v.nullish(positiveInteger('moe_intermediate_size')),
    shared_expert_intermediate_size: v.nullish(check('shared_expert_intermediate_size', 'an integer ≥ 0', isTokenId)),
    norm_topk_prob: v.nullish(boolean('norm_topk_prob')),
    decoder_sparse_step: v.nullish(positiveInteger('decoder_sparse_step')),
    mlp_only_layers: v.nullish(check('mlp_only_layers', 'a list of layer indices', (x): x is number[] => Array.isArray(x) && x.every(isTokenId))),
    qkv_bias: v.nullish(boolean('qkv_bias')),
    original_max_position_embeddings: v.nullish(positiveInteger('original_max_position_embeddings')),
    hidden_activation: v.nullish(string('hidden_activation')),
    query_pre_attn_scalar: v.nullish(positiveNumber('query_pre_attn_scalar')),
    attn_logit_softcapping: v.nullish(positiveNumber('attn_logit_softcapping')),
    final_logit_softcapping: v.nullish(positiveNumber('final_logit_softcapping')),
    sliding_window_pattern: v.nullish(positiveInteger('sliding_window_pattern')),
    layer_types: v.nullish(
      check('layer_types', 'a list of "sliding_attention" or "full_attention"', (x): x is string[] => Array.isArray(x) && x.every((t) => t === 'sliding_attention' || t === 'full_attention')),
    ),
    rope_local_base_freq: v.nullish(positiveNumber('rope_local_base_freq')),
  },
  (issue) => {
    const key = issue.path?.[0]?.key;
    if (typeof key === 'string') return `${key} is missing (it must be a positive integer)`;
    return `the config must be a JSON object (got ${show(issue.input)})`;
  },
);

type RawConfig = v.InferOutput<typeof ConfigSchema>;

/** transformers' defaults per architecture, for the fields that have one. */
const DEFAULTS: Record<
  Architecture,
  { numKvHeads: number | undefined; maxPositionEmbeddings: number; bosTokenId: number | undefined; eosTokenId: number | undefined; slidingWindow: number | undefined }
> = {
  llama: { numKvHeads: undefined, maxPositionEmbeddings: 2048, bosTokenId: 1, eosTokenId: 2, slidingWindow: undefined },
  mistral: { numKvHeads: 8, maxPositionEmbeddings: 4096 * 32, bosTokenId: 1, eosTokenId: 2, slidingWindow: 4096 },
  qwen2: { numKvHeads: 32, maxPositionEmbeddings: 32768, bosTokenId: undefined, eosTokenId: undefined, slidingWindow: 4096 },
  qwen3: { numKvHeads: 32, maxPositionEmbeddings: 32768, bosTokenId: undefined, eosTokenId: undefined, slidingWindow: 4096 },
  phi3: { numKvHeads: undefined, maxPositionEmbeddings: 4096, bosTokenId: 1, eosTokenId: 32000, slidingWindow: undefined },
  mixtral: { numKvHeads: 8, maxPositionEmbeddings: 4096 * 32, bosTokenId: 1, eosTokenId: 2, slidingWindow: undefined },
  qwen2_moe: { numKvHeads: 16, maxPositionEmbeddings: 32768, bosTokenId: undefined, eosTokenId: undefined, slidingWindow: 4096 },
  qwen3_moe: { numKvHeads: 4, maxPositionEmbeddings: 32768, bosTokenId: undefined, eosTokenId: undefined, slidingWindow: 4096 },
  gemma2: { numKvHeads: 4, maxPositionEmbeddings: 8192, bosTokenId: 2, eosTokenId: 1, slidingWindow: 4096 },
  gemma3_text: { numKvHeads: 4, maxPositionEmbeddings: 131072, bosTokenId: 2, eosTokenId: 1, slidingWindow: 4096 },
};

/** The block of each family. */
const LLAMA_NORMS = { normPlusOne: false, sandwichNorms: false, activation: 'silu', scaledEmbedding: false } as const;
const GEMMA_NORMS = { normPlusOne: true, sandwichNorms: true, activation: 'gelu_tanh', scaledEmbedding: true } as const;

const BLOCKS: Record<Architecture, BlockDescription> = {
  llama: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'mlp', ...LLAMA_NORMS },
  mistral: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'mlp', ...LLAMA_NORMS },
  qwen2: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'mlp', ...LLAMA_NORMS },
  qwen3: { fusedQkv: false, qkNorm: true, fusedGateUp: false, mlpModule: 'mlp', ...LLAMA_NORMS },
  phi3: { fusedQkv: true, qkNorm: false, fusedGateUp: true, mlpModule: 'mlp', ...LLAMA_NORMS },
  mixtral: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'block_sparse_moe', ...LLAMA_NORMS },
  qwen2_moe: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'mlp', ...LLAMA_NORMS },
  qwen3_moe: { fusedQkv: false, qkNorm: true, fusedGateUp: false, mlpModule: 'mlp', ...LLAMA_NORMS },
  gemma2: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'mlp', ...GEMMA_NORMS },
  gemma3_text: { fusedQkv: false, qkNorm: true, fusedGateUp: false, mlpModule: 'mlp', ...GEMMA_NORMS },
};

// ---------------------------------------------------------------------------------------------

/** Parses and validates a `config.json` object; `source` names the file in messages. */
export function parseModelConfig(json: unknown, source = 'config.json'): ModelConfig {
  const fail = (message: string): never => {
    throw new ModelConfigError(`${source}: ${message}`);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail(`the config must be a JSON object (got ${show(json)})`);
  json = gemma3TextPart(json as Record<string, unknown>, fail);
  const architecture = detectArchitecture(json as Record<string, unknown>, fail);

  const result = v.safeParse(ConfigSchema, json, { abortEarly: false });
  if (!result.success) {
    // One message per field, in the order of the schema (required fields first).
    const seen = new Set<string>();
    const messages: string[] = [];
    for (const issue of result.issues) {
      const key = String(issue.path?.[0]?.key ?? '');
      if (seen.has(key)) continue;
      seen.add(key);
      messages.push(issue.message);
    }
    fail(messages.join('; '));
  }
  const raw = (result as v.SafeParseResult<typeof ConfigSchema> & { success: true }).output;
  return buildConfig(raw, architecture, fail);
}

/**
 * A `gemma3` config (Gemma3ForConditionalGeneration) describes a vision tower (`vision_config`) and a
 * text decoder (`text_config`): the decoder is the model; the vision tower is not run (its weights
 * stay in the files and are exported unchanged; `SafetensorsModel` reads the decoder's tensors from
 * under their prefix). Published text_configs hold only what differs from Gemma3TextConfig's
 * defaults, so those fill the fields the schema requires; the dtype and the special tokens are on the
 * outer config.
 */
function gemma3TextPart(json: Record<string, unknown>, fail: (message: string) => never): Record<string, unknown> {
  if (json.model_type !== 'gemma3') return json;
  const text = json.text_config;
  if (typeof text !== 'object' || text === null || Array.isArray(text)) fail('model_type "gemma3" needs a text_config object (the text decoder)');
  const outer = Object.fromEntries(['torch_dtype', 'dtype', 'bos_token_id', 'eos_token_id', 'pad_token_id'].filter((key) => json[key] !== undefined).map((key) => [key, json[key]]));
  return { ...GEMMA3_TEXT_DEFAULTS, ...outer, ...(text as Record<string, unknown>), model_type: 'gemma3_text', architectures: ['Gemma3ForCausalLM'] };
}

/** Gemma3TextConfig's defaults for the fields the schema requires (transformers' configuration_gemma3.py). */
const GEMMA3_TEXT_DEFAULTS = { vocab_size: 262_208, hidden_size: 2304, intermediate_size: 9216, num_hidden_layers: 26, num_attention_heads: 8, num_key_value_heads: 4, head_dim: 256 };

function detectArchitecture(json: Record<string, unknown>, fail: (message: string) => never): Architecture {
  const modelType = json.model_type;
  const architectures = Array.isArray(json.architectures) ? json.architectures.filter((a): a is string => typeof a === 'string') : [];
  const supportedClasses = Object.values(SUPPORTED_ARCHITECTURES);
  const byClass = (cls: string) => (Object.keys(SUPPORTED_ARCHITECTURES) as Architecture[]).find((a) => SUPPORTED_ARCHITECTURES[a] === cls);

  let architecture: Architecture | undefined;
  if (typeof modelType === 'string' && modelType !== '') {
    if (!(modelType in SUPPORTED_ARCHITECTURES)) {
      const named = architectures.length > 0 ? ` (${architectures.join(', ')})` : '';
      fail(`model_type "${modelType}"${named} is not supported; supported: ${SUPPORTED_LIST}`);
    }
    architecture = modelType as Architecture;
  }
  if (architectures.length > 0 && !architectures.some((cls) => supportedClasses.includes(cls))) {
    fail(`architecture ${architectures.join(', ')} is not supported; supported: ${SUPPORTED_LIST}`);
  }
  if (architecture === undefined) {
    architecture = architectures.map(byClass).find((a) => a !== undefined);
    if (architecture === undefined) fail(`neither model_type nor architectures says which model this is; supported: ${SUPPORTED_LIST}`);
  }
  return architecture!;
}

function buildConfig(raw: RawConfig, architecture: Architecture, fail: (message: string) => never): ModelConfig {
  const defaults = DEFAULTS[architecture];
  const hiddenSize = raw.hidden_size;
  const numHeads = raw.num_attention_heads;

  const gemma = architecture === 'gemma2' || architecture === 'gemma3_text';
  if (gemma) {
    // Gemma's MLP reads hidden_activation (hidden_act is kept in configs for older code and ignored).
    const activation = raw.hidden_activation ?? 'gelu_pytorch_tanh';
    if (activation !== 'gelu_pytorch_tanh') fail(`hidden_activation "${activation}" is not supported for ${architecture}; only "gelu_pytorch_tanh" is`);
  } else {
    const hiddenAct = raw.hidden_act ?? 'silu';
    if (hiddenAct !== 'silu' && hiddenAct !== 'swish') fail(`hidden_act "${hiddenAct}" is not supported; only "silu" is`);
  }

  let headDim: number;
  if (raw.head_dim == null && architecture === 'qwen3') {
    // Qwen3Config's own default; configs written by transformers always carry head_dim.
    headDim = 128;
  } else if (raw.head_dim == null && gemma) {
    headDim = 256;
  } else if (raw.head_dim != null) {
    headDim = raw.head_dim;
  } else {
    if (hiddenSize % numHeads !== 0) {
      fail(`hidden_size (${hiddenSize}) is not divisible by num_attention_heads (${numHeads}) and head_dim is not given`);
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) fail(`the head dimension (${headDim}) must be even for rotary embeddings`);

  const numKvHeads = raw.num_key_value_heads ?? defaults.numKvHeads ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    fail(`num_attention_heads (${numHeads}) is not divisible by num_key_value_heads (${numKvHeads})`);
  }
  if (raw.partial_rotary_factor != null && raw.partial_rotary_factor !== 1) {
    fail(`partial_rotary_factor ${raw.partial_rotary_factor} is not supported; only 1 (rotary embeddings over the whole head) is`);
  }

  // Gemma 3's global layers default to a base of 1e6 (its local layers: rope_local_base_freq).
  const { ropeTheta, ropeScaling } = parseRope(architecture === 'gemma3_text' && raw.rope_theta == null ? { ...raw, rope_theta: 1_000_000 } : raw, headDim, fail);

  // q/k/v biases: always for qwen2, `qkv_bias` (default true) for qwen2_moe, `attention_bias` for
  // llama and qwen3 (which then also bias o_proj, as for qwen3_moe), never for mistral, mixtral, phi3.
  const attentionBias =
    architecture === 'qwen2'
      ? true
      : architecture === 'qwen2_moe'
        ? (raw.qkv_bias ?? true)
        : architecture === 'llama' || architecture === 'qwen3' || architecture === 'qwen3_moe'
          ? (raw.attention_bias ?? false)
          : false;
  const oProjBias = architecture === 'llama' || architecture === 'qwen3' || architecture === 'qwen3_moe' ? (raw.attention_bias ?? false) : false;
  const mlpBias = architecture === 'llama' ? (raw.mlp_bias ?? false) : false;
  const moe = parseMoe(raw, architecture, fail);

  const eos = raw.eos_token_id === undefined ? defaults.eosTokenId : raw.eos_token_id;
  const eosTokenIds = eos == null ? [] : Array.isArray(eos) ? [...new Set(eos)] : [eos];
  const bosTokenId = raw.bos_token_id === undefined ? defaults.bosTokenId : (raw.bos_token_id ?? undefined);

  let slidingWindow: number | undefined;
  let slidingWindowFromLayer: number | undefined;
  if (architecture === 'mistral' || architecture === 'mixtral' || architecture === 'phi3') {
    slidingWindow = raw.sliding_window === undefined ? defaults.slidingWindow : (raw.sliding_window ?? undefined);
  } else if (architecture !== 'llama' && raw.use_sliding_window === true) {
    slidingWindow = raw.sliding_window === undefined ? defaults.slidingWindow : (raw.sliding_window ?? undefined);
    if (slidingWindow !== undefined) slidingWindowFromLayer = raw.max_window_layers ?? 28;
  }

  const config: ModelConfig = {
    architecture,
    block: BLOCKS[architecture],
    hiddenSize,
    intermediateSize: raw.intermediate_size,
    numLayers: raw.num_hidden_layers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: raw.vocab_size,
    rmsNormEps: raw.rms_norm_eps ?? 1e-6,
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: raw.max_position_embeddings ?? defaults.maxPositionEmbeddings,
    tieWordEmbeddings: raw.tie_word_embeddings ?? gemma,
    attentionBias,
    oProjBias,
    mlpBias,
    eosTokenIds,
  };
  if (moe !== undefined) config.moe = moe;
  if (bosTokenId !== undefined) config.bosTokenId = bosTokenId;
  if (raw.pad_token_id != null) config.padTokenId = raw.pad_token_id;
  if (slidingWindow !== undefined) config.slidingWindow = slidingWindow;
  if (slidingWindowFromLayer !== undefined) config.slidingWindowFromLayer = slidingWindowFromLayer;
  const dtype = raw.torch_dtype ?? raw.dtype;
  if (dtype != null) config.torchDtype = dtype;
  if (gemma) addGemma(config, raw, architecture, fail);
  return config;
}

/** Gemma 2 and 3: the interleaved sliding-window layers, the score scale, soft-capping, the local RoPE base. */
function addGemma(config: ModelConfig, raw: RawConfig, architecture: Architecture, fail: (message: string) => never): void {
  const layers = config.numLayers;
  config.slidingWindow = raw.sliding_window ?? 4096;
  let types: boolean[];
  if (raw.layer_types != null) {
    if (raw.layer_types.length !== layers) fail(`layer_types has ${raw.layer_types.length} entries, but the model has ${layers} layers`);
    types = raw.layer_types.map((t) => t === 'sliding_attention');
  } else {
    // transformers: Gemma 2 alternates sliding and full layers starting with sliding; Gemma 3 makes
    // every sliding_window_pattern-th layer full (default 6).
    const pattern = architecture === 'gemma2' ? 2 : (raw.sliding_window_pattern ?? 6);
    types = Array.from({ length: layers }, (_, l) => (l + 1) % pattern !== 0);
  }
  config.slidingLayers = types;
  config.queryPreAttnScalar = raw.query_pre_attn_scalar ?? 256;
  if (architecture === 'gemma2') {
    // Gemma2Config's defaults are 50 and 30; null in the file turns them off.
    const attn = raw.attn_logit_softcapping === undefined ? 50 : raw.attn_logit_softcapping;
    const final = raw.final_logit_softcapping === undefined ? 30 : raw.final_logit_softcapping;
    if (attn != null) config.attnLogitSoftcap = attn;
    if (final != null) config.finalLogitSoftcap = final;
  } else {
    if (raw.attn_logit_softcapping != null) config.attnLogitSoftcap = raw.attn_logit_softcapping;
    if (raw.final_logit_softcapping != null) config.finalLogitSoftcap = raw.final_logit_softcapping;
    config.ropeLocalTheta = raw.rope_local_base_freq ?? 10000;
  }
  if (config.padTokenId === undefined && raw.pad_token_id === undefined) config.padTokenId = 0;
}

function parseMoe(raw: RawConfig, architecture: Architecture, fail: (message: string) => never): MoeConfig | undefined {
  if (architecture !== 'mixtral' && architecture !== 'qwen2_moe' && architecture !== 'qwen3_moe') return undefined;
  const layers = raw.num_hidden_layers;
  if (architecture === 'mixtral') {
    const numExperts = raw.num_local_experts ?? 8;
    const topK = raw.num_experts_per_tok ?? 2;
    if (topK > numExperts) fail(`num_experts_per_tok (${topK}) exceeds num_local_experts (${numExperts})`);
    return {
      numExperts,
      topK,
      normTopkProb: true,
      expertIntermediateSize: raw.intermediate_size,
      sharedExpertIntermediateSize: 0,
      sparseLayers: Array.from({ length: layers }, () => true),
      expertNaming: 'w1w2w3',
    };
  }
  const qwen2 = architecture === 'qwen2_moe';
  const numExperts = raw.num_experts ?? (qwen2 ? 60 : 128);
  const topK = raw.num_experts_per_tok ?? (qwen2 ? 4 : 8);
  if (topK > numExperts) fail(`num_experts_per_tok (${topK}) exceeds num_experts (${numExperts})`);
  const step = raw.decoder_sparse_step ?? 1;
  const mlpOnly = new Set(raw.mlp_only_layers ?? []);
  for (const l of mlpOnly) if (l >= layers) fail(`mlp_only_layers names layer ${l}, but the model has ${layers} layers`);
  return {
    numExperts,
    topK,
    normTopkProb: raw.norm_topk_prob ?? false,
    expertIntermediateSize: raw.moe_intermediate_size ?? (qwen2 ? 1408 : 768),
    sharedExpertIntermediateSize: qwen2 ? (raw.shared_expert_intermediate_size ?? 5632) : 0,
    // transformers: a layer is sparse unless listed in mlp_only_layers, and only every decoder_sparse_step-th.
    sparseLayers: Array.from({ length: layers }, (_, l) => !mlpOnly.has(l) && numExperts > 0 && (l + 1) % step === 0),
    expertNaming: 'gate_up_down',
  };
}

function parseRope(raw: RawConfig, headDim: number, fail: (message: string) => never): { ropeTheta: number; ropeScaling: RopeScaling | undefined } {
  // transformers 5 writes `rope_parameters` (theta and scaling together); older configs write
  // `rope_theta` and `rope_scaling`, whose type key is `rope_type` or, older still, `type`.
  const params = raw.rope_parameters ?? undefined;
  const field = params ? 'rope_parameters' : 'rope_scaling';
  const scaling = params ?? raw.rope_scaling ?? undefined;

  let ropeTheta = raw.rope_theta ?? 10000;
  if (params && params.rope_theta !== undefined) {
    if (!isPositiveNumber(params.rope_theta)) fail(`rope_parameters.rope_theta must be a positive number (got ${show(params.rope_theta)})`);
    ropeTheta = params.rope_theta as number;
  }
  if (params && params.partial_rotary_factor !== undefined && params.partial_rotary_factor !== 1) {
    fail(`rope_parameters.partial_rotary_factor ${show(params.partial_rotary_factor)} is not supported; only 1 is`);
  }
  if (!scaling) return { ropeTheta, ropeScaling: undefined };

  const type = scaling.rope_type ?? scaling.type;
  if (type === undefined || type === null || type === 'default') {
    if (params || type === 'default') return { ropeTheta, ropeScaling: undefined };
    fail(`${field} has no rope_type (or type)`);
  }
  const number = (key: string, test: (x: unknown) => boolean, what: string): number => {
    const value = scaling[key];
    if (!test(value)) fail(`${field}.${key} must be ${what} (got ${show(value)})`);
    return value as number;
  };
  switch (type) {
    case 'linear':
      return { ropeTheta, ropeScaling: { type: 'linear', factor: number('factor', isPositiveNumber, 'a positive number') } };
    case 'llama3': {
      const ropeScaling: RopeScaling = {
        type: 'llama3',
        factor: number('factor', isPositiveNumber, 'a positive number'),
        lowFreqFactor: number('low_freq_factor', isPositiveNumber, 'a positive number'),
        highFreqFactor: number('high_freq_factor', isPositiveNumber, 'a positive number'),
        originalMaxPositionEmbeddings: number('original_max_position_embeddings', isPositiveInteger, 'a positive integer'),
      };
      if (!(ropeScaling.highFreqFactor > ropeScaling.lowFreqFactor)) {
        fail(`${field}: high_freq_factor (${ropeScaling.highFreqFactor}) must be greater than low_freq_factor (${ropeScaling.lowFreqFactor})`);
      }
      return { ropeTheta, ropeScaling };
    }
    case 'longrope':
    case 'su': {
      const factors = (key: string): number[] => {
        const value = scaling[key];
        if (!Array.isArray(value) || value.length !== headDim / 2 || !value.every(isPositiveNumber)) {
          fail(`${field}.${key} must be a list of ${headDim / 2} positive numbers (half the head dimension; got ${show(value)})`);
        }
        return value as number[];
      };
      const shortFactor = factors('short_factor');
      const longFactor = factors('long_factor');
      const original = scaling.original_max_position_embeddings ?? raw.original_max_position_embeddings;
      if (!isPositiveInteger(original)) fail(`${field} type ${show(type)} needs original_max_position_embeddings (got ${show(original)})`);
      // transformers: attention_factor as given, else √(1 + ln(factor) / ln(original)) with factor = max / original.
      let attentionFactor: number;
      if (scaling.attention_factor !== undefined && scaling.attention_factor !== null) {
        attentionFactor = number('attention_factor', isPositiveNumber, 'a positive number');
      } else {
        const factor = (isPositiveNumber(scaling.factor) ? scaling.factor : (raw.max_position_embeddings ?? 4096) / (original as number)) as number;
        attentionFactor = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original as number));
      }
      return { ropeTheta, ropeScaling: { type: 'longrope', shortFactor, longFactor, originalMaxPositionEmbeddings: original as number, attentionFactor } };
    }
    default:
      return fail(`${field} type ${show(type)} is not supported; supported: "llama3", "linear", "longrope" (or none)`);
  }
}

/**
 * The sliding attention window of layer l, or undefined for full causal attention: every layer of
 * Mistral, Mixtral and Phi-3 with a `sliding_window`; Qwen2's layers from `max_window_layers` on
 * with `use_sliding_window`; Gemma's sliding layers (`slidingLayers`).
 */
export function attentionWindow(config: Pick<ModelConfig, 'slidingWindow' | 'slidingWindowFromLayer' | 'slidingLayers'>, l: number): number | undefined {
  if (config.slidingWindow === undefined) return undefined;
  if (config.slidingLayers !== undefined) return config.slidingLayers[l] ? config.slidingWindow : undefined;
  if (config.slidingWindowFromLayer !== undefined && l < config.slidingWindowFromLayer) return undefined;
  return config.slidingWindow;
}

// ---------------------------------------------------------------------------------------------

/** Joins a folder's name and a file name for messages. */
export function describeFile(folder: { readonly name: string }, file: string): string {
  return folder.name === '' ? file : `${folder.name.replace(/[\\/]+$/, '')}/${file}`;
}

/** Reads and validates `config.json` from a model folder. */
export async function loadModelConfig(folder: FileFolder): Promise<ModelConfig> {
  const source = describeFile(folder, 'config.json');
  let text: string;
  try {
    text = await folder.readText('config.json');
  } catch (error) {
    if (error instanceof FileMissingError) {
      throw new ModelConfigError(`${source} is missing: a Hugging Face model folder has a config.json next to its safetensors files`);
    }
    throw error;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ModelConfigError(`${source}: invalid JSON (${jsonErrorReason(error, text)})`);
  }
  return parseModelConfig(json, source);
}

// ---------------------------------------------------------------------------------------------

/**
 * RoPE inverse frequencies, headDim/2 of them: `inv_freq[i] = 1 / theta^(2i/headDim)`, then the
 * `linear` or `llama3` scaling. This follows transformers' `_compute_default_rope_parameters`,
 * `_compute_linear_scaling_rope_parameters` and `_compute_llama3_parameters`, which compute in
 * float32 tensors: every step is rounded to float32 here as there (the only possible difference is
 * the last bit of `pow`). The rotation angle of position p and pair i is `p * inv_freq[i]`, the
 * pair being (i, i + headDim/2) ("rotate half").
 */
export function ropeInverseFrequencies(config: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float32Array {
  const f = Math.fround;
  const dim = config.headDim;
  const half = dim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = f(1 / f(Math.pow(config.ropeTheta, f((2 * i) / dim))));

  const scaling = config.ropeScaling;
  if (scaling?.type === 'linear') {
    const factor = f(scaling.factor);
    for (let i = 0; i < half; i++) out[i] = f(out[i]! / factor);
  } else if (scaling?.type === 'longrope') {
    // transformers' _compute_longrope_parameters: inv_freq = 1 / (ext_factors · theta^(2i/d)), in float32.
    for (let i = 0; i < half; i++) out[i] = f(1 / f(f(scaling.shortFactor[i]!) * f(Math.pow(config.ropeTheta, f((2 * i) / dim)))));
  } else if (scaling?.type === 'llama3') {
    const factor = f(scaling.factor);
    const low = scaling.lowFreqFactor;
    const high = scaling.highFreqFactor;
    const oldContext = scaling.originalMaxPositionEmbeddings;
    const lowFreqWavelen = f(oldContext / low);
    const highFreqWavelen = f(oldContext / high);
    const twoPi = f(2 * Math.PI);
    const range = f(high - low);
    for (let i = 0; i < half; i++) {
      const inv = out[i]!;
      const wavelen = f(twoPi / inv);
      const invLlama = wavelen > lowFreqWavelen ? f(inv / factor) : inv;
      const smooth = f(f(f(f(oldContext) / wavelen) - f(low)) / range);
      const smoothed = f(f(f(f(1 - smooth) * invLlama) / factor) + f(smooth * invLlama));
      const isMedium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
      out[i] = isMedium ? smoothed : invLlama;
    }
  }
  return out;
}

/**
 * The attention score scale: 1/√head_dim, times the square of longrope's attention factor (which
 * transformers applies to cos and sin, so to both q and k).
 */
export function attentionScale(config: Pick<ModelConfig, 'headDim' | 'ropeScaling' | 'queryPreAttnScalar'>): number {
  const factor = config.ropeScaling?.type === 'longrope' ? config.ropeScaling.attentionFactor : 1;
  return (factor * factor) / Math.sqrt(config.queryPreAttnScalar ?? config.headDim);
}

/**
 * Gemma's embedding multiplier √hidden_size as transformers applies it: a tensor in the activations'
 * dtype (the embedding's), so √hidden_size rounded to bf16 or f16 first (e.g. √3072 = 55.43 → 55.5 in
 * bf16). The product is then formed in f32 (the engine's activations), not rounded again. 1 for
 * families without the scaling.
 */
export function embeddingMultiplier(config: Pick<ModelConfig, 'hiddenSize' | 'block'>, dtype: 'F32' | 'F16' | 'BF16'): number {
  if (!config.block.scaledEmbedding) return 1;
  const root = Math.sqrt(config.hiddenSize);
  return dtype === 'BF16' ? bf16ToF32(f32ToBf16(root)) : dtype === 'F16' ? f16ToF32(f32ToF16(root)) : Math.fround(root);
}
