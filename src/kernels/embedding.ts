import type { ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { weightDefines, type PackedMatrix } from '../gpu/packedMatrix.ts';

const WG = 64;

/** out[t] = table[ids[t]] (· scale, when given and not 1) for `tokens` token ids (f32 rows of the table's width). */
export function recordEmbedding(batch: ComputeBatch, args: { ids: GPUBuffer; table: PackedMatrix; out: GPUBuffer; tokens: number; scale?: number }): void {
  const { ids, table, out, tokens } = args;
  if (tokens === 0) return;
  const scale = args.scale ?? 1;
  const kernel = batch.gpu.kernel('embedding.wgsl', { ...weightDefines(table.dtype), WG, SCALED: scale !== 1 });
  for (const chunk of table.chunks) {
    batch.dispatch(
      kernel,
      { params: { tokens, dim: table.cols, row_start: chunk.rowStart, row_count: chunk.rows, scale }, ids, weight: chunk.buffer, out },
      workgroups1D(tokens * table.cols, WG),
      `${table.name} tokens=${tokens} rows=${chunk.rowStart}..${chunk.rowStart + chunk.rows}`,
    );
  }
}
