/**
 * Subspaces of the residual stream: the top right singular vectors of a paired difference matrix
 * (from its Gram matrix), their spectrum and effective rank, principal angles between two
 * subspaces, and the silhouette of two classes. Small dense linear algebra on the CPU in float64
 * (ml-matrix); the Gram matrix itself is computed on the GPU (kernels/gram.ts).
 */
import { EigenvalueDecomposition, Matrix, SingularValueDecomposition } from 'ml-matrix';

/** The top singular vectors of a difference matrix and its spectrum ({@link topSingularVectors}). */
export interface Subspace {
  /** The top-K right singular vectors, unit, mutually orthogonal (each f32 [dim]). */
  basis: Float32Array[];
  /** Their singular values σ₁ ≥ … ≥ σ_K. */
  singularValues: number[];
  /** σ_i² over Σ_j σ_j² (all components, not only the K kept): the share of the variance each explains. */
  explainedVariance: number[];
  /** exp of the entropy of the σ² shares over all components (1: one direction; dim: isotropic). */
  effectiveRank: number;
}

/**
 * The top-K right singular vectors of D from its Gram matrix G = DᵀD ([dim, dim], row-major):
 * the eigenvectors of G with its K largest eigenvalues λ = σ². The sign of each vector is
 * arbitrary; `orient` (e.g. the difference of the class means) flips each to point along it.
 */
export function topSingularVectors(gram: ArrayLike<number>, dim: number, k: number, orient?: ArrayLike<number>): Subspace {
  if (gram.length !== dim * dim) throw new RangeError(`the Gram matrix has ${gram.length} values, not ${dim}×${dim}`);
  if (!Number.isInteger(k) || k < 1 || k > dim) throw new RangeError(`the number of singular vectors must be an integer in 1..${dim}, got ${k}`);
  for (let i = 0; i < gram.length; i++) if (!Number.isFinite(gram[i]!)) throw new RangeError(`the Gram matrix holds a non-finite value at ${i}`);
  const rows = Array.from({ length: dim }, (_, i) => Array.from({ length: dim }, (_, j) => (gram[i * dim + j]! + gram[j * dim + i]!) / 2));
  const eigen = new EigenvalueDecomposition(new Matrix(rows), { assumeSymmetric: true });
  const values = eigen.realEigenvalues;
  const vectors = eigen.eigenvectorMatrix;
  // Rounding can make eigenvalues of a positive semidefinite matrix slightly negative: they are 0.
  const order = values.map((_, i) => i).sort((x, y) => values[y]! - values[x]!);
  const variances = order.map((i) => Math.max(0, values[i]!));
  const shares = spectrumShares(variances);
  const basis = order.slice(0, k).map((column) => {
    const v = Float64Array.from({ length: dim }, (_, i) => vectors.get(i, column));
    let along = 0;
    if (orient) for (let i = 0; i < dim; i++) along += v[i]! * orient[i]!;
    const n = euclidean(v) * (along < 0 ? -1 : 1);
    return Float32Array.from(v, (x) => x / n);
  });
  return { basis, singularValues: variances.slice(0, k).map(Math.sqrt), explainedVariance: shares.slice(0, k), effectiveRank: effectiveRank(variances) };
}

/** Each variance over their sum (all zero when the sum is). */
export function spectrumShares(variances: readonly number[]): number[] {
  const total = variances.reduce((s, x) => s + x, 0);
  return variances.map((x) => (total > 0 ? x / total : 0));
}

/** exp(−Σ p_i log p_i) of the shares p_i = σ_i² / Σσ²: the number of equally strong directions with the same entropy. */
export function effectiveRank(variances: readonly number[]): number {
  if (variances.some((x) => !(x >= 0) || !Number.isFinite(x))) throw new RangeError('variances must be finite and non-negative');
  let entropy = 0;
  for (const p of spectrumShares(variances)) if (p > 0) entropy -= p * Math.log(p);
  return Math.exp(entropy);
}

function euclidean(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  return Math.sqrt(s);
}

/** An orthonormal basis (float64, modified Gram–Schmidt twice) of the span of `vectors`; throws if they are dependent. */
function orthonormal(vectors: readonly ArrayLike<number>[], what: string): Float64Array[] {
  const basis: Float64Array[] = [];
  for (const [index, vector] of vectors.entries()) {
    const v = Float64Array.from(vector as ArrayLike<number>);
    const scale = euclidean(v);
    for (let pass = 0; pass < 2; pass++) {
      for (const b of basis) {
        let d = 0;
        for (let i = 0; i < v.length; i++) d += v[i]! * b[i]!;
        for (let i = 0; i < v.length; i++) v[i] = v[i]! - d * b[i]!;
      }
    }
    const n = euclidean(v);
    if (!(n > 1e-10 * scale)) throw new RangeError(`${what}: vector ${index} is zero or lies in the span of the ones before it`);
    basis.push(v.map((x) => x / n));
  }
  return basis;
}

/**
 * The principal angles (radians, ascending) between span(a) and span(b): θ_i = arccos σ_i(QₐᵀQ_b)
 * for orthonormal bases Qₐ, Q_b. There are min(|a|, |b|) of them.
 */
export function principalAngles(a: readonly ArrayLike<number>[], b: readonly ArrayLike<number>[]): number[] {
  if (a.length === 0 || b.length === 0) throw new RangeError('principal angles need two non-empty subspaces');
  const dim = a[0]!.length;
  if ([...a, ...b].some((v) => v.length !== dim)) throw new RangeError('the two subspaces must lie in the same space (vectors of one length)');
  const qa = orthonormal(a, 'the first subspace');
  const qb = orthonormal(b, 'the second subspace');
  const cross = qa.map((x) => qb.map((y) => x.reduce((s, v, i) => s + v * y[i]!, 0)));
  const cosines = new SingularValueDecomposition(new Matrix(cross), { computeLeftSingularVectors: false, computeRightSingularVectors: false, autoTranspose: true }).diagonal;
  return cosines
    .slice(0, Math.min(a.length, b.length))
    .map((c) => Math.acos(Math.min(1, Math.max(-1, c))))
    .sort((x, y) => x - y);
}

/** The geodesic distance on the Grassmannian: ‖θ‖₂ over the principal angles. */
export function grassmannDistance(angles: readonly number[]): number {
  return Math.sqrt(angles.reduce((s, t) => s + t * t, 0));
}

/** Mean cos² of the principal angles, in [0, 1]: 1 when the smaller subspace lies in the larger, 0 when they are orthogonal. */
export function subspaceOverlap(angles: readonly number[]): number {
  if (angles.length === 0) throw new RangeError('no principal angles');
  return angles.reduce((s, t) => s + Math.cos(t) ** 2, 0) / angles.length;
}

/**
 * The silhouette score of two classes of points (Euclidean): the mean over all points of
 * (b − a) / max(a, b), a the mean distance to the other points of its class, b to the points of the
 * other class. 1: tight, well separated classes; 0: overlapping; negative: mixed up.
 */
export function silhouetteScore(first: readonly ArrayLike<number>[], second: readonly ArrayLike<number>[]): number {
  if (first.length < 2 || second.length < 2) throw new RangeError('the silhouette needs at least 2 points of each class');
  const distance = (x: ArrayLike<number>, y: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < x.length; i++) s += (x[i]! - y[i]!) ** 2;
    return Math.sqrt(s);
  };
  const meanDistance = (x: ArrayLike<number>, set: readonly ArrayLike<number>[], skip?: number) => set.reduce((s, y, j) => (j === skip ? s : s + distance(x, y)), 0) / (set.length - (skip === undefined ? 0 : 1));
  let total = 0;
  for (const [own, other] of [[first, second], [second, first]] as const) {
    for (const [i, x] of own.entries()) {
      const a = meanDistance(x, own, i);
      const b = meanDistance(x, other);
      const m = Math.max(a, b);
      total += m === 0 ? 0 : (b - a) / m;
    }
  }
  return total / (first.length + second.length);
}
