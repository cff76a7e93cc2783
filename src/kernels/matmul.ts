import type { ComputeBatch } from '../gpu/gpu.ts';
import { weightDefines, type PackedMatrix } from '../gpu/packedMatrix.ts';
import { isMatvecTiling, matmulTiling, tunedMatmulVariant, type MatmulVariant } from './tuning.ts';

export { isMatvecTiling, matmulTiling, type MatmulTiling, type MatmulVariant, type MatvecTiling } from './tuning.ts';

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
    /** Default: the variant tuned for this adapter (src/kernels/tuning.ts), else matmulTiling(tokens). */
    tiling?: MatmulVariant;
  },
): void {
  const { x, tokens, weight, bias, y } = args;
  if (tokens === 0) return;
  const { gpu } = batch;
  const tiling = args.tiling ?? tunedMatmulVariant(gpu, tokens, weight.dtype) ?? matmulTiling(tokens);
  const defines = { ...weightDefines(weight.dtype), HAS_BIAS: bias !== undefined };
  const vec4 = !isMatvecTiling(tiling) && tiling.VEC4 === true && weight.cols % 8 === 0;
  const kernel = isMatvecTiling(tiling)
    ? gpu.kernel('matvec.wgsl', { ...defines, ...tiling, SUBGROUPS: tiling.SUBGROUPS && gpu.features.subgroups })
    : gpu.kernel(vec4 ? 'matmul_vec4.wgsl' : 'matmul.wgsl', { ...defines, TM: tiling.TM, TN: tiling.TN, WG_X: tiling.WG_X, WG_Y: tiling.WG_Y });
  const outStride = args.outStride ?? weight.rows;
  const outOffset = args.outOffset ?? 0;
  const limit = gpu.limits.maxComputeWorkgroupsPerDimension;
  for (const chunk of weight.chunks) {
    const params = { tokens, k: weight.cols, n: chunk.rows, out_stride: outStride, out_offset: outOffset + chunk.rowStart, row_start: chunk.rowStart };
    const shape = `${weight.name} tokens=${tokens} k=${weight.cols} n=${chunk.rows}`;
    if (isMatvecTiling(tiling)) {
      // Feature blocks beyond the per-dimension limit fold into z (the kernel reads x + z · groups.x).
      const blocks = Math.ceil(chunk.rows / tiling.TN);
      const z = Math.ceil(blocks / limit);
      batch.dispatch(kernel, { params, x, weight: chunk.buffer, bias, y }, [Math.ceil(blocks / z), Math.ceil(tokens / tiling.TM), z], shape);
    } else {
      const blocks = Math.ceil(chunk.rows / (tiling.TN * tiling.WG_X));
      // matmul_vec4.wgsl folds blocks beyond the limit into z; matmul.wgsl's blocks fit with TN · WG_X ≥ 4.
      const z = vec4 ? Math.ceil(blocks / limit) : 1;
      batch.dispatch(kernel, { params, x, weight: chunk.buffer, bias, y }, [Math.ceil(blocks / z), Math.ceil(tokens / (tiling.TM * tiling.WG_Y)), z], shape);
    }
  }
}
