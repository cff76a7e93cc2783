import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuError } from '../gpu/errors.ts';

const WG = 64;

export interface RopeArgs {
  /** f32 rows, rotated in place: token t, head h, element d at t·rowStride + offset + h·headDim + d. */
  x: BufferBinding;
  /** u32 [tokens]: each token's position in its sequence. */
  positions: BufferBinding;
  /** f32 [headDim / 2]: the rotary frequencies, any llama3 or linear scaling already applied. */
  invFreq: BufferBinding;
  tokens: number;
  heads: number;
  headDim: number;
  /** Elements from one token's row to the next; default heads · headDim. */
  rowStride?: number;
  /** Elements from the start of a row to head 0; default 0 (e.g. the K part of a fused QKV row). */
  offset?: number;
}

/**
 * Rotary embedding in place, Hugging Face "rotate half" convention: pairs (i, i + headDim/2) of each
 * head turned by positions[t] · invFreq[i]. The angle is reduced exactly in integer arithmetic, so
 * cos and sin stay accurate to f32 rounding at any position (see shaders/rope.wgsl).
 */
export function recordRope(batch: ComputeBatch, args: RopeArgs): void {
  const { x, positions, invFreq, tokens, heads, headDim } = args;
  const rowStride = args.rowStride ?? heads * headDim;
  const offset = args.offset ?? 0;
  if (headDim % 2 !== 0 || headDim <= 0) throw new GpuError(`rope: headDim must be even and positive, got ${headDim}`);
  if (offset + heads * headDim > rowStride) throw new GpuError(`rope: heads · headDim + offset (${heads * headDim + offset}) exceeds rowStride ${rowStride}`);
  if (tokens === 0 || heads === 0) return;
  const half = headDim / 2;
  batch.dispatch(
    batch.gpu.kernel('rope.wgsl', { WG }),
    { params: { tokens, heads, half, rowStride, offset }, x, positions, invFreq },
    workgroups1D(tokens * half, WG),
    `T=${tokens} heads=${heads} dim=${headDim}`,
  );
}
