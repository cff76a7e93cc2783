import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuValidationError } from '../gpu/errors.ts';
import { weightDefines, type PackedMatrix } from '../gpu/packedMatrix.ts';

/** column_dot: 32 lanes × 4 columns along a row, 8 row lanes (256 invocations a workgroup). */
const COLUMN_DOT = { WG_X: 32, WG_Y: 8 } as const;
/** rank1_update: invocations per row. */
const RANK1_WG = 64;

function bindingBytes(binding: BufferBinding): number | undefined {
  if ('buffer' in binding) return binding.size ?? binding.buffer.size - (binding.offset ?? 0);
  return binding.size;
}

function requireFloats(binding: BufferBinding, count: number, what: string, label: string): void {
  const bytes = bindingBytes(binding);
  if (bytes !== undefined && bytes < count * 4) {
    throw new GpuValidationError(`${label}: ${what} holds ${Math.floor(bytes / 4)} f32 values, needs ${count}`);
  }
}

export interface ColumnDotArgs {
  /** W [rows, cols], packed, possibly in row chunks. */
  matrix: PackedMatrix;
  /** f32 [rows]: the direction in W's row (output) space. */
  d: BufferBinding;
  /** f32 [cols]: receives dᵀW (overwritten, not accumulated into). */
  v: BufferBinding;
}

/**
 * v = dᵀW, i.e. v[j] = Σ_i d[i] W[i, j], in f32 over a packed (F32/BF16/F16) matrix: the first half
 * of the rank-1 cut of `o_proj` / `down_proj`, whose output space is the residual stream. One
 * dispatch per row chunk, in order: the first writes v, the others add to it. Deterministic.
 */
export function recordColumnDot(batch: ComputeBatch, args: ColumnDotArgs): void {
  const { matrix, d, v } = args;
  const label = `column_dot ${matrix.name} [${matrix.rows}×${matrix.cols} ${matrix.dtype}]`;
  requireFloats(d, matrix.rows, 'd', label);
  requireFloats(v, matrix.cols, 'v', label);
  if (matrix.cols === 0) return;
  if (matrix.rows === 0) {
    const bytes = bindingBytes(v) ?? matrix.cols * 4;
    const { buffer, offset = 0 } = 'buffer' in v ? v : { buffer: v };
    batch.clear(buffer, offset, Math.min(bytes, matrix.cols * 4));
    return;
  }
  const kernel = batch.gpu.kernel('column_dot.wgsl', { ...weightDefines(matrix.dtype), ...COLUMN_DOT });
  const groups = Math.ceil(matrix.cols / (4 * COLUMN_DOT.WG_X));
  matrix.chunks.forEach((chunk, index) => {
    batch.dispatch(
      kernel,
      { params: { rows: chunk.rows, cols: matrix.cols, row_start: chunk.rowStart, accumulate: index === 0 ? 0 : 1 }, weight: chunk.buffer, d, v },
      [groups],
      `${matrix.name} rows=${chunk.rowStart}..${chunk.rowStart + chunk.rows} cols=${matrix.cols} ${matrix.dtype}`,
    );
  });
}

export interface Rank1UpdateArgs {
  /** W [rows, cols], updated in place in its stored dtype. */
  matrix: PackedMatrix;
  /** f32 [rows]. Required unless `rowDot`. */
  a?: BufferBinding;
  /** f32 [cols]. */
  b: BufferBinding;
  alpha: number;
  /** Compute a[i] = W_i · b from each original row instead of reading `a` (embedding orthogonalisation). */
  rowDot?: boolean;
  /** Rescale each updated row to its original Euclidean norm (norm-preserving abliteration). */
  preserveRowNorm?: boolean;
}

/**
 * W[i, j] ← W[i, j] − α a[i] b[j] in place, in f32, written back in the matrix's dtype with
 * round-to-nearest-even (bit-exact with `src/io/dtype.ts`; NaN stays NaN).
 *
 * - Cut of `o_proj` / `down_proj` (W ← W − α d (dᵀW)): `recordColumnDot` into v, then
 *   `{ a: d, b: v }` — or `recordDirectionalCut`, which records both.
 * - Embedding orthogonalisation (E ← E − α (E d) dᵀ): `{ rowDot: true, b: d }` — or
 *   `recordOrthogonalizeRows`.
 * - `preserveRowNorm`: each row of the stored matrix keeps its Euclidean norm (rows whose new norm
 *   falls below 1e-6 of the old one are left unscaled; see shaders/low_rank_update.wgsl).
 *
 * One workgroup per row and one dispatch per row chunk; with a 16-bit dtype and an odd column
 * count, neighbouring rows share a u32 word, so even and odd rows go in two dispatches.
 */
export function recordRank1Update(batch: ComputeBatch, args: Rank1UpdateArgs): void {
  const { matrix, a, b, alpha } = args;
  const rowDot = args.rowDot ?? false;
  const preserveRowNorm = args.preserveRowNorm ?? false;
  const label = `rank1_update ${matrix.name} [${matrix.rows}×${matrix.cols} ${matrix.dtype}]`;
  if (!Number.isFinite(alpha)) throw new GpuValidationError(`${label}: alpha must be finite, got ${alpha}`);
  if (rowDot && a !== undefined) throw new GpuValidationError(`${label}: give either a or rowDot, not both`);
  if (!rowDot && a === undefined) throw new GpuValidationError(`${label}: a is required unless rowDot is set`);
  if (a !== undefined) requireFloats(a, matrix.rows, 'a', label);
  requireFloats(b, matrix.cols, 'b', label);
  if (matrix.rows === 0 || matrix.cols === 0) return;
  const kernel = batch.gpu.kernel('low_rank_update.wgsl', {
    ...weightDefines(matrix.dtype),
    WG: RANK1_WG,
    ROW_DOT: rowDot,
    PRESERVE_ROW_NORM: preserveRowNorm,
  });
  const step = matrix.dtype !== 'F32' && matrix.cols % 2 === 1 ? 2 : 1;
  const limit = batch.gpu.limits.maxComputeWorkgroupsPerDimension;
  for (const chunk of matrix.chunks) {
    for (let first = 0; first < Math.min(step, chunk.rows); first++) {
      const count = Math.ceil((chunk.rows - first) / step);
      batch.dispatch(
        kernel,
        {
          params: { rows: chunk.rows, cols: matrix.cols, row_start: chunk.rowStart, row_first: first, row_step: step, count, alpha },
          weight: chunk.buffer,
          a,
          b,
        },
        workgroups1D(count, 1, limit),
        `${matrix.name} rows=${chunk.rowStart}..${chunk.rowStart + chunk.rows}${step === 2 ? (first ? ' odd' : ' even') : ''} cols=${matrix.cols} ${matrix.dtype} alpha=${alpha}`,
      );
    }
  }
}

/**
 * The rank-1 cut of a matrix whose output (row) space is the residual stream (`o_proj`,
 * `down_proj`): W ← W − α d (dᵀW). `v` is scratch of at least `matrix.cols` f32 and holds dᵀW of the
 * original W afterwards. d should be a unit vector.
 */
export function recordDirectionalCut(
  batch: ComputeBatch,
  args: { matrix: PackedMatrix; direction: BufferBinding; v: BufferBinding; alpha: number; preserveRowNorm?: boolean },
): void {
  const { matrix, direction, v, alpha } = args;
  recordColumnDot(batch, { matrix, d: direction, v });
  recordRank1Update(batch, { matrix, a: direction, b: v, alpha, preserveRowNorm: args.preserveRowNorm ?? false });
}

/**
 * Orthogonalisation of a matrix whose column space is the residual stream (the embedding
 * E [vocab, hidden]): E ← E − α (E d) dᵀ, each row's dot computed on the GPU. d should be a unit vector.
 */
export function recordOrthogonalizeRows(
  batch: ComputeBatch,
  args: { matrix: PackedMatrix; direction: BufferBinding; alpha: number; preserveRowNorm?: boolean },
): void {
  const { matrix, direction, alpha } = args;
  recordRank1Update(batch, { matrix, b: direction, alpha, rowDot: true, preserveRowNorm: args.preserveRowNorm ?? false });
}
