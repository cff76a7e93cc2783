import type { LlamaModel } from '../../model/model.ts';
import { applyCut, type AppliedCut } from '../cut.ts';
import { answerPromptSets, klOfLogits, type EvaluationPrompts } from '../evaluate.ts';
import type { Measurement } from '../measure.ts';
import { paretoFront } from './pareto.ts';
import { componentWeights, cutParameters, interpolatedDirection, searchSpace, type CutParameters } from './space.ts';
import { TpeSampler, type Observation, type Parameter, type Params } from './tpe.ts';

/** What one trial measured on the validation prompts. */
export interface TrialObjectives {
  /** Harmful validation prompts still refused (minimised). */
  refusals: number;
  /** Mean first-token KL(original ‖ cut) over the harmless validation prompts (minimised). */
  kl: number;
  /** Harmless validation prompts refused: over-refusal, a constraint (not above the original model's). */
  harmless_refusals: number;
}

export interface TrialRecord extends TrialObjectives {
  number: number;
  /** Every parameter of the cut, searched or pinned. */
  params: CutParameters;
  /** Seconds for cut, evaluation and undo. */
  seconds: number;
}

/** The per-layer strengths and directions a set of parameters stands for. */
export function cutPlan(model: LlamaModel, measurement: Measurement, p: CutParameters) {
  const L = model.config.numLayers;
  return {
    attention: componentWeights(L, p.attn_max_weight, p.attn_peak, p.attn_min_fraction, p.attn_falloff),
    mlp: componentWeights(L, p.mlp_max_weight, p.mlp_peak, p.mlp_min_fraction, p.mlp_falloff),
    direction: interpolatedDirection(measurement, p.direction_index, p.projected),
  };
}

/**
 * Applies the cut a trial stands for. With a global scope it is one cut; per layer, each layer is cut
 * along the direction measured at its own output (and the embedding along the global one). Every
 * changed matrix is copied first (the cut's exact undo), so undo() restores the weights bit for bit.
 */
export async function applyTrialCut(model: LlamaModel, measurement: Measurement, p: CutParameters): Promise<AppliedCut> {
  const L = model.config.numLayers;
  const { attention, mlp, direction } = cutPlan(model, measurement, p);
  if (p.scope === 'global') {
    return applyCut(model, { direction, attentionStrengths: attention, mlpStrengths: mlp, preserveRowNorm: p.preserve_norm, embedding: p.embedding });
  }
  const cuts: AppliedCut[] = [];
  const only = (weights: readonly number[], l: number) => weights.map((w, i) => (i === l ? w : 0));
  try {
    if (p.embedding) cuts.push(await applyCut(model, { direction, strengths: new Array<number>(L).fill(0), embedding: true, preserveRowNorm: p.preserve_norm }));
    for (let l = 0; l < L; l++) {
      if (attention[l] === 0 && mlp[l] === 0) continue;
      const own = interpolatedDirection(measurement, l + 1, p.projected);
      cuts.push(await applyCut(model, { direction: own, attentionStrengths: only(attention, l), mlpStrengths: only(mlp, l), preserveRowNorm: p.preserve_norm }));
    }
  } catch (error) {
    for (const cut of cuts.reverse()) await cut.undo();
    throw error;
  }
  return {
    tensors: [...new Set(cuts.flatMap((c) => c.tensors))],
    rank: 1,
    undoMode: cuts[0]?.undoMode ?? 'snapshot',
    exactUndo: cuts.every((c) => c.exactUndo),
    async undo() {
      // Later cuts snapshotted what earlier ones wrote: undo them last to first.
      for (const cut of [...cuts].reverse()) await cut.undo();
    },
    release() {
      for (const cut of cuts) cut.release();
    },
  };
}

export interface EvaluatorOptions {
  maxNewTokens: number;
  batchSize: number;
  markers: readonly string[];
  signal?: AbortSignal;
}

/**
 * Evaluates cuts on the validation prompts against the original model, whose first-token logits on
 * the harmless prompts it keeps on the GPU. A trial is one generation over both prompt sets: each
 * answer stops once its verdict is decided (a refusal marker, a stop token or the token budget),
 * and the harmless prompts' first-token logits, for the KL, come from the same prefill.
 */
export class TrialEvaluator {
  private constructor(
    private readonly model: LlamaModel,
    private readonly measurement: Measurement,
    private readonly prompts: EvaluationPrompts,
    private readonly options: EvaluatorOptions,
    private baseline: GPUBuffer | undefined,
    /** The cut model's first-token logits of the trial being evaluated. */
    private readonly current: GPUBuffer,
    /** The original model on the same prompts (KL 0). */
    readonly original: TrialObjectives,
  ) {}

  /** Takes the original model's logits and refusals on the validation prompts (the model must be uncut). */
  static async create(model: LlamaModel, measurement: Measurement, prompts: EvaluationPrompts, options: EvaluatorOptions): Promise<TrialEvaluator> {
    if (prompts.harmful.length === 0 || prompts.harmless.length === 0) throw new RangeError('the search needs harmful and harmless validation prompts');
    const { gpu, config } = model;
    const bytes = prompts.harmless.length * config.vocabSize * 4;
    const baseline = gpu.createBuffer(bytes, 'baseline logits');
    let current: GPUBuffer | undefined;
    try {
      current = gpu.createBuffer(bytes, 'trial logits');
      const original = await refusalCounts(model, prompts, options, baseline);
      return new TrialEvaluator(model, measurement, prompts, options, baseline, current, { ...original, kl: 0 });
    } catch (error) {
      gpu.destroyBuffer(baseline);
      if (current) gpu.destroyBuffer(current);
      throw error;
    }
  }

  /** Cuts, measures and undoes the cut (bit for bit); the model is left as it was. */
  async evaluate(params: CutParameters): Promise<TrialObjectives> {
    if (!this.baseline) throw new Error('the evaluator was disposed');
    const cut = await applyTrialCut(this.model, this.measurement, params);
    try {
      const counts = await refusalCounts(this.model, this.prompts, this.options, this.current);
      const kl = await klOfLogits(this.model, this.baseline, this.current, this.prompts.harmless.length);
      if (!Number.isFinite(kl.mean)) throw new RangeError(`the cut made the first-token KL ${kl.mean}`);
      return { ...counts, kl: kl.mean };
    } finally {
      await cut.undo();
    }
  }

  dispose(): void {
    if (this.baseline) {
      this.model.gpu.destroyBuffer(this.baseline);
      this.model.gpu.destroyBuffer(this.current);
    }
    this.baseline = undefined;
  }
}

/** Refusal counts of both sets in one generation that stops each answer once decided; the harmless prompts' first-token logits go to `logits`. */
async function refusalCounts(model: LlamaModel, prompts: EvaluationPrompts, options: EvaluatorOptions, logits: GPUBuffer): Promise<{ refusals: number; harmless_refusals: number }> {
  const { batchSize, maxNewTokens, markers, signal } = options;
  const { harmful, harmless } = await answerPromptSets(model, prompts, { batchSize, maxNewTokens, markers, signal, stopAtRefusal: true, harmlessLogits: logits });
  return { refusals: harmful.refused, harmless_refusals: harmless.refused };
}

export interface SearchOptions {
  /** Total trials of the study, counting those already in `previous`. */
  trials: number;
  seed: number;
  startupTrials: number;
  pinned: Partial<CutParameters>;
  /** Trials already run (a resumed study). */
  previous: readonly TrialRecord[];
  /** Parameters of the first trials, tried before any sampled one (values outside the space are dropped). */
  initial?: readonly Params[];
  /** Stop starting new trials after this many seconds. */
  timeoutSeconds?: number;
  signal?: AbortSignal;
  /** Called after each finished trial, before the next starts (e.g. to append it to a study file). */
  onTrial?: (trial: TrialRecord) => void | Promise<void>;
}

/**
 * The sampler's view of a trial: refusals and KL minimised. Two constraints keep its good group on
 * the part of the front that matters: no more harmless refusals than the original model, and at
 * least half of the original's harmful refusals gone (otherwise the cheapest "front" is the barely
 * cut model, KL ≈ 0, and the sampler spends its trials there).
 */
export function observation(trial: TrialRecord, original: TrialObjectives): Observation {
  const overRefusal = Math.max(0, trial.harmless_refusals - original.harmless_refusals);
  const tooWeak = Math.max(0, trial.refusals - original.refusals / 2) / Math.max(1, original.refusals);
  return {
    params: trial.params as unknown as Params,
    values: [trial.refusals, trial.kl],
    violation: overRefusal + tooWeak,
  };
}

/** Runs trials until the study has `trials` of them (or the time is up); returns all of them. */
export async function runSearch(evaluate: (params: CutParameters) => Promise<TrialObjectives>, sampler: TpeSampler, original: TrialObjectives, options: SearchOptions): Promise<TrialRecord[]> {
  const trials = [...options.previous];
  const start = performance.now();
  while (trials.length < options.trials) {
    if (options.signal?.aborted) throw options.signal.reason ?? new Error('aborted');
    if (options.timeoutSeconds !== undefined && (performance.now() - start) / 1000 >= options.timeoutSeconds) break;
    const number = trials.length;
    const queued = options.initial?.[number];
    const sampled = queued
      ? Object.fromEntries(sampler.space.map((p) => [p.name, queued[p.name]!]))
      : sampler.suggest(
          trials.map((t) => observation(t, original)),
          number,
        );
    const params = cutParameters(sampled, options.pinned);
    const trialStart = performance.now();
    const objectives = await evaluate(params);
    const trial: TrialRecord = { number, params, ...objectives, seconds: (performance.now() - trialStart) / 1000 };
    await options.onTrial?.(trial);
    trials.push(trial);
  }
  return trials;
}

/** Trials on the Pareto front of refusals against KL, among those that do not over-refuse (all, if none), by refusals. */
export function paretoTrials(trials: readonly TrialRecord[], original: TrialObjectives): TrialRecord[] {
  const feasible = trials.filter((t) => t.harmless_refusals <= original.harmless_refusals);
  const pool = feasible.length ? feasible : [...trials];
  return paretoFront(pool.map((t) => [t.refusals, t.kl]))
    .map((i) => pool[i]!)
    .sort((a, b) => a.refusals - b.refusals || a.kl - b.kl);
}

/** Refusals within this many of the fewest found count as equally few when choosing. */
export const REFUSAL_TOLERANCE = 1;

/**
 * The trial a run exports: among trials that refuse no more harmless prompts than the original
 * model, those within `REFUSAL_TOLERANCE` refusals of the fewest found, and of these the lowest KL.
 * One refusal more among a few dozen validation prompts is within their noise, while the KL of two
 * cuts on the same prompts compares precisely, so the rule buys the least damage for a refusal rate
 * the validation set cannot tell apart from the best.
 */
export function chooseTrial(trials: readonly TrialRecord[], original: TrialObjectives, tolerance = REFUSAL_TOLERANCE): TrialRecord | undefined {
  const feasible = trials.filter((t) => t.harmless_refusals <= original.harmless_refusals);
  const pool = feasible.length ? feasible : [...trials];
  if (pool.length === 0) return undefined;
  const fewest = Math.min(...pool.map((t) => t.refusals));
  return pool.filter((t) => t.refusals <= fewest + tolerance).sort((a, b) => a.kl - b.kl || a.number - b.number)[0];
}

/** KL above this means real damage to the model's answers (Heretic's warning threshold). */
export const DAMAGE_KL = 0.5;

export interface OptimizeSettings {
  /** Trials in the study, counting resumed ones. */
  trials: number;
  /** Random trials before the sampler models the objectives. */
  startupTrials: number;
  seed: number;
  /** Start no new trial after this many seconds of search. */
  timeoutSeconds?: number | undefined;
  directionWindow: readonly [number, number];
  /** Parameters held fixed; when all are, the search is skipped and that cut is made. */
  pinned: Partial<CutParameters>;
  /** New tokens per validation answer in a trial. */
  maxNewTokens: number;
  /** Export this trial of the study instead of the one the rule chooses. */
  trial?: number | undefined;
  /** Trials of a resumed study. */
  previous?: readonly TrialRecord[];
}

export interface SearchResult {
  trials: TrialRecord[];
  /** The uncut model on the validation prompts. */
  original: TrialObjectives;
  /** The Pareto front of refusals against KL among trials that do not over-refuse. */
  front: TrialRecord[];
  /** The trial the rule chooses (undefined when nothing was searched). */
  chosen: TrialRecord | undefined;
  /** The cut that is made: the chosen trial, the one asked for, or the pinned parameters. */
  exported: { number: number | null; params: CutParameters };
  seconds: number;
  secondsPerTrial: number | null;
}

/**
 * The whole search on a measured model: the original's figures on the validation prompts, trials
 * until the study is complete or the time is up, the front and the cut to make. The weights are left
 * as they were.
 */
export async function optimizeCut(
  model: LlamaModel,
  measurement: Measurement,
  validation: EvaluationPrompts,
  settings: OptimizeSettings,
  options: { batchSize: number; markers: readonly string[]; signal?: AbortSignal | undefined; onTrial?: (trial: TrialRecord, original: TrialObjectives) => void | Promise<void> },
): Promise<SearchResult> {
  const start = performance.now();
  const space = searchSpace(model.config.numLayers, { directionWindow: settings.directionWindow, pinned: settings.pinned });
  if (space.length === 0) {
    return { trials: [], original: { refusals: NaN, kl: 0, harmless_refusals: NaN }, front: [], chosen: undefined, exported: { number: null, params: cutParameters({}, settings.pinned) }, seconds: 0, secondsPerTrial: null };
  }
  const evaluator = await TrialEvaluator.create(model, measurement, validation, { maxNewTokens: settings.maxNewTokens, batchSize: options.batchSize, markers: options.markers, signal: options.signal });
  try {
    const sampler = new TpeSampler(space, { seed: settings.seed, startupTrials: settings.startupTrials });
    const initial = classicTrials(model.config.numLayers, measurement, space);
    const previous = settings.previous ?? [];
    const trials = await runSearch((p) => evaluator.evaluate(p), sampler, evaluator.original, {
      trials: settings.trials,
      seed: settings.seed,
      startupTrials: settings.startupTrials,
      pinned: settings.pinned,
      previous,
      initial,
      timeoutSeconds: settings.timeoutSeconds,
      signal: options.signal,
      onTrial: (trial) => options.onTrial?.(trial, evaluator.original),
    });
    const original = evaluator.original;
    const chosen = chooseTrial(trials, original);
    let exported: TrialRecord | undefined = chosen;
    if (settings.trial !== undefined) {
      exported = trials.find((t) => t.number === settings.trial);
      if (!exported) throw new RangeError(`there is no trial ${settings.trial} in the study (it has trials 0..${trials.length - 1})`);
    }
    if (!exported) throw new RangeError('the search finished no trial (is the timeout too short?)');
    const ran = trials.slice(previous.length);
    return {
      trials,
      original,
      front: paretoTrials(trials, original),
      chosen,
      exported: { number: exported.number, params: exported.params },
      seconds: (performance.now() - start) / 1000,
      secondsPerTrial: ran.length ? ran.reduce((s, t) => s + t.seconds, 0) / ran.length : null,
    };
  } finally {
    evaluator.dispose();
  }
}

/**
 * The first trials of every search: the classic abliteration (the best-separated point of the window,
 * every layer's o_proj and down_proj cut at strength 1, and at 1.25, the embedding too). The front
 * then always holds what the hand-tuned path would give, and the sampler starts from a cut known to
 * work on most models. Parameters pinned or outside the space are left to the pins and the sampler.
 */
export function classicTrials(numLayers: number, measurement: Measurement, space: readonly Parameter[]): Params[] {
  const index = space.find((p) => p.name === 'direction_index');
  let point = Math.round((numLayers + 1) / 2);
  if (index?.kind === 'float') {
    const inside = measurement.scores.filter((s) => s.point >= index.low && s.point <= index.high && s.point > 0);
    const best = [...(inside.length ? inside : measurement.scores.slice(1))].sort((a, b) => b.effectSize - a.effectSize)[0];
    point = Math.min(index.high, Math.max(index.low, best?.point ?? point));
  }
  const last = numLayers - 1;
  return [1, 1.25].map((strength) => {
    const wanted: Params = {
      scope: 'global',
      direction_index: point,
      attn_max_weight: strength,
      attn_peak: last,
      attn_min_fraction: 1,
      attn_falloff: Math.max(1, last),
      mlp_max_weight: strength,
      mlp_peak: last,
      mlp_min_fraction: 1,
      mlp_falloff: Math.max(1, last),
      projected: false,
      preserve_norm: false,
      embedding: true,
    };
    const params: Params = {};
    for (const p of space) {
      const value = wanted[p.name]!;
      if (p.kind === 'float') params[p.name] = Math.min(p.high, Math.max(p.low, value as number));
      else params[p.name] = p.choices.includes(value) ? value : p.choices[0]!;
    }
    return params;
  });
}
