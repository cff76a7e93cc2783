import type { ByteSource } from '../io/byteSource.ts';
import { decodeToFloat32 } from '../io/dtype.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { writeSafetensors, type ByteSink, type TensorToWrite } from '../io/safetensorsWriter.ts';
import type { LayerScore, Measurement } from './measure.ts';

/** What a directions file holds: every point's direction, the chosen point, and the scores. */
export interface Directions {
  layer: number;
  direction: Float32Array;
  directions: Float32Array[];
  scores: LayerScore[];
}

export class DirectionsFileError extends Error {
  override name = 'DirectionsFileError';
}

/** Writes the measured directions, the class means and the chosen point as safetensors. */
export async function writeDirections(sink: ByteSink, measurement: Measurement, layer: number, extra: Record<string, string> = {}): Promise<void> {
  const H = measurement.hiddenSize;
  const tensor = (name: string, rows: readonly Float32Array[], vector = false): TensorToWrite => ({
    name,
    dtype: 'F32',
    shape: vector ? [H] : [rows.length, H],
    bytes: async () => {
      const data = new Float32Array(rows.length * H);
      rows.forEach((r, i) => data.set(r, i * H));
      return new Uint8Array(data.buffer);
    },
  });
  await writeSafetensors(
    sink,
    [
      tensor('direction', [measurement.directions[layer]!], true),
      tensor('directions', measurement.directions),
      tensor('harmful_means', measurement.harmfulMeans),
      tensor('harmless_means', measurement.harmlessMeans),
    ],
    { format: 'abliterate-directions', layer: String(layer), scores: JSON.stringify(measurement.scores), ...extra },
  );
}

/** Reads a directions file written by `writeDirections` (`abliterate measure`, `run`). */
export async function readDirections(source: ByteSource): Promise<Directions> {
  const file = await SafetensorsFile.open(source);
  const fail = (why: string) => new DirectionsFileError(`${source.name}: ${why} (expected a directions file written by abliterate measure or run)`);
  if (!file.has('directions')) throw fail('no "directions" tensor');
  const info = file.tensor('directions');
  if (info.shape.length !== 2) throw fail('"directions" is not a matrix');
  const [points, hidden] = info.shape as [number, number];
  const all = decodeToFloat32(await file.read('directions'), info.dtype);
  const directions = Array.from({ length: points }, (_, p) => all.slice(p * hidden, (p + 1) * hidden));
  const layer = Number(file.metadata.layer);
  if (!Number.isInteger(layer) || layer < 0 || layer >= points) throw fail(`metadata "layer" is not a point index in 0..${points - 1}`);
  let scores: LayerScore[] = [];
  try {
    scores = file.metadata.scores ? (JSON.parse(file.metadata.scores) as LayerScore[]) : [];
  } catch {
    throw fail('metadata "scores" is not JSON');
  }
  const problem = directionsProblem(directions, layer, scores);
  if (problem) throw fail(problem);
  return { layer, direction: directions[layer]!, directions, scores };
}

/**
 * How far a stored direction's norm may be from 1 (a directions file holds unit vectors; 1 % admits
 * unit vectors stored in bf16 or f16). Within it, directions are renormalised in place so that a
 * cut removes exactly the projection; beyond it (huge or tiny values) the file is refused.
 */
export const UNIT_NORM_TOLERANCE = 0.01;

/**
 * What is wrong with a direction that is to be used (cut, steering, probing), or undefined: it must
 * have `hiddenSize` finite values and unit norm within `UNIT_NORM_TOLERANCE` (or be zero, with
 * `allowZero`: the points where a measurement found no difference).
 */
export function directionProblem(direction: Float32Array, hiddenSize: number | undefined, options: { allowZero?: boolean } = {}): string | undefined {
  if (hiddenSize !== undefined && direction.length !== hiddenSize) return `it has ${direction.length} values, but the model's hidden size is ${hiddenSize}`;
  let sumSquares = 0;
  for (const [i, v] of direction.entries()) {
    if (!Number.isFinite(v)) return `value ${i} is ${v}`;
    sumSquares += v * v;
  }
  const norm = Math.sqrt(sumSquares);
  if (norm === 0) return options.allowZero ? undefined : 'it is zero (the measurement found no difference at this point)';
  if (Math.abs(norm - 1) > UNIT_NORM_TOLERANCE) return `its norm is ${norm.toPrecision(4)}, not 1`;
  return undefined;
}

/** Checks a direction given to the library; throws a RangeError naming `what` (e.g. "the cut direction"). */
export function checkDirection(direction: Float32Array, hiddenSize: number, what: string, options: { allowZero?: boolean } = {}): void {
  const problem = directionProblem(direction, hiddenSize, options);
  if (problem) throw new RangeError(`${what} is not a unit vector of the model's hidden size: ${problem}`);
}

/** The first problem of a file's directions and scores: every point finite and unit (or zero), the chosen one not zero. */
function directionsProblem(directions: Float32Array[], layer: number, scores: unknown): string | undefined {
  for (const [p, d] of directions.entries()) {
    const problem = directionProblem(d, undefined, { allowZero: p !== layer });
    if (problem) return `the direction of point ${p}${p === layer ? ' (the chosen one)' : ''} is unusable: ${problem}`;
  }
  for (const d of directions) {
    const norm = Math.sqrt(d.reduce((sum, v) => sum + v * v, 0));
    if (norm > 0) for (let i = 0; i < d.length; i++) d[i] = d[i]! / norm;
  }
  // Numbers in scores are finite (JSON writes the NaN scores of zero directions as null).
  const isScore = (s: unknown) => typeof s === 'object' && s !== null && !Array.isArray(s) && Object.values(s).every((v) => typeof v !== 'number' || Number.isFinite(v));
  if (!Array.isArray(scores) || (scores.length !== 0 && scores.length !== directions.length) || !scores.every(isScore)) {
    return `metadata "scores" is not a list of ${directions.length} per-point scores`;
  }
  return undefined;
}
