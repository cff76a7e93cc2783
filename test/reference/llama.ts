/**
 * An independent float64 CPU reference of the Llama / Mistral / Qwen2 decoder, written from the
 * equations of Hugging Face transformers' modelling code (`LlamaForCausalLM`, `MistralForCausalLM`,
 * `Qwen2ForCausalLM`): the GPU forward pass is tested against it.
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
 * Everything is float64, including the RoPE inverse frequencies, which are computed here from
 * rope_theta and the llama3 / linear scaling formulas (not taken from src). Mistral's and Qwen2's
 * sliding window is ignored: the reference is meant for sequences shorter than the window.
 */
import type { ModelConfig } from '../../src/model/config.ts';

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

/** RoPE inverse frequencies in float64: theta^(-2i/d), then linear or llama3 scaling. */
export function referenceInverseFrequencies(config: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float64Array {
  const d = config.headDim;
  const out = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) out[i] = 1 / Math.pow(config.ropeTheta, (2 * i) / d);
  const scaling = config.ropeScaling;
  if (scaling?.type === 'linear') {
    for (let i = 0; i < out.length; i++) out[i]! /= scaling.factor;
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

/** rmsnorm over rows of x [rows, n]: x / sqrt(mean(x²) + eps) ⊙ weight. */
export function rmsnorm(x: Float64Array, n: number, weight: Float64Array, eps: number): Float64Array {
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

  constructor(
    readonly config: ModelConfig,
    readonly weights: ReferenceWeights,
  ) {
    this.invFreq = referenceInverseFrequencies(config);
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
    for (let l = 0; l < c.numLayers; l++) {
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
  forward(tokens: readonly number[]): ReferenceOutput {
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

    const positions = tokens.map((_, t) => t);
    const layers: ReferenceLayer[] = [];
    let x: Float64Array = embed;
    for (let l = 0; l < c.numLayers; l++) {
      const layer = this.layer(l, x, positions);
      layers.push(layer);
      x = layer.residPost;
    }
    const finalNorm = rmsnorm(x, H, this.weights.get('model.norm.weight'), c.rmsNormEps);
    const head = c.tieWordEmbeddings ? embedTable : this.weights.get('lm_head.weight');
    const logits = linear(finalNorm, H, head, c.vocabSize);
    return { embed, layers, finalNorm, logits };
  }

  private layer(l: number, residPre: Float64Array, positions: readonly number[]): ReferenceLayer {
    const c = this.config;
    const H = c.hiddenSize;
    const d = c.headDim;
    const T = positions.length;
    const p = `model.layers.${l}`;
    const w = (name: string) => this.weights.get(`${p}.${name}`);
    const bias = (name: string, present: boolean, size: number) => (present ? this.weight(`${p}.${name}`, size) : undefined);

    const M = c.intermediateSize;
    const a = rmsnorm(residPre, H, w('input_layernorm.weight'), c.rmsNormEps);
    const qDim = c.numHeads * d;
    const kvDim = c.numKvHeads * d;
    const q = linear(a, H, w('self_attn.q_proj.weight'), qDim, bias('self_attn.q_proj.bias', c.attentionBias, qDim));
    const k = linear(a, H, w('self_attn.k_proj.weight'), kvDim, bias('self_attn.k_proj.bias', c.attentionBias, kvDim));
    const v = linear(a, H, w('self_attn.v_proj.weight'), kvDim, bias('self_attn.v_proj.bias', c.attentionBias, kvDim));
    applyRope(q, c.numHeads, d, positions, this.invFreq);
    applyRope(k, c.numKvHeads, d, positions, this.invFreq);

    const group = c.numHeads / c.numKvHeads;
    const scale = 1 / Math.sqrt(d);
    const attn = new Float64Array(T * qDim);
    const scores = new Float64Array(T);
    for (let h = 0; h < c.numHeads; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        let max = -Infinity;
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += q[t * qDim + h * d + i]! * k[s * kvDim + g * d + i]!;
          scores[s] = dot * scale;
          if (scores[s]! > max) max = scores[s]!;
        }
        let total = 0;
        for (let s = 0; s <= t; s++) {
          scores[s] = Math.exp(scores[s]! - max);
          total += scores[s]!;
        }
        for (let s = 0; s <= t; s++) {
          const weight = scores[s]! / total;
          for (let i = 0; i < d; i++) attn[t * qDim + h * d + i]! += weight * v[s * kvDim + g * d + i]!;
        }
      }
    }
    const attnOut = linear(attn, qDim, w('self_attn.o_proj.weight'), H, bias('self_attn.o_proj.bias', c.oProjBias, H));
    const residMid = add(residPre, attnOut);

    const y = rmsnorm(residMid, H, w('post_attention_layernorm.weight'), c.rmsNormEps);
    const gate = linear(y, H, w('mlp.gate_proj.weight'), M, bias('mlp.gate_proj.bias', c.mlpBias, M));
    const up = linear(y, H, w('mlp.up_proj.weight'), M, bias('mlp.up_proj.bias', c.mlpBias, M));
    for (let i = 0; i < gate.length; i++) gate[i] = silu(gate[i]!) * up[i]!;
    const mlpOut = linear(gate, M, w('mlp.down_proj.weight'), H, bias('mlp.down_proj.bias', c.mlpBias, H));
    const residPost = add(residMid, mlpOut);
    return { residPre, attnOut, residMid, mlpOut, residPost };
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

function add(a: Float64Array, b: Float64Array): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! + b[i]!;
  return out;
}
