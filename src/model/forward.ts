import type { ComputeBatch } from '../gpu/gpu.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { recordAttention } from '../kernels/attention.ts';
import { recordEmbedding } from '../kernels/embedding.ts';
import { recordAdd, recordGeluTanhMul, recordSiluMul, recordSoftCap } from '../kernels/elementwise.ts';
import { recordKvCacheWrite } from '../kernels/kvCacheWrite.ts';
import { recordMatmul } from '../kernels/matmul.ts';
import { recordExpertMatvec, recordMoeRoute } from '../kernels/moe.ts';
import { recordRmsNorm } from '../kernels/rmsnorm.ts';
import { recordRope } from '../kernels/rope.ts';
import { recordGatherRows } from '../kernels/rows.ts';
import { attentionScale, attentionWindow, embeddingMultiplier, ropeInverseFrequencies, type ModelConfig } from './config.ts';
import { FiniteCheck } from './finiteCheck.ts';
import type { KvCache } from './kvCache.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import { selectRows, type HookRunner, type StepSequence, type TapPoint } from './taps.ts';
import { isResident, type DenseMlpWeights, type LayerWeights, type LlamaWeights, type MoeWeights, type StreamedWeights } from './weights.ts';

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

/** The buffers and inputs of one forward step. */
interface StepContext {
  step: ForwardStep;
  cache: KvCache;
  hooks: HookRunner | undefined;
  T: number;
  ids: GPUBuffer;
  positions: GPUBuffer;
  slots: GPUBuffer;
  resid: GPUBuffer;
  normed: GPUBuffer;
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  attn: GPUBuffer;
  attnOut: GPUBuffer;
  gate: GPUBuffer;
  up: GPUBuffer;
  mlpOut: GPUBuffer;
}

/** The largest intermediate size of any MLP or expert of the model (the gate and up buffers' row length). */
function largestIntermediate(c: ModelConfig): number {
  return Math.max(c.intermediateSize, c.moe?.expertIntermediateSize ?? 0, c.moe?.sharedExpertIntermediateSize ?? 0);
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
  /** Gemma 3's sliding-window layers: their own RoPE base, no scaling. */
  private readonly invFreqLocal: GPUBuffer | undefined;
  /** Catches NaN and ±Inf after the embedding, every layer and the logits; `verifyFinite()` reports them. */
  private readonly finite: FiniteCheck;
  /** Records the non-finite checks (on by default; off only to measure what they cost). */
  checkFinite = true;

  constructor(
    readonly gpu: Gpu,
    readonly config: ModelConfig,
    readonly weights: LlamaWeights | StreamedWeights,
  ) {
    this.workspace = new Workspace(gpu);
    this.invFreq = gpu.upload(ropeInverseFrequencies(config), 'rope inverse frequencies');
    if (config.ropeLocalTheta !== undefined) {
      const local = ropeInverseFrequencies({ headDim: config.headDim, ropeTheta: config.ropeLocalTheta, ropeScaling: undefined });
      this.invFreqLocal = gpu.upload(local, 'rope inverse frequencies of the sliding-window layers');
    }
    this.finite = new FiniteCheck(gpu, config.numLayers);
  }

  /**
   * Throws a `NonFiniteError` naming the first point (embedding, layer, logits) where NaN or ±Inf
   * appeared in the steps run since the last call. Call it before results are used.
   */
  verifyFinite(): Promise<void> {
    return this.finite.verify();
  }

  private check(batch: ComputeBatch, point: 'embed' | 'logits', x: GPUBuffer, rows: number, width: number): void {
    if (this.checkFinite) this.finite.record(batch, point, x, rows, width);
  }

  /** The residual adds of layer `l` check their sums themselves. */
  private layerCheck(l: number): { flags: GPUBuffer; slot: number } | undefined {
    return this.checkFinite ? this.finite.target(l, this.config.hiddenSize) : undefined;
  }

  /**
   * Records one forward step on `batch` with resident weights. Returns the logits buffer:
   * [sequences, vocab], one row per sequence in order, when `step.logits` is 'last'; [tokens, vocab]
   * when it is 'all'. One step per batch: the step's buffers are reused by the next.
   */
  recordStep(batch: ComputeBatch, step: ForwardStep, cache: KvCache, hooks?: HookRunner): GPUBuffer | undefined {
    const weights = this.weights;
    if (!isResident(weights)) throw new Error('recordStep needs resident weights; use run() with streamed weights');
    const ctx = this.begin(batch, step, cache, hooks);
    this.recordEmbed(batch, ctx, weights.embed);
    for (const [l, w] of weights.layers.entries()) this.recordLayer(batch, ctx, l, w);
    return this.recordHead(batch, ctx, weights.lmHead);
  }

  /**
   * Runs one forward step and submits it. `finish` records more work on the logits before the
   * (last) submission. With streamed weights, each layer is uploaded, run and freed in turn, so
   * only one layer's weights are on the GPU at a time.
   */
  async run(step: ForwardStep, cache: KvCache, hooks?: HookRunner, finish?: (batch: ComputeBatch, logits: GPUBuffer | undefined) => void | Promise<void>): Promise<void> {
    const weights = this.weights;
    if (isResident(weights)) {
      const batch = this.gpu.batch('forward');
      const logits = this.recordStep(batch, step, cache, hooks);
      await finish?.(batch, logits);
      await batch.submit();
    } else {
      let batch = this.gpu.batch('forward: embedding');
      const ctx = this.begin(batch, step, cache, hooks);
      await weights.withEmbedding(async (embed) => {
        this.recordEmbed(batch, ctx, embed);
        await batch.submit();
      });
      for (let l = 0; l < this.config.numLayers; l++) {
        await weights.withLayer(l, async (w) => {
          batch = this.gpu.batch(`forward: layer ${l}`);
          this.recordLayer(batch, ctx, l, w);
          await batch.submit();
        });
      }
      await weights.withOutputProjection(async (lmHead) => {
        batch = this.gpu.batch('forward: output');
        const logits = this.recordHead(batch, ctx, lmHead);
        await finish?.(batch, logits);
        await batch.submit();
      });
    }
    hooks?.endStep(this.gpu, step.sequences);
  }

  /** Allocates the step's buffers and queues its token ids, positions and slots. */
  private begin(batch: ComputeBatch, step: ForwardStep, cache: KvCache, hooks: HookRunner | undefined): StepContext {
    const c = this.config;
    const T = step.tokens.length;
    const H = c.hiddenSize;
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    const ws = this.workspace;
    const f32 = 4;
    const ctx: StepContext = {
      step,
      cache,
      hooks,
      T,
      ids: ws.get('ids', T * 4),
      positions: ws.get('positions', T * 4),
      slots: ws.get('slots', T * 4),
      resid: ws.get('resid', T * H * f32),
      normed: ws.get('normed', T * H * f32),
      q: ws.get('q', T * qDim * f32),
      k: ws.get('k', T * kvDim * f32),
      v: ws.get('v', T * kvDim * f32),
      attn: ws.get('attn', T * qDim * f32),
      attnOut: ws.get('attn_out', T * H * f32),
      gate: ws.get('gate', T * largestIntermediate(c) * f32),
      up: ws.get('up', T * largestIntermediate(c) * f32),
      mlpOut: ws.get('mlp_out', T * H * f32),
    };
    this.writeStepIndices(batch, step, ctx.ids, ctx.positions, ctx.slots, cache);
    return ctx;
  }

  private tap(batch: ComputeBatch, ctx: StepContext, point: TapPoint, layer: number | undefined, x: GPUBuffer): void {
    ctx.hooks?.record(batch, point, layer, x, this.config.hiddenSize, ctx.step.sequences);
  }

  private recordEmbed(batch: ComputeBatch, ctx: StepContext, embed: PackedMatrix): void {
    recordEmbedding(batch, { ids: ctx.ids, table: embed, out: ctx.resid, tokens: ctx.T, scale: embeddingMultiplier(this.config, embed.dtype) });
    this.tap(batch, ctx, 'embed', undefined, ctx.resid);
    this.check(batch, 'embed', ctx.resid, ctx.T, this.config.hiddenSize);
  }

  /**
   * One decoder layer: norm, q/k/v (q/k per-head norms when the block has them), rope, cache,
   * attention, o, add, norm, the MLP (dense or mixture of experts), add.
   */
  private recordLayer(batch: ComputeBatch, ctx: StepContext, l: number, w: LayerWeights): void {
    const c = this.config;
    const { T, resid, normed, v, attn, attnOut, mlpOut, positions, slots, cache } = ctx;
    let { q, k } = ctx;
    const H = c.hiddenSize;
    const heads = { heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim };
    const plusOne = c.block.normPlusOne;
    const window = attentionWindow(c, l);
    this.tap(batch, ctx, 'resid_pre', l, resid);
    recordRmsNorm(batch, { x: resid, weight: w.inputNorm, y: normed, rows: T, dim: H, eps: c.rmsNormEps, plusOne });
    recordMatmul(batch, { x: normed, tokens: T, weight: w.q, bias: w.qBias, y: q });
    recordMatmul(batch, { x: normed, tokens: T, weight: w.k, bias: w.kBias, y: k });
    recordMatmul(batch, { x: normed, tokens: T, weight: w.v, bias: w.vBias, y: v });
    if (w.qNorm && w.kNorm) {
      // Qwen3: each head's q and k normalised over head_dim (one row per token and head) before RoPE.
      const qNormed = this.workspace.get('q_normed', T * c.numHeads * c.headDim * 4);
      const kNormed = this.workspace.get('k_normed', T * c.numKvHeads * c.headDim * 4);
      recordRmsNorm(batch, { x: q, weight: w.qNorm, y: qNormed, rows: T * c.numHeads, dim: c.headDim, eps: c.rmsNormEps, plusOne });
      recordRmsNorm(batch, { x: k, weight: w.kNorm, y: kNormed, rows: T * c.numKvHeads, dim: c.headDim, eps: c.rmsNormEps, plusOne });
      q = qNormed;
      k = kNormed;
    }
    const invFreq = window !== undefined && this.invFreqLocal ? this.invFreqLocal : this.invFreq;
    recordRope(batch, { x: q, positions, invFreq, tokens: T, heads: c.numHeads, headDim: c.headDim });
    recordRope(batch, { x: k, positions, invFreq, tokens: T, heads: c.numKvHeads, headDim: c.headDim });
    recordKvCacheWrite(batch, { k, v, kCache: cache.keys[l]!, vCache: cache.values[l]!, positions, slots, tokens: T, kvHeads: c.numKvHeads, headDim: c.headDim, maxLen: cache.maxLen });
    recordAttention(batch, {
      q,
      kCache: cache.keys[l]!,
      vCache: cache.values[l]!,
      positions,
      slots,
      out: attn,
      tokens: T,
      ...heads,
      maxLen: cache.maxLen,
      scale: attentionScale(c),
      window,
      softCap: c.attnLogitSoftcap,
      sequences: ctx.step.sequences.length,
    });
    if (c.block.sandwichNorms) {
      // Gemma: what the stream receives is the norm of o_proj's output (normed is free once q, k, v are made).
      recordMatmul(batch, { x: attn, tokens: T, weight: w.o, bias: w.oBias, y: normed });
      recordRmsNorm(batch, { x: normed, weight: w.postAttentionNorm, y: attnOut, rows: T, dim: H, eps: c.rmsNormEps, plusOne });
    } else {
      recordMatmul(batch, { x: attn, tokens: T, weight: w.o, bias: w.oBias, y: attnOut });
    }
    this.tap(batch, ctx, 'attn_out', l, attnOut);
    recordAdd(batch, { x: resid, y: attnOut, n: T * H, check: this.layerCheck(l) });
    this.tap(batch, ctx, 'resid_mid', l, resid);
    const mlpNorm = c.block.sandwichNorms ? w.preFeedforwardNorm! : w.postAttentionNorm;
    recordRmsNorm(batch, { x: resid, weight: mlpNorm, y: normed, rows: T, dim: H, eps: c.rmsNormEps, plusOne });
    if (w.mlp.kind === 'dense') this.recordDenseMlp(batch, ctx, w.mlp, c.block.sandwichNorms ? normed : mlpOut);
    else this.recordMoe(batch, ctx, w.mlp);
    if (c.block.sandwichNorms) {
      // down_proj wrote into normed (its input, gate and up, is elsewhere); the stream receives its norm.
      recordRmsNorm(batch, { x: normed, weight: w.postFeedforwardNorm!, y: mlpOut, rows: T, dim: H, eps: c.rmsNormEps, plusOne });
    }
    this.tap(batch, ctx, 'mlp_out', l, mlpOut);
    recordAdd(batch, { x: resid, y: mlpOut, n: T * H, check: this.layerCheck(l) });
    this.tap(batch, ctx, 'resid_post', l, resid);
  }

  /** out = down(act(gate(normed)) · up(normed)), act silu or (Gemma) GELU-tanh. */
  private recordDenseMlp(batch: ComputeBatch, ctx: StepContext, m: DenseMlpWeights, out: GPUBuffer): void {
    const { T, normed, gate, up } = ctx;
    recordMatmul(batch, { x: normed, tokens: T, weight: m.gate, bias: m.gateBias, y: gate });
    recordMatmul(batch, { x: normed, tokens: T, weight: m.up, bias: m.upBias, y: up });
    if (this.config.block.activation === 'gelu_tanh') recordGeluTanhMul(batch, { gate, up, n: T * m.gate.rows });
    else recordSiluMul(batch, { gate, up, n: T * m.gate.rows });
    recordMatmul(batch, { x: gate, tokens: T, weight: m.down, bias: m.downBias, y: out });
  }

  /**
   * mlpOut = Σ_e r[t, e] · expert_e(normed) over each token's top-k experts (+ sigmoid(shared gate)
   * · shared expert). The router logits and the shared gate's logit share one [T, E (+1)] buffer,
   * the routing kernel turns them into dense weights, and each expert runs only on the tokens
   * routed to it, accumulating into mlpOut.
   */
  private recordMoe(batch: ComputeBatch, ctx: StepContext, m: MoeWeights): void {
    const c = this.config;
    const moe = c.moe!;
    const { T, normed, gate, up, mlpOut } = ctx;
    const E = moe.numExperts;
    const stride = E + (m.shared ? 1 : 0);
    const logits = this.workspace.get('router_logits', T * stride * 4);
    const route = this.workspace.get('route', T * stride * 4);
    recordMatmul(batch, { x: normed, tokens: T, weight: m.router, y: logits, outStride: stride });
    if (m.sharedGate) recordMatmul(batch, { x: normed, tokens: T, weight: m.sharedGate, y: logits, outStride: stride, outOffset: E });
    recordMoeRoute(batch, { logits, weights: route, tokens: T, experts: E, topK: moe.topK, normTopK: moe.normTopkProb, shared: m.shared !== undefined });
    batch.clear(mlpOut, 0, T * c.hiddenSize * 4);
    const experts = m.shared ? [...m.experts, m.shared] : m.experts;
    for (const [e, expert] of experts.entries()) {
      const common = { x: normed, tokens: T, route, routeStride: stride, expert: e, accumulate: false };
      recordExpertMatvec(batch, { ...common, weight: expert.gate, y: gate });
      recordExpertMatvec(batch, { ...common, weight: expert.up, y: up });
      // Rows of tokens not routed here hold stale values; they are never read for this expert.
      recordSiluMul(batch, { gate, up, n: T * expert.gate.rows });
      recordExpertMatvec(batch, { ...common, x: gate, weight: expert.down, y: mlpOut, accumulate: true });
    }
  }

  /** The final norm and the output projection, for the rows that need logits. */
  private recordHead(batch: ComputeBatch, ctx: StepContext, lmHead: PackedMatrix): GPUBuffer | undefined {
    const c = this.config;
    const { T, resid, normed, step } = ctx;
    const { sequences } = step;
    const H = c.hiddenSize;
    const ws = this.workspace;
    const f32 = 4;
    const finalNorm = this.weights.finalNorm;
    const normAll = (ctx.hooks?.has('final_norm') ?? false) || step.logits === 'all';
    if (normAll) {
      recordRmsNorm(batch, { x: resid, weight: finalNorm, y: normed, rows: T, dim: H, eps: c.rmsNormEps, plusOne: c.block.normPlusOne });
      this.tap(batch, ctx, 'final_norm', undefined, normed);
    }
    if (step.logits === 'none') return undefined;
    if (step.logits === 'all') {
      const logits = ws.get('logits', T * c.vocabSize * f32);
      recordMatmul(batch, { x: normed, tokens: T, weight: lmHead, y: logits });
      if (c.finalLogitSoftcap !== undefined) recordSoftCap(batch, { x: logits, n: T * c.vocabSize, cap: c.finalLogitSoftcap });
      this.check(batch, 'logits', logits, T, c.vocabSize);
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
      recordRmsNorm(batch, { x: lastResid, weight: finalNorm, y: last, rows: S, dim: H, eps: c.rmsNormEps, plusOne: c.block.normPlusOne });
    }
    const logits = ws.get('logits', S * c.vocabSize * f32);
    recordMatmul(batch, { x: last, tokens: S, weight: lmHead, y: logits });
    if (c.finalLogitSoftcap !== undefined) recordSoftCap(batch, { x: logits, n: S * c.vocabSize, cap: c.finalLogitSoftcap });
    this.check(batch, 'logits', logits, S, c.vocabSize);
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
    this.finite.dispose();
    this.gpu.destroyBuffer(this.invFreq);
    if (this.invFreqLocal) this.gpu.destroyBuffer(this.invFreqLocal);
  }
}
