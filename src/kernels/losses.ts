import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuValidationError } from '../gpu/errors.ts';

const WG = 256;

/** A target id that marks an ignored position (padding): its nll is 0. */
export const IGNORED_TARGET = 0xffffffff;

export interface CrossEntropyArgs {
  /** f32 [rows, vocab]. */
  logits: BufferBinding;
  /** u32 [rows]: the next token of each row, or IGNORED_TARGET. */
  targets: BufferBinding;
  /** f32 [rows]: receives logsumexp(logits[r]) − logits[r][targets[r]]. */
  nll: BufferBinding;
  rows: number;
  vocab: number;
}

/**
 * Per-row negative log-likelihood (natural log) of a target token, numerically stable; one
 * workgroup per row. An ignored target gives 0; a target outside the vocabulary gives NaN.
 * Perplexity = exp(mean nll over the positions that count).
 */
export function recordCrossEntropy(batch: ComputeBatch, args: CrossEntropyArgs): void {
  const { logits, targets, nll, rows, vocab } = args;
  if (!(vocab >= 1)) throw new GpuValidationError(`cross_entropy: vocab must be at least 1, got ${vocab}`);
  if (rows === 0) return;
  batch.dispatch(
    batch.gpu.kernel('cross_entropy.wgsl', { WG }),
    { params: { rows, vocab }, logits, targets, nll },
    workgroups1D(rows, 1, batch.gpu.limits.maxComputeWorkgroupsPerDimension),
    `rows=${rows} vocab=${vocab}`,
  );
}

export interface KlDivergenceArgs {
  /** f32 [rows, vocab]: logits of P (the original model). */
  logitsP: BufferBinding;
  /** f32 [rows, vocab]: logits of Q (the modified model). */
  logitsQ: BufferBinding;
  /** f32 [rows]: receives KL(P‖Q) in nats. */
  kl: BufferBinding;
  rows: number;
  vocab: number;
}

/**
 * Per-row KL(P‖Q) = Σ p (log p − log q) of the softmaxes of two logit rows, computed through
 * log-softmax; one workgroup per row. Exactly 0 for identical rows; otherwise ≥ 0 up to f32 rounding
 * (a tiny negative value is possible for nearly identical rows and is not clamped).
 */
export function recordKlDivergence(batch: ComputeBatch, args: KlDivergenceArgs): void {
  const { logitsP, logitsQ, kl, rows, vocab } = args;
  if (!(vocab >= 1)) throw new GpuValidationError(`kl_divergence: vocab must be at least 1, got ${vocab}`);
  if (rows === 0) return;
  batch.dispatch(
    batch.gpu.kernel('kl_divergence.wgsl', { WG }),
    { params: { rows, vocab }, logits_p: logitsP, logits_q: logitsQ, kl },
    workgroups1D(rows, 1, batch.gpu.limits.maxComputeWorkgroupsPerDimension),
    `rows=${rows} vocab=${vocab}`,
  );
}
