import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuError } from '../gpu/errors.ts';

const WG = 64;

export interface KvCacheWriteArgs {
  /** f32 rows of the new keys: token t's kvHeads · headDim values start at t · kRowStride + kOffset. */
  k: BufferBinding;
  /** f32 rows of the new values, likewise with vRowStride and vOffset. */
  v: BufferBinding;
  /** f32 [numSlots, maxLen, kvHeads, headDim] of one layer. */
  kCache: BufferBinding;
  vCache: BufferBinding;
  /** u32 [tokens]: position of each token in its sequence. */
  positions: BufferBinding;
  /** u32 [tokens]: cache slot (sequence) of each token. */
  slots: BufferBinding;
  tokens: number;
  kvHeads: number;
  headDim: number;
  maxLen: number;
  /** Slots in the cache; default: what kCache holds (its size / (maxLen · kvHeads · headDim · 4)). */
  numSlots?: number;
  /** Defaults: kvHeads · headDim and 0 (separate K and V buffers). */
  kRowStride?: number;
  kOffset?: number;
  vRowStride?: number;
  vOffset?: number;
}

/**
 * Copies the new K and V rows into the cache at (slots[t], positions[t]). Tokens whose slot or
 * position falls outside the cache are skipped.
 */
export function recordKvCacheWrite(batch: ComputeBatch, args: KvCacheWriteArgs): void {
  const { k, v, kCache, vCache, positions, slots, tokens, kvHeads, headDim, maxLen } = args;
  const kvDim = kvHeads * headDim;
  const numSlots = args.numSlots ?? Math.floor(bindingBytes(kCache) / (maxLen * kvDim * 4));
  const kStride = args.kRowStride ?? kvDim;
  const vStride = args.vRowStride ?? kvDim;
  const kOffset = args.kOffset ?? 0;
  const vOffset = args.vOffset ?? 0;
  if (kOffset + kvDim > kStride || vOffset + kvDim > vStride) {
    throw new GpuError(`kv_cache_write: rows of ${kvDim} at offsets ${kOffset}/${vOffset} exceed strides ${kStride}/${vStride}`);
  }
  if (tokens === 0 || kvDim === 0) return;
  batch.dispatch(
    batch.gpu.kernel('kv_cache_write.wgsl', { WG }),
    { params: { tokens, kvDim, maxLen, numSlots, kStride, kOffset, vStride, vOffset }, k, v, positions, slots, kCache, vCache },
    workgroups1D(tokens * kvDim, WG),
    `T=${tokens} kvHeads=${kvHeads} dim=${headDim} maxLen=${maxLen} slots=${numSlots}`,
  );
}

function bindingBytes(binding: BufferBinding): number {
  if ('buffer' in binding) return binding.size ?? binding.buffer.size - (binding.offset ?? 0);
  return binding.size;
}
