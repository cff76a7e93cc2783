import type { ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';

const WG = 64;

/** y[r] = x[r] / rms(x[r]) · weight for `rows` rows of `dim` (weight in f32); with `plusOne` · (1 + weight) (Gemma). */
export function recordRmsNorm(
  batch: ComputeBatch,
  args: { x: GPUBuffer; weight: GPUBuffer; y: GPUBuffer; rows: number; dim: number; eps: number; plusOne?: boolean },
): void {
  const { x, weight, y, rows, dim, eps } = args;
  if (rows === 0) return;
  batch.dispatch(batch.gpu.kernel('rmsnorm.wgsl', { WG, PLUS_ONE: args.plusOne ?? false }), { params: { rows, dim, eps }, x, weight, y }, workgroups1D(rows, 1), `rows=${rows} dim=${dim}`);
}
