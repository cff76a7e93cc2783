import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';

/** Invocations per row: 256 for long rows (vocabularies), 64 for short ones (many small rows). */
function workgroupSize(cols: number): number {
  return cols >= 16_384 ? 256 : 64;
}

export interface ArgmaxArgs {
  /** f32 [rows, cols]. */
  logits: BufferBinding;
  /** u32 [rows]: index of each row's maximum, the lowest on ties. */
  out: BufferBinding;
  rows: number;
  cols: number;
}

/** Per-row argmax (greedy decoding); one workgroup per row. */
export function recordArgmax(batch: ComputeBatch, args: ArgmaxArgs): void {
  const { logits, out, rows, cols } = args;
  if (rows === 0) return;
  batch.dispatch(batch.gpu.kernel('argmax.wgsl', { WG: workgroupSize(cols) }), { params: { rows, cols }, logits, indices: out }, workgroups1D(rows, 1), `rows=${rows} cols=${cols}`);
}
