import { basename, dirname, resolve } from 'node:path';
import { readDirections, type Directions } from '../abliterate/directionsFile.ts';
import { FileMissingError } from '../io/byteSource.ts';
import { NodeFolder } from '../io/nodeFolder.ts';
import { UsageError } from './common.ts';

export async function openDirections(file: string): Promise<Directions> {
  const path = resolve(file);
  const source = await new NodeFolder(dirname(path)).open(basename(path)).catch((error: unknown) => {
    throw error instanceof FileMissingError ? new UsageError(`the directions file ${file} does not exist`) : error;
  });
  // Messages name the file as the user gave it.
  return readDirections({ name: file, size: source.size, read: (offset, length) => source.read(offset, length) });
}

export function pointOf(directions: Directions, layer: number | undefined): { layer: number; direction: Float32Array } {
  if (layer === undefined) return { layer: directions.layer, direction: directions.direction };
  const direction = directions.directions[layer];
  if (!direction) throw new UsageError(`--layer ${layer} is outside the file's points 0..${directions.directions.length - 1}`);
  return { layer, direction };
}
