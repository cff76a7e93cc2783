import { resolve } from 'node:path';
import type { Command } from 'commander';
import { applyCut, layerWeights } from '../abliterate/cut.ts';
import { exportModel } from '../abliterate/export.ts';
import type { CutParameters } from '../abliterate/report.ts';
import { abliterationSettings, settingsInGroups } from '../abliterate/settings.ts';
import { bar, printJson, UsageError, withModel } from './common.ts';
import { fitDirections, openDirections, pointOf, storedSubspace } from './directions.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { noteSkippedFiles, withOutputFolder } from './output.ts';
import { parsePoints } from './settings.ts';

export const CUT_SETTINGS: CommandSettings = {
  name: 'cut',
  options: [
    { key: 'direction', required: true },
    { key: 'layer', help: "use this point's direction instead of the file's chosen one" },
    'points',
    { key: 'top-k', help: "cut the top K vectors of the point's stored subspace (a directions file from measure --mode subspace)", valueName: 'k', default: undefined },
    ...settingsInGroups('cut'),
    { key: 'out', valueName: 'dir', help: 'new folder for the cut model', required: true },
    'force',
    { key: 'json', help: 'print a JSON summary' },
    'adapter',
  ],
};

export function registerCut(program: Command): void {
  addSettingOptions(
    program.command('cut').description('remove a measured direction (or the subspace of several) from the weights and write the model').argument('<model-dir>'),
    CUT_SETTINGS,
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const values = await commandValues(command, CUT_SETTINGS);
    const options = { ...values, points: values.points === undefined ? undefined : parsePoints(values.points) };
    if (options.points && options.layer !== undefined) throw new UsageError('give --layer or --points, not both');
    const directions = await openDirections(options.direction!);
    const outside = options.points?.find((p) => p >= directions.directions.length);
    if (outside !== undefined) throw new UsageError(`--points: point ${outside} is outside the file's points 0..${directions.directions.length - 1}`);
    const chosen = (options.points ?? [options.layer]).map((point) => pointOf(directions, point, options.direction!));
    const topK = options['top-k'];
    if (topK !== undefined && options.points) throw new UsageError('give --top-k or --points, not both');
    const stored = topK === undefined ? undefined : storedSubspace(directions, chosen[0]!.point, topK, options.direction!);
    const basis = stored ?? chosen.map((c) => c.direction);
    // What was cut: a point's direction, its stored top-K subspace (--top-k), or (--points) the subspace of several.
    const source: Pick<CutParameters, 'point' | 'points' | 'rank'> = options.points ? { points: options.points, rank: options.points.length } : { point: chosen[0]!.point, ...(stored && { rank: stored.length }) };
    const settings = abliterationSettings(values);
    // The summary is printed once the output is in place under its final name.
    const summary = await withOutputFolder(options.out!, resolve(dir), options.force, (out) => withModel(dir, options, async (model) => {
      fitDirections(directions, options.direction!, model.config);
      const scores = directions.scores.slice(1).map((s) => s.effectSize);
      const strengths = layerWeights(model.config.numLayers, settings.layers, settings.kernel, scores.length === model.config.numLayers ? scores : undefined);
      const start = performance.now();
      await applyCut(model, { basis, orthonormalize: options.points !== undefined, alpha: options.alpha, layerWeights: strengths, preserveRowNorm: options['preserve-norm'], embedding: options.embedding, undo: 'none' });
      const cutSeconds = (performance.now() - start) / 1000;
      const parameters: CutParameters = { ...source, alpha: options.alpha, strengths, embedding: options.embedding, preserve_row_norm: options['preserve-norm'], source_model: dir };
      const exportStart = performance.now();
      const files = await bar('export', (update) => exportModel(model, out, { parameters, onProgress: update }));
      noteSkippedFiles(files);
      return { ...source, output: out.path, tensors: [...model.modifiedTensors], cut_s: cutSeconds, export_s: (performance.now() - exportStart) / 1000, skipped_files: files.skipped };
    }));
    if (options.json) printJson(summary);
    else {
      const what = options.points ? `the subspace of the directions of points ${options.points.join(', ')} (rank ${options.points.length})` : stored ? `the top-${stored.length} subspace of point ${summary.point}` : `the direction of point ${summary.point}`;
      process.stdout.write(`cut ${summary.tensors.length} tensors with ${what} in ${summary.cut_s.toFixed(2)} s; written to ${summary.output}\n`);
    }
  });
}
