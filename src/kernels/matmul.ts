import type { ComputeBatch } from '../gpu/batch.ts';
import { weightDefines, type PackedMatrix } from '../model/packedMatrix.ts';

export interface MatmulTiling {
  /** Tokens and output features per invocation. */
  TM: number;
  TN: number;
  WG_X: number;
  WG_Y: number;
}

/** Register-blocked tiles; one token per invocation when there are few tokens (decode). */
export function matmulTiling(tokens: number): MatmulTiling {
  return tokens <= 2 ? { TM: 1, TN: 4, WG_X: 64, WG_Y: 1 } : { TM: 4, TN: 4, WG_X: 8, WG_Y: 8 };
}

/**
 * y[t, outOffset + n] = Σ_k x[t, k] W[n, k] (+ bias[n]) for W = `weight` ([n, k] as Hugging Face
 * stores it). One dispatch per row chunk of W.
 */
export function recordMatmul(
  batch: ComputeBatch,
  args: {
    x: GPUBuffer;
    tokens: number;
    weight: PackedMatrix;
    bias?: GPUBuffer | undefined;
    y: GPUBuffer;
    /** Row stride of y in elements (defaults to the weight's rows). */
    outStride?: number;
    outOffset?: number;
    tiling?: MatmulTiling;
  },
): void {
  const { x, tokens, weight, bias, y } = args;
  if (tokens === 0) return;
  const tiling = args.tiling ?? matmulTiling(tokens);
  const kernel = batch.gpu.kernel('matmul.wgsl', { ...weightDefines(weight.dtype), HAS_BIAS: bias !== undefined, ...tiling });
  const outStride = args.outStride ?? weight.rows;
  const outOffset = args.outOffset ?? 0;
  for (const chunk of weight.chunks) {
    const params = { tokens, k: weight.cols, n: chunk.rows, out_stride: outStride, out_offset: outOffset + chunk.rowStart, row_start: chunk.rowStart };
    batch.dispatch(
      kernel,
      { params, x, weight: chunk.buffer, bias, y },
      [Math.ceil(chunk.rows / (tiling.TN * tiling.WG_X)), Math.ceil(tokens / (tiling.TM * tiling.WG_Y))],
      `${weight.name} tokens=${tokens} k=${weight.cols} n=${chunk.rows}`,
    );
  }
}
