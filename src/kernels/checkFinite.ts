import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';

const WG = 256;
/** Enough workgroups to keep a GPU busy on long buffers; a step's residual needs one or a few. */
const MAX_WORKGROUPS = 256;

/** The flag value of a slot whose buffers held only finite values. */
export const ALL_FINITE = 0xffffffff;

/**
 * flags[slot] ← min(flags[slot], index of the first NaN or ±Inf among the `n` f32 of `x`): a
 * slot initialised to `ALL_FINITE` keeps it when every value is finite.
 */
export function recordCheckFinite(batch: ComputeBatch, args: { x: BufferBinding; n: number; flags: GPUBuffer; slot: number }): void {
  const { x, n, flags, slot } = args;
  if (n === 0) return;
  const groups = Math.min(Math.ceil(n / WG), MAX_WORKGROUPS);
  batch.dispatch(batch.gpu.kernel('check_finite.wgsl', { WG }), { params: { n, slot }, x, flags }, [groups], `n=${n} slot=${slot}`);
}
