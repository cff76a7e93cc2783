/**
 * Harm detection versus refusal execution (DBDI): the harm-detection direction (HDD), read at the
 * instruction-final token, and the refusal-execution direction (RED), read at the last token. How
 * far apart they are at every point, and the basis a cut of either or both removes.
 */
import type { Directions } from './directionsFile.ts';
import { cosine } from './stats.ts';
import { grassmannDistance, principalAngles } from './subspace.ts';

/** What a cut removes: the refusal-execution direction, the harm-detection direction, or the plane of both. */
export type CutTarget = 'red' | 'hdd' | 'both';
export const CUT_TARGETS: readonly CutTarget[] = ['red', 'hdd', 'both'];

/** HDD against RED at one point. */
export interface DirectionComparison {
  point: number;
  /** Cosine of the two unit directions (signed: both point from harmless to harmful). */
  cosine: number;
  /** Grassmann distance of the two lines: their principal angle in radians, in [0, π/2] (0: the same line). */
  grassmann: number;
}

/** Cosine and Grassmann distance of the two directions at every point; points where either is zero are left out. */
export function compareDirections(red: readonly Float32Array[], hdd: readonly Float32Array[]): DirectionComparison[] {
  if (red.length !== hdd.length) throw new RangeError(`the two sets of directions cover ${red.length} and ${hdd.length} points`);
  const zero = (v: Float32Array) => v.every((x) => x === 0);
  return red.flatMap((r, point) => {
    const h = hdd[point]!;
    if (zero(r) || zero(h)) return [];
    return [{ point, cosine: cosine(r, h), grassmann: grassmannDistance(principalAngles([r], [h])) }];
  });
}

/** The refusal-execution and harm-detection directions of a directions file (RED: last token; HDD: instruction-final token), each where the file has it. */
export function storedTargets(directions: Directions): { red?: { point: number; directions: Float32Array[]; harmlessMeans?: Float32Array[] }; hdd?: { point: number; directions: Float32Array[]; harmlessMeans?: Float32Array[] } } {
  const main = { point: directions.point, directions: directions.directions, ...(directions.harmlessMeans && { harmlessMeans: directions.harmlessMeans }) };
  if (directions.position === 'instruction') return { hdd: main };
  return { red: main, ...(directions.harmDetection && { hdd: directions.harmDetection }) };
}
