import type { ComputeBatch } from '../gpu/batch.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { recordAttention } from '../kernels/attention.ts';
import { recordEmbedding } from '../kernels/embedding.ts';
import { recordAdd, recordSiluMul } from '../kernels/elementwise.ts';
import { recordKvCacheWrite } from '../kernels/kvCacheWrite.ts';
import { recordMatmul } from '../kernels/matmul.ts';
import { recordRmsNorm } from '../kernels/rmsnorm.ts';
import { recordRope } from '../kernels/rope.ts';
import { recordGatherRows } from '../kernels/rows.ts';
import { ropeInverseFrequencies, type ModelConfig } from './config.ts';
import type { KvCache } from './kvCache.ts';
import { selectRows, type HookRunner, type StepSequence } from './taps.ts';
import type { LlamaWeights } from './weights.ts';

/** A sequence in a forward step: its rows, positions, and the KV-cache slot it writes and reads. */
export interface SequenceStep extends StepSequence {
  slot: number;
}

export interface ForwardStep {
  /** Token ids of every row, sequences packed one after another. */
  tokens: ArrayLike<number>;
  sequences: readonly SequenceStep[];
  /** Which rows get logits: the last row of each sequence, every row, or none (activations only). */
  logits: 'last' | 'all' | 'none';
}

/** Per-step work buffers, grown on demand and reused between steps. */
class Workspace {
  private readonly buffers = new Map<string, GPUBuffer>();

  constructor(private readonly gpu: Gpu) {}

  get(name: string, bytes: number): GPUBuffer {
    const existing = this.buffers.get(name);
    if (existing && existing.size >= bytes) return existing;
    if (existing) this.gpu.destroyBuffer(existing);
    const buffer = this.gpu.createBuffer(bytes, `workspace ${name}`);
    this.buffers.set(name, buffer);
    return buffer;
  }

  dispose(): void {
    for (const b of this.buffers.values()) this.gpu.destroyBuffer(b);
    this.buffers.clear();
  }
}

/**
 * The Llama-family forward pass, one kernel per line in the order of the equations. A step runs any
 * mix of sequences: a packed prefill of many prompts, or one new token per sequence in decode;
 * attention reads each sequence's keys and values from its KV-cache slot.
 */
export class LlamaForward {
  private readonly workspace: Workspace;
  private readonly invFreq: GPUBuffer;

  constructor(
    readonly gpu: Gpu,
    readonly config: ModelConfig,
    readonly weights: LlamaWeights,
  ) {
    this.workspace = new Workspace(gpu);
    this.invFreq = gpu.upload(ropeInverseFrequencies(config), 'rope inverse frequencies');
  }

  /**
   * Records one forward step on `batch`. Returns the logits buffer: [sequences, vocab], one row per
   * sequence in order, when `step.logits` is 'last'; [tokens, vocab] when it is 'all'.
   */
  recordStep(batch: ComputeBatch, step: ForwardStep, cache: KvCache, hooks?: HookRunner): GPUBuffer | undefined {
    const c = this.config;
    const { sequences } = step;
    const T = step.tokens.length;
    const H = c.hiddenSize;
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    const ws = this.workspace;
    const f32 = 4;

    const ids = ws.get('ids', T * 4);
    const positions = ws.get('positions', T * 4);
    const slots = ws.get('slots', T * 4);
    this.writeStepIndices(batch, step, ids, positions, slots, cache);

    const resid = ws.get('resid', T * H * f32);
    const normed = ws.get('normed', T * H * f32);
    const q = ws.get('q', T * qDim * f32);
    const k = ws.get('k', T * kvDim * f32);
    const v = ws.get('v', T * kvDim * f32);
    const attn = ws.get('attn', T * qDim * f32);
    const attnOut = ws.get('attn_out', T * H * f32);
    const gate = ws.get('gate', T * c.intermediateSize * f32);
    const up = ws.get('up', T * c.intermediateSize * f32);
    const mlpOut = ws.get('mlp_out', T * H * f32);
    const tap = (point: Parameters<HookRunner['record']>[1], layer: number | undefined, x: GPUBuffer) =>
      hooks?.record(batch, point, layer, x, H, sequences);

    recordEmbedding(batch, { ids, table: this.weights.embed, out: resid, tokens: T });
    tap('embed', undefined, resid);
    const heads = { heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim };
    for (const [l, w] of this.weights.layers.entries()) {
      tap('resid_pre', l, resid);
      recordRmsNorm(batch, { x: resid, weight: w.inputNorm, y: normed, rows: T, dim: H, eps: c.rmsNormEps });
      recordMatmul(batch, { x: normed, tokens: T, weight: w.q, bias: w.qBias, y: q });
      recordMatmul(batch, { x: normed, tokens: T, weight: w.k, bias: w.kBias, y: k });
      recordMatmul(batch, { x: normed, tokens: T, weight: w.v, bias: w.vBias, y: v });
      recordRope(batch, { x: q, positions, invFreq: this.invFreq, tokens: T, heads: c.numHeads, headDim: c.headDim });
      recordRope(batch, { x: k, positions, invFreq: this.invFreq, tokens: T, heads: c.numKvHeads, headDim: c.headDim });
      recordKvCacheWrite(batch, { k, v, kCache: cache.keys[l]!, vCache: cache.values[l]!, positions, slots, tokens: T, kvHeads: c.numKvHeads, headDim: c.headDim, maxLen: cache.maxLen });
      recordAttention(batch, { q, kCache: cache.keys[l]!, vCache: cache.values[l]!, positions, slots, out: attn, tokens: T, ...heads, maxLen: cache.maxLen });
      recordMatmul(batch, { x: attn, tokens: T, weight: w.o, bias: w.oBias, y: attnOut });
      tap('attn_out', l, attnOut);
      recordAdd(batch, { x: resid, y: attnOut, n: T * H });
      tap('resid_mid', l, resid);
      recordRmsNorm(batch, { x: resid, weight: w.postAttentionNorm, y: normed, rows: T, dim: H, eps: c.rmsNormEps });
      recordMatmul(batch, { x: normed, tokens: T, weight: w.gate, bias: w.gateBias, y: gate });
      recordMatmul(batch, { x: normed, tokens: T, weight: w.up, bias: w.upBias, y: up });
      recordSiluMul(batch, { gate, up, n: T * c.intermediateSize });
      recordMatmul(batch, { x: gate, tokens: T, weight: w.down, bias: w.downBias, y: mlpOut });
      tap('mlp_out', l, mlpOut);
      recordAdd(batch, { x: resid, y: mlpOut, n: T * H });
      tap('resid_post', l, resid);
    }

    const normAll = (hooks?.has('final_norm') ?? false) || step.logits === 'all';
    if (normAll) {
      recordRmsNorm(batch, { x: resid, weight: this.weights.finalNorm, y: normed, rows: T, dim: H, eps: c.rmsNormEps });
      tap('final_norm', undefined, normed);
    }
    if (step.logits === 'none') return undefined;
    if (step.logits === 'all') {
      const logits = ws.get('logits', T * c.vocabSize * f32);
      recordMatmul(batch, { x: normed, tokens: T, weight: this.weights.lmHead, y: logits });
      return logits;
    }

    // Logits only for the last row of each sequence: gather, normalise, project.
    const S = sequences.length;
    const lastRows = ws.get('last_rows', S * 4);
    batch.write(lastRows, Uint32Array.from(selectRows('last', sequences)));
    const last = ws.get('last', S * H * f32);
    if (normAll) {
      recordGatherRows(batch, { x: normed, rows: lastRows, count: S, dim: H, out: last });
    } else {
      const lastResid = ws.get('last_resid', S * H * f32);
      recordGatherRows(batch, { x: resid, rows: lastRows, count: S, dim: H, out: lastResid });
      recordRmsNorm(batch, { x: lastResid, weight: this.weights.finalNorm, y: last, rows: S, dim: H, eps: c.rmsNormEps });
    }
    const logits = ws.get('logits', S * c.vocabSize * f32);
    recordMatmul(batch, { x: last, tokens: S, weight: this.weights.lmHead, y: logits });
    return logits;
  }

  private writeStepIndices(batch: ComputeBatch, step: ForwardStep, ids: GPUBuffer, positions: GPUBuffer, slots: GPUBuffer, cache: KvCache): void {
    const T = step.tokens.length;
    const idData = new Uint32Array(T);
    const positionData = new Uint32Array(T);
    const slotData = new Uint32Array(T);
    let covered = 0;
    for (const s of step.sequences) {
      if (s.slot < 0 || s.slot >= cache.slots) throw new RangeError(`KV-cache slot ${s.slot} is outside 0..${cache.slots - 1}`);
      if (s.firstPosition + s.length > cache.maxLen) {
        throw new RangeError(`a sequence reaches position ${s.firstPosition + s.length}, beyond the KV cache's ${cache.maxLen}`);
      }
      for (let r = 0; r < s.length; r++) {
        positionData[s.start + r] = s.firstPosition + r;
        slotData[s.start + r] = s.slot;
      }
      covered += s.length;
    }
    if (covered !== T) throw new RangeError(`the step's sequences cover ${covered} rows but it has ${T} tokens`);
    for (let t = 0; t < T; t++) {
      const id = step.tokens[t]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.config.vocabSize - 1})`);
      idData[t] = id;
    }
    batch.write(ids, idData).write(positions, positionData).write(slots, slotData);
  }

  dispose(): void {
    this.workspace.dispose();
    this.gpu.destroyBuffer(this.invFreq);
  }
}
