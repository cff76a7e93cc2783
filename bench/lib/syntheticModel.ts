import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlobFolder } from '../../src/io/byteSource.ts';

/**
 * Random-weight Llama-architecture models of real shapes, generated in memory in a few seconds
 * (test/reference/randomModel.ts keeps a float64 copy of every weight for the reference, which is
 * too much for hundreds of millions of parameters). Same tensor names and config fields as
 * randomModel; values uniform with the same scales: matrices of standard deviation 1/√fan_in,
 * embeddings 1, norm weights 1 ± 0.1. Sharded (with an index) above 1 GiB.
 */
export interface SyntheticShape {
  name: string;
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

export const SHAPES: Record<string, SyntheticShape> = { [SMOLLM2_135M.name]: SMOLLM2_135M, [LLAMA_1B.name]: LLAMA_1B, [TINY.name]: TINY };

interface TensorSpec {
  name: string;
  shape: number[];
  kind: 'matrix' | 'embedding' | 'norm';
}

export function tensorSpecs(s: SyntheticShape): TensorSpec[] {
  const headDim = s.headDim ?? s.hidden / s.heads;
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocab, s.hidden], kind: 'embedding' }];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}`;
    specs.push(
      { name: `${p}.input_layernorm.weight`, shape: [s.hidden], kind: 'norm' },
      { name: `${p}.self_attn.q_proj.weight`, shape: [s.heads * headDim, s.hidden], kind: 'matrix' },
      { name: `${p}.self_attn.k_proj.weight`, shape: [s.kvHeads * headDim, s.hidden], kind: 'matrix' },
      { name: `${p}.self_attn.v_proj.weight`, shape: [s.kvHeads * headDim, s.hidden], kind: 'matrix' },
      { name: `${p}.self_attn.o_proj.weight`, shape: [s.hidden, s.heads * headDim], kind: 'matrix' },
      { name: `${p}.post_attention_layernorm.weight`, shape: [s.hidden], kind: 'norm' },
      { name: `${p}.mlp.gate_proj.weight`, shape: [s.intermediate, s.hidden], kind: 'matrix' },
      { name: `${p}.mlp.up_proj.weight`, shape: [s.intermediate, s.hidden], kind: 'matrix' },
      { name: `${p}.mlp.down_proj.weight`, shape: [s.hidden, s.intermediate], kind: 'matrix' },
    );
  }
  specs.push({ name: 'model.norm.weight', shape: [s.hidden], kind: 'norm' });
  if (!s.tied) specs.push({ name: 'lm_head.weight', shape: [s.vocab, s.hidden], kind: 'matrix' });
  return specs;
}

export function configJson(s: SyntheticShape): Record<string, unknown> {
  const config: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
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

/** bf16 bits of uniform values in [-scale, scale) (scale ≠ 0) or in 1 ± 0.1 (norms). */
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
