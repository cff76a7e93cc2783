import { mulberry32 } from '../model/generate.ts';
import type { LlamaModel } from '../model/model.ts';
import type { PackedMatrix } from '../model/packedMatrix.ts';
import { isResident } from '../model/weights.ts';
import { ablationHooks, uploadBasis } from './ablation.ts';
import { applyCut, layerWeights, type AppliedCut, type LayerKernel, type LayerSelection } from './cut.ts';
import { evaluateRefusals, firstTokenKl, firstTokenLogits, perplexity, type Answer } from './evaluate.ts';
import { measure, type LayerScore, type Measurement } from './measure.ts';
import { chatTokens } from './prefill.ts';
import { DEFAULT_REFUSAL_MARKERS } from './refusal.ts';
import { rankLayers, DEFAULT_WINDOW, type SelectionMetric } from './select.ts';

export interface PromptSets {
  harmful: readonly string[];
  harmless: readonly string[];
  /** Held-out prompts for the before/after evaluation. */
  evalHarmful: readonly string[];
  evalHarmless: readonly string[];
  /** A small split for `select: 'ablation'`; defaults to the first prompts of the evaluation sets. */
  validationHarmful?: readonly string[];
  validationHarmless?: readonly string[];
  /** Plain text for perplexity; skipped when absent. */
  plainText?: string;
}

export interface AbliterationSettings {
  /** Force the direction's point (hidden_states index); otherwise chosen by `select`. */
  layer?: number | undefined;
  select: 'score' | 'ablation';
  window: readonly [number, number];
  metric: SelectionMetric;
  /** Candidates tried by `select: 'ablation'`. */
  candidates: number;
  alpha: number;
  layers: LayerSelection;
  kernel: LayerKernel;
  preserveRowNorm: boolean;
  embedding: boolean;
  maxNewTokens: number;
  batchSize: number;
  markers: readonly string[];
  /**
   * Prompts of each kind measured, sampled evenly from the sets (0: all). The mean of a few hundred
   * last-token residuals already fixes the direction; Arditi et al. use 128 of each.
   */
  measurePrompts: number;
}

export const DEFAULT_SETTINGS: AbliterationSettings = {
  select: 'score',
  window: DEFAULT_WINDOW,
  metric: 'effect_size',
  candidates: 4,
  alpha: 1,
  layers: { kind: 'all' },
  kernel: { kind: 'constant' },
  preserveRowNorm: false,
  embedding: true,
  maxNewTokens: 64,
  batchSize: 32,
  markers: DEFAULT_REFUSAL_MARKERS,
  measurePrompts: 256,
};

/** A seeded sample of n items in their original order (all of them when n is 0 or larger than the set). */
export function samplePrompts<T>(items: readonly T[], n: number, seed = 1): T[] {
  if (n <= 0 || n >= items.length) return [...items];
  const random = mulberry32(seed);
  const keys = items.map((_, i) => [random(), i] as const).sort((a, b) => a[0] - b[0]);
  return keys
    .slice(0, n)
    .map(([, i]) => i)
    .sort((a, b) => a - b)
    .map((i) => items[i]!);
}

export interface ModelEvaluation {
  harmful_refusal_rate: number;
  harmless_refusal_rate: number;
  /** Mean first-token KL(original ‖ this) over the harmless evaluation prompts (0 before). */
  kl: number;
  perplexity: number | null;
  harmful_answers: Answer[];
  harmless_answers: Answer[];
}

export interface CandidateTrial {
  layer: number;
  harmful_refusal_rate: number;
  harmless_refusal_rate: number;
  kl: number;
}

export interface AbliterationResult {
  layer: number;
  selection: { method: 'forced' | 'score' | 'ablation'; metric: SelectionMetric; window: readonly [number, number]; trials?: CandidateTrial[] };
  scores: LayerScore[];
  /** The cut's multiplier of alpha per decoder layer. */
  layerWeights: number[];
  before: ModelEvaluation;
  after: ModelEvaluation;
  kl: number;
  measurement: Measurement;
  direction: Float32Array;
  /** Seconds per stage. */
  timings: Record<string, number>;
  /** The cut, applied to the model's weights (undo() restores them). */
  cut: AppliedCut;
}

export type Stage = 'measure' | 'select' | 'evaluate before' | 'cut' | 'evaluate after';

export interface RunCallbacks {
  onStage?: (stage: Stage) => void;
  onProgress?: (stage: Stage, done: number, total: number) => void;
  signal?: AbortSignal;
}

/**
 * The whole abliteration on a loaded model: measure the refusal direction at every layer, choose
 * one, evaluate the original model, cut the direction from the weights, and evaluate again.
 * The model's weights are left cut; export them, or `result.cut.undo()`.
 */
export async function runAbliteration(model: LlamaModel, sets: PromptSets, settings: AbliterationSettings, callbacks: RunCallbacks = {}): Promise<AbliterationResult> {
  const timings: Record<string, number> = {};
  const { signal } = callbacks;
  const stage = async <T>(name: Stage, work: (progress: (done: number, total: number) => void) => Promise<T>): Promise<T> => {
    callbacks.onStage?.(name);
    const start = performance.now();
    try {
      return await work((done, total) => callbacks.onProgress?.(name, done, total));
    } finally {
      timings[name] = (performance.now() - start) / 1000;
    }
  };
  const { batchSize } = settings;

  const measurement = await stage('measure', (progress) =>
    measure(model, chatTokens(model, samplePrompts(sets.harmful, settings.measurePrompts), { set: 'harmful' }), chatTokens(model, samplePrompts(sets.harmless, settings.measurePrompts), { set: 'harmless' }), {
      batchSize,
      onProgress: progress,
      signal,
    }),
  );

  const validationHarmful = sets.validationHarmful ?? sets.evalHarmful.slice(0, 32);
  const validationHarmless = sets.validationHarmless ?? sets.evalHarmless.slice(0, 32);
  const { layer, selection } = await stage('select', async (progress) => {
    if (settings.layer !== undefined) {
      if (!Number.isInteger(settings.layer) || settings.layer < 0 || settings.layer >= measurement.points) {
        throw new RangeError(`layer ${settings.layer} is outside 0..${measurement.points - 1} (0 is the embedding, i the output of decoder layer i − 1)`);
      }
      return { layer: settings.layer, selection: { method: 'forced' as const, metric: settings.metric, window: settings.window } };
    }
    const ranked = rankLayers(measurement, { window: settings.window, metric: settings.metric });
    if (settings.select === 'score') return { layer: ranked[0]!.layer, selection: { method: 'score' as const, metric: settings.metric, window: settings.window } };
    const trials = await rankByAblation(model, measurement, ranked.slice(0, settings.candidates).map((s) => s.layer), validationHarmful, validationHarmless, settings, progress, signal);
    return { layer: trials[0]!.layer, selection: { method: 'ablation' as const, metric: settings.metric, window: settings.window, trials } };
  });
  const direction = measurement.directions[layer]!;
  if (!(measurement.scores[layer]!.gap > 0)) {
    throw new RangeError(`the harmful and harmless prompts have the same mean activation at layer ${layer}: there is no direction to cut (are the two sets the same?)`);
  }

  const scorePerLayer = measurement.scores.slice(1).map((s) => s[settings.metric === 'gap' ? 'gap' : settings.metric === 'relative_gap' ? 'relativeGap' : 'effectSize']);
  const weights = layerWeights(model.config.numLayers, settings.layers, settings.kernel, scorePerLayer);

  let baseline: GPUBuffer | undefined;
  try {
    const before = await stage('evaluate before', async (progress) => {
      baseline = await firstTokenLogits(model, sets.evalHarmless, { set: 'harmless evaluation', batchSize, signal });
      return evaluateModel(model, sets, settings, baseline, progress, signal);
    });
    // With a snapshot of the changed matrices undo() restores them bit for bit, also after a
    // norm-preserving cut; without one (no room for it) undo is the inverse update.
    const snapshot = snapshotBytes(model, weights, settings.embedding) <= model.gpu.memoryBudget - model.gpu.allocatedBytes;
    const cut = await stage('cut', () =>
      applyCut(model, { direction, alpha: settings.alpha, layerWeights: weights, preserveRowNorm: settings.preserveRowNorm, embedding: settings.embedding, snapshot }),
    );
    try {
      const after = await stage('evaluate after', (progress) => evaluateModel(model, sets, settings, baseline, progress, signal));
      return { layer, selection, scores: measurement.scores, layerWeights: weights, before: { ...before, kl: 0 }, after, kl: after.kl, measurement, direction, timings, cut };
    } catch (error) {
      await cut.undo().catch((undoError: unknown) => {
        throw new AggregateError([error, undoError], `${error instanceof Error ? error.message : String(error)}; and the cut could not be undone`);
      });
      throw error;
    }
  } finally {
    if (baseline) model.gpu.destroyBuffer(baseline);
  }
}

/** GPU memory a snapshot of the matrices a cut changes takes (0 for streamed weights: their undo needs none). */
function snapshotBytes(model: LlamaModel, layerWeights: readonly number[], embedding: boolean): number {
  const { weights } = model;
  if (!isResident(weights)) return 0;
  const size = (matrix: PackedMatrix) => matrix.chunks.reduce((sum, chunk) => sum + chunk.buffer.size, 0);
  let bytes = embedding ? size(weights.embed) : 0;
  for (const [l, layer] of weights.layers.entries()) if (layerWeights[l] !== 0) bytes += size(layer.o) + size(layer.down);
  return bytes;
}

async function evaluateModel(
  model: LlamaModel,
  sets: PromptSets,
  settings: AbliterationSettings,
  baseline: GPUBuffer | undefined,
  progress: (done: number, total: number) => void,
  signal: AbortSignal | undefined,
): Promise<ModelEvaluation> {
  const { batchSize, maxNewTokens, markers } = settings;
  const total = sets.evalHarmful.length + sets.evalHarmless.length;
  const harmful = await evaluateRefusals(model, sets.evalHarmful, { set: 'harmful evaluation', batchSize, maxNewTokens, markers, signal, onProgress: (done) => progress(done, total) });
  const harmless = await evaluateRefusals(model, sets.evalHarmless, {
    set: 'harmless evaluation',
    batchSize,
    maxNewTokens,
    markers,
    signal,
    onProgress: (done) => progress(sets.evalHarmful.length + done, total),
  });
  const kl = baseline ? (await firstTokenKl(model, baseline, sets.evalHarmless, { set: 'harmless evaluation', batchSize, signal })).mean : 0;
  const ppl = sets.plainText ? (await perplexity(model, sets.plainText)).perplexity : null;
  return {
    harmful_refusal_rate: harmful.rate,
    harmless_refusal_rate: harmless.rate,
    kl,
    perplexity: ppl,
    harmful_answers: harmful.answers,
    harmless_answers: harmless.answers,
  };
}

/**
 * Arditi et al.'s selection: ablate each candidate direction at run time and measure refusals on
 * harmful validation prompts and the first-token KL on harmless ones; fewest refusals first, then
 * lowest KL.
 */
async function rankByAblation(
  model: LlamaModel,
  measurement: Measurement,
  candidates: number[],
  harmful: readonly string[],
  harmless: readonly string[],
  settings: AbliterationSettings,
  progress: (done: number, total: number) => void,
  signal: AbortSignal | undefined,
): Promise<CandidateTrial[]> {
  const { gpu } = model;
  const { batchSize, markers } = settings;
  const baseline = await firstTokenLogits(model, harmless, { batchSize, signal });
  const trials: CandidateTrial[] = [];
  try {
    for (const [i, layer] of candidates.entries()) {
      const basis = uploadBasis(gpu, [measurement.directions[layer]!]);
      try {
        const hooks = ablationHooks(model.config, basis, 1, settings.alpha, { embedding: settings.embedding });
        // Fewer new tokens suffice to see whether an answer opens with a refusal.
        const run = { hooks, batchSize, markers, maxNewTokens: Math.min(settings.maxNewTokens, 24), signal };
        const refusals = await evaluateRefusals(model, harmful, { ...run, set: 'harmful validation' });
        // A direction can also push harmless answers into refusing (e.g. one from the embedding).
        const harmlessRefusals = await evaluateRefusals(model, harmless, { ...run, set: 'harmless validation' });
        const kl = await firstTokenKl(model, baseline, harmless, { hooks, batchSize, signal });
        trials.push({ layer, harmful_refusal_rate: refusals.rate, harmless_refusal_rate: harmlessRefusals.rate, kl: kl.mean });
      } finally {
        gpu.destroyBuffer(basis);
      }
      progress(i + 1, candidates.length);
    }
  } finally {
    gpu.destroyBuffer(baseline);
  }
  // Fewest refusals that should not be there (harmful ones, and harmless ones), then the least change.
  return trials.sort((a, b) => a.harmful_refusal_rate + a.harmless_refusal_rate - (b.harmful_refusal_rate + b.harmless_refusal_rate) || a.kl - b.kl);
}
