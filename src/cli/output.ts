import type { AbliterationResult } from '../abliterate/pipeline.ts';
import type { Measurement } from '../abliterate/measure.ts';
import { exportModel } from '../abliterate/export.ts';
import { createOutputFolder, type OutputFolder } from '../io/outputFolder.ts';
import { writeSafetensors, type TensorToWrite } from '../io/safetensorsWriter.ts';
import type { LlamaModel } from '../model/model.ts';

export const REPORT_FILE = 'abliteration_report.json';
export const DIRECTIONS_FILE = 'refusal_direction.safetensors';

/** The directions at every point, the class means, and the chosen point, as safetensors. */
export async function writeDirections(out: OutputFolder, file: string, measurement: Measurement, layer: number, extra: Record<string, string> = {}): Promise<void> {
  const stack = (rows: readonly Float32Array[]) => {
    const data = new Float32Array(rows.length * measurement.hiddenSize);
    rows.forEach((r, i) => data.set(r, i * measurement.hiddenSize));
    return new Uint8Array(data.buffer);
  };
  const tensor = (name: string, rows: readonly Float32Array[]): TensorToWrite => ({
    name,
    dtype: 'F32',
    shape: rows.length === 1 ? [measurement.hiddenSize] : [rows.length, measurement.hiddenSize],
    bytes: async () => stack(rows),
  });
  await writeSafetensors(
    await out.sink(file),
    [
      tensor('direction', [measurement.directions[layer]!]),
      tensor('directions', measurement.directions),
      tensor('harmful_means', measurement.harmfulMeans),
      tensor('harmless_means', measurement.harmlessMeans),
    ],
    { format: 'abliterate-directions', layer: String(layer), scores: JSON.stringify(measurement.scores), ...extra },
  );
}

/** The JSON report of a run: the figures a user and a script need, without the per-token data. */
export function reportOf(result: AbliterationResult, model: LlamaModel, parameters: Record<string, unknown>, output: string | null, adapter: string) {
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
    timings_s: result.timings,
    output,
  };
}

/** Writes the cut model, the report and the directions into a new folder, atomically. */
export async function writeRunOutput(
  model: LlamaModel,
  outPath: string,
  inputPath: string,
  force: boolean,
  result: AbliterationResult,
  report: ReturnType<typeof reportOf>,
  parameters: Record<string, unknown>,
  onProgress?: (done: number, total: number) => void,
): Promise<void> {
  const out = await createOutputFolder(outPath, { force, inputPath });
  try {
    const start = performance.now();
    await exportModel(model, out, { parameters, onProgress });
    report.timings_s = { ...report.timings_s, export: (performance.now() - start) / 1000 };
    await writeDirections(out, DIRECTIONS_FILE, result.measurement, result.layer);
    await out.writeFile(REPORT_FILE, `${JSON.stringify(report, null, 2)}\n`);
    await out.commit();
  } catch (error) {
    await out.abort();
    throw error;
  }
}

function pad(text: string, width: number): string {
  return text.padEnd(width);
}

function fmt(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits);
}

/** The before/after table printed by `abliterate run`. */
export function summaryTable(report: ReturnType<typeof reportOf>): string {
  const score = report.scores.find((s) => s.layer === report.layer);
  const rows: [string, string, string][] = [
    ['harmful refusal', fmt(report.before.harmful_refusal_rate, 2), fmt(report.after.harmful_refusal_rate, 2)],
    ['harmless refusal', fmt(report.before.harmless_refusal_rate, 2), fmt(report.after.harmless_refusal_rate, 2)],
    ['first-token KL', fmt(0), fmt(report.kl)],
    ['perplexity', fmt(report.before.perplexity, 2), fmt(report.after.perplexity, 2)],
  ];
  const lines = [
    `direction from layer ${report.layer} (${report.selection.method}; effect size ${fmt(score?.effect_size, 2)}, gap ${fmt(score?.gap, 2)})`,
    '',
    `${pad('', 18)}${pad('before', 10)}after`,
    ...rows.map(([name, before, after]) => `${pad(name, 18)}${pad(before, 10)}${after}`),
  ];
  if (report.output) lines.push('', `written to ${report.output}`);
  return lines.join('\n');
}
