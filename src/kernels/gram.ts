import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { GpuValidationError } from '../gpu/errors.ts';

/** gram_difference: 16 × 16 elements of G per workgroup. */
const GRAM_WG = 16;

export interface GramDifferenceArgs {
  /** f32 [count, dim], row-major. */
  a: BufferBinding;
  /** f32 [count, dim], row-major: row k is paired with row k of `a`. */
  b: BufferBinding;
  count: number;
  dim: number;
  /** f32 [dim, dim]: receives G = (A − B)ᵀ(A − B) (overwritten). */
  gram: BufferBinding;
}

function floats(binding: BufferBinding): number | undefined {
  if ('buffer' in binding) return (binding.size ?? binding.buffer.size - (binding.offset ?? 0)) / 4;
  return binding.size === undefined ? undefined : binding.size / 4;
}

/** G = (A − B)ᵀ(A − B) in f32: the Gram matrix of paired differences, for their right singular vectors. */
export function recordGramDifference(batch: ComputeBatch, args: GramDifferenceArgs): void {
  const { a, b, count, dim, gram } = args;
  const label = `gram_difference [${count}×${dim}]`;
  if (!Number.isInteger(count) || count < 0 || !Number.isInteger(dim) || dim < 1) throw new GpuValidationError(`${label}: count and dim must be integers (count ≥ 0, dim ≥ 1)`);
  for (const [what, binding, need] of [['a', a, count * dim], ['b', b, count * dim], ['gram', gram, dim * dim]] as const) {
    const have = floats(binding);
    if (have !== undefined && have < need) throw new GpuValidationError(`${label}: ${what} holds ${Math.floor(have)} f32 values, needs ${need}`);
  }
  const groups = Math.ceil(dim / GRAM_WG);
  if (groups > batch.gpu.limits.maxComputeWorkgroupsPerDimension) throw new GpuValidationError(`${label}: dim ${dim} is too large for one dispatch`);
  batch.dispatch(batch.gpu.kernel('gram_difference.wgsl', { WG: GRAM_WG }), { params: { count, dim }, a, b, gram }, [groups, groups], label);
}
