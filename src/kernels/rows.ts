import type { ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';

const WG = 64;

/** out[outRow + r] = x[rows[r]] for r < count: copies selected token rows. */
export function recordGatherRows(
  batch: ComputeBatch,
  args: { x: GPUBuffer; rows: GPUBuffer; count: number; dim: number; out: GPUBuffer; outRow?: number },
): void {
  const { x, rows, count, dim, out } = args;
  if (count === 0) return;
  batch.dispatch(
    batch.gpu.kernel('gather_rows.wgsl', { WG }),
    { params: { count, dim, out_row: args.outRow ?? 0 }, x, rows, out },
    workgroups1D(count * dim, WG),
    `count=${count} dim=${dim}`,
  );
}

/** sums[offset..offset+dim] += Σ_r x[rows[r]]: an accumulating tap. */
export function recordAccumulateRows(
  batch: ComputeBatch,
  args: { x: GPUBuffer; rows: GPUBuffer; count: number; dim: number; sums: GPUBuffer; offset?: number },
): void {
  const { x, rows, count, dim, sums } = args;
  if (count === 0) return;
  batch.dispatch(
    batch.gpu.kernel('accumulate_rows.wgsl', { WG }),
    { params: { count, dim, offset: args.offset ?? 0 }, x, rows, sums },
    [Math.ceil(dim / WG)],
    `count=${count} dim=${dim}`,
  );
}

/** h ← h − α Σ_j (h·d_j) d_j on the selected rows; with a threshold, only rows where h·d_0 exceeds it. */
export function recordProjectOut(
  batch: ComputeBatch,
  args: { x: GPUBuffer; rows: GPUBuffer; count: number; dim: number; basis: GPUBuffer; directions: number; alpha: number; threshold?: number | undefined },
): void {
  const { x, rows, count, dim, basis, directions, alpha, threshold } = args;
  if (count === 0 || directions === 0) return;
  batch.dispatch(
    batch.gpu.kernel('project_out.wgsl', { WG, CONDITIONAL: threshold !== undefined }),
    { params: { count, dim, directions, alpha, threshold: threshold ?? 0 }, x, rows, basis },
    workgroups1D(count, 1),
    `rows=${count} dim=${dim} directions=${directions}`,
  );
}

/** h ← h + scale · v on the selected rows; with a condition direction, only rows where h·d exceeds the threshold. */
export function recordAddVector(
  batch: ComputeBatch,
  args: {
    x: GPUBuffer;
    rows: GPUBuffer;
    count: number;
    dim: number;
    vector: GPUBuffer;
    scale: number;
    condition?: { direction: GPUBuffer; threshold: number } | undefined;
  },
): void {
  const { x, rows, count, dim, vector, scale, condition } = args;
  if (count === 0) return;
  batch.dispatch(
    batch.gpu.kernel('add_vector.wgsl', { WG, CONDITIONAL: condition !== undefined }),
    { params: { count, dim, scale, threshold: condition?.threshold ?? 0 }, x, rows, vector, condition: condition?.direction },
    workgroups1D(count, 1),
    `rows=${count} dim=${dim}`,
  );
}
