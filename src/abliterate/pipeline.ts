import type { LlamaModel } from '../model/model.ts';
import { applyCut, layerStrengths, type AppliedCut } from './cut.ts';
import { evaluateModel, EvaluationPrompts, type EvaluationStep, type ModelEvaluation } from './evaluate.ts';
import { measure, type PointScore, type Measurement } from './measure.ts';
import { chatTokens } from './prefill.ts';
import { samplePrompts } from './sampling.ts';
import { rankPoints, type SelectionMetric } from './select.ts';
import { rankByAblation, type CandidateTrial } from './selectByAblation.ts';
import type { AbliterationSettings as SchemaSettings } from './settings.ts';
import { applyTrialCut, cutPlan, optimizeCut, type OptimizeSettings, type SearchResult, type TrialObjectives, type TrialRecord } from './optimize/search.ts';

// The building blocks the pipeline is made of, where its users have found them so far.
export { samplePrompts } from './sampling.ts';
export type { ModelEvaluation } from './evaluate.ts';
export type { CandidateTrial } from './selectByAblation.ts';

export interface PromptSets {
  harmful: readonly string[];
  harmless: readonly string[];
  /** Held-out prompts for the before/after evaluation. */
  evalHarmful: readonly string[];
  evalHarmless: readonly string[];
  /** Benign prompts in the words of harmful ones: their refusal rate before and after shows over-refusal. */
  evalBorderline?: readonly string[];
  /** A small split for `select: 'ablation'`; defaults to the first prompts of the evaluation sets. */
  validationHarmful?: readonly string[];
  validationHarmless?: readonly string[];
  /** Plain text for perplexity; skipped when absent. */
  plainText?: string;
}

// The settings are defined by one schema (settings.ts), which also gives their defaults.
export { DEFAULT_SETTINGS } from './settings.ts';

/** The schema's settings, and the search that finds the cut instead of them. */
export interface AbliterationSettings extends SchemaSettings {
  /**
   * Find the cut by the multi-objective search (optimize/) instead: layer, select, alpha, layers,
   * kernel, preserveRowNorm and embedding are then unused.
   */
  optimize?: OptimizeSettings | undefined;
  /** Also measure the top-K refusal subspace at every point (`measurement.subspaces`), as `measure --mode subspace --top-k K`. */
  subspaceRank?: number | undefined;
}

export interface AbliterationResult {
  /** The residual point the direction was taken at (0: the embedding, i: the output of decoder layer i − 1). */
  point: number;
  selection: { method: 'forced' | 'score' | 'ablation' | 'optimize'; metric: SelectionMetric; window: readonly [number, number]; trials?: CandidateTrial[] };
  scores: PointScore[];
  /** The cut's strength profile: its multiplier of alpha per decoder layer (of o_proj, when the search set the two apart). */
  strengths: number[];
  /** down_proj's multipliers, when they differ from `strengths`. */
  mlpStrengths?: number[];
  /** The search's trials, front and exported trial (select: optimize). */
  search?: SearchResult;
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

export type Stage = 'measure' | 'select' | 'search' | 'evaluate before' | 'cut' | 'evaluate after';

export interface RunCallbacks {
  onStage?: (stage: Stage) => void;
  onProgress?: (stage: Stage, done: number, total: number) => void;
  /** Progress of each sub-step of an evaluation stage (refusals, first-token KL, perplexity), in its own units. */
  onStep?: (stage: Stage, step: EvaluationStep, done: number, total: number) => void;
  /** After each finished search trial (e.g. to append it to a study file). */
  onTrial?: (trial: TrialRecord, original: TrialObjectives) => void | Promise<void>;
  signal?: AbortSignal;
}

/**
 * The whole abliteration on a loaded model: measure the refusal direction at every point of the
 * residual stream, choose one, evaluate the original model, cut the direction from the weights, and evaluate again.
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
      ...(settings.subspaceRank !== undefined && { topK: settings.subspaceRank }),
    }),
  );

  const validation = () =>
    new EvaluationPrompts(model, { harmful: sets.validationHarmful ?? sets.evalHarmful.slice(0, 32), harmless: sets.validationHarmless ?? sets.evalHarmless.slice(0, 32) }, 'validation');
  const optimize = settings.optimize;
  const search = optimize
    ? await stage('search', () => optimizeCut(model, measurement, validation(), optimize, { batchSize, markers: settings.markers, signal, onTrial: callbacks.onTrial }))
    : undefined;
  const plan = search ? cutPlan(model, measurement, search.exported.params) : undefined;
  const choosePoint = async (progress: (done: number, total: number) => void) => {
    if (settings.point !== undefined) {
      if (!Number.isInteger(settings.point) || settings.point < 0 || settings.point >= measurement.points) {
        throw new RangeError(`point ${settings.point} is outside 0..${measurement.points - 1} (0 is the embedding, i the output of decoder layer i − 1)`);
      }
      return { point: settings.point, selection: { method: 'forced' as const, metric: settings.metric, window: settings.window } };
    }
    const ranked = rankPoints(measurement, { window: settings.window, metric: settings.metric });
    if (settings.select === 'score') return { point: ranked[0]!.point, selection: { method: 'score' as const, metric: settings.metric, window: settings.window } };
    const candidates = ranked.slice(0, settings.candidates).map((s) => ({ point: s.point, direction: measurement.directions[s.point]! }));
    const trials = await rankByAblation(model, candidates, validation(), {
      alpha: settings.alpha,
      embedding: settings.embedding,
      batchSize,
      markers: settings.markers,
      // Fewer new tokens suffice to see whether an answer opens with a refusal.
      maxNewTokens: Math.min(settings.maxNewTokens, 24),
      onProgress: progress,
      signal,
    });
    return { point: trials[0]!.point, selection: { method: 'ablation' as const, metric: settings.metric, window: settings.window, trials } };
  };
  const { point, selection } =
    search && optimize
      ? {
          // The measured point nearest the (interpolated) direction: the one the directions file keeps.
          point: Math.min(measurement.points - 1, Math.round(search.exported.params.direction_index)),
          selection: { method: 'optimize' as const, metric: settings.metric, window: optimize.directionWindow },
        }
      : await stage('select', choosePoint);
  const direction = plan?.direction ?? measurement.directions[point]!;
  if (!plan && !(measurement.scores[point]!.gap > 0)) {
    throw new RangeError(`the harmful and harmless prompts have the same mean activation at point ${point}: there is no direction to cut (are the two sets the same?)`);
  }

  const scorePerLayer = measurement.scores.slice(1).map((s) => s[settings.metric === 'gap' ? 'gap' : settings.metric === 'relative_gap' ? 'relativeGap' : 'effectSize']);
  const strengths = plan?.attention ?? layerStrengths(model.config.numLayers, settings.layers, settings.strengthProfile, scorePerLayer);

  // Formatted and tokenised once, for the evaluations before and after the cut.
  const evaluation = new EvaluationPrompts(model, { harmful: sets.evalHarmful, harmless: sets.evalHarmless, borderline: sets.evalBorderline, plainText: sets.plainText });
  const evaluate = { batchSize, maxNewTokens: settings.maxNewTokens, markers: settings.markers, signal };
  let baseline: GPUBuffer | undefined;
  try {
    const before = await stage('evaluate before', async (progress) => {
      baseline = await evaluation.baseline({ batchSize, signal });
      // The original model against its own logits: KL 0.
      return evaluateModel(model, evaluation, { ...evaluate, onProgress: progress, onStep: (step, done, total) => callbacks.onStep?.('evaluate before', step, done, total) });
    });
    // undo() restores the weights bit for bit (from GPU or host copies, as memory allows).
    const cut = await stage('cut', () =>
      search
        ? applyTrialCut(model, measurement, search.exported.params)
        : applyCut(model, { direction, alpha: settings.alpha, strengths, preserveRowNorm: settings.preserveRowNorm, embedding: settings.embedding }),
    );
    try {
      const after = await stage('evaluate after', (progress) => evaluateModel(model, evaluation, {
          ...evaluate,
          baseline,
          onProgress: progress,
          onStep: (step, done, total) => callbacks.onStep?.('evaluate after', step, done, total),
        }));
      const found = plan && search ? { mlpStrengths: plan.mlp, search } : {};
      return { point, selection, scores: measurement.scores, strengths, ...found, before, after, kl: after.kl, measurement, direction, timings, cut };
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
