/**
 * An independent float64 CPU reference of the decoders of every supported family, written from the
 * equations of Hugging Face transformers' modelling code (`LlamaForCausalLM`, `MistralForCausalLM`,
 * `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `Phi3ForCausalLM`, `MixtralForCausalLM`,
 * `Qwen2MoeForCausalLM`, `Qwen3MoeForCausalLM`): the GPU forward pass is tested against it. It reads
 * the tensors by their Hugging Face names itself (nothing of src's weight layout).
 *
 * Per layer, with x the residual stream of shape [T, H]:
 *   residPre  = x
 *   a         = rmsnorm(residPre) ⊙ input_layernorm            (rmsnorm(x) = x / sqrt(mean(x²) + eps))
 *   q, k, v   = a Wqᵀ (+ bq), a Wkᵀ (+ bk), a Wvᵀ (+ bv)        (biases: qwen2, or llama attention_bias)
 *   q, k      = RoPE "rotate half": pairs (i, i + d/2), angle pos · inv_freq[i]
 *   attn_h    = softmax(q_h k_gᵀ / sqrt(d) + causal mask) v_g  (g = h / (heads / kv_heads))
 *   attnOut   = concat_h(attn_h) Woᵀ (+ bo, llama attention_bias only)
 *   residMid  = residPre + attnOut
 *   y         = rmsnorm(residMid) ⊙ post_attention_layernorm
 *   mlpOut    = (silu(y Wgᵀ) ⊙ (y Wuᵀ)) Wdᵀ                    (biases with llama mlp_bias)
 *   residPost = residMid + mlpOut
 * then finalNorm = rmsnorm(residPost of the last layer) ⊙ model.norm, logits = finalNorm lm_headᵀ
 * (lm_head = embed_tokens when tied).
 *
 * Family differences:
 *   Qwen3 (and Qwen3-MoE): q, k = rmsnorm over each head's head_dim ⊙ q_norm, k_norm, before RoPE.
 *   Phi-3: q, k, v are the row blocks [heads·d | kv·d | kv·d] of qkv_proj; gate, up the two halves
 *     of gate_up_proj (gate first).
 *   MoE: logits = y routerᵀ; Mixtral and Qwen-MoE with norm_topk_prob: softmax over all, top-k,
 *     divided by their sum (= softmax over the top-k logits); Qwen-MoE without: softmax over all,
 *     top-k probabilities as they are; mlpOut = Σ_selected p_e · expert_e(y), each expert a gated
 *     MLP (Mixtral w1 = gate, w3 = up, w2 = down); Qwen2-MoE adds sigmoid(y · shared_expert_gate) ·
 *     shared_expert(y). Experts may be stored fused: experts.gate_up_proj [E, 2I, H] (gate rows
 *     first), experts.down_proj [E, H, I].
 *   Gemma 2 and 3: every rmsnorm scales by (1 + w); the embedding is multiplied by √H rounded to
 *     the weights' dtype (transformers makes the normalizer a tensor of the activations' dtype);
 *     attnOut = rmsnorm(o_proj(…)) ⊙ (1 + post_attention_layernorm); the MLP reads
 *     rmsnorm(residMid) ⊙ (1 + pre_feedforward_layernorm), uses gelu_tanh(g) = g/2 (1 + tanh(√(2/π)
 *     (g + 0.044715 g³))) for silu, and mlpOut = rmsnorm(down(…)) ⊙ (1 + post_feedforward_layernorm);
 *     scores scale 1/√query_pre_attn_scalar; sliding layers (Gemma 2: even layers; Gemma 3: all but
 *     every sliding_window_pattern-th, or layer_types) see the last `sliding_window` keys; Gemma 2
 *     soft-caps scores and logits (c · tanh(x / c)); Gemma 3 has q/k norms (with 1 + w) and RoPE base
 *     rope_local_base_freq, unscaled, on its sliding layers.
 *
 * Everything is float64, including the RoPE inverse frequencies, which are computed here from
 * rope_theta and the llama3 / linear / longrope scaling formulas (not taken from src). Sliding windows
 * (Mistral, Mixtral, Phi-3 every layer; Qwen2 from max_window_layers with use_sliding_window): query
 * t sees keys s with t − window < s ≤ t (transformers' sliding-window mask).
 */
import type { ModelConfig } from '../../src/model/config.ts';
import { fromBfloat16Bits, fromFloat16Bits, toBfloat16Bits, toFloat16Bits } from './randomModel.ts';

/** Weights by Hugging Face name; matrices row-major [out, in] as stored in safetensors. */
export interface ReferenceWeights {
  get(name: string): Float64Array;
  has(name: string): boolean;
}

export interface ReferenceLayer {
  residPre: Float64Array;
  attnOut: Float64Array;
  residMid: Float64Array;
  mlpOut: Float64Array;
  residPost: Float64Array;
}

export interface ReferenceOutput {
  /** [T, H] */
  embed: Float64Array;
  /** Each field [T, H]. */
  layers: ReferenceLayer[];
  /** [T, H] */
  finalNorm: Float64Array;
  /** [T, V] */
  logits: Float64Array;
}

/**
 * Where a run-time edit of the reference's activations applies: the embedding's output, the raw
 * output of `o_proj` and of the MLP (before Gemma's post-norms), the writes the stream receives
 * (`attn_out`, `mlp_out`: after the post-norms in Gemma, the same as the raw outputs elsewhere), and
 * the final norm's output.
 */
export type ReferenceEditPoint = 'embed' | 'attn_proj' | 'attn_out' | 'mlp_proj' | 'mlp_out' | 'final_norm';

/** Changes the rows x [T, H] at a point in place (layer undefined for `embed` and `final_norm`). */
export type ReferenceEdit = (point: ReferenceEditPoint, layer: number | undefined, x: Float64Array) => void;

/** RoPE inverse frequencies in float64: theta^(-2i/d), then linear or llama3 scaling. */
export function referenceInverseFrequencies(config: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float64Array {
  const d = config.headDim;
  const out = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) out[i] = 1 / Math.pow(config.ropeTheta, (2 * i) / d);
  const scaling = config.ropeScaling;
  if (scaling?.type === 'linear') {
    for (let i = 0; i < out.length; i++) out[i]! /= scaling.factor;
  } else if (scaling?.type === 'longrope') {
    // Phi-3 within its original context: each frequency divided by its short factor.
    for (let i = 0; i < out.length; i++) out[i]! /= scaling.shortFactor[i]!;
  } else if (scaling?.type === 'llama3') {
    // Llama 3.1: keep wavelengths below original/high_freq_factor, divide those above
    // original/low_freq_factor by factor, interpolate linearly in 1/wavelength in between.
    const { factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: original } = scaling;
    for (let i = 0; i < out.length; i++) {
      const f = out[i]!;
      const wavelength = (2 * Math.PI) / f;
      if (wavelength < original / high) continue;
      if (wavelength > original / low) {
        out[i] = f / factor;
        continue;
      }
      const s = (original / wavelength - low) / (high - low);
      out[i] = (1 - s) * (f / factor) + s * f;
    }
  }
  return out;
}

/** rmsnorm over rows of x [rows, n]: x / sqrt(mean(x²) + eps) ⊙ weight (⊙ (1 + weight) with plusOne, Gemma). */
export function rmsnorm(x: Float64Array, n: number, weight: Float64Array, eps: number, plusOne = false): Float64Array {
  if (plusOne) weight = weight.map((w) => 1 + w);
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / n; r++) {
    let sum = 0;
    for (let j = 0; j < n; j++) sum += x[r * n + j]! ** 2;
    const scale = 1 / Math.sqrt(sum / n + eps);
    for (let j = 0; j < n; j++) out[r * n + j] = x[r * n + j]! * scale * weight[j]!;
  }
  return out;
}

/** x [rows, inDim] times Wᵀ, W [outDim, inDim] row-major, plus an optional bias [outDim]. */
export function linear(x: Float64Array, inDim: number, w: Float64Array, outDim: number, bias?: Float64Array): Float64Array {
  if (w.length !== inDim * outDim) throw new Error(`weight has ${w.length} values, expected ${outDim}×${inDim}`);
  const rows = x.length / inDim;
  const out = new Float64Array(rows * outDim);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outDim; o++) {
      let sum = bias ? bias[o]! : 0;
      for (let j = 0; j < inDim; j++) sum += x[r * inDim + j]! * w[o * inDim + j]!;
      out[r * outDim + o] = sum;
    }
  }
  return out;
}

export const silu = (x: number): number => x / (1 + Math.exp(-x));
export const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/**
 * Rotates, in place, every head of x [T, heads·d] at positions positions[t]: the HF "rotate half"
 * convention, x' = x cos + rotate_half(x) sin with rotate_half(x) = (−x₂, x₁).
 */
export function applyRope(x: Float64Array, heads: number, d: number, positions: readonly number[], invFreq: Float64Array): void {
  const half = d / 2;
  for (let t = 0; t < positions.length; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * d;
      for (let i = 0; i < half; i++) {
        const angle = positions[t]! * invFreq[i]!;
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        const x1 = x[base + i]!;
        const x2 = x[base + i + half]!;
        x[base + i] = x1 * c - x2 * s;
        x[base + i + half] = x2 * c + x1 * s;
      }
    }
  }
}

export class ReferenceLlama {
  readonly invFreq: Float64Array;
  /** Gemma 3's sliding layers: rope_local_base_freq, no scaling. */
  readonly invFreqLocal: Float64Array | undefined;
  private readonly gemma: boolean;

  constructor(
    readonly config: ModelConfig,
    readonly weights: ReferenceWeights,
  ) {
    this.invFreq = referenceInverseFrequencies(config);
    this.gemma = config.architecture === 'gemma2' || config.architecture === 'gemma3_text';
    if (config.ropeLocalTheta !== undefined) this.invFreqLocal = referenceInverseFrequencies({ headDim: config.headDim, ropeTheta: config.ropeLocalTheta, ropeScaling: undefined });
    this.checkShapes();
  }

  private weight(name: string, size: number): Float64Array {
    if (!this.weights.has(name)) throw new Error(`reference: missing tensor ${name}`);
    const w = this.weights.get(name);
    if (w.length !== size) throw new Error(`reference: ${name} has ${w.length} values, expected ${size}`);
    return w;
  }

  private checkShapes(): void {
    const c = this.config;
    const { hiddenSize: h, intermediateSize: m, vocabSize: v, headDim: d } = c;
    this.weight('model.embed_tokens.weight', v * h);
    this.weight('model.norm.weight', h);
    if (!c.tieWordEmbeddings) this.weight('lm_head.weight', v * h);
    const denseSeparate = ['llama', 'mistral', 'qwen2', 'qwen3', 'gemma2', 'gemma3_text'].includes(c.architecture);
    for (let l = 0; l < c.numLayers && denseSeparate; l++) {
      const p = `model.layers.${l}`;
      this.weight(`${p}.self_attn.q_proj.weight`, c.numHeads * d * h);
      this.weight(`${p}.self_attn.k_proj.weight`, c.numKvHeads * d * h);
      this.weight(`${p}.self_attn.v_proj.weight`, c.numKvHeads * d * h);
      this.weight(`${p}.self_attn.o_proj.weight`, h * c.numHeads * d);
      this.weight(`${p}.mlp.gate_proj.weight`, m * h);
      this.weight(`${p}.mlp.up_proj.weight`, m * h);
      this.weight(`${p}.mlp.down_proj.weight`, h * m);
    }
  }

  /** One sequence at positions 0..T−1; every tap of every layer. */
  forward(tokens: readonly number[], edit?: ReferenceEdit): ReferenceOutput {
    const c = this.config;
    const H = c.hiddenSize;
    const T = tokens.length;
    if (T === 0) throw new Error('reference: empty sequence');
    const embedTable = this.weights.get('model.embed_tokens.weight');
    const embed = new Float64Array(T * H);
    tokens.forEach((token, t) => {
      if (!Number.isInteger(token) || token < 0 || token >= c.vocabSize) throw new Error(`reference: token ${token} outside the vocabulary`);
      embed.set(embedTable.subarray(token * H, (token + 1) * H), t * H);
    });
    if (this.gemma) {
      const root = Math.sqrt(H);
      const normalizer = c.torchDtype === 'bfloat16' ? fromBfloat16Bits(toBfloat16Bits(root)) : c.torchDtype === 'float16' ? fromFloat16Bits(toFloat16Bits(root)) : Math.fround(root);
      for (let i = 0; i < embed.length; i++) embed[i]! *= normalizer;
    }
    edit?.('embed', undefined, embed);

    const positions = tokens.map((_, t) => t);
    const layers: ReferenceLayer[] = [];
    let x: Float64Array = embed;
    for (let l = 0; l < c.numLayers; l++) {
      const layer = this.layer(l, x, positions, edit);
      layers.push(layer);
      x = layer.residPost;
    }
    const finalNorm = rmsnorm(x, H, this.weights.get('model.norm.weight'), c.rmsNormEps, this.gemma);
    edit?.('final_norm', undefined, finalNorm);
    const head = c.tieWordEmbeddings ? embedTable : this.weights.get('lm_head.weight');
    const logits = linear(finalNorm, H, head, c.vocabSize);
    const cap = c.finalLogitSoftcap;
    if (cap !== undefined) for (let i = 0; i < logits.length; i++) logits[i] = cap * Math.tanh(logits[i]! / cap);
    return { embed, layers, finalNorm, logits };
  }

  private layer(l: number, residPre: Float64Array, positions: readonly number[], edit: ReferenceEdit | undefined): ReferenceLayer {
    const c = this.config;
    const H = c.hiddenSize;
    const d = c.headDim;
    const T = positions.length;
    const p = `model.layers.${l}`;
    const w = (name: string) => this.weights.get(`${p}.${name}`);
    const bias = (name: string, present: boolean, size: number) => (present ? this.weight(`${p}.${name}`, size) : undefined);

    const gemma = this.gemma;
    const a = rmsnorm(residPre, H, w('input_layernorm.weight'), c.rmsNormEps, gemma);
    const qDim = c.numHeads * d;
    const kvDim = c.numKvHeads * d;
    let q: Float64Array;
    let k: Float64Array;
    let v: Float64Array;
    if (c.architecture === 'phi3') {
      const qkv = this.weight(`${p}.self_attn.qkv_proj.weight`, (qDim + 2 * kvDim) * H);
      q = linear(a, H, qkv.subarray(0, qDim * H), qDim);
      k = linear(a, H, qkv.subarray(qDim * H, (qDim + kvDim) * H), kvDim);
      v = linear(a, H, qkv.subarray((qDim + kvDim) * H), kvDim);
    } else {
      q = linear(a, H, w('self_attn.q_proj.weight'), qDim, bias('self_attn.q_proj.bias', c.attentionBias, qDim));
      k = linear(a, H, w('self_attn.k_proj.weight'), kvDim, bias('self_attn.k_proj.bias', c.attentionBias, kvDim));
      v = linear(a, H, w('self_attn.v_proj.weight'), kvDim, bias('self_attn.v_proj.bias', c.attentionBias, kvDim));
    }
    if (c.architecture === 'qwen3' || c.architecture === 'qwen3_moe' || c.architecture === 'gemma3_text') {
      // Each head's row of d values is one rmsnorm row.
      q = rmsnorm(q, d, this.weight(`${p}.self_attn.q_norm.weight`, d), c.rmsNormEps, gemma);
      k = rmsnorm(k, d, this.weight(`${p}.self_attn.k_norm.weight`, d), c.rmsNormEps, gemma);
    }
    const window = this.window(l);
    const invFreq = window !== undefined && this.invFreqLocal ? this.invFreqLocal : this.invFreq;
    applyRope(q, c.numHeads, d, positions, invFreq);
    applyRope(k, c.numKvHeads, d, positions, invFreq);
    if (c.ropeScaling?.type === 'longrope') {
      // cos and sin scaled by √(1 + ln(max / original) / ln(original)): q and k both.
      const original = c.ropeScaling.originalMaxPositionEmbeddings;
      const factor = c.maxPositionEmbeddings / original;
      const m = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
      for (let i = 0; i < q.length; i++) q[i]! *= m;
      for (let i = 0; i < k.length; i++) k[i]! *= m;
    }

    const group = c.numHeads / c.numKvHeads;
    const scale = 1 / Math.sqrt(gemma ? c.queryPreAttnScalar! : d);
    const softCap = c.attnLogitSoftcap;
    const attn = new Float64Array(T * qDim);
    const scores = new Float64Array(T);
    for (let h = 0; h < c.numHeads; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        let max = -Infinity;
        const first = window === undefined ? 0 : Math.max(0, t - window + 1);
        for (let s = first; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += q[t * qDim + h * d + i]! * k[s * kvDim + g * d + i]!;
          scores[s] = softCap === undefined ? dot * scale : softCap * Math.tanh((dot * scale) / softCap);
          if (scores[s]! > max) max = scores[s]!;
        }
        let total = 0;
        for (let s = first; s <= t; s++) {
          scores[s] = Math.exp(scores[s]! - max);
          total += scores[s]!;
        }
        for (let s = first; s <= t; s++) {
          const weight = scores[s]! / total;
          for (let i = 0; i < d; i++) attn[t * qDim + h * d + i]! += weight * v[s * kvDim + g * d + i]!;
        }
      }
    }
    let attnOut = linear(attn, qDim, w('self_attn.o_proj.weight'), H, bias('self_attn.o_proj.bias', c.oProjBias, H));
    edit?.('attn_proj', l, attnOut);
    if (gemma) attnOut = rmsnorm(attnOut, H, w('post_attention_layernorm.weight'), c.rmsNormEps, true);
    edit?.('attn_out', l, attnOut);
    const residMid = add(residPre, attnOut);

    const y = rmsnorm(residMid, H, w(gemma ? 'pre_feedforward_layernorm.weight' : 'post_attention_layernorm.weight'), c.rmsNormEps, gemma);
    let mlpOut = c.moe?.sparseLayers[l] ? this.moe(l, y) : this.denseMlp(l, y);
    edit?.('mlp_proj', l, mlpOut);
    if (gemma) mlpOut = rmsnorm(mlpOut, H, w('post_feedforward_layernorm.weight'), c.rmsNormEps, true);
    edit?.('mlp_out', l, mlpOut);
    const residPost = add(residMid, mlpOut);
    return { residPre, attnOut, residMid, mlpOut, residPost };
  }

  /** Layer l's sliding window, read from the config's raw fields (not through src's helper). */
  private window(l: number): number | undefined {
    const c = this.config;
    if (c.slidingWindow === undefined) return undefined;
    if (c.slidingLayers !== undefined) return c.slidingLayers[l] ? c.slidingWindow : undefined;
    return c.slidingWindowFromLayer !== undefined && l < c.slidingWindowFromLayer ? undefined : c.slidingWindow;
  }

  /** The gated MLP of layer l on rows y [T, H]. */
  private denseMlp(l: number, y: Float64Array): Float64Array {
    const c = this.config;
    const H = c.hiddenSize;
    const M = c.intermediateSize;
    const p = `model.layers.${l}.mlp`;
    const bias = (name: string, size: number) => (c.mlpBias ? this.weight(`${p}.${name}`, size) : undefined);
    if (c.architecture === 'phi3') {
      const gateUp = this.weight(`${p}.gate_up_proj.weight`, 2 * M * H);
      return gatedMlp(y, H, M, silu, gateUp.subarray(0, M * H), gateUp.subarray(M * H), this.weight(`${p}.down_proj.weight`, H * M));
    }
    return gatedMlp(
      y,
      H,
      M,
      this.gemma ? geluTanh : silu,
      this.weight(`${p}.gate_proj.weight`, M * H),
      this.weight(`${p}.up_proj.weight`, M * H),
      this.weight(`${p}.down_proj.weight`, H * M),
      [bias('gate_proj.bias', M), bias('up_proj.bias', M), bias('down_proj.bias', H)],
    );
  }

  /** The mixture of experts of layer l on rows y [T, H], token by token. */
  private moe(l: number, y: Float64Array): Float64Array {
    const c = this.config;
    const moe = c.moe!;
    const H = c.hiddenSize;
    const E = moe.numExperts;
    const I = moe.expertIntermediateSize;
    const mixtral = c.architecture === 'mixtral';
    const module = `model.layers.${l}.${mixtral ? 'block_sparse_moe' : 'mlp'}`;
    const router = this.weight(`${module}.gate.weight`, E * H);
    const fused = this.weights.has(`${module}.experts.gate_up_proj`);
    const expert = (e: number): [Float64Array, Float64Array, Float64Array] => {
      if (fused) {
        const gateUp = this.weight(`${module}.experts.gate_up_proj`, E * 2 * I * H);
        const down = this.weight(`${module}.experts.down_proj`, E * H * I);
        const base = e * 2 * I * H;
        return [gateUp.subarray(base, base + I * H), gateUp.subarray(base + I * H, base + 2 * I * H), down.subarray(e * H * I, (e + 1) * H * I)];
      }
      const x = `${module}.experts.${e}`;
      const [g, u, d] = mixtral ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
      return [this.weight(`${x}.${g}.weight`, I * H), this.weight(`${x}.${u}.weight`, I * H), this.weight(`${x}.${d}.weight`, H * I)];
    };
    const T = y.length / H;
    const out = new Float64Array(T * H);
    for (let t = 0; t < T; t++) {
      const row = y.subarray(t * H, (t + 1) * H);
      const logits = linear(row, H, router, E);
      // Softmax over all experts, then the top-k (ties to the lower index), renormalised or not.
      const max = Math.max(...logits);
      const exps = logits.map((z) => Math.exp(z - max));
      const total = exps.reduce((sum, z) => sum + z, 0);
      const order = [...exps.keys()].sort((i, j) => exps[j]! - exps[i]! || i - j).slice(0, moe.topK);
      const selected = order.reduce((sum, e) => sum + exps[e]!, 0);
      for (const e of order) {
        const weight = moe.normTopkProb ? exps[e]! / selected : exps[e]! / total;
        const [gate, up, down] = expert(e);
        const value = gatedMlp(row, H, I, silu, gate, up, down);
        for (let j = 0; j < H; j++) out[t * H + j]! += weight * value[j]!;
      }
      if (c.architecture === 'qwen2_moe') {
        const S = moe.sharedExpertIntermediateSize;
        const x = `${module}.shared_expert`;
        const g = linear(row, H, this.weight(`${module}.shared_expert_gate.weight`, H), 1)[0]!;
        const value = gatedMlp(row, H, S, silu, this.weight(`${x}.gate_proj.weight`, S * H), this.weight(`${x}.up_proj.weight`, S * H), this.weight(`${x}.down_proj.weight`, H * S));
        const scale = 1 / (1 + Math.exp(-g));
        for (let j = 0; j < H; j++) out[t * H + j]! += scale * value[j]!;
      }
    }
    return out;
  }

  /**
   * Greedy decoding (argmax, lowest id on ties, as torch.argmax): the new tokens only. Stops after
   * maxNewTokens or after emitting a stop id, which is included in the result.
   */
  greedy(prompt: readonly number[], maxNewTokens: number, stopIds: ReadonlySet<number> = new Set()): number[] {
    const V = this.config.vocabSize;
    const sequence = [...prompt];
    const generated: number[] = [];
    for (let n = 0; n < maxNewTokens; n++) {
      const { logits } = this.forward(sequence);
      const last = logits.subarray((sequence.length - 1) * V, sequence.length * V);
      const next = argmax(last);
      generated.push(next);
      sequence.push(next);
      if (stopIds.has(next)) break;
    }
    return generated;
  }
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/** (act(y gateᵀ) ⊙ (y upᵀ)) downᵀ for rows y [T, H], intermediate size M; act silu or GELU-tanh. */
function gatedMlp(
  y: Float64Array,
  H: number,
  M: number,
  activation: (x: number) => number,
  gateW: Float64Array,
  upW: Float64Array,
  downW: Float64Array,
  biases: (Float64Array | undefined)[] = [],
): Float64Array {
  const gate = linear(y, H, gateW, M, biases[0]);
  const up = linear(y, H, upW, M, biases[1]);
  for (let i = 0; i < gate.length; i++) gate[i] = activation(gate[i]!) * up[i]!;
  return linear(gate, M, downW, H, biases[2]);
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! + b[i]!;
  return out;
}
