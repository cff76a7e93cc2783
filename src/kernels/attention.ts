import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuError } from '../gpu/errors.ts';
import { attentionTiling, TILED_MAX_HEAD_DIM, type AttentionTiling, type AttentionVariant } from './tuning.ts';

export type { AttentionTiling, AttentionVariant } from './tuning.ts';

const WG = 64;
const CHUNK = 64;

export interface AttentionArgs {
  /** f32 query rows: token t, head h, element d at t · qRowStride + qOffset + h · headDim + d (RoPE applied). */
  q: BufferBinding;
  /** f32 [numSlots, maxLen, kvHeads, headDim] of this layer, already holding this step's keys and values. */
  kCache: BufferBinding;
  vCache: BufferBinding;
  /** u32 [tokens]: position of each query token; it sees cache positions 0..position of its slot. */
  positions: BufferBinding;
  /** u32 [tokens]: cache slot of each query token. */
  slots: BufferBinding;
  /** f32 output rows: token t, head h at t · outRowStride + h · headDim. */
  out: BufferBinding;
  tokens: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  maxLen: number;
  /** Defaults: heads · headDim, 0, heads · headDim. */
  qRowStride?: number;
  qOffset?: number;
  outRowStride?: number;
  /** Score scale; default 1 / sqrt(headDim). */
  scale?: number;
  /**
   * Sliding window: each query sees only the last `window` keys (positions p − window + 1 .. p);
   * undefined or 0 for full causal attention.
   */
  window?: number;
  /** Attention logit soft-capping (Gemma 2): scores s become softCap · tanh(s / softCap); undefined for none. */
  softCap?: number;
  /**
   * How many sequences the step's tokens belong to (prefill: the prompts packed; decode: one token each).
   * With many tokens per sequence the tiled kernel (attention_tiled.wgsl) is used where it was measured to
   * win; default `tokens` (each token its own sequence: attention.wgsl).
   */
  sequences?: number;
  /** Force a kernel: 'tiled' (attention_tiled.wgsl), 'rows' (attention.wgsl); default: the tuned choice. */
  variant?: AttentionVariant;
  /** The tiled kernel's shape when it runs (default: the adapter's, src/kernels/tuning.ts); for sweeps. */
  tiling?: AttentionTiling;
}

/**
 * Causal grouped-query attention over the KV cache, for prefill (packed prompts) and decode alike,
 * optionally within a sliding window and with soft-capped scores.
 * One workgroup per (token, kv head) serves the heads / kvHeads query heads that share it.
 */
export function recordAttention(batch: ComputeBatch, args: AttentionArgs): void {
  const { q, kCache, vCache, positions, slots, out, tokens, heads, kvHeads, headDim, maxLen } = args;
  if (kvHeads <= 0 || heads % kvHeads !== 0) throw new GpuError(`attention: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  if (headDim <= 0 || !Number.isInteger(headDim)) throw new GpuError(`attention: bad headDim ${headDim}`);
  const qStride = args.qRowStride ?? heads * headDim;
  const qOffset = args.qOffset ?? 0;
  const outStride = args.outRowStride ?? heads * headDim;
  if (qOffset + heads * headDim > qStride || heads * headDim > outStride) throw new GpuError('attention: row strides are smaller than heads · headDim');
  const scale = args.scale ?? 1 / Math.sqrt(headDim);
  const window = args.window ?? 0;
  if (!Number.isSafeInteger(window) || window < 0) throw new GpuError(`attention: bad window ${window}`);
  const softCap = args.softCap;
  if (softCap !== undefined && !(softCap > 0 && Number.isFinite(softCap))) throw new GpuError(`attention: bad softCap ${softCap}`);
  if (tokens === 0) return;
  const group = heads / kvHeads;
  const vec4 = headDim % 4 === 0 && qStride % 4 === 0 && qOffset % 4 === 0 && outStride % 4 === 0;
  const label = `T=${tokens} heads=${heads} kvHeads=${kvHeads} dim=${headDim} maxLen=${maxLen}${window ? ` window=${window}` : ''}${softCap ? ` softCap=${softCap}` : ''}`;
  const sequences = args.sequences ?? tokens;
  if (!(Number.isSafeInteger(sequences) && sequences >= 1)) throw new GpuError(`attention: bad sequences ${sequences}`);
  const tiling = args.variant === 'rows' ? undefined : args.variant === 'tiled' ? attentionTiling(batch.gpu, group, headDim, Infinity) : attentionTiling(batch.gpu, group, headDim, tokens / sequences);
  if (tiling && args.tiling) {
    const { BQ, BK } = args.tiling;
    if (!(Number.isInteger(BQ) && Number.isInteger(BK) && BQ >= 1 && BK >= 1 && BQ * group <= batch.gpu.limits.maxComputeInvocationsPerWorkgroup)) throw new GpuError(`attention: bad tiling BQ=${BQ} BK=${BK} for a group of ${group}`);
    tiling.BQ = BQ;
    tiling.BK = BK;
  }
  if (args.variant === 'tiled' && !tiling) throw new GpuError(`attention: the tiled kernel takes head_dim up to ${TILED_MAX_HEAD_DIM}, not ${headDim}`);
  if (tiling) {
    const tiles = Math.ceil(tokens / tiling.BQ);
    batch.dispatch(
      batch.gpu.kernel('attention_tiled.wgsl', { BQ: tiling.BQ, BK: tiling.BK, WG: tiling.BQ * group, HEAD_DIM: headDim, GROUP: group, VEC4: vec4, SOFT_CAP: softCap !== undefined }),
      {
        params: { tokens, kvHeads, maxLen, qStride, qOffset, outStride, scale, window, softCap: softCap ?? 1, headUnits: vec4 ? headDim / 4 : headDim },
        q,
        kCache,
        vCache,
        positions,
        slots,
        out,
      },
      workgroups1D(tiles * kvHeads, 1),
      `${label} tiled BQ=${tiling.BQ} BK=${tiling.BK}`,
    );
    return;
  }
  batch.dispatch(
    batch.gpu.kernel('attention.wgsl', { WG, CHUNK, HEAD_DIM: headDim, GROUP: group, VEC4: vec4, SOFT_CAP: softCap !== undefined }),
    {
      params: { tokens, kvHeads, maxLen, qStride, qOffset, outStride, scale, headUnits: vec4 ? headDim / 4 : headDim, window, softCap: softCap ?? 1 },
      q,
      kCache,
      vCache,
      positions,
      slots,
      out,
    },
    workgroups1D(tokens * kvHeads, 1),
    label,
  );
}
