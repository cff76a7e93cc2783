import type { LlamaModel } from '../model/model.ts';
import type { AbliterationResult, AbliterationSettings } from './pipeline.ts';
import { settingsRecord } from './settings.ts';

/** Names of the files a run writes beside the model (CLI output folder, page downloads). */
export const REPORT_FILE = 'abliteration_report.json';
export const DIRECTIONS_FILE = 'refusal_direction.safetensors';

/** The parameters of a cut, as stored in the exported model's `__metadata__` and the report. */
export function cutParameters(result: AbliterationResult, settings: AbliterationSettings, sourceModel: string): Record<string, unknown> {
  return {
    layer: result.layer,
    alpha: settings.alpha,
    layer_weights: result.layerWeights,
    embedding: settings.embedding,
    preserve_row_norm: settings.preserveRowNorm,
    selection: result.selection.method,
    source_model: sourceModel,
  };
}

/**
 * The JSON report of a run: the figures a user and a script need, without the per-token data.
 * `settings` is recorded by the settings schema's keys, as a TOML config would give them.
 */
export function reportOf(result: AbliterationResult, model: LlamaModel, parameters: Record<string, unknown>, output: string | null, adapter: string, settings: AbliterationSettings) {
  const evaluation = (e: AbliterationResult['before']) => ({
    harmful_refusal_rate: e.harmful_refusal_rate,
    harmless_refusal_rate: e.harmless_refusal_rate,
    kl: e.kl,
    perplexity: e.perplexity,
    samples: {
      harmful: e.harmful_answers.slice(0, 5),
      harmless: e.harmless_answers.slice(0, 5),
    },
  });
  return {
    model: model.folder.name,
    adapter,
    layer: result.layer,
    selection: result.selection,
    scores: result.scores.map((s) => ({ layer: s.layer, gap: s.gap, relative_gap: s.relativeGap, cosine: s.cosine, effect_size: s.effectSize })),
    layer_weights: result.layerWeights,
    before: evaluation(result.before),
    after: evaluation(result.after),
    kl: result.kl,
    parameters,
    settings: settingsRecord(settings),
    timings_s: result.timings,
    output,
    /** Files of the input folder the export left out (weights in other formats, hidden files), with why. */
    skipped_files: [] as { file: string; reason: string }[],
  };
}

export type AbliterationReport = ReturnType<typeof reportOf>;
