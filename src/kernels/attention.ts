import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuError } from '../gpu/errors.ts';

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
    `T=${tokens} heads=${heads} kvHeads=${kvHeads} dim=${headDim} maxLen=${maxLen}${window ? ` window=${window}` : ''}${softCap ? ` softCap=${softCap}` : ''}`,
  );
}
