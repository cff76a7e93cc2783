import type { ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';

const WG = 64;

/** y[r] = x[r] / rms(x[r]) · weight for `rows` rows of `dim` (weight in f32). */
export function recordRmsNorm(
  batch: ComputeBatch,
  args: { x: GPUBuffer; weight: GPUBuffer; y: GPUBuffer; rows: number; dim: number; eps: number },
): void {
  const { x, weight, y, rows, dim, eps } = args;
  if (rows === 0) return;
  batch.dispatch(batch.gpu.kernel('rmsnorm.wgsl', { WG }), { params: { rows, dim, eps }, x, weight, y }, workgroups1D(rows, 1), `rows=${rows} dim=${dim}`);
}
