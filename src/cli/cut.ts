import { resolve } from 'node:path';
import type { Command } from 'commander';
import { applyCut, layerWeights } from '../abliterate/cut.ts';
import { exportModel } from '../abliterate/export.ts';
import { addGpuOptions, bar, parseInteger, parseNumber, printJson, UsageError, withModel } from './common.ts';
import { fitDirections, openDirections, pointOf } from './directions.ts';
import { noteSkippedFiles, withOutputFolder } from './output.ts';
import { settingsFrom } from './settings.ts';

export function registerCut(program: Command): void {
  addGpuOptions(
    program
      .command('cut')
      .description('remove a measured direction (or the subspace of several) from the weights and write the model')
      .argument('<model-dir>')
      .requiredOption('--direction <file>', 'directions file from abliterate measure or run')
      .option('--layer <n>', "use this point's direction instead of the file's chosen one", parseInteger('--layer', 0))
      .option('--points <list>', "cut the subspace spanned by these points' directions (e.g. 3,4,5; orthonormalised in that order)", parsePoints)
      .option('--alpha <a>', 'cut strength', parseNumber('--alpha', -100, 100), 1)
      .option('--layers <which>', 'layers to cut: all, FROM-TO, 1,4,9, above_median, top_k:N', 'all')
      .option('--kernel <shape>', 'per-layer strength: constant or tent:PEAK,WIDTH[,MIN[,MAX]]', 'constant')
      .option('--preserve-norm', 'keep each cut row at its original norm')
      .option('--no-embedding', 'leave the embedding alone')
      .requiredOption('--out <dir>', 'new folder for the cut model')
      .option('--force', 'replace --out if it exists')
      .option('--json', 'print a JSON summary'),
  ).action(async (dir: string, options: { direction: string; layer?: number; points?: number[]; alpha: number; layers: string; kernel: string; preserveNorm?: boolean; embedding: boolean; out: string; force?: boolean; json?: boolean; adapter?: 'auto' }) => {
    if (options.points && options.layer !== undefined) throw new UsageError('give --layer or --points, not both');
    const directions = await openDirections(options.direction);
    const outside = options.points?.find((p) => p >= directions.directions.length);
    if (outside !== undefined) throw new UsageError(`--points: point ${outside} is outside the file's points 0..${directions.directions.length - 1}`);
    const chosen = (options.points ?? [options.layer]).map((point) => pointOf(directions, point, options.direction));
    const basis = chosen.map((c) => c.direction);
    // What was cut: a point's direction, or (--points) the subspace of several.
    const source = options.points ? { points: options.points, rank: options.points.length } : { layer: chosen[0]!.layer };
    const settings = settingsFrom({ layers: options.layers, kernel: options.kernel });
    // The summary is printed once the output is in place under its final name.
    const summary = await withOutputFolder(options.out, resolve(dir), options.force ?? false, (out) => withModel(dir, options, async (model) => {
      fitDirections(directions, options.direction, model.config);
      const scores = directions.scores.slice(1).map((s) => s.effectSize);
      const weights = layerWeights(model.config.numLayers, settings.layers, settings.kernel, scores.length === model.config.numLayers ? scores : undefined);
      const start = performance.now();
      await applyCut(model, { basis, orthonormalize: options.points !== undefined, alpha: options.alpha, layerWeights: weights, preserveRowNorm: options.preserveNorm ?? false, embedding: options.embedding, undo: 'none' });
      const cutSeconds = (performance.now() - start) / 1000;
      const parameters = { ...source, alpha: options.alpha, layer_weights: weights, embedding: options.embedding, preserve_row_norm: options.preserveNorm ?? false, source_model: dir };
      const exportStart = performance.now();
      const files = await bar('export', (update) => exportModel(model, out, { parameters, onProgress: update }));
      noteSkippedFiles(files);
      return { ...source, output: out.path, tensors: [...model.modifiedTensors], cut_s: cutSeconds, export_s: (performance.now() - exportStart) / 1000, skipped_files: files.skipped };
    }));
    if (options.json) printJson(summary);
    else {
      const what = options.points ? `the subspace of the directions of points ${options.points.join(', ')} (rank ${options.points.length})` : `the direction of point ${summary.layer}`;
      process.stdout.write(`cut ${summary.tensors.length} tensors with ${what} in ${summary.cut_s.toFixed(2)} s; written to ${summary.output}\n`);
    }
  });
}

/** A comma-separated list of distinct point indices. */
function parsePoints(value: string): number[] {
  const points = value.split(',').map((part) => part.trim());
  if (points.some((p) => !/^\d+$/.test(p))) throw new UsageError(`--points must be point indices separated by commas (e.g. 3,4,5), got "${value}"`);
  const numbers = points.map(Number);
  if (new Set(numbers).size !== numbers.length) throw new UsageError(`--points lists a point twice: "${value}"`);
  return numbers;
}
