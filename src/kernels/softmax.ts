import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';

/** Invocations per row: 256 for long rows (vocabularies), 64 for short ones (many small rows). */
function workgroupSize(cols: number): number {
  return cols >= 16_384 ? 256 : 64;
}

export interface SoftmaxArgs {
  /** f32 [rows, cols]. */
  input: BufferBinding;
  /** f32 [rows, cols]; omitted: the result replaces the input. */
  output?: BufferBinding;
  rows: number;
  cols: number;
  /** log-softmax instead of softmax. */
  log?: boolean;
}

/** Row-wise (log-)softmax, numerically stable; one workgroup per row. */
export function recordSoftmax(batch: ComputeBatch, args: SoftmaxArgs): void {
  const { input, output, rows, cols } = args;
  if (rows === 0 || cols === 0) return;
  const log = args.log ?? false;
  const inPlace = output === undefined;
  const kernel = batch.gpu.kernel('softmax.wgsl', { WG: workgroupSize(cols), LOG: log, IN_PLACE: inPlace });
  const buffers = inPlace ? { y: input } : { x: input, y: output };
  batch.dispatch(kernel, { params: { rows, cols }, ...buffers }, workgroups1D(rows, 1), `rows=${rows} cols=${cols}${log ? ' log' : ''}`);
}
