import type { LlamaModel } from '../model/model.ts';
import { ablationHooks, uploadBasis } from './ablation.ts';
import { evaluateModel, type EvaluationPrompts } from './evaluate.ts';
import { DEFAULT_REFUSAL_MARKERS } from './refusal.ts';

/** One candidate direction ablated at run time, and what it did on the validation prompts. */
export interface CandidateTrial {
  /** The residual point the direction was measured at. */
  point: number;
  harmful_refusal_rate: number;
  harmless_refusal_rate: number;
  kl: number;
}

export interface AblationRankingOptions {
  /** Strength of the run-time ablation (the cut's alpha); default 1. */
  alpha?: number;
  /** Ablate the direction from the embedding's output too (as a cut of the embedding does); default true. */
  embedding?: boolean;
  batchSize?: number;
  markers?: readonly string[];
  /** New tokens per validation answer; default 24, enough to see whether an answer opens with a refusal. */
  maxNewTokens?: number;
  /** Progress over the candidates. */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/**
 * Arditi et al.'s selection: ablate each candidate direction at run time and measure refusals on
 * the harmful and harmless validation prompts and the first-token KL on the harmless ones against
 * the model as it is; best first: fewest refusals (harmful and harmless together), then lowest KL.
 */
export async function rankByAblation(
  model: LlamaModel,
  candidates: readonly { point: number; direction: Float32Array }[],
  validation: EvaluationPrompts,
  options: AblationRankingOptions = {},
): Promise<CandidateTrial[]> {
  const { gpu } = model;
  const { batchSize, signal } = options;
  const baseline = await validation.baseline({ batchSize, signal });
  const trials: CandidateTrial[] = [];
  try {
    for (const [i, candidate] of candidates.entries()) {
      const basis = uploadBasis(gpu, [candidate.direction]);
      try {
        const hooks = ablationHooks(model.config, basis, 1, options.alpha ?? 1, { embedding: options.embedding ?? true });
        // A direction can also push harmless answers into refusing (e.g. one from the embedding).
        const evaluation = await evaluateModel(model, validation, {
          baseline,
          hooks,
          batchSize,
          maxNewTokens: options.maxNewTokens ?? 24,
          markers: options.markers ?? DEFAULT_REFUSAL_MARKERS,
          perplexity: false,
          signal,
        });
        trials.push({ point: candidate.point, harmful_refusal_rate: evaluation.harmful_refusal_rate, harmless_refusal_rate: evaluation.harmless_refusal_rate, kl: evaluation.kl });
      } finally {
        gpu.destroyBuffer(basis);
      }
      options.onProgress?.(i + 1, candidates.length);
    }
  } finally {
    gpu.destroyBuffer(baseline);
  }
  return trials.sort((a, b) => a.harmful_refusal_rate + a.harmless_refusal_rate - (b.harmful_refusal_rate + b.harmless_refusal_rate) || a.kl - b.kl);
}
