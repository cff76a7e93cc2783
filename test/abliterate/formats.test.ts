/**
 * The versioned outputs: the directions file (safetensors `__metadata__` format and version) and the
 * JSON report. Each is read back as written; a file of version 1 (before versions: residual points
 * under "layer") is read as the current version; a newer one is refused with what to do.
 */
import { describe, expect, it } from 'vitest';
import { DIRECTIONS_FORMAT, DIRECTIONS_VERSION, DirectionsFileError, readDirections, writeDirections } from '../../src/abliterate/directionsFile.ts';
import type { Measurement, PointScore } from '../../src/abliterate/measure.ts';
import type { AbliterationResult } from '../../src/abliterate/pipeline.ts';
import { cutParameters, parseReport, REPORT_FORMAT, REPORT_VERSION, reportOf, ReportFileError } from '../../src/abliterate/report.ts';
import { SafetensorsFile } from '../../src/io/safetensors.ts';
import { MemorySink, writeSafetensors } from '../../src/io/safetensorsWriter.ts';
import type { LlamaModel } from '../../src/model/model.ts';
import { DEFAULT_SETTINGS } from '../../src/abliterate/pipeline.ts';
import { Random } from '../helpers/random.ts';

const HIDDEN = 8;
const POINTS = 5;

function randomMeasurement(rng: Random): Measurement {
  const rows = () => Array.from({ length: POINTS }, () => Float32Array.from(rng.normals(HIDDEN)));
  const unit = (v: Float32Array) => v.map((x) => x / Math.hypot(...v));
  const scores: PointScore[] = Array.from({ length: POINTS }, (_, point) => ({ point, gap: rng.next() * 4, relativeGap: rng.next(), cosine: rng.next(), effectSize: rng.next() * 3 }));
  return {
    hiddenSize: HIDDEN,
    points: POINTS,
    harmfulCount: 3,
    harmlessCount: 3,
    harmfulMeans: rows(),
    harmlessMeans: rows(),
    directions: rows().map(unit),
    scores,
    projections: { harmful: [], harmless: [] },
  };
}

/** The reader renormalises unit directions, which may move a value by a rounding step. */
function expectSameDirections(read: readonly Float32Array[], written: readonly Float32Array[]): void {
  expect(read).toHaveLength(written.length);
  read.forEach((d, p) => d.forEach((v, i) => expect(Math.abs(v - written[p]![i]!)).toBeLessThan(1e-6)));
}

function source(bytes: Uint8Array, name = 'refusal_direction.safetensors') {
  return { name, size: bytes.length, read: async (offset: number, length: number) => bytes.slice(offset, offset + length) };
}

/** A directions file with the given metadata, written the way version 1 did apart from the metadata. */
async function directionsWith(measurement: Measurement, metadata: Record<string, string>): Promise<Uint8Array> {
  const sink = new MemorySink();
  const matrix = (rows: Float32Array[]) => {
    const data = new Float32Array(rows.length * HIDDEN);
    rows.forEach((r, i) => data.set(r, i * HIDDEN));
    return new Uint8Array(data.buffer);
  };
  await writeSafetensors(
    sink,
    [
      { name: 'direction', dtype: 'F32', shape: [HIDDEN], bytes: async () => matrix([measurement.directions[2]!]) },
      { name: 'directions', dtype: 'F32', shape: [POINTS, HIDDEN], bytes: async () => matrix(measurement.directions) },
      { name: 'harmful_means', dtype: 'F32', shape: [POINTS, HIDDEN], bytes: async () => matrix(measurement.harmfulMeans) },
      { name: 'harmless_means', dtype: 'F32', shape: [POINTS, HIDDEN], bytes: async () => matrix(measurement.harmlessMeans) },
    ],
    metadata,
  );
  return sink.bytes();
}

describe('directions file', () => {
  const rng = new Random();

  it(`is written as format ${DIRECTIONS_FORMAT} version 2 without a subspace (3 with one, ${DIRECTIONS_VERSION} with an instruction position) and read back as written`, async () => {
    const measurement = randomMeasurement(rng);
    const sink = new MemorySink();
    // An extra key cannot replace the format keys.
    await writeDirections(sink, measurement, 3, { model: '/models/m', format: 'other', version: '9' });
    const bytes = await sink.bytes();
    const file = await SafetensorsFile.open(source(bytes));
    expect(file.metadata).toMatchObject({ format: 'abliterate-directions', version: '2', point: '3', model: '/models/m' });
    expect(file.metadata.layer).toBeUndefined();
    const read = await readDirections(source(bytes));
    expect(read.version).toBe(2);
    expect(read.point).toBe(3);
    expectSameDirections([read.direction], [measurement.directions[3]!]);
    expectSameDirections(read.directions, measurement.directions);
    expect(read.scores).toEqual(measurement.scores);
  });

  it('of version 1 (no version, the point under "layer") is read as the current version', async () => {
    const measurement = randomMeasurement(rng);
    const v1Scores = measurement.scores.map(({ point, ...rest }) => ({ layer: point, ...rest }));
    const bytes = await directionsWith(measurement, { format: 'abliterate-directions', layer: '2', scores: JSON.stringify(v1Scores), model: '/models/m' });
    const read = await readDirections(source(bytes));
    expect(read).toMatchObject({ version: 1, point: 2, scores: measurement.scores });
    expect(read.direction).toBe(read.directions[2]);
    expectSameDirections(read.directions, measurement.directions);
    // A version 1 file without scores still reads.
    expect((await readDirections(source(await directionsWith(measurement, { format: 'abliterate-directions', layer: '4' })))).scores).toEqual([]);
  });

  it('of a newer version is refused, saying which version reads it; a bad version or format is an error', async () => {
    const measurement = randomMeasurement(rng);
    const newer = await directionsWith(measurement, { format: 'abliterate-directions', version: '5', point: '2', scores: '[]' });
    const error = await readDirections(source(newer, 'dir.safetensors')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DirectionsFileError);
    expect((error as Error).message).toBe('dir.safetensors: written by a newer abliterate (directions format 5); this version reads formats up to 4: update abliterate');
    // Version 4 says where the directions were read.
    await expect(readDirections(source(await directionsWith(measurement, { format: 'abliterate-directions', version: '4', point: '2', position: 'middle' })))).rejects.toThrow(/"position" is neither "last" nor "instruction"/);
    for (const version of ['two', '0', '1.5', '']) {
      await expect(readDirections(source(await directionsWith(measurement, { format: 'abliterate-directions', version, point: '2' }))), version).rejects.toThrow(/"version" is not a format version/);
    }
    await expect(readDirections(source(await directionsWith(measurement, { format: 'something-else', point: '2' })))).rejects.toThrow(/"format" is "something-else", not "abliterate-directions"/);
    // Version 2 names the point "point"; "layer" alone is not enough.
    await expect(readDirections(source(await directionsWith(measurement, { format: 'abliterate-directions', version: '2', layer: '2' })))).rejects.toThrow(/metadata "point" is not a point index in 0\.\.4/);
    await expect(readDirections(source(await directionsWith(measurement, { format: 'abliterate-directions', layer: '5' })))).rejects.toThrow(/metadata "layer" is not a point index in 0\.\.4/);
  });
});

describe('report', () => {
  const rng = new Random();

  /** A result of a run as runAbliteration returns it, with random figures. */
  function randomResult(): AbliterationResult {
    const measurement = randomMeasurement(rng);
    const answers = (n: number) => Array.from({ length: n }, (_, i) => ({ prompt: `prompt ${i}`, answer: `answer ${rng.next()}`, refused: rng.next() < 0.5 }));
    const evaluation = (kl: number) => ({ harmful_refusal_rate: rng.next(), harmless_refusal_rate: rng.next(), kl, perplexity: 10 + rng.next(), harmful_answers: answers(7), harmless_answers: answers(6) });
    const trials = [3, 1].map((point) => ({ point, harmful_refusal_rate: rng.next(), harmless_refusal_rate: 0, kl: rng.next() }));
    return {
      point: 3,
      selection: { method: 'ablation', metric: 'effect_size', window: [0.2, 0.8], trials },
      scores: measurement.scores,
      strengths: [1, 0.5, 1, 0],
      before: evaluation(0),
      after: evaluation(rng.next()),
      kl: rng.next(),
      measurement,
      direction: measurement.directions[3]!,
      timings: { measure: 1.5, cut: 0.25 },
      cut: { tensors: [], undo: async () => {}, release: () => {} },
    } as unknown as AbliterationResult;
  }

  const model = { folder: { name: 'tiny-chat' } } as unknown as LlamaModel;

  it(`is written as format ${REPORT_FORMAT} version ${REPORT_VERSION}, and read back as written`, () => {
    const result = randomResult();
    const report = reportOf(result, model, cutParameters(result, { ...DEFAULT_SETTINGS, alpha: 1.25 }, '/models/tiny-chat'), '/out', 'llvmpipe', { ...DEFAULT_SETTINGS, alpha: 1.25 });
    expect(Object.keys(report)).toEqual(['format', 'version', 'model', 'adapter', 'point', 'selection', 'scores', 'strengths', 'before', 'after', 'kl', 'parameters', 'settings', 'timings_s', 'output', 'skipped_files']);
    expect(report).toMatchObject({ format: 'abliterate-report', version: 3, point: 3, strengths: [1, 0.5, 1, 0] });
    expect(report.settings).toMatchObject({ point: null, 'strength-profile': 'constant' });
    expect(report.parameters).toEqual({ point: 3, alpha: 1.25, strengths: [1, 0.5, 1, 0], embedding: true, preserve_row_norm: false, selection: 'ablation', source_model: '/models/tiny-chat' });
    expect(report.scores[2]).toEqual({ point: 2, gap: result.scores[2]!.gap, relative_gap: result.scores[2]!.relativeGap, cosine: result.scores[2]!.cosine, effect_size: result.scores[2]!.effectSize });
    expect(report.before.samples.harmful).toHaveLength(5);
    const text = JSON.stringify(report, null, 2);
    // Points are points; "layers" (decoder layers to cut) is the one setting of that name.
    expect(JSON.stringify(report)).not.toMatch(/"layer"|"layer_/);
    expect(parseReport(text, 'abliteration_report.json')).toEqual(JSON.parse(text));
  });

  /** Settings by the names versions 1 and 2 wrote: the point under `layer`. */
  const oldSettings = (settings: unknown) => Object.fromEntries(Object.entries(settings as Record<string, unknown>).map(([key, value]) => [key === 'point' ? 'layer' : key, value]));

  it('of version 1 (no format or version, "layer" and "layer_weights") is read as the current version', () => {
    const result = randomResult();
    type Written = { point: number; strengths: number[]; selection: { trials: { point: number }[] }; scores: { point: number }[]; parameters: Record<string, unknown> } & Record<string, unknown>;
    const current = JSON.parse(JSON.stringify(reportOf(result, model, cutParameters(result, DEFAULT_SETTINGS, '/models/tiny-chat'), '/out', 'llvmpipe', DEFAULT_SETTINGS))) as Written;
    // The report as version 1 wrote it, key for key.
    const { format, version, point, strengths, selection, scores, parameters, ...rest } = current;
    expect([format, version]).toEqual(['abliterate-report', REPORT_VERSION]);
    const { point: parameterPoint, strengths: parameterStrengths, ...otherParameters } = parameters;
    const v1 = {
      model: rest.model,
      adapter: rest.adapter,
      layer: point,
      selection: { ...selection, trials: selection.trials.map(({ point: p, ...t }) => ({ layer: p, ...t })) },
      scores: scores.map(({ point: p, ...s }) => ({ layer: p, ...s })),
      layer_weights: strengths,
      before: rest.before,
      after: rest.after,
      kl: rest.kl,
      parameters: { layer: parameterPoint, alpha: otherParameters.alpha, layer_weights: parameterStrengths, ...otherParameters },
      settings: oldSettings(rest.settings),
      timings_s: rest.timings_s,
      output: rest.output,
      skipped_files: rest.skipped_files,
    };
    const upgraded = parseReport(JSON.stringify(v1), 'old.json');
    expect(upgraded).toEqual(current);
    expect(Object.keys(upgraded)).toEqual(Object.keys(current));
    expect(Object.keys(upgraded.parameters)).toEqual(Object.keys(current.parameters));
    // A version 1 report from before the settings and the skipped files were recorded.
    const { skipped_files: _skipped, settings: _settings, ...older } = v1;
    const { settings: _currentSettings, ...withoutSettings } = current;
    expect(parseReport(JSON.stringify(older), 'older.json')).toEqual(withoutSettings);
  });

  it('of version 2 (the settings block names the point "layer") is read as the current version', () => {
    const result = randomResult();
    const settings = { ...DEFAULT_SETTINGS, point: 3, strengthProfile: { kind: 'tent', peak: 2, width: 3, min: 0, max: 1 } } as const;
    const current = JSON.parse(JSON.stringify(reportOf(result, model, cutParameters(result, settings, '/m'), null, 'llvmpipe', settings))) as Record<string, unknown>;
    const v2 = { ...current, version: 2, settings: oldSettings(current.settings) };
    expect(Object.keys(v2.settings)).toContain('layer');
    const upgraded = parseReport(JSON.stringify(v2), 'v2.json');
    expect(upgraded).toEqual(current);
    expect(Object.keys(upgraded.settings!)).toEqual(Object.keys(current.settings as object));
    // Its old name for the strength profile too.
    const { 'strength-profile': profile, ...others } = current.settings as Record<string, unknown>;
    expect(parseReport(JSON.stringify({ ...v2, settings: { ...others, kernel: profile } }), 'v2.json').settings).toEqual({ ...others, 'strength-profile': profile });
  });

  it('of a newer version is refused, saying which version reads it; what is not a report is an error', () => {
    const result = randomResult();
    const report = reportOf(result, model, cutParameters(result, DEFAULT_SETTINGS, '/m'), null, 'llvmpipe', DEFAULT_SETTINGS);
    const newer = JSON.stringify({ ...report, version: 4, something_new: true });
    expect(() => parseReport(newer, 'new.json')).toThrow(ReportFileError);
    expect(() => parseReport(newer, 'new.json')).toThrow('new.json: written by a newer abliterate (report format 4); this version reads formats up to 3: update abliterate');
    expect(() => parseReport('{"model": ', 'r.json')).toThrow(/^r\.json: not JSON/);
    expect(() => parseReport('[1, 2]', 'r.json')).toThrow(/not a JSON object/);
    expect(() => parseReport('{"model": "m"}', 'r.json')).toThrow(/no "layer", "before" and "after": not a report/);
    expect(() => parseReport(JSON.stringify({ ...report, format: 'other' }), 'r.json')).toThrow(/"format" is "other", not "abliterate-report"/);
    expect(() => parseReport(JSON.stringify({ ...report, version: '2' }), 'r.json')).toThrow(/"version" is not a format version/);
    const { kl: _kl, ...withoutKl } = report;
    expect(() => parseReport(JSON.stringify(withoutKl), 'r.json')).toThrow(/no "kl"/);
  });
});
