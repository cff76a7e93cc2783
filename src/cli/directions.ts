import { basename, dirname, resolve } from 'node:path';
import { type CutTarget, directionProblem, type Directions, FileMissingError, type ModelConfig, NodeFolder, NotRegularFileError, projectedDirection, readDirections, storedTargets } from '../index.ts';
import { UsageError } from './common.ts';

export async function openDirections(file: string): Promise<Directions> {
  const path = resolve(file);
  const source = await new NodeFolder(dirname(path)).open(basename(path)).catch((error: unknown) => {
    if (error instanceof FileMissingError) throw new UsageError(`the directions file ${file} does not exist`);
    if (error instanceof NotRegularFileError) throw new UsageError(`the directions file ${file} is ${error.kind}, not a regular file`);
    throw error;
  });
  // Messages name the file as the user gave it.
  return readDirections({ name: file, size: source.size, read: (offset, length) => source.read(offset, length) });
}

/** The file's chosen point and its direction, or the point given with --point. */
export function pointOf(directions: Directions, point: number | undefined, file: string): { point: number; direction: Float32Array } {
  if (point === undefined) return { point: directions.point, direction: directions.direction };
  const direction = directions.directions[point];
  if (!direction) throw new UsageError(`--point ${point} is outside the file's points 0..${directions.directions.length - 1}`);
  const problem = directionProblem(direction, undefined);
  if (problem) throw new UsageError(`${file}: the direction of point ${point} is unusable: ${problem}; choose another --point`);
  return { point, direction };
}

/** The top `k` vectors of a point's stored subspace (`measure --mode subspace`), for `--top-k`. */
export function storedSubspace(directions: Directions, point: number, k: number, file: string): Float32Array[] {
  const subspace = directions.subspaces?.[point];
  if (!subspace) throw new UsageError(`${file} holds no subspace; measure it with --mode subspace to use --top-k`);
  if (k < 1 || k > subspace.basis.length) throw new UsageError(`--top-k must be in 1..${subspace.basis.length} (the vectors stored for point ${point}), got ${k}`);
  return subspace.basis.slice(0, k);
}

/**
 * The directions `cut --target` (and `--projected`) removes: for each target (the refusal-execution
 * direction, the harm-detection one, or both, in that order; without a target the file's own), its
 * direction at each of `points` (default: the target's chosen point), made orthogonal to the
 * point's harmless mean with `projected`. `point` is the first point used.
 */
export function targetDirections(directions: Directions, file: string, target: CutTarget | undefined, points: readonly number[] | undefined, projected: boolean): { point: number; basis: Float32Array[] } {
  const stored = storedTargets(directions);
  const sets = target === undefined ? [stored.red ?? stored.hdd!] : target === 'both' ? [stored.red, stored.hdd] : [stored[target]];
  if (!sets[0] && (target === 'red' || target === 'both')) throw new UsageError(`${file} holds no refusal-execution direction (it was measured at the instruction-final token); measure with --position last or both`);
  if (sets.some((s) => !s)) throw new UsageError(`${file} holds no harm-detection direction; measure with --position both (or instruction) to cut --target ${target}`);
  const basis: Float32Array[] = [];
  for (const [index, set] of sets.entries()) {
    const name = target === undefined ? 'direction' : (target === 'both' ? ['refusal-execution', 'harm-detection'][index] : target === 'red' ? 'refusal-execution' : 'harm-detection') + ' direction';
    for (const point of points ?? [set!.point]) {
      const direction = set!.directions[point];
      if (!direction) throw new UsageError(`point ${point} is outside the file's points 0..${set!.directions.length - 1}`);
      const problem = directionProblem(direction, undefined);
      if (problem) throw new UsageError(`${file}: the ${name} of point ${point} is unusable: ${problem}; choose another point`);
      if (!projected) {
        basis.push(direction);
        continue;
      }
      const mean = set!.harmlessMeans?.[point];
      if (!mean) throw new UsageError(`${file} holds no harmless means for the ${name}, so it cannot be projected; measure again`);
      try {
        basis.push(projectedDirection(direction, mean));
      } catch (error) {
        throw new UsageError(`${file}: point ${point}: ${(error as Error).message}`);
      }
    }
  }
  return { point: points?.[0] ?? sets[0]!.point, basis };
}

/** Checks that the file's directions were measured on a model of this shape: its hidden size, one point per layer and the embedding. */
export function fitDirections(directions: Directions, file: string, config: ModelConfig): void {
  const { hiddenSize, numLayers } = config;
  const size = directions.directions[0]?.length ?? 0;
  if (size !== hiddenSize) throw new UsageError(`${file}: the directions have ${size} values, but the model's hidden size is ${hiddenSize}`);
  const points = directions.directions.length;
  if (points !== numLayers + 1) throw new UsageError(`${file}: the directions were measured at ${points} points, but this model has ${numLayers} layers (${numLayers + 1} points)`);
}
