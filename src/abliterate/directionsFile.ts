import type { ByteSource } from '../io/byteSource.ts';
import { decodeToFloat32 } from '../io/dtype.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { writeSafetensors, type ByteSink, type TensorToWrite } from '../io/safetensorsWriter.ts';
import type { Measurement, PointScore, PointSubspace } from './measure.ts';

/** The `format` of a directions file's `__metadata__`. */
export const DIRECTIONS_FORMAT = 'abliterate-directions';
/**
 * The newest directions file version, read and written. 1: no `version` key, the chosen point
 * under `layer` and in each score; 2: `version`, the chosen point under `point` and in each score;
 * 3: version 2 plus, from `measure --mode subspace`, the tensor `subspace` [points, K, hidden] (each
 * point's top-K singular vectors) and their spectra in the metadata `subspace`. A file without a
 * subspace is written as version 2, so that readers of version 2 read it.
 */
export const DIRECTIONS_VERSION = 3;
/** The version of a file without a subspace. */
const MEAN_ONLY_VERSION = 2;

/** What a directions file holds: every point's direction, the chosen point, and the scores. */
export interface Directions {
  /** The format version the file was written in (1 for files from before versions). */
  version: number;
  /** The chosen residual point (0: the embedding, i: the output of decoder layer i − 1). */
  point: number;
  /** The chosen point's direction. */
  direction: Float32Array;
  /** One unit direction per point. */
  directions: Float32Array[];
  scores: PointScore[];
  /** Version 3 files from `measure --mode subspace`: each point's top-K subspace and its spectrum. */
  subspaces?: PointSubspace[];
}

export class DirectionsFileError extends Error {
  override name = 'DirectionsFileError';
}

/** Writes the measured directions, the class means and the chosen point as safetensors. */
export async function writeDirections(sink: ByteSink, measurement: Measurement, point: number, extra: Record<string, string> = {}): Promise<void> {
  const H = measurement.hiddenSize;
  const subspaces = measurement.subspaces;
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
      tensor('direction', [measurement.directions[point]!], true),
      tensor('directions', measurement.directions),
      tensor('harmful_means', measurement.harmfulMeans),
      tensor('harmless_means', measurement.harmlessMeans),
      ...(subspaces ? [{ ...tensor('subspace', subspaces.flatMap((s) => s.basis)), shape: [subspaces.length, subspaces[0]!.basis.length, H] }] : []),
    ],
    {
      ...extra,
      format: DIRECTIONS_FORMAT,
      version: String(subspaces ? DIRECTIONS_VERSION : MEAN_ONLY_VERSION),
      point: String(point),
      scores: JSON.stringify(measurement.scores),
      ...(subspaces && { subspace: JSON.stringify(subspaces.map(({ basis: _, ...spectrum }) => spectrum)) }),
    },
  );
}

/** Reads a directions file written by `writeDirections` (`abliterate measure`, `run`), of this version or an older one. */
export async function readDirections(source: ByteSource): Promise<Directions> {
  const file = await SafetensorsFile.open(source);
  const fail = (why: string) => new DirectionsFileError(`${source.name}: ${why} (expected a directions file written by abliterate measure or run)`);
  if (!file.has('directions')) throw fail('no "directions" tensor');
  const { metadata } = file;
  if (metadata.format !== undefined && metadata.format !== DIRECTIONS_FORMAT) throw fail(`its metadata "format" is "${metadata.format}", not "${DIRECTIONS_FORMAT}"`);
  const version = metadata.version === undefined ? 1 : Number(metadata.version);
  if (!Number.isInteger(version) || version < 1) throw fail(`metadata "version" is not a format version`);
  if (version > DIRECTIONS_VERSION) {
    throw new DirectionsFileError(`${source.name}: written by a newer abliterate (directions format ${version}); this version reads formats up to ${DIRECTIONS_VERSION}: update abliterate`);
  }
  const info = file.tensor('directions');
  if (info.shape.length !== 2) throw fail('"directions" is not a matrix');
  const [points, hidden] = info.shape as [number, number];
  const all = decodeToFloat32(await file.read('directions'), info.dtype);
  const directions = Array.from({ length: points }, (_, p) => all.slice(p * hidden, (p + 1) * hidden));
  // Version 1 named the point "layer".
  const pointKey = version === 1 ? 'layer' : 'point';
  const point = Number(metadata[pointKey]);
  if (!Number.isInteger(point) || point < 0 || point >= points) throw fail(`metadata "${pointKey}" is not a point index in 0..${points - 1}`);
  let stored: unknown;
  try {
    stored = metadata.scores ? JSON.parse(metadata.scores) : [];
  } catch {
    throw fail('metadata "scores" is not JSON');
  }
  const problem = directionsProblem(directions, point, stored);
  if (problem) throw fail(problem);
  const scores = (stored as Record<string, unknown>[]).map((s): PointScore => {
    const { [pointKey]: at, gap, relativeGap, cosine, effectSize } = s;
    return { point: at, gap, relativeGap, cosine, effectSize } as PointScore;
  });
  const subspaces = version >= 3 && file.has('subspace') ? await readSubspaces(file, points, hidden, fail) : undefined;
  return { version, point, direction: directions[point]!, directions, scores, ...(subspaces && { subspaces }) };
}

/** The `subspace` tensor and its spectra: every vector finite and unit, mutually orthogonal within a point; every figure finite. */
async function readSubspaces(file: SafetensorsFile, points: number, hidden: number, fail: (why: string) => Error): Promise<PointSubspace[]> {
  const info = file.tensor('subspace');
  if (info.shape.length !== 3 || info.shape[0] !== points || info.shape[2] !== hidden || info.shape[1]! < 1) throw fail(`"subspace" is not a [${points}, K, ${hidden}] tensor`);
  const k = info.shape[1]!;
  const all = decodeToFloat32(await file.read('subspace'), info.dtype);
  let spectra: unknown;
  try {
    spectra = JSON.parse(file.metadata.subspace ?? '');
  } catch {
    throw fail('metadata "subspace" is not JSON');
  }
  if (!Array.isArray(spectra) || spectra.length !== points) throw fail(`metadata "subspace" is not a list of ${points} spectra`);
  return spectra.map((spectrum: Omit<PointSubspace, 'basis'>, p) => {
    const problem = spectrumProblem(spectrum, p, k);
    if (problem) throw fail(`the spectrum of point ${p} ${problem}`);
    const basis = Array.from({ length: k }, (_, j) => all.slice((p * k + j) * hidden, (p * k + j + 1) * hidden));
    for (const [j, v] of basis.entries()) {
      const problem = directionProblem(v, hidden);
      if (problem) throw fail(`subspace vector ${j} of point ${p} is unusable: ${problem}`);
      for (let i = 0; i < j; i++) {
        let d = 0;
        for (let x = 0; x < hidden; x++) d += v[x]! * basis[i]![x]!;
        if (Math.abs(d) > UNIT_NORM_TOLERANCE) throw fail(`subspace vectors ${i} and ${j} of point ${p} are not orthogonal (cosine ${d.toPrecision(3)})`);
      }
    }
    const { point, pairs, singularValues, explainedVariance, effectiveRank, silhouette } = spectrum;
    return { point, pairs, singularValues, explainedVariance, effectiveRank, silhouette, basis };
  });
}

/** What is wrong with a stored spectrum, if anything: it names its point and holds K finite values of each kind. */
function spectrumProblem(spectrum: unknown, point: number, k: number): string | undefined {
  if (typeof spectrum !== 'object' || spectrum === null) return 'is not an object';
  const s = spectrum as Record<string, unknown>;
  if (s.point !== point) return `names point ${String(s.point)}`;
  const finite = (x: unknown) => typeof x === 'number' && Number.isFinite(x);
  for (const key of ['pairs', 'effectiveRank', 'silhouette']) if (!finite(s[key])) return `has no finite "${key}"`;
  for (const key of ['singularValues', 'explainedVariance']) {
    const list = s[key];
    if (!Array.isArray(list) || list.length !== k || !list.every(finite)) return `has no list of ${k} finite "${key}"`;
  }
  return undefined;
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
function directionsProblem(directions: Float32Array[], point: number, scores: unknown): string | undefined {
  for (const [p, d] of directions.entries()) {
    const problem = directionProblem(d, undefined, { allowZero: p !== point });
    if (problem) return `the direction of point ${p}${p === point ? ' (the chosen one)' : ''} is unusable: ${problem}`;
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
