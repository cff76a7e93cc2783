import { resolve } from 'node:path';
import type { Command } from 'commander';
import { abliterationSettings, applyCut, type CutParameters, type CutTarget, exportModel, layerStrengths, settingsInGroups } from '../index.ts';
import { bar, printJson, UsageError, withModel } from './common.ts';
import { fitDirections, openDirections, pointOf, storedSubspace, targetDirections } from './directions.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { noteSkippedFiles, withOutputFolder } from './output.ts';
import { parsePoints } from './settings.ts';

export const CUT_SETTINGS: CommandSettings = {
  name: 'cut',
  options: [
    { key: 'direction', required: true },
    { key: 'point', help: "use this point's direction instead of the file's chosen one" },
    'points',
    { key: 'top-k', help: "cut the top K vectors of the point's stored subspace (a directions file from measure --mode subspace)", valueName: 'k', default: undefined },
    'target',
    { key: 'projected', help: 'cut each direction orthogonal to its point\'s harmless mean ("projected abliteration")' },
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
    if (options.points && options.point !== undefined) throw new UsageError('give --point or --points, not both');
    const directions = await openDirections(options.direction!);
    const outside = options.points?.find((p) => p >= directions.directions.length);
    if (outside !== undefined) throw new UsageError(`--points: point ${outside} is outside the file's points 0..${directions.directions.length - 1}`);
    const topK = options['top-k'];
    if (topK !== undefined && options.points) throw new UsageError('give --top-k or --points, not both');
    const target = options.target as CutTarget | undefined;
    if (topK !== undefined && (target === 'hdd' || target === 'both')) throw new UsageError('--top-k cuts the stored subspace of the refusal-execution direction; it does not combine with --target hdd or both');
    if (topK !== undefined && options.projected) throw new UsageError('give --top-k or --projected, not both');
    let basis: Float32Array[];
    let stored: Float32Array[] | undefined;
    let source: Pick<CutParameters, 'point' | 'points' | 'rank' | 'target' | 'projected'>;
    // The file's own directions (a refusal-execution one, by point, points or stored subspace), unless another target or projection is asked for.
    if ((target === undefined || (target === 'red' && directions.position === 'last')) && !options.projected) {
      const chosen = (options.points ?? [options.point]).map((point) => pointOf(directions, point, options.direction!));
      stored = topK === undefined ? undefined : storedSubspace(directions, chosen[0]!.point, topK, options.direction!);
      basis = stored ?? chosen.map((c) => c.direction);
      // What was cut: a point's direction, its stored top-K subspace (--top-k), or (--points) the subspace of several.
      source = { ...(options.points ? { points: options.points, rank: options.points.length } : { point: chosen[0]!.point, ...(stored && { rank: stored.length }) }), ...(target && { target }) };
    } else {
      const picked = targetDirections(directions, options.direction!, target, options.points ?? (options.point === undefined ? undefined : [options.point]), options.projected);
      basis = picked.basis;
      source = { ...(options.points ? { points: options.points } : { point: picked.point }), rank: basis.length, ...(target && { target }), ...(options.projected && { projected: true }) };
    }
    const orthonormalize = basis.length > 1 && stored === undefined;
    const settings = abliterationSettings(values);
    // The summary is printed once the output is in place under its final name.
    const summary = await withOutputFolder(options.out!, resolve(dir), options.force, (out) => withModel(dir, options, async (model) => {
      fitDirections(directions, options.direction!, model.config);
      const scores = directions.scores.slice(1).map((s) => s.effectSize);
      const strengths = layerStrengths(model.config.numLayers, settings.layers, settings.strengthProfile, scores.length === model.config.numLayers ? scores : undefined);
      const start = performance.now();
      await applyCut(model, { basis, orthonormalize, alpha: options.alpha, strengths, preserveRowNorm: options['preserve-norm'], embedding: options.embedding, undo: 'none' });
      const cutSeconds = (performance.now() - start) / 1000;
      const parameters: CutParameters = { ...source, alpha: options.alpha, strengths, embedding: options.embedding, preserve_row_norm: options['preserve-norm'], source_model: dir };
      const exportStart = performance.now();
      const files = await bar('export', (update) => exportModel(model, out, { parameters, onProgress: update }));
      noteSkippedFiles(files);
      return { ...source, output: out.path, tensors: [...model.modifiedTensors], cut_s: cutSeconds, export_s: (performance.now() - exportStart) / 1000, skipped_files: files.skipped };
    }));
    if (options.json) printJson(summary);
    else {
      const projected = options.projected ? 'projected ' : '';
      const which = target === 'both' ? `${projected}refusal-execution and harm-detection directions` : `${projected}${target === 'hdd' ? 'harm-detection ' : target === 'red' ? 'refusal-execution ' : ''}direction`;
      const what = options.points
        ? `the subspace of the ${which}${target === 'both' ? '' : 's'} of points ${options.points.join(', ')} (rank ${basis.length})`
        : stored
          ? `the top-${stored.length} subspace of point ${summary.point}`
          : target === 'both'
            ? `the plane of the ${which} (points ${summary.point} and ${options.point ?? directions.harmDetection?.point ?? summary.point})`
            : `the ${which} of point ${summary.point}`;
      process.stdout.write(`cut ${summary.tensors.length} tensors with ${what} in ${summary.cut_s.toFixed(2)} s; written to ${summary.output}\n`);
    }
  });
}
