import type { Measurement } from '../measure.ts';
import type { Parameter, ParameterValue, Params } from './tpe.ts';

/**
 * The cut's parameters that the search explores, after Heretic's: where the direction comes from, a
 * linear fall-off strength profile over the layers for each of the two components that write into
 * the residual stream, and three switches.
 */
export interface CutParameters {
  /** One direction for every layer, or each layer the direction measured at its own output. */
  scope: 'global' | 'per_layer';
  /** A point of the residual stream (0 embedding, i the output of layer i − 1), fractional: adjacent directions interpolated. */
  direction_index: number;
  /** Attention output (`o_proj`) strength profile. */
  attn_max_weight: number;
  attn_peak: number;
  attn_min_fraction: number;
  attn_falloff: number;
  /** MLP output (`down_proj`) strength profile; a max weight ≤ 0 leaves the MLPs alone. */
  mlp_max_weight: number;
  mlp_peak: number;
  mlp_min_fraction: number;
  mlp_falloff: number;
  /** Cut the part of the direction orthogonal to the harmless mean ("projected abliteration"). */
  projected: boolean;
  /** Keep each changed row at its original norm. */
  preserve_norm: boolean;
  /** Also orthogonalise the token embedding. */
  embedding: boolean;
}

export const PARAMETER_NAMES = [
  'scope',
  'direction_index',
  'attn_max_weight',
  'attn_peak',
  'attn_min_fraction',
  'attn_falloff',
  'mlp_max_weight',
  'mlp_peak',
  'mlp_min_fraction',
  'mlp_falloff',
  'projected',
  'preserve_norm',
  'embedding',
] as const satisfies readonly (keyof CutParameters)[];

export type ParameterName = (typeof PARAMETER_NAMES)[number];

export interface SpaceOptions {
  /** Fractions of the depth (of points 1..L) the direction index ranges over. Default [0.2, 0.9]. */
  directionWindow?: readonly [number, number];
  /** Parameters held at a value instead of searched. */
  pinned?: Partial<CutParameters>;
}

export const DEFAULT_DIRECTION_WINDOW: readonly [number, number] = [0.2, 0.9];

/**
 * The search space for a model of `numLayers` decoder layers. Ranges are Heretic's, widened where a
 * shallow model needs it: a peak anywhere in the upper 70 % of the layers, a fall-off up to the whole
 * depth, and a max weight down to −0.25 for the MLP so that a quarter of its range switches it off.
 */
export function searchSpace(numLayers: number, options: SpaceOptions = {}): Parameter[] {
  const last = numLayers - 1;
  const [from, to] = options.directionWindow ?? DEFAULT_DIRECTION_WINDOW;
  if (!(from >= 0 && to <= 1 && from <= to)) throw new RangeError(`the direction window must be 0 ≤ from ≤ to ≤ 1; got ${from}, ${to}`);
  // Points 1..L; point 0 (the embedding) has no refusal direction: every prompt ends in the same token.
  const low = 1 + from * (numLayers - 1);
  const high = 1 + to * (numLayers - 1);
  const float = (name: ParameterName, lo: number, hi: number): Parameter => ({ kind: 'float', name, low: lo, high: hi });
  const space: Parameter[] = [
    { kind: 'categorical', name: 'scope', choices: ['global', 'per_layer'] },
    float('direction_index', low, high),
    float('attn_max_weight', 0.8, 1.5),
    float('attn_peak', 0.3 * last, last),
    float('attn_min_fraction', 0, 1),
    float('attn_falloff', 1, Math.max(1, last)),
    float('mlp_max_weight', -0.25, 1.5),
    float('mlp_peak', 0.3 * last, last),
    float('mlp_min_fraction', 0, 1),
    float('mlp_falloff', 1, Math.max(1, last)),
    { kind: 'categorical', name: 'projected', choices: [true, false] },
    { kind: 'categorical', name: 'preserve_norm', choices: [true, false] },
    { kind: 'categorical', name: 'embedding', choices: [true, false] },
  ];
  const pinned = options.pinned ?? {};
  return space.filter((p) => !(p.name in pinned));
}

/** The full parameters of a trial: the sampled ones with the pinned ones on top. */
export function cutParameters(sampled: Params, pinned: Partial<CutParameters> = {}): CutParameters {
  const all = { ...sampled, ...pinned } as Record<string, ParameterValue>;
  for (const name of PARAMETER_NAMES) if (!(name in all)) throw new RangeError(`the cut parameter ${name} is neither searched nor pinned`);
  return all as unknown as CutParameters;
}

/** Parses "name=value": numbers, booleans and the scope; a clear error for anything else. */
export function parsePin(text: string): Partial<CutParameters> {
  const match = /^([a-z_]+)=(.+)$/.exec(text.trim());
  if (!match) throw new RangeError(`a pin is NAME=VALUE (e.g. projected=false); got "${text}"`);
  const [, name, value] = match as unknown as [string, string, string];
  if (!(PARAMETER_NAMES as readonly string[]).includes(name)) throw new RangeError(`unknown cut parameter "${name}"; the parameters are ${PARAMETER_NAMES.join(', ')}`);
  if (name === 'scope') {
    if (value !== 'global' && value !== 'per_layer') throw new RangeError(`scope must be global or per_layer; got "${value}"`);
    return { scope: value };
  }
  if (name === 'projected' || name === 'preserve_norm' || name === 'embedding') {
    if (value !== 'true' && value !== 'false') throw new RangeError(`${name} must be true or false; got "${value}"`);
    return { [name]: value === 'true' };
  }
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new RangeError(`${name} must be a finite number; got "${value}"`);
  return { [name]: n };
}

/**
 * Heretic's linear fall-off: `max` at `peak`, falling linearly to `min_fraction · max` at distance
 * `falloff`; layers farther than that are left alone. A max weight ≤ 0 switches the component off.
 */
export function componentWeights(numLayers: number, max: number, peak: number, minFraction: number, falloff: number): number[] {
  if (!(max > 0)) return new Array<number>(numLayers).fill(0);
  const min = minFraction * max;
  return Array.from({ length: numLayers }, (_, l) => {
    const distance = Math.abs(l - peak);
    if (distance > falloff) return 0;
    return max + (falloff > 0 ? distance / falloff : 0) * (min - max);
  });
}

function normalize(v: Float64Array): Float32Array {
  let sum = 0;
  for (const x of v) sum += x * x;
  const n = Math.sqrt(sum);
  if (!(n > 0) || !Number.isFinite(n)) throw new RangeError('the interpolated refusal direction is zero or not finite');
  return Float32Array.from(v, (x) => x / n);
}

/** The direction at `point`, optionally orthogonal to the harmless mean there, unit length. */
function pointDirection(measurement: Measurement, point: number, projected: boolean): Float64Array {
  const d = Float64Array.from(measurement.directions[point]!);
  if (!projected) return d;
  const b = measurement.harmlessMeans[point]!;
  let bb = 0;
  let db = 0;
  for (let i = 0; i < d.length; i++) {
    bb += b[i]! * b[i]!;
    db += d[i]! * b[i]!;
  }
  if (!(bb > 0)) return d;
  const scale = db / bb;
  const out = d.map((x, i) => x - scale * b[i]!);
  return Float64Array.from(normalize(out));
}

/**
 * The direction at a fractional point: the two adjacent measured directions (each projected first
 * when asked) mixed linearly and renormalised.
 */
export function interpolatedDirection(measurement: Measurement, index: number, projected: boolean): Float32Array {
  const last = measurement.points - 1;
  if (!(index >= 0 && index <= last)) throw new RangeError(`direction index ${index} is outside 0..${last}`);
  const lower = Math.min(Math.floor(index), last);
  const upper = Math.min(lower + 1, last);
  const t = index - lower;
  const a = pointDirection(measurement, lower, projected);
  if (t === 0 || upper === lower) return normalize(a);
  const b = pointDirection(measurement, upper, projected);
  return normalize(a.map((x, i) => (1 - t) * x + t * b[i]!));
}
