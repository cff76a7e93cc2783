import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlobFolder } from '../../src/io/byteSource.ts';

/**
 * Random-weight models of real shapes (Llama, Qwen3 and Gemma 3 architectures), generated in memory
 * in a few seconds (test/reference/randomModel.ts keeps a float64 copy of every weight for the
 * reference, which is too much for hundreds of millions of parameters). Same tensor names and config
 * fields as randomModel; values uniform with the same scales: matrices of standard deviation
 * 1/√fan_in, embeddings 1, norm weights 1 ± 0.1 (Gemma's (1 + w) norms: w within ± 0.1). Sharded (with
 * an index) above 1 GiB.
 */
export interface SyntheticShape {
  name: string;
  /** Default 'llama'. qwen3: q/k norms; gemma3_text: q/k norms, norms before and after attention and MLP, sliding layers. */
  family?: 'llama' | 'qwen3' | 'gemma3_text';
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  vocab: number;
  tied: boolean;
  headDim?: number;
  ropeTheta?: number;
}

export const SMOLLM2_135M: SyntheticShape = { name: 'smollm2-135m', hidden: 576, layers: 30, heads: 9, kvHeads: 3, intermediate: 1536, vocab: 49152, tied: true, ropeTheta: 100000 };
export const LLAMA_1B: SyntheticShape = { name: 'llama-1b', hidden: 2048, layers: 16, heads: 32, kvHeads: 8, intermediate: 8192, vocab: 128256, tied: true, ropeTheta: 500000 };
/** Small enough for dry runs of the GPU scripts on a software adapter. */
export const TINY: SyntheticShape = { name: 'tiny', hidden: 256, layers: 4, heads: 4, kvHeads: 2, intermediate: 768, vocab: 4096, tied: true };
/** Qwen3-0.6B: head_dim 128 apart from hidden / heads, q/k norms, the 152k vocabulary. */
export const QWEN3_0_6B: SyntheticShape = { name: 'qwen3-0.6b', family: 'qwen3', hidden: 1024, layers: 28, heads: 16, kvHeads: 8, headDim: 128, intermediate: 3072, vocab: 151936, tied: true, ropeTheta: 1_000_000 };
/** Gemma 3 1B: head_dim 256, one key/value head, the 262k vocabulary, five sliding layers (window 512) to a global one. */
export const GEMMA3_1B: SyntheticShape = { name: 'gemma3-1b', family: 'gemma3_text', hidden: 1152, layers: 26, heads: 4, kvHeads: 1, headDim: 256, intermediate: 6912, vocab: 262144, tied: true, ropeTheta: 1_000_000 };

export const SHAPES: Record<string, SyntheticShape> = Object.fromEntries([SMOLLM2_135M, LLAMA_1B, TINY, QWEN3_0_6B, GEMMA3_1B].map((s) => [s.name, s]));

/** The same shape with fewer layers (for --quick runs of the large-vocabulary families), named so. */
export function withLayers(s: SyntheticShape, layers: number): SyntheticShape {
  return layers >= s.layers ? s : { ...s, name: `${s.name} (${layers} of ${s.layers} layers)`, layers };
}

interface TensorSpec {
  name: string;
  shape: number[];
  /** offset_norm: Gemma's w of a (1 + w) norm, around 0. */
  kind: 'matrix' | 'embedding' | 'norm' | 'offset_norm';
}

export function tensorSpecs(s: SyntheticShape): TensorSpec[] {
  const headDim = s.headDim ?? s.hidden / s.heads;
  const family = s.family ?? 'llama';
  const gemma = family === 'gemma3_text';
  const norm = gemma ? 'offset_norm' : 'norm';
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocab, s.hidden], kind: 'embedding' }];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}`;
    specs.push(
      { name: `${p}.input_layernorm.weight`, shape: [s.hidden], kind: norm },
      { name: `${p}.self_attn.q_proj.weight`, shape: [s.heads * headDim, s.hidden], kind: 'matrix' },
      { name: `${p}.self_attn.k_proj.weight`, shape: [s.kvHeads * headDim, s.hidden], kind: 'matrix' },
      { name: `${p}.self_attn.v_proj.weight`, shape: [s.kvHeads * headDim, s.hidden], kind: 'matrix' },
      { name: `${p}.self_attn.o_proj.weight`, shape: [s.hidden, s.heads * headDim], kind: 'matrix' },
      { name: `${p}.post_attention_layernorm.weight`, shape: [s.hidden], kind: norm },
      { name: `${p}.mlp.gate_proj.weight`, shape: [s.intermediate, s.hidden], kind: 'matrix' },
      { name: `${p}.mlp.up_proj.weight`, shape: [s.intermediate, s.hidden], kind: 'matrix' },
      { name: `${p}.mlp.down_proj.weight`, shape: [s.hidden, s.intermediate], kind: 'matrix' },
    );
    if (family !== 'llama') {
      specs.push({ name: `${p}.self_attn.q_norm.weight`, shape: [headDim], kind: norm }, { name: `${p}.self_attn.k_norm.weight`, shape: [headDim], kind: norm });
    }
    if (gemma) {
      specs.push({ name: `${p}.pre_feedforward_layernorm.weight`, shape: [s.hidden], kind: norm }, { name: `${p}.post_feedforward_layernorm.weight`, shape: [s.hidden], kind: norm });
    }
  }
  specs.push({ name: 'model.norm.weight', shape: [s.hidden], kind: norm });
  if (!s.tied) specs.push({ name: 'lm_head.weight', shape: [s.vocab, s.hidden], kind: 'matrix' });
  return specs;
}

export function configJson(s: SyntheticShape): Record<string, unknown> {
  const family = s.family ?? 'llama';
  const config: Record<string, unknown> = {
    architectures: [{ llama: 'LlamaForCausalLM', qwen3: 'Qwen3ForCausalLM', gemma3_text: 'Gemma3ForCausalLM' }[family]],
    model_type: family,
    hidden_size: s.hidden,
    intermediate_size: s.intermediate,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    vocab_size: s.vocab,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_theta: s.ropeTheta ?? 10000,
    max_position_embeddings: 8192,
    tie_word_embeddings: s.tied,
    bos_token_id: 1,
    eos_token_id: 2,
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'bfloat16',
  };
  if (s.headDim !== undefined) config.head_dim = s.headDim;
  if (family !== 'llama') {
    delete config.mlp_bias;
  }
  if (family === 'gemma3_text') {
    // gemma-3-1b-it's fields.
    delete config.hidden_act;
    Object.assign(config, {
      hidden_activation: 'gelu_pytorch_tanh',
      rms_norm_eps: 1e-6,
      query_pre_attn_scalar: s.headDim ?? s.hidden / s.heads,
      sliding_window: 512,
      sliding_window_pattern: 6,
      rope_local_base_freq: 10000,
      attn_logit_softcapping: null,
      final_logit_softcapping: null,
      bos_token_id: 2,
      eos_token_id: 1,
      pad_token_id: 0,
    });
  }
  return config;
}

/** Parameters and bf16 bytes of the model. */
export function modelSize(s: SyntheticShape): { parameters: number; bytes: number } {
  const parameters = tensorSpecs(s).reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0);
  return { parameters, bytes: 2 * parameters };
}

/** Bytes of weights a decode step reads per token: every matrix once, and the output projection (one embedding row aside). */
export function decodeWeightBytes(s: SyntheticShape): number {
  let total = 0;
  for (const t of tensorSpecs(s)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.kind === 'embedding') total += s.tied ? 2 * n + 2 * s.hidden : 2 * s.hidden;
    else total += 2 * n;
  }
  return total;
}

/** bf16 bits of uniform values in [-scale, scale) (scale ≠ 0), in 1 ± 0.1 (norms) or ± 0.1 (offset norms). */
function fillTensor(out: Uint16Array, kind: TensorSpec['kind'], fanIn: number, seed: number): void {
  let state = (seed * 0x9e3779b1) >>> 0 || 1;
  const f = new Float32Array(1);
  const bits = new Uint32Array(f.buffer);
  const scale = kind === 'embedding' ? Math.sqrt(3) : kind === 'matrix' ? Math.sqrt(3 / fanIn) : 0.1;
  const center = kind === 'norm' ? 1 : 0;
  for (let i = 0; i < out.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    f[0] = center + scale * (((state >>> 0) / 2 ** 32) * 2 - 1);
    // Round to nearest even on the upper 16 bits.
    const b = bits[0]!;
    out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}

export interface SyntheticFiles {
  /** File name → contents, config.json and safetensors shard(s) (and the index when sharded). */
  files: Map<string, Uint8Array<ArrayBuffer>>;
  parameters: number;
}

/** Builds the model's files in memory. */
export function syntheticModelFiles(s: SyntheticShape, options: { seed?: number; shardBytes?: number } = {}): SyntheticFiles {
  const specs = tensorSpecs(s);
  const shardLimit = options.shardBytes ?? 2 ** 30;
  const shards: TensorSpec[][] = [[]];
  let shardSize = 0;
  for (const t of specs) {
    const bytes = 2 * t.shape.reduce((a, b) => a * b, 1);
    if (shardSize > 0 && shardSize + bytes > shardLimit) {
      shards.push([]);
      shardSize = 0;
    }
    shards.at(-1)!.push(t);
    shardSize += bytes;
  }
  const files = new Map<string, Uint8Array<ArrayBuffer>>();
  files.set('config.json', new TextEncoder().encode(JSON.stringify(configJson(s), null, 2)));
  const names = shards.length === 1 ? ['model.safetensors'] : shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`);
  const weightMap: Record<string, string> = {};
  let parameters = 0;
  let seed = options.seed ?? 1;
  shards.forEach((shard, index) => {
    const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
    let offset = 0;
    for (const t of shard) {
      const bytes = 2 * t.shape.reduce((a, b) => a * b, 1);
      header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [offset, offset + bytes] };
      offset += bytes;
      weightMap[t.name] = names[index]!;
    }
    const json = new TextEncoder().encode(JSON.stringify(header));
    const headerLength = json.length + ((8 - (json.length % 8)) % 8);
    const file = new Uint8Array(8 + headerLength + offset);
    new DataView(file.buffer).setBigUint64(0, BigInt(headerLength), true);
    file.fill(0x20, 8, 8 + headerLength);
    file.set(json, 8);
    let at = 8 + headerLength;
    for (const t of shard) {
      const count = t.shape.reduce((a, b) => a * b, 1);
      fillTensor(new Uint16Array(file.buffer, at, count), t.kind, t.shape[1] ?? 1, seed++);
      at += 2 * count;
      parameters += count;
    }
    files.set(names[index]!, file);
  });
  if (shards.length > 1) {
    const total = [...files.entries()].filter(([n]) => n.endsWith('.safetensors')).reduce((a, [, f]) => a + f.length, 0);
    files.set('model.safetensors.index.json', new TextEncoder().encode(JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)));
  }
  return { files, parameters };
}

/** The model as a folder in memory (no file system), as the browser would see picked files. */
export function syntheticModelFolder(s: SyntheticShape, extraFiles: Map<string, Uint8Array<ArrayBuffer>> = new Map()): { folder: BlobFolder; parameters: number } {
  const { files, parameters } = syntheticModelFiles(s);
  const blobs = new Map<string, Blob>();
  for (const [name, bytes] of [...files, ...extraFiles]) blobs.set(name, new Blob([bytes]));
  files.clear();
  return { folder: new BlobFolder(`random ${s.name}`, blobs), parameters };
}

/** Writes the model's files into `dir` (created). */
export function writeSyntheticModel(s: SyntheticShape, dir: string): number {
  mkdirSync(dir, { recursive: true });
  const { files, parameters } = syntheticModelFiles(s);
  for (const [name, bytes] of files) writeFileSync(join(dir, name), bytes);
  return parameters;
}
