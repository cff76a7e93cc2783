import type { ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuError } from '../gpu/errors.ts';
import { weightDefines, type PackedMatrix } from '../gpu/packedMatrix.ts';

const WG = 64;
/** Output features per workgroup of expert_matvec. */
const TN = 4;

/**
 * Dense routing weights [tokens, stride] from router logits [tokens, stride]: the top-k experts of
 * each token get softmax weights (over the selected logits when `normTopK`, over all experts
 * otherwise), the others 0; with `shared`, column `experts` gets sigmoid of the shared expert's gate logit.
 */
export function recordMoeRoute(
  batch: ComputeBatch,
  args: { logits: GPUBuffer; weights: GPUBuffer; tokens: number; experts: number; topK: number; normTopK: boolean; shared: boolean },
): void {
  const { logits, weights, tokens, experts, topK, normTopK, shared } = args;
  if (!(topK >= 1 && topK <= experts)) throw new GpuError(`moe_route: top-k ${topK} must be between 1 and the ${experts} experts`);
  if (tokens === 0) return;
  const stride = experts + (shared ? 1 : 0);
  batch.dispatch(
    batch.gpu.kernel('moe_route.wgsl', { WG, TOP_K: topK, NORM_TOPK: normTopK, HAS_SHARED: shared }),
    { params: { tokens, experts, stride }, logits, weights },
    workgroups1D(tokens, WG),
    `T=${tokens} experts=${experts} top-k=${topK}`,
  );
}

/**
 * One expert's projection for the tokens routed to it (`route[t, expert]` ≠ 0): y[t, :] = x[t] Wᵀ,
 * or with `accumulate`, y[t, :] += route[t, expert] · x[t] Wᵀ. Other tokens' rows of y are left as
 * they are. `outStride` is y's row length (default the weight's rows).
 */
export function recordExpertMatvec(
  batch: ComputeBatch,
  args: { x: GPUBuffer; tokens: number; weight: PackedMatrix; route: GPUBuffer; routeStride: number; expert: number; y: GPUBuffer; accumulate: boolean; outStride?: number },
): void {
  const { x, tokens, weight, route, routeStride, expert, y, accumulate } = args;
  if (expert >= routeStride) throw new GpuError(`expert_matvec: expert ${expert} is outside the ${routeStride} routing columns`);
  if (tokens === 0) return;
  const kernel = batch.gpu.kernel('expert_matvec.wgsl', { WG, TN, ...weightDefines(weight.dtype), ACCUMULATE: accumulate });
  const outStride = args.outStride ?? weight.rows;
  for (const chunk of weight.chunks) {
    const params = { tokens, k: weight.cols, n: chunk.rows, out_stride: outStride, row_start: chunk.rowStart, route_stride: routeStride, expert };
    batch.dispatch(kernel, { params, x, weight: chunk.buffer, route, y }, workgroups1D(tokens * Math.ceil(chunk.rows / TN), 1), `${weight.name} tokens=${tokens} k=${weight.cols} n=${chunk.rows}`);
  }
}
