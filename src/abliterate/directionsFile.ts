import type { ByteSource } from '../io/byteSource.ts';
import { decodeToFloat32 } from '../io/dtype.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { writeSafetensors, type ByteSink, type TensorToWrite } from '../io/safetensorsWriter.ts';
import type { DirectionHygiene, Measurement, PointScore, PointSubspace, TokenPosition } from './measure.ts';
import { selectPoint } from './select.ts';

/** The `format` of a directions file's `__metadata__`. */
export const DIRECTIONS_FORMAT = 'abliterate-directions';
/**
 * The newest directions file version, read and written. 1: no `version` key, the chosen point
 * under `layer` and in each score; 2: `version`, the chosen point under `point` and in each score;
 * 3: version 2 plus, from `measure --mode subspace`, the tensor `subspace` [points, K, hidden] (each
 * point's top-K singular vectors) and their spectra in the metadata `subspace`; 4: version 3 plus
 * the token position the directions were read at (`position`: last or instruction) and, from
 * `measure --position both`, the harm-detection directions read at the instruction-final token
 * (tensors `hdd_directions`, `hdd_harmful_means`, `hdd_harmless_means`, metadata `hdd_point` and
 * `hdd_scores`). Each file is written in the oldest version that holds it, so that older readers
 * read what they can: version 2 without a subspace, 3 with one, 4 only for an instruction position.
 */
export const DIRECTIONS_VERSION = 4;
/** The version of a file without a subspace. */
const MEAN_ONLY_VERSION = 2;
const SUBSPACE_VERSION = 3;

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
  /** Where the directions were read: the last token (every file before version 4) or the instruction-final token. */
  position: TokenPosition;
  /** Each point's harmless mean (at `position`), when the file has them (for the projected direction). */
  harmlessMeans?: Float32Array[];
  /** Version 4 files from `measure --position both`: the harm-detection directions (instruction-final token). */
  harmDetection?: StoredDirectionSet;
  /** Tokens from the end of each prompt to its instruction-final token, when measured there. */
  instructionOffset?: number;
  /** The hygiene the directions were measured with, when any. */
  hygiene?: DirectionHygiene;
}

/** A second set of directions in a file: every point's direction, the chosen point and its direction, the scores. */
export interface StoredDirectionSet {
  point: number;
  direction: Float32Array;
  directions: Float32Array[];
  scores: PointScore[];
  harmlessMeans?: Float32Array[];
}

export class DirectionsFileError extends Error {
  override name = 'DirectionsFileError';
}

/**
 * Writes the measured directions, the class means and the chosen point as safetensors; with
 * harm-detection directions, their chosen point too (default: the best by effect size in the default window).
 */
export async function writeDirections(sink: ByteSink, measurement: Measurement, point: number, extra: Record<string, string> = {}, options: { harmDetectionPoint?: number } = {}): Promise<void> {
  const H = measurement.hiddenSize;
  const subspaces = measurement.subspaces;
  const hdd = measurement.harmDetection;
  const hddPoint = hdd ? (options.harmDetectionPoint ?? selectPoint({ points: measurement.points, scores: hdd.scores }).point) : undefined;
  if (hdd && !(Number.isInteger(hddPoint) && hddPoint! >= 0 && hddPoint! < measurement.points)) throw new RangeError(`the harm-detection point ${hddPoint} is outside 0..${measurement.points - 1}`);
  const position = measurement.position ?? 'last';
  const version = hdd || position !== 'last' ? DIRECTIONS_VERSION : subspaces ? SUBSPACE_VERSION : MEAN_ONLY_VERSION;
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
      ...(hdd ? [tensor('hdd_directions', hdd.directions), tensor('hdd_harmful_means', hdd.harmfulMeans), tensor('hdd_harmless_means', hdd.harmlessMeans)] : []),
    ],
    {
      ...extra,
      format: DIRECTIONS_FORMAT,
      version: String(version),
      point: String(point),
      scores: JSON.stringify(measurement.scores),
      ...(subspaces && { subspace: JSON.stringify(subspaces.map(({ basis: _, ...spectrum }) => spectrum)) }),
      ...(version >= 4 && { position }),
      ...(hdd && { hdd_point: String(hddPoint), hdd_scores: JSON.stringify(hdd.scores) }),
      ...(measurement.instructionOffset !== undefined && { instruction_offset: String(measurement.instructionOffset) }),
      ...(measurement.hygiene && { hygiene: JSON.stringify(measurement.hygiene) }),
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
  const position = version >= 4 ? metadata.position : 'last';
  if (position !== 'last' && position !== 'instruction') throw fail('metadata "position" is neither "last" nor "instruction"');
  const harmlessMeans = await readMeans(file, 'harmless_means', points, hidden);
  const harmDetection = version >= 4 && file.has('hdd_directions') ? await readHarmDetection(file, points, hidden, fail) : undefined;
  const instructionOffset = metadata.instruction_offset === undefined ? undefined : Number(metadata.instruction_offset);
  if (instructionOffset !== undefined && !(Number.isInteger(instructionOffset) && instructionOffset >= 1)) throw fail('metadata "instruction_offset" is not a positive integer');
  let hygiene: DirectionHygiene | undefined;
  try {
    hygiene = metadata.hygiene === undefined ? undefined : (JSON.parse(metadata.hygiene) as DirectionHygiene);
  } catch {
    throw fail('metadata "hygiene" is not JSON');
  }
  return {
    version,
    point,
    direction: directions[point]!,
    directions,
    scores,
    position,
    ...(subspaces && { subspaces }),
    ...(harmlessMeans && { harmlessMeans }),
    ...(harmDetection && { harmDetection }),
    ...(instructionOffset !== undefined && { instructionOffset }),
    ...(hygiene && { hygiene }),
  };
}

/** A [points, hidden] matrix of means, when the file has it with that shape and finite values. */
async function readMeans(file: SafetensorsFile, name: string, points: number, hidden: number): Promise<Float32Array[] | undefined> {
  if (!file.has(name)) return undefined;
  const info = file.tensor(name);
  if (info.shape.length !== 2 || info.shape[0] !== points || info.shape[1] !== hidden) return undefined;
  const all = decodeToFloat32(await file.read(name), info.dtype);
  if (!all.every(Number.isFinite)) return undefined;
  return Array.from({ length: points }, (_, p) => all.slice(p * hidden, (p + 1) * hidden));
}

/** The harm-detection directions of a version 4 file, checked as the main ones are. */
async function readHarmDetection(file: SafetensorsFile, points: number, hidden: number, fail: (why: string) => Error): Promise<StoredDirectionSet> {
  const info = file.tensor('hdd_directions');
  if (info.shape.length !== 2 || info.shape[0] !== points || info.shape[1] !== hidden) throw fail(`"hdd_directions" is not a [${points}, ${hidden}] matrix`);
  const all = decodeToFloat32(await file.read('hdd_directions'), info.dtype);
  const directions = Array.from({ length: points }, (_, p) => all.slice(p * hidden, (p + 1) * hidden));
  const point = Number(file.metadata.hdd_point);
  if (!Number.isInteger(point) || point < 0 || point >= points) throw fail(`metadata "hdd_point" is not a point index in 0..${points - 1}`);
  let stored: unknown;
  try {
    stored = JSON.parse(file.metadata.hdd_scores ?? '[]');
  } catch {
    throw fail('metadata "hdd_scores" is not JSON');
  }
  const problem = directionsProblem(directions, point, stored);
  if (problem) throw fail(`harm detection: ${problem}`);
  const scores = (stored as PointScore[]).map(({ point, gap, relativeGap, cosine, effectSize }) => ({ point, gap, relativeGap, cosine, effectSize }));
  const harmlessMeans = await readMeans(file, 'hdd_harmless_means', points, hidden);
  return { point, direction: directions[point]!, directions, scores, ...(harmlessMeans && { harmlessMeans }) };
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
