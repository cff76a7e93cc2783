import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuValidationError } from '../gpu/errors.ts';
import { weightDefines, type PackedMatrix } from '../gpu/packedMatrix.ts';
import { recordMatmul } from './matmul.ts';

/** column_dot: 32 lanes × 4 columns along a row, 8 row lanes (256 invocations a workgroup). */
const COLUMN_DOT = { WG_X: 32, WG_Y: 8 } as const;
/** low_rank_update: invocations per row. */
const LOW_RANK_WG = 64;

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

function requireRank(rank: number, label: string, limit: number): void {
  if (!Number.isInteger(rank) || rank < 1 || rank > limit) throw new GpuValidationError(`${label}: rank must be an integer in 1..${limit}, got ${rank}`);
}

export interface ColumnDotArgs {
  /** W [rows, cols], packed, possibly in row chunks. */
  matrix: PackedMatrix;
  /** f32 [K, rows]: K vectors in W's row (output) space, one after the other. */
  basis: BufferBinding;
  /** K, the number of vectors in `basis`. Default 1. */
  rank?: number;
  /** f32 [K, cols]: receives V = BᵀW, V[k, j] = Σ_i basis[k, i] W[i, j] (overwritten, not accumulated into). */
  v: BufferBinding;
}

/**
 * V = BᵀW in f32 over a packed (F32/BF16/F16) matrix, for K basis vectors at once: the first half
 * of the cut of `o_proj` / `down_proj`, whose output space is the residual stream. One dispatch per
 * row chunk, in order: the first writes V, the others add to it. Deterministic; each vector's sums
 * do not depend on K.
 */
export function recordColumnDot(batch: ComputeBatch, args: ColumnDotArgs): void {
  const { matrix, basis, v } = args;
  const rank = args.rank ?? 1;
  const label = `column_dot ${matrix.name} [${matrix.rows}×${matrix.cols} ${matrix.dtype}] rank ${rank}`;
  requireRank(rank, label, batch.gpu.limits.maxComputeWorkgroupsPerDimension);
  requireFloats(basis, rank * matrix.rows, 'basis', label);
  requireFloats(v, rank * matrix.cols, 'v', label);
  if (matrix.cols === 0) return;
  if (matrix.rows === 0) {
    const bytes = bindingBytes(v) ?? rank * matrix.cols * 4;
    const { buffer, offset = 0 } = 'buffer' in v ? v : { buffer: v };
    batch.clear(buffer, offset, Math.min(bytes, rank * matrix.cols * 4));
    return;
  }
  const kernel = batch.gpu.kernel('column_dot.wgsl', { ...weightDefines(matrix.dtype), ...COLUMN_DOT });
  const groups = Math.ceil(matrix.cols / (4 * COLUMN_DOT.WG_X));
  matrix.chunks.forEach((chunk, index) => {
    batch.dispatch(
      kernel,
      { params: { rows: chunk.rows, cols: matrix.cols, row_start: chunk.rowStart, accumulate: index === 0 ? 0 : 1, total_rows: matrix.rows }, weight: chunk.buffer, basis, v },
      [groups, rank],
      `${matrix.name} rows=${chunk.rowStart}..${chunk.rowStart + chunk.rows} cols=${matrix.cols} ${matrix.dtype} rank=${rank}`,
    );
  });
}

export interface LowRankUpdateArgs {
  /** W [rows, cols], updated in place in its stored dtype. */
  matrix: PackedMatrix;
  /** f32 [K, rows]. */
  a: BufferBinding;
  /** f32 [K, cols]. */
  b: BufferBinding;
  /** K. Default 1. */
  rank?: number;
  alpha: number;
  /** Rescale each updated row to its original Euclidean norm (norm-preserving abliteration). */
  preserveRowNorm?: boolean;
}

/**
 * W ← W − α Σ_k a_k b_kᵀ in place, in f32, written back in the matrix's dtype with one rounding to
 * nearest even (bit-exact with `src/io/dtype.ts`; NaN stays NaN). For K = 1 each element is the
 * correctly rounded w − fround(α a_i)·b_j; for K > 1 the K steps are each exact then rounded to f32,
 * the same on every adapter (see shaders/low_rank_update.wgsl).
 *
 * - `preserveRowNorm`: each row of the stored matrix keeps its Euclidean norm (rows whose new norm
 *   falls below 1e-6 of the old one are left unscaled).
 *
 * One workgroup per row and one dispatch per row chunk; with a 16-bit dtype and an odd column
 * count, neighbouring rows share a u32 word, so even and odd rows go in two dispatches.
 */
export function recordLowRankUpdate(batch: ComputeBatch, args: LowRankUpdateArgs): void {
  const { matrix, a, b, alpha } = args;
  const rank = args.rank ?? 1;
  const preserveRowNorm = args.preserveRowNorm ?? false;
  const label = `low_rank_update ${matrix.name} [${matrix.rows}×${matrix.cols} ${matrix.dtype}] rank ${rank}`;
  if (!Number.isFinite(alpha)) throw new GpuValidationError(`${label}: alpha must be finite, got ${alpha}`);
  requireRank(rank, label, Number.MAX_SAFE_INTEGER);
  requireFloats(a, rank * matrix.rows, 'a', label);
  requireFloats(b, rank * matrix.cols, 'b', label);
  if (matrix.rows === 0 || matrix.cols === 0) return;
  const kernel = batch.gpu.kernel('low_rank_update.wgsl', {
    ...weightDefines(matrix.dtype),
    WG: LOW_RANK_WG,
    PRESERVE_ROW_NORM: preserveRowNorm,
    MULTI_STEP: rank > 1,
  });
  const step = matrix.dtype !== 'F32' && matrix.cols % 2 === 1 ? 2 : 1;
  const limit = batch.gpu.limits.maxComputeWorkgroupsPerDimension;
  for (const chunk of matrix.chunks) {
    for (let first = 0; first < Math.min(step, chunk.rows); first++) {
      const count = Math.ceil((chunk.rows - first) / step);
      batch.dispatch(
        kernel,
        {
          params: { rows: chunk.rows, cols: matrix.cols, row_start: chunk.rowStart, row_first: first, row_step: step, count, alpha, rank, a_stride: matrix.rows },
          weight: chunk.buffer,
          a,
          b,
        },
        workgroups1D(count, 1, limit),
        `${matrix.name} rows=${chunk.rowStart}..${chunk.rowStart + chunk.rows}${step === 2 ? (first ? ' odd' : ' even') : ''} cols=${matrix.cols} ${matrix.dtype} rank=${rank} alpha=${alpha}`,
      );
    }
  }
}

/** Which side of a matrix is the residual stream, i.e. where the removed subspace lives. */
export type CutSide =
  /** The rows (output space) of W [hidden, n]: `o_proj`, `down_proj`. W ← W − α B (BᵀW). */
  | 'output'
  /** The columns of E [n, hidden]: the embedding (and a tied output projection). E ← E − α (E B) Bᵀ. */
  | 'input';

export interface SubspaceCutArgs {
  matrix: PackedMatrix;
  side: CutSide;
  /** f32 [K, hidden]: the orthonormal basis vectors, one after the other. */
  basis: GPUBuffer;
  /**
   * 'output' only: f32 [K, hidden], the update's left factors L, so that W ← W − α L (BᵀW), an oblique
   * projection when BᵀL = I (a writer followed by a norm, `postNormedProjection`). Default: the basis.
   */
  left?: GPUBuffer;
  rank: number;
  alpha: number;
  preserveRowNorm?: boolean;
  /**
   * f32 scratch of `subspaceCutFactorsLength` values: receives the factors of the original matrix
   * (BᵀW for 'output', E B as [K, rows] for 'input'). Kept, they let the same update with −α undo
   * the cut up to rounding.
   */
  factors: GPUBuffer;
}

/** f32 values the `factors` scratch of a subspace cut needs. */
export function subspaceCutFactorsLength(matrix: Pick<PackedMatrix, 'rows' | 'cols'>, side: CutSide, rank: number): number {
  return rank * (side === 'output' ? matrix.cols : matrix.rows);
}

/**
 * Removes the span of an orthonormal basis B (hidden × K) from a packed matrix, in place on the GPU:
 * for 'output', V = BᵀW (`recordColumnDot`) then W ← W − α B V; for 'input', U = E B (the matmul
 * kernel, the basis vectors as K input rows) then E ← E − α U Bᵀ (`recordLowRankUpdate`).
 */
export function recordSubspaceCut(batch: ComputeBatch, args: SubspaceCutArgs): void {
  const { matrix, side, basis, rank, alpha, factors } = args;
  const preserveRowNorm = args.preserveRowNorm ?? false;
  const hidden = side === 'output' ? matrix.rows : matrix.cols;
  const label = `subspace cut ${matrix.name} [${matrix.rows}×${matrix.cols}] ${side} rank ${rank}`;
  requireRank(rank, label, hidden);
  requireFloats(basis, rank * hidden, 'basis', label);
  requireFloats(factors, subspaceCutFactorsLength(matrix, side, rank), 'factors', label);
  if (args.left && side !== 'output') throw new GpuValidationError(`${label}: left factors apply to the output side only`);
  if (args.left) requireFloats(args.left, rank * hidden, 'left', label);
  if (side === 'output') {
    recordColumnDot(batch, { matrix, basis, rank, v: factors });
    recordLowRankUpdate(batch, { matrix, a: args.left ?? basis, b: factors, rank, alpha, preserveRowNorm });
  } else {
    recordMatmul(batch, { x: basis, tokens: rank, weight: matrix, y: factors });
    // U [K, rows] row k = E b_k: the update's a[k]; the basis vectors are its b[k].
    recordLowRankUpdate(batch, { matrix, a: factors, b: basis, rank, alpha, preserveRowNorm });
  }
}

/** Undoes `recordSubspaceCut` from its kept factors, W ← W + α L V (or E + α U Bᵀ): exact up to rounding; not for norm-preserving cuts. */
export function recordSubspaceCutInverse(batch: ComputeBatch, args: Omit<SubspaceCutArgs, 'preserveRowNorm'>): void {
  const { matrix, side, basis, rank, alpha, factors } = args;
  if (side === 'output') recordLowRankUpdate(batch, { matrix, a: args.left ?? basis, b: factors, rank, alpha: -alpha });
  else recordLowRankUpdate(batch, { matrix, a: factors, b: basis, rank, alpha: -alpha });
}
