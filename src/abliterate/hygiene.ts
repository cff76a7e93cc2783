/**
 * Direction hygiene: the transformations of a measurement that make the refusal direction cleaner.
 * Winsorization damps the few huge coordinates ("massive activations") of a residual before the
 * means; the other three act on the difference of means: orthogonal to the harmless mean
 * ("projected"), orthogonal to a false-refusal direction (borderline-benign prompts vs harmless),
 * and sparsified. Float64 on the CPU: vectors of the hidden size.
 */

/** The q-quantile of sorted values, linearly interpolated between order statistics (NumPy's default). */
function quantileOfSorted(sorted: Float64Array, q: number): number {
  const at = q * (sorted.length - 1);
  const below = Math.floor(at);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below]! + (at - below) * (sorted[above]! - sorted[below]!);
}

/** Checks a winsorization quantile: in (0, 0.5). */
export function checkClipQuantile(q: number): void {
  if (!(q > 0 && q < 0.5)) throw new RangeError(`the clipping quantile must be in (0, 0.5), got ${q}`);
}

/**
 * Winsorizes one residual in place: its coordinates are clipped to [Q_q, Q_{1−q}], the quantiles of
 * its own values (per prompt, across coordinates), so that a few huge coordinates do not dominate
 * the class means.
 */
export function winsorize(row: Float32Array, q: number): void {
  checkClipQuantile(q);
  const sorted = Float64Array.from(row).sort();
  const low = quantileOfSorted(sorted, q);
  const high = quantileOfSorted(sorted, 1 - q);
  for (let i = 0; i < row.length; i++) row[i] = Math.min(high, Math.max(low, row[i]!));
}

/** How many coordinates `--sparsify` keeps of `dim`: an integer ≥ 1 is a count, a number in (0, 1) a fraction (at least one). */
export function sparsifyCount(keep: number, dim: number): number {
  if (keep > 0 && keep < 1) return Math.max(1, Math.round(keep * dim));
  if (Number.isInteger(keep) && keep >= 1) return Math.min(keep, dim);
  throw new RangeError(`sparsify keeps a count (an integer ≥ 1) or a fraction in (0, 1) of the coordinates, got ${keep}`);
}

/** The vector with all but its `count` largest |components| set to 0 (ties: the lower index first). */
export function sparsify(vector: ArrayLike<number>, count: number): Float64Array {
  const order = Array.from({ length: vector.length }, (_, i) => i).sort((a, b) => Math.abs(vector[b]!) - Math.abs(vector[a]!) || a - b);
  const out = new Float64Array(vector.length);
  for (const i of order.slice(0, count)) out[i] = vector[i]!;
  return out;
}

/**
 * `vector` less its components in the span of `against` (vectors orthonormalised in float64 first,
 * zero ones skipped): the part of the direction orthogonal to, e.g., the harmless mean and a
 * false-refusal direction at once.
 */
export function orthogonalTo(vector: ArrayLike<number>, against: readonly ArrayLike<number>[]): Float64Array {
  const basis: Float64Array[] = [];
  for (const a of against) {
    const q = Float64Array.from(a);
    const scale = Math.sqrt(dot(q, q));
    for (let pass = 0; pass < 2; pass++) for (const b of basis) subtract(q, b, dot(q, b));
    const n = Math.sqrt(dot(q, q));
    // A zero vector, or one in the span of those before it, adds no constraint.
    if (n > 1e-9 * scale) basis.push(q.map((x) => x / n));
  }
  const out = Float64Array.from(vector);
  for (let pass = 0; pass < 2; pass++) for (const b of basis) subtract(out, b, dot(out, b));
  return out;
}

/** The unit vector along `vector` as f32, or zeros when it is zero. */
export function unit(vector: ArrayLike<number>): Float32Array {
  const n = Math.sqrt(dot(vector, vector));
  return Float32Array.from(vector as ArrayLike<number>, (x) => (n > 0 ? x / n : 0));
}

/** The direction along `direction` orthogonal to the harmless mean ("projected abliteration"), unit; unchanged when the mean is zero. */
export function projectedDirection(direction: ArrayLike<number>, harmlessMean: ArrayLike<number>): Float32Array {
  const projected = unit(orthogonalTo(direction, [harmlessMean]));
  if (!projected.some((x) => x !== 0)) throw new RangeError('the direction lies along the harmless mean: nothing is left of it orthogonal to the mean');
  return projected;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

function subtract(x: Float64Array, b: Float64Array, scale: number): void {
  for (let i = 0; i < x.length; i++) x[i] = x[i]! - scale * b[i]!;
}
