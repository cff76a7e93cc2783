import type { LlamaModel } from '../model/model.ts';
import type { Answer } from './evaluate.ts';
import { REFUSAL_TOLERANCE, type SearchResult } from './optimize/search.ts';
import type { CutParameters as SearchedCut } from './optimize/space.ts';
import type { AbliterationResult, AbliterationSettings } from './pipeline.ts';
import { settingFields, settingsRecord } from './settings.ts';
import type { SelectionMetric } from './select.ts';
import type { CandidateTrial } from './selectByAblation.ts';

/** Names of the files a run writes beside the model (CLI output folder, page downloads). */
export const REPORT_FILE = 'abliteration_report.json';
export const DIRECTIONS_FILE = 'refusal_direction.safetensors';

/** The `format` of a report. */
export const REPORT_FORMAT = 'abliterate-report';
/**
 * The report version written, and the newest read. 1: no `format` and `version` keys, residual
 * points under `layer` and the strength profile under `layer_weights`; 2: `format`, `version`,
 * `point` and `strengths`; 3: the settings block names the direction's point `point` (was `layer`).
 */
export const REPORT_VERSION = 3;

/** The parameters of a cut, as stored in the exported model's `__metadata__` (key `abliteration`) and in the report. */
// A type, not an interface: it is written as `__metadata__`, a Record<string, unknown>.
export type CutParameters = {
  /** The residual point the direction was taken at (a cut of one direction). */
  point?: number;
  /** The points whose directions, orthonormalised, span the cut subspace (`abliterate cut --points`), and its rank. */
  points?: number[];
  rank?: number;
  /** Which directions were cut (`abliterate cut --target`): refusal execution, harm detection, or both; absent: the file's own. */
  target?: 'red' | 'hdd' | 'both';
  /** The directions were taken orthogonal to the harmless mean (`abliterate cut --projected`). */
  projected?: boolean;
  alpha: number;
  /** Multiplier of alpha per decoder layer. */
  strengths: number[];
  embedding: boolean;
  preserve_row_norm: boolean;
  /** down_proj's multipliers of alpha, when the search set them apart from `strengths` (then o_proj's). */
  mlp_strengths?: number[];
  /** How the point was chosen (`abliterate run` and the page; not `abliterate cut`). */
  selection?: 'forced' | 'score' | 'ablation' | 'optimize';
  /** The searched parameters of the exported cut, and its trial (null: the pinned parameters, no trial). */
  cut?: SearchedCut;
  trial?: number | null;
  source_model: string;
};

export function cutParameters(result: AbliterationResult, settings: AbliterationSettings, sourceModel: string): CutParameters {
  const search = result.search;
  if (search) {
    const cut = search.exported.params;
    return {
      point: result.point,
      alpha: 1,
      strengths: result.strengths,
      ...(result.mlpStrengths ? { mlp_strengths: result.mlpStrengths } : {}),
      embedding: cut.embedding,
      preserve_row_norm: cut.preserve_norm,
      selection: result.selection.method,
      cut,
      trial: search.exported.number,
      source_model: sourceModel,
    };
  }
  return {
    point: result.point,
    alpha: settings.alpha,
    strengths: result.strengths,
    embedding: settings.embedding,
    preserve_row_norm: settings.preserveRowNorm,
    selection: result.selection.method,
    source_model: sourceModel,
  };
}

/** A model's figures in the report: the rates, KL and perplexity, and the first answers of each kind. */
export interface EvaluationReport {
  harmful_refusal_rate: number;
  harmless_refusal_rate: number;
  /** On the borderline-benign prompts (null when none were evaluated). */
  borderline_refusal_rate: number | null;
  kl: number;
  perplexity: number | null;
  samples: { harmful: Answer[]; harmless: Answer[] };
}

/** The measured figures at one residual point. */
export interface PointScoreReport {
  point: number;
  gap: number;
  relative_gap: number;
  cosine: number;
  effect_size: number;
}

/** The JSON report of a run (`abliteration_report.json`), version 3. */
export interface AbliterationReport {
  format: typeof REPORT_FORMAT;
  version: typeof REPORT_VERSION;
  /** The input model's folder name. */
  model: string;
  adapter: string;
  /** The residual point the direction was taken at (0: the embedding, i: the output of decoder layer i − 1). */
  point: number;
  selection: { method: 'forced' | 'score' | 'ablation' | 'optimize'; metric: SelectionMetric; window: readonly [number, number]; trials?: CandidateTrial[] };
  scores: PointScoreReport[];
  /** The cut's strength profile: its multiplier of alpha per decoder layer. */
  strengths: number[];
  before: EvaluationReport;
  after: EvaluationReport;
  /** First-token KL of the cut model against the original on the harmless evaluation prompts. */
  kl: number;
  parameters: CutParameters;
  /** The run's settings by the settings schema's keys (absent in version 1 reports from before they were recorded). */
  settings?: Record<string, unknown>;
  timings_s: Record<string, number>;
  /** The search that found the cut (absent when the cut was tuned by hand). */
  search?: SearchReport;
  /** Where the output was written (null on the page). */
  output: string | null;
  /** Files of the input folder the export left out (weights in other formats, hidden files), with why. */
  skipped_files: { file: string; reason: string }[];
}

/**
 * The JSON report of a run: the figures a user and a script need, without the per-token data.
 * `settings` is recorded by the settings schema's keys, as a TOML config would give them.
 */
export function reportOf(result: AbliterationResult, model: LlamaModel, parameters: CutParameters, output: string | null, adapter: string, settings: AbliterationSettings): AbliterationReport {
  const evaluation = (e: AbliterationResult['before']): EvaluationReport => ({
    harmful_refusal_rate: e.harmful_refusal_rate,
    harmless_refusal_rate: e.harmless_refusal_rate,
    borderline_refusal_rate: e.borderline_refusal_rate,
    kl: e.kl,
    perplexity: e.perplexity,
    samples: {
      harmful: e.harmful_answers.slice(0, 5),
      harmless: e.harmless_answers.slice(0, 5),
    },
  });
  return {
    format: REPORT_FORMAT,
    version: REPORT_VERSION,
    model: model.folder.name,
    adapter,
    point: result.point,
    selection: result.selection,
    scores: result.scores.map((s) => ({ point: s.point, gap: s.gap, relative_gap: s.relativeGap, cosine: s.cosine, effect_size: s.effectSize })),
    strengths: result.strengths,
    before: evaluation(result.before),
    after: evaluation(result.after),
    kl: result.kl,
    parameters,
    settings: settingsRecord(settings),
    timings_s: result.timings,
    ...(result.search ? { search: searchReport(result.search) } : {}),
    output,
    skipped_files: [],
  };
}

export class ReportFileError extends Error {
  override name = 'ReportFileError';
}

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * Reads a report (the text of `abliteration_report.json`) of this version or an older one, as the
 * current version: the keys of an older report are renamed. `name` is the file, for messages.
 */
export function parseReport(text: string, name: string): AbliterationReport {
  const fail = (why: string) => new ReportFileError(`${name}: ${why} (expected ${REPORT_FILE} written by abliterate run or the page)`);
  let report: unknown;
  try {
    report = JSON.parse(text);
  } catch {
    throw fail('not JSON');
  }
  if (!isObject(report)) throw fail('not a JSON object');
  if (report.format !== undefined && report.format !== REPORT_FORMAT) throw fail(`its "format" is ${JSON.stringify(report.format)}, not "${REPORT_FORMAT}"`);
  // Version 1 had neither key.
  const version = report.format === undefined && report.version === undefined ? 1 : report.version;
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) throw fail('its "version" is not a format version');
  if (version > REPORT_VERSION) throw new ReportFileError(`${name}: written by a newer abliterate (report format ${version}); this version reads formats up to ${REPORT_VERSION}: update abliterate`);
  let upgraded = version === 1 ? upgradeV1(report, fail) : report;
  if (version < 3) upgraded = { ...upgraded, version: REPORT_VERSION, ...(upgraded.settings === undefined ? {} : { settings: currentSettingNames(upgraded.settings) }) };
  for (const key of ['point', 'selection', 'scores', 'strengths', 'before', 'after', 'kl', 'parameters'] as const) {
    if (!(key in upgraded)) throw fail(`no "${key}"`);
  }
  return upgraded as unknown as AbliterationReport;
}

/** Versions 1 and 2 recorded settings by their old names (`layer`, `kernel`); version 3 by the current ones. */
function currentSettingNames(settings: unknown): unknown {
  if (!isObject(settings)) return settings;
  const renamed = new Map(settingFields().flatMap((f) => (f.deprecatedName ? [[f.deprecatedName, f.key] as const] : [])));
  return Object.fromEntries(Object.entries(settings).map(([key, value]) => [renamed.get(key) ?? key, value]));
}

/** Version 1 → 2: `layer` (a residual point) becomes `point`, `layer_weights` becomes `strengths`. */
function upgradeV1(v1: Json, fail: (why: string) => Error): Json {
  if (!('layer' in v1) || !isObject(v1.before) || !isObject(v1.after)) throw fail('no "layer", "before" and "after": not a report');
  const renamePoint = (entry: unknown) => {
    if (!isObject(entry)) return entry;
    const { layer, ...rest } = entry;
    return { point: layer, ...rest };
  };
  const { layer, layer_weights, selection, scores, parameters, ...rest } = v1;
  const upgradedSelection = isObject(selection) && Array.isArray(selection.trials) ? { ...selection, trials: selection.trials.map(renamePoint) } : selection;
  let upgradedParameters = parameters;
  if (isObject(parameters)) {
    const { layer: point, layer_weights: strengths, ...others } = parameters;
    upgradedParameters = { point, alpha: others.alpha, strengths, ...others };
  }
  // The keys in the order version 2 writes them; keys unknown to it stay, at the end.
  return {
    format: REPORT_FORMAT,
    version: REPORT_VERSION,
    model: rest.model,
    adapter: rest.adapter,
    point: layer,
    selection: upgradedSelection,
    scores: Array.isArray(scores) ? scores.map(renamePoint) : scores,
    strengths: layer_weights,
    before: rest.before,
    after: rest.after,
    kl: rest.kl,
    parameters: upgradedParameters,
    ...(rest.settings === undefined ? {} : { settings: rest.settings }),
    timings_s: rest.timings_s,
    output: rest.output,
    // Reports written before the export noted skipped files have none.
    skipped_files: rest.skipped_files ?? [],
    ...rest,
  };
}

/** The search in the report. */
export interface SearchReport {
  rule: string;
  original_validation: SearchResult['original'];
  chosen_trial: number | null;
  exported_trial: number | null;
  front: number[];
  seconds: number;
  seconds_per_trial: number | null;
  trials: SearchResult['trials'];
}

/** The search in the report: every trial, the front, the uncut model's validation figures and the rule's choice. */
export function searchReport(search: SearchResult): SearchReport {
  return {
    rule: CHOICE_RULE,
    original_validation: search.original,
    chosen_trial: search.chosen?.number ?? null,
    exported_trial: search.exported.number,
    front: search.front.map((t) => t.number),
    seconds: search.seconds,
    seconds_per_trial: search.secondsPerTrial,
    trials: search.trials,
  };
}

/** The choice rule, as the report states it. */
export const CHOICE_RULE = `among trials refusing no more harmless validation prompts than the original model, those within ${REFUSAL_TOLERANCE} refusal of the fewest; of these the lowest KL`;
