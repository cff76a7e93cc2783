import { GpuOutOfMemoryError } from '../gpu/errors.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { bytesPerElement, decodeToFloat32, unpackFromU32 } from '../io/dtype.ts';
import { recordSubspaceCut, recordSubspaceCutInverse, subspaceCutFactorsLength, type CutSide } from '../kernels/lowRank.ts';
import type { LlamaModel } from '../model/model.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import { layerLayout, type MatrixSlice } from '../model/layout.ts';
import { destroyMatrix, isResident, residualWriterNames, uploadSlice, type StreamedWeights, type TensorOverlay } from '../model/weights.ts';

/** Which decoder layers a cut touches. */
export type LayerSelection =
  | { kind: 'all' }
  | { kind: 'range'; from: number; to: number }
  | { kind: 'list'; layers: readonly number[] }
  /** Layers whose measured score (at their output) is above the median of all layers. */
  | { kind: 'above_median' }
  /** The k layers with the best measured scores. */
  | { kind: 'top_k'; k: number };

/** How strongly each selected layer is cut, as a multiple of alpha. */
export type StrengthProfile =
  | { kind: 'constant' }
  /** Heretic's tent: `max` at `peak`, falling linearly to `min` at distance `width` and beyond. */
  | { kind: 'tent'; peak: number; width: number; min: number; max: number };

/**
 * How `undo()` of an applied cut puts the weights back. Streamed weights always restore their host
 * overlay as it was (exact, and free: the cut replaces the overlay's entries rather than changing them).
 */
export type CutUndo =
  /** 'snapshot' when the copies fit in the GPU memory budget, else 'host'. Exact. The default. */
  | 'auto'
  /** Copies of the changed matrices on the GPU, made just before the cut. Exact. */
  | 'snapshot'
  /** Copies of the changed matrices in host memory, read back before the cut. Exact. */
  | 'host'
  /**
   * The inverse update from the factors kept on the GPU (K × the matrix's side for each matrix): the
   * original values within a rounding step or two, not bit for bit. Refused for norm-preserving cuts,
   * whose rescaling cannot be inverted.
   */
  | 'inverse'
  /** Keep nothing: `undo()` throws. For a cut that is exported and never undone. */
  | 'none';

export interface CutOptions {
  /** Strength: W ← W − α B (Bᵀ W). Default 1. */
  alpha?: number;
  /** Strengths: per decoder layer multipliers of alpha (0 leaves a layer alone); default 1 for every layer. */
  strengths?: readonly number[];
  /** Per-layer strengths for the attention output `o_proj` only, instead of `strengths`. */
  attentionStrengths?: readonly number[];
  /** Per-layer strengths for the MLP output `down_proj` only, instead of `strengths`. */
  mlpStrengths?: readonly number[];
  /** Rescale every changed row of W to its norm before the cut. */
  preserveRowNorm?: boolean;
  /** Also orthogonalise the embedding: E ← E − α (E B) Bᵀ. */
  embedding?: boolean;
  /** How `undo()` restores the weights; default 'auto' (exact). */
  undo?: CutUndo;
  /**
   * Orthonormalise the given directions (Gram–Schmidt in their order) instead of requiring them to be
   * orthonormal already. A direction in the span of those before it is an error either way.
   */
  orthonormalize?: boolean;
}

/**
 * What to cut: an orthonormal basis of the subspace to remove from the residual stream (K unit
 * vectors, mutually orthogonal; rank 1 is one direction), or, for convenience, one `direction`.
 */
export type CutSpec = CutOptions & ({ basis: Float32Array | readonly Float32Array[]; direction?: never } | { direction: Float32Array; basis?: never });

/** How far from 1 a basis vector's norm, and from 0 the cosine of two of them, may be: far above the rounding of normalised f32 vectors (≈ √hidden · 6e-8), far below any deliberate difference. */
export const BASIS_TOLERANCE = 1e-4;

/**
 * A cut applied to the model's weights. `undo()` puts the weights back, so a search can try many
 * cuts without reloading the model (undo cuts in the reverse order they were applied); `release()`
 * frees what undo would need and keeps the cut.
 */
export interface AppliedCut {
  /** The tensors the cut changed. */
  readonly tensors: string[];
  /** K, the number of directions removed. */
  readonly rank: number;
  /** How `undo()` restores: GPU copies, host copies, the streamed overlay, the inverse update, or not at all. */
  readonly undoMode: 'snapshot' | 'host' | 'overlay' | 'inverse' | 'none';
  /** Whether `undo()` gives back every weight bit for bit (every mode but 'inverse' and 'none'). */
  readonly exactUndo: boolean;
  /** Restores the weights; tensors no cut had changed before this one are no longer marked modified. */
  undo(): Promise<void>;
  release(): void;
}

/**
 * The directions of a cut, checked: one to `hiddenSize` finite vectors of the model's hidden size,
 * unit-norm and mutually orthogonal within `BASIS_TOLERANCE` (or orthonormalised when asked).
 */
export function cutBasis(vectors: readonly Float32Array[], hiddenSize: number, options: { orthonormalize?: boolean } = {}): Float32Array[] {
  if (vectors.length === 0) throw new RangeError('a cut needs at least one direction');
  if (vectors.length > hiddenSize) throw new RangeError(`${vectors.length} directions cannot be orthonormal in the hidden size of ${hiddenSize}`);
  vectors.forEach((v, i) => {
    if (v.length !== hiddenSize) throw new RangeError(`direction ${i} has ${v.length} values; the model's hidden size is ${hiddenSize}`);
    const bad = v.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw new RangeError(`direction ${i} holds ${v[bad]} at index ${bad}`);
  });
  if (options.orthonormalize) return orthonormalize(vectors);
  vectors.forEach((v, i) => {
    const norm = Math.sqrt(dot(v, v));
    if (Math.abs(norm - 1) > BASIS_TOLERANCE) throw new RangeError(`direction ${i} has norm ${norm.toPrecision(6)}, not 1; normalise it, or cut with orthonormalize`);
    for (let j = 0; j < i; j++) {
      const cosine = dot(vectors[j]!, v);
      if (Math.abs(cosine) > BASIS_TOLERANCE) throw new RangeError(`directions ${j} and ${i} are not orthogonal (cosine ${cosine.toPrecision(3)}); cut with orthonormalize to orthonormalise them in order`);
    }
  });
  return [...vectors];
}

/** Gram–Schmidt in float64 (each projection removed twice), in the vectors' order; rounded to f32 at the end. */
export function orthonormalize(vectors: readonly Float32Array[]): Float32Array[] {
  const basis: Float64Array[] = [];
  vectors.forEach((v, i) => {
    const x = Float64Array.from(v);
    const original = Math.sqrt(dot(x, x));
    if (!(original > 0)) throw new RangeError(`direction ${i} is zero`);
    for (let pass = 0; pass < 2; pass++) {
      for (const q of basis) {
        const projection = dot(q, x);
        for (let j = 0; j < x.length; j++) x[j] = x[j]! - projection * q[j]!;
      }
    }
    const norm = Math.sqrt(dot(x, x));
    if (!(norm > 1e-6 * original)) throw new RangeError(`direction ${i} lies in the span of the directions before it`);
    basis.push(x.map((value) => value / norm));
  });
  return basis.map((q) => Float32Array.from(q));
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i]! * b[i]!;
  return sum;
}

/**
 * The projection a post-normed writer is cut with (`postNormedProjection`): W ← W − α L (RᵀW), both
 * f32 [K, hidden], with RᵀL = I.
 */
export interface ObliqueProjection {
  left: Float32Array;
  right: Float32Array;
}

/**
 * One matrix a cut changes: W ← W − α_m B (BᵀW) for 'output', E ← E − α_m (E B) Bᵀ for 'input';
 * a writer followed by a norm (Gemma) W ← W − α_m L (RᵀW) with its `projection`.
 */
interface CutTarget {
  name: string;
  side: CutSide;
  alpha: number;
  projection?: ObliqueProjection;
}

/**
 * How far below the largest |g| a scale counts as zero in `postNormedProjection`: such an axis of the
 * writer's output reaches the stream scaled by less than 1e-6 of the others, so nothing is cut there.
 */
const DEAD_SCALE = 1e-6;

/**
 * The cut of a writer whose output o reaches the residual stream as n(o) = g ⊙ o / rms(o) (Gemma's
 * post-attention and post-feedforward norms, g = 1 + w), for an orthonormal basis B (rows of `basis`,
 * [K, hidden]). Run-time ablation makes the stream receive (I − B Bᵀ) n(o) = G (I − G⁻¹B BᵀG) o / rms(o)
 * with G = diag(g): the oblique projector P = I − L Rᵀ applied to o, L = G⁻¹B, R = G B (RᵀL = BᵀB = I).
 * Cutting W ← P W makes the stream receive g ⊙ P o / rms(P o): BᵀG P = 0, so the write is orthogonal to
 * span(B) for every input, and it is ablation's write times rms(o) / rms(P o) > 0 — the same direction,
 * a rescaled length (ARCHITECTURE.md, "Post-normed blocks"). Axes with |g_i| below `DEAD_SCALE` of the
 * largest carry nothing to the stream: L is 0 there, and L is rescaled by (BᵀD B)⁻¹ (D: the live axes)
 * so that RᵀL = I still holds. Float64, rounded to f32 at the end.
 */
export function postNormedProjection(basis: readonly Float32Array[], scale: ArrayLike<number>): ObliqueProjection {
  const K = basis.length;
  const H = scale.length;
  let largest = 0;
  for (let i = 0; i < H; i++) {
    const g = scale[i]!;
    if (!Number.isFinite(g)) throw new RangeError(`the norm scale holds ${g} at index ${i}`);
    largest = Math.max(largest, Math.abs(g));
  }
  if (!(largest > 0)) throw new RangeError('the norm scale is zero everywhere: the writer reaches the residual stream not at all');
  const inverse = Float64Array.from({ length: H }, (_, i) => (Math.abs(scale[i]!) > DEAD_SCALE * largest ? 1 / scale[i]! : 0));
  const right = basis.map((b) => Float64Array.from(b, (x, i) => x * scale[i]!));
  const raw = basis.map((b) => Float64Array.from(b, (x, i) => x * inverse[i]!));
  // M = (RᵀL_raw)⁻¹ = (BᵀDB)⁻¹, symmetric positive definite; the identity unless an axis is dead.
  const gram = Array.from({ length: K }, (_, a) => Array.from({ length: K }, (_, b) => dot(right[a]!, raw[b]!)));
  const m = invertSymmetric(gram);
  const left = raw.map((_, k) => {
    const out = new Float64Array(H);
    for (let j = 0; j < K; j++) {
      const c = m[j]![k]!;
      for (let i = 0; i < H; i++) out[i] = out[i]! + raw[j]![i]! * c;
    }
    return out;
  });
  const pack = (vectors: Float64Array[]) => {
    const out = new Float32Array(K * H);
    vectors.forEach((v, k) => out.set(v, k * H));
    return out;
  };
  return { left: pack(left), right: pack(right) };
}

/** Gauss–Jordan inverse of a small symmetric positive definite matrix; refuses a (near-)singular one. */
function invertSymmetric(a: number[][]): number[][] {
  const n = a.length;
  const m = a.map((row, i) => [...row, ...Array.from({ length: n }, (_, j) => (i === j ? 1 : 0))]);
  const size = Math.max(...a.map((row, i) => Math.abs(row[i]!)));
  for (let c = 0; c < n; c++) {
    let pivot = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[pivot]![c]!)) pivot = r;
    if (!(Math.abs(m[pivot]![c]!) > 1e-9 * size)) throw new RangeError('the directions lie on axes the norm scales to zero: the writer cannot carry them, and the cut is not defined');
    [m[c], m[pivot]] = [m[pivot]!, m[c]!];
    const p = m[c]![c]!;
    m[c] = m[c]!.map((x) => x / p);
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r]![c]!;
      if (f !== 0) m[r] = m[r]!.map((x, j) => x - f * m[c]![j]!);
    }
  }
  return m.map((row) => row.slice(n));
}

/** (1 + w) of a norm of the checkpoint, in float64 from its stored values. */
async function normScale(model: LlamaModel, name: string): Promise<Float64Array> {
  const w = decodeToFloat32(await model.tensors.read(name), model.tensors.tensor(name).dtype);
  return Float64Array.from(w, (x) => 1 + x);
}

/**
 * The embedding, then each layer's residual writers: `o_proj`, and the `down_proj` of the MLP or of
 * every expert. Post-normed blocks (Gemma) get each writer's oblique projection through the norm that
 * follows it (`post_attention_layernorm` after `o_proj`, `post_feedforward_layernorm` after `down_proj`).
 */
async function cutTargets(model: LlamaModel, basis: readonly Float32Array[], alpha: number, strengths: { o: readonly number[]; down: readonly number[] }, embedding: boolean): Promise<CutTarget[]> {
  const { config } = model;
  const targets: CutTarget[] = [];
  if (embedding) targets.push({ name: 'model.embed_tokens.weight', side: 'input', alpha });
  const projection = async (norm: string | undefined) => {
    if (!config.block.sandwichNorms) return undefined;
    if (norm === undefined) throw new Error(`${config.architecture}: a post-normed block without its norm's name`);
    return postNormedProjection(basis, await normScale(model, norm));
  };
  for (let l = 0; l < config.numLayers; l++) {
    const o = alpha * strengths.o[l]!;
    const down = alpha * strengths.down[l]!;
    const writers = residualWriterNames(config, model.tensors, l);
    const layout = config.block.sandwichNorms ? layerLayout(config, l) : undefined;
    if (o !== 0) {
      const p = await projection(layout?.postAttentionNorm);
      for (const name of writers.attention) targets.push({ name, side: 'output', alpha: o, projection: p });
    }
    if (down !== 0) {
      const p = await projection(layout?.postFeedforwardNorm);
      for (const name of writers.mlp) targets.push({ name, side: 'output', alpha: down, projection: p });
    }
  }
  return targets;
}

/**
 * Removes a subspace from the weights that write into the residual stream: for each selected layer,
 * `o_proj` and `down_proj` (V = BᵀW, then W ← W − α B V; in post-normed blocks, Gemma's, W ← W − α L (RᵀW)
 * with the projection through the norm's scale, `postNormedProjection`), and optionally the embedding
 * (E ← E − α (E B) Bᵀ); in f32, stored back in each weight's dtype with one rounding to nearest even
 * (`recordSubspaceCut`). All on the GPU, in place; streamed weights are uploaded a matrix at a time,
 * cut by the same kernels, and read back into their host overlay.
 */
export async function applyCut(model: LlamaModel, spec: CutSpec): Promise<AppliedCut> {
  const { config, weights } = model;
  const given = spec.direction !== undefined ? [spec.direction] : spec.basis instanceof Float32Array ? [spec.basis] : spec.basis;
  const basis = cutBasis(given, config.hiddenSize, { orthonormalize: spec.orthonormalize ?? false });
  const alpha = spec.alpha ?? 1;
  if (!Number.isFinite(alpha)) throw new RangeError(`alpha must be a finite number, got ${alpha}`);
  const strengths = spec.strengths ?? Array.from({ length: config.numLayers }, () => 1);
  const componentStrengths = { o: spec.attentionStrengths ?? strengths, down: spec.mlpStrengths ?? strengths };
  for (const given of [strengths, componentStrengths.o, componentStrengths.down]) {
    if (given.length !== config.numLayers) throw new RangeError(`${given.length} strengths for ${config.numLayers} layers`);
    const bad = given.findIndex((w) => !Number.isFinite(w));
    if (bad >= 0) throw new RangeError(`the strength of layer ${bad} is ${given[bad]}, not a finite number`);
  }
  const preserveRowNorm = spec.preserveRowNorm ?? false;
  const undo = spec.undo ?? 'auto';
  if (undo === 'inverse' && preserveRowNorm) throw new RangeError("a norm-preserving cut cannot be undone by the inverse update; use undo 'auto', 'snapshot' or 'host'");
  const targets = await cutTargets(model, basis, alpha, componentStrengths, spec.embedding ?? false);
  const packed = new Float32Array(basis.length * config.hiddenSize);
  basis.forEach((v, k) => packed.set(v, k * config.hiddenSize));
  const run = { basis: packed, rank: basis.length, targets, preserveRowNorm };
  return isResident(weights) ? applyResidentCut(model, run, undo) : applyStreamedCut(model, weights, run);
}

interface CutRun {
  /** f32 [K, hidden]. */
  basis: Float32Array;
  rank: number;
  targets: CutTarget[];
  preserveRowNorm: boolean;
}

/** A resident matrix being cut, with what its undo needs. */
interface ResidentTarget extends CutTarget {
  matrix: PackedMatrix;
  /** The projection's factors on the GPU (shared by the writers of one norm); absent: the basis. */
  left?: GPUBuffer;
  right?: GPUBuffer;
  /** 'snapshot': one GPU copy per chunk. */
  snapshot?: GPUBuffer[];
  /** 'host': the stored words of each chunk. */
  host?: ArrayBuffer[];
  /** 'inverse': the factors of the original matrix. */
  factors?: GPUBuffer;
}

function matrixBytes(matrix: PackedMatrix): number {
  return matrix.chunks.reduce((sum, chunk) => sum + chunk.buffer.size, 0);
}

async function applyResidentCut(model: LlamaModel, run: CutRun, undo: CutUndo): Promise<AppliedCut> {
  const { gpu } = model;
  const { rank } = run;
  const wasModified = new Set(model.modifiedTensors);
  const matrices = model.matrices();
  const targets: ResidentTarget[] = run.targets.map((t) => ({ ...t, matrix: matrices.get(t.name)! }));
  const factorsLength = (t: ResidentTarget) => subspaceCutFactorsLength(t.matrix, t.side, rank);
  const basis = gpu.upload(run.basis, 'cut basis');
  const projections = new ProjectionBuffers(gpu);
  let scratch: GPUBuffer | undefined;
  const free = () => {
    gpu.destroyBuffer(basis);
    projections.destroy();
    if (scratch) gpu.destroyBuffer(scratch);
    for (const t of targets) freeUndoData(gpu, t);
  };
  let mode: AppliedCut['undoMode'];
  try {
    for (const t of targets) if (t.projection) Object.assign(t, projections.get(t.projection));
    if (undo === 'inverse') {
      for (const t of targets) t.factors = gpu.createBuffer(factorsLength(t) * 4, `${t.name} cut factors`);
    } else if (targets.length) {
      // One scratch serves every matrix: the batch's dispatches run in order.
      scratch = gpu.createBuffer(Math.max(...targets.map(factorsLength)) * 4, 'cut factors');
    }
    mode = undo === 'auto' ? (targets.reduce((sum, t) => sum + matrixBytes(t.matrix), 0) <= gpu.memoryBudget - gpu.allocatedBytes ? 'snapshot' : 'host') : undo;
    if (mode === 'snapshot') {
      try {
        for (const t of targets) t.snapshot = t.matrix.chunks.map((chunk) => gpu.createBuffer(chunk.buffer.size, `${t.name} snapshot`));
      } catch (error) {
        if (undo !== 'auto' || !(error instanceof GpuOutOfMemoryError)) throw error;
        for (const t of targets) freeUndoData(gpu, t);
        mode = 'host';
      }
    }
    if (mode === 'host') {
      for (const t of targets) {
        t.host = [];
        for (const chunk of t.matrix.chunks) t.host.push(await gpu.read(chunk.buffer));
      }
    }
    const batch = gpu.batch(`cut rank ${rank}`);
    for (const t of targets) {
      t.snapshot?.forEach((copy, i) => batch.copy(t.matrix.chunks[i]!.buffer, 0, copy, 0, copy.size));
      recordSubspaceCut(batch, { matrix: t.matrix, side: t.side, basis: t.right ?? basis, left: t.left, rank, alpha: t.alpha, preserveRowNorm: run.preserveRowNorm, factors: t.factors ?? scratch! });
    }
    await batch.submit();
  } catch (error) {
    free();
    throw error;
  }
  if (scratch) gpu.destroyBuffer(scratch);
  for (const t of targets) model.modifiedTensors.add(t.name);
  return new ResidentCut(model, targets, basis, projections, rank, mode, wasModified);
}

/** The GPU copies of the cut's oblique projections, one pair per projection however many writers share it. */
class ProjectionBuffers {
  private readonly uploaded = new Map<ObliqueProjection, { left: GPUBuffer; right: GPUBuffer }>();

  constructor(private readonly gpu: Gpu) {}

  get(projection: ObliqueProjection): { left: GPUBuffer; right: GPUBuffer } {
    let buffers = this.uploaded.get(projection);
    if (!buffers) {
      const left = this.gpu.upload(projection.left, 'cut left factors');
      try {
        buffers = { left, right: this.gpu.upload(projection.right, 'cut right factors') };
      } catch (error) {
        this.gpu.destroyBuffer(left);
        throw error;
      }
      this.uploaded.set(projection, buffers);
    }
    return buffers;
  }

  destroy(): void {
    for (const { left, right } of this.uploaded.values()) {
      this.gpu.destroyBuffer(left);
      this.gpu.destroyBuffer(right);
    }
    this.uploaded.clear();
  }
}

function freeUndoData(gpu: Gpu, target: ResidentTarget): void {
  for (const copy of target.snapshot ?? []) gpu.destroyBuffer(copy);
  if (target.factors) gpu.destroyBuffer(target.factors);
  delete target.snapshot;
  delete target.host;
  delete target.factors;
}

/** A cut of resident weights, in place on the GPU. */
class ResidentCut implements AppliedCut {
  private state: 'applied' | 'undone' | 'released' = 'applied';

  constructor(
    private readonly model: LlamaModel,
    private readonly targets: ResidentTarget[],
    private readonly basis: GPUBuffer,
    private readonly projections: ProjectionBuffers,
    readonly rank: number,
    readonly undoMode: AppliedCut['undoMode'],
    private readonly wasModified: ReadonlySet<string>,
  ) {}

  get tensors(): string[] {
    return this.targets.map((t) => t.name);
  }

  get exactUndo(): boolean {
    return this.undoMode === 'snapshot' || this.undoMode === 'host';
  }

  async undo(): Promise<void> {
    if (this.state === 'undone') return;
    if (this.state === 'released') throw new Error('this cut was released: there is nothing left to undo it from');
    if (this.undoMode === 'none') throw new Error("this cut was applied with undo 'none': it cannot be undone");
    const { gpu } = this.model;
    const batch = gpu.batch('undo cut');
    for (const t of this.targets) {
      if (t.snapshot) t.snapshot.forEach((copy, i) => batch.copy(copy, 0, t.matrix.chunks[i]!.buffer, 0, copy.size));
      else if (t.host) t.host.forEach((words, i) => batch.write(t.matrix.chunks[i]!.buffer, new Uint8Array(words)));
      else if (t.factors) recordSubspaceCutInverse(batch, { matrix: t.matrix, side: t.side, basis: t.right ?? this.basis, left: t.left, rank: this.rank, alpha: t.alpha, factors: t.factors });
    }
    await batch.submit();
    for (const t of this.targets) if (!this.wasModified.has(t.name)) this.model.modifiedTensors.delete(t.name);
    this.free();
    this.state = 'undone';
  }

  /** Frees the kept copies or factors; the cut stays in the weights. */
  release(): void {
    if (this.state !== 'applied') return;
    this.free();
    this.state = 'released';
  }

  private free(): void {
    const { gpu } = this.model;
    for (const t of this.targets) freeUndoData(gpu, t);
    gpu.destroyBuffer(this.basis);
    this.projections.destroy();
  }
}

/**
 * The cut on streamed weights: each matrix is uploaded, cut on the GPU by the same recorder, read
 * back into the host-side overlay that later uploads and the export read from, and freed. Undo puts
 * the overlay's previous entries back, exactly.
 */
async function applyStreamedCut(model: LlamaModel, weights: StreamedWeights, run: CutRun): Promise<AppliedCut> {
  const { gpu } = model;
  const { rank } = run;
  const source = weights.source;
  const replaced = source.replaced;
  const previous = new Map<string, Uint8Array | undefined>();
  const wasModified = new Set(model.modifiedTensors);
  // Matrices by their GPU names, as a resident cut marks them (parts of fused tensors separately).
  const cutMatrices: string[] = [];
  const restore = () => {
    for (const [name, bytes] of previous) {
      if (bytes) replaced.set(name, bytes);
      else replaced.delete(name);
    }
    for (const name of cutMatrices) if (!wasModified.has(name)) model.modifiedTensors.delete(name);
  };
  // The overlay holds whole tensors: a cut matrix that is one expert's part of a fused expert stack
  // is written into a copy of its tensor, made on the first part this cut touches.
  const ownCopy = async (tensor: string): Promise<Uint8Array> => {
    if (!previous.has(tensor)) {
      previous.set(tensor, replaced.get(tensor));
      replaced.set(tensor, new Uint8Array(await source.read(tensor)));
    }
    return replaced.get(tensor)!;
  };
  const basis = gpu.upload(run.basis, 'cut basis');
  const projections = new ProjectionBuffers(gpu);
  try {
    for (const t of run.targets) {
      const projection = t.projection ? projections.get(t.projection) : undefined;
      const slice = streamedSlice(source, t.name);
      const matrix = await uploadSlice(gpu, source, slice);
      const factors = gpu.createBuffer(subspaceCutFactorsLength(matrix, t.side, rank) * 4, `${t.name} cut factors`);
      try {
        const batch = gpu.batch(`cut ${t.name}`);
        recordSubspaceCut(batch, { matrix, side: t.side, basis: projection?.right ?? basis, left: projection?.left, rank, alpha: t.alpha, preserveRowNorm: run.preserveRowNorm, factors });
        await batch.submit();
        const bytes = await readMatrixBytes(gpu, matrix);
        (await ownCopy(slice.tensor)).set(bytes, slice.rowStart * slice.cols * bytesPerElement(matrix.dtype));
        model.modifiedTensors.add(t.name);
        cutMatrices.push(t.name);
      } finally {
        gpu.destroyBuffer(factors);
        destroyMatrix(gpu, matrix);
      }
    }
  } catch (error) {
    restore();
    throw error;
  } finally {
    gpu.destroyBuffer(basis);
    projections.destroy();
  }
  let state: 'applied' | 'undone' | 'released' = 'applied';
  return {
    tensors: cutMatrices,
    rank,
    undoMode: 'overlay',
    exactUndo: true,
    async undo() {
      if (state === 'undone') return;
      if (state === 'released') throw new Error('this cut was released: there is nothing left to undo it from');
      restore();
      state = 'undone';
    },
    release() {
      if (state === 'applied') {
        previous.clear();
        state = 'released';
      }
    },
  };
}

/** The rows of a tensor a matrix name stands for: a whole tensor, or `tensor[rowStart:rowEnd]` (`sliceName`) of a fused one. */
function streamedSlice(source: TensorOverlay, name: string): MatrixSlice {
  const part = /^(.*)\[(\d+):(\d+)\]$/.exec(name);
  const tensor = part && !source.allTensors.has(name) ? part[1]! : name;
  const shape = source.tensor(tensor).shape;
  const cols = shape.at(-1)!;
  const allRows = shape.reduce((a, b) => a * b, 1) / cols;
  if (!part || tensor === name) return { tensor, rowStart: 0, rows: allRows, cols, whole: true };
  const rowStart = Number(part[2]);
  const rows = Number(part[3]) - rowStart;
  if (!(rows > 0 && rowStart + rows <= allRows)) throw new RangeError(`${name}: rows outside the tensor's ${allRows}`);
  return { tensor, rowStart, rows, cols, whole: false };
}

/** The stored bytes of a matrix on the GPU, in its dtype. */
export async function readMatrixBytes(gpu: Gpu, matrix: PackedMatrix): Promise<Uint8Array> {
  const elementBytes = bytesPerElement(matrix.dtype);
  const out = new Uint8Array(matrix.rows * matrix.cols * elementBytes);
  for (const chunk of matrix.chunks) {
    const count = chunk.rows * matrix.cols;
    const words = new Uint32Array(await gpu.read(chunk.buffer, 0, Math.ceil((count * elementBytes) / 4) * 4));
    out.set(unpackFromU32(words, matrix.dtype, count), chunk.rowStart * matrix.cols * elementBytes);
  }
  return out;
}

/** Resolves a layer selection and a strength profile into one strength (multiplier of alpha) per decoder layer. */
export function layerStrengths(numLayers: number, selection: LayerSelection, profile: StrengthProfile = { kind: 'constant' }, scores?: readonly number[]): number[] {
  const all = Array.from({ length: numLayers }, (_, i) => i);
  let chosen: number[];
  switch (selection.kind) {
    case 'all':
      chosen = all;
      break;
    case 'range':
      if (selection.from < 0 || selection.to >= numLayers || selection.from > selection.to) throw new RangeError(`layer range ${selection.from}-${selection.to} is outside 0-${numLayers - 1}`);
      chosen = all.filter((l) => l >= selection.from && l <= selection.to);
      break;
    case 'list':
      for (const l of selection.layers) if (!Number.isInteger(l) || l < 0 || l >= numLayers) throw new RangeError(`layer ${l} is outside 0-${numLayers - 1}`);
      chosen = [...selection.layers];
      break;
    case 'above_median':
    case 'top_k': {
      if (!scores || scores.length !== numLayers) throw new RangeError(`${selection.kind} needs a measured score for each of the ${numLayers} layers`);
      const ranked = [...all].sort((a, b) => scores[b]! - scores[a]!);
      if (selection.kind === 'top_k') chosen = ranked.slice(0, Math.max(0, selection.k));
      else {
        const sorted = [...scores].sort((a, b) => a - b);
        const median = (sorted[Math.floor((numLayers - 1) / 2)]! + sorted[Math.ceil((numLayers - 1) / 2)]!) / 2;
        chosen = all.filter((l) => scores[l]! > median);
      }
      break;
    }
  }
  const set = new Set(chosen);
  return all.map((l) => {
    if (!set.has(l)) return 0;
    if (profile.kind === 'constant') return 1;
    const distance = Math.abs(l - profile.peak);
    return distance >= profile.width ? profile.min : profile.max + (profile.min - profile.max) * (distance / profile.width);
  });
}
