import type { Gpu } from '../gpu/gpu.ts';
import { recordGramDifference } from '../kernels/gram.ts';
import { recordMatmul } from '../kernels/matmul.ts';
import type { LlamaModel } from '../model/model.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import type { Hook } from '../model/taps.ts';
import { prefillPrompts } from './prefill.ts';
import { cosine, dot, effectSize, norm } from './stats.ts';
import { silhouetteScore, topSingularVectors, type Subspace } from './subspace.ts';

/**
 * The figures of a measurement at one point of the residual stream. `point` indexes the stream as
 * Hugging Face's `hidden_states` does: 0 is the embedding output, i ≥ 1 the output of decoder
 * layer i − 1 (the input of layer i).
 */
export interface PointScore {
  point: number;
  /** Separation of the class means along d̂ (ARCHITECTURE.md, measure): ⟨μ_H, d̂⟩ − ⟨μ_B, d̂⟩ (= ‖μ_H − μ_B‖). */
  gap: number;
  /** The gap relative to the mean norm of the two class means (scale-free across depth). */
  relativeGap: number;
  /** Cosine between the harmful and harmless means (lower: better separated). */
  cosine: number;
  /** Gap of the per-prompt projections over their pooled standard deviation (Cohen's d). */
  effectSize: number;
}

export interface Measurement {
  hiddenSize: number;
  /** Residual-stream points measured: numLayers + 1. */
  points: number;
  harmfulCount: number;
  harmlessCount: number;
  harmfulMeans: Float32Array[];
  harmlessMeans: Float32Array[];
  /** Unit refusal direction d̂ at each point. */
  directions: Float32Array[];
  scores: PointScore[];
  /** Per point, each prompt's last-token residual projected on that point's d̂. */
  projections: { harmful: Float32Array[]; harmless: Float32Array[] };
  /** With `topK`: the refusal subspace at every point. */
  subspaces?: PointSubspace[];
}

/**
 * The top-K right singular vectors of the paired difference matrix D at one point: row i of D is
 * the i-th harmful prompt's last-token residual minus the i-th harmless prompt's, for the first
 * `pairs` = min(harmful, harmless) prompts of each set in the order given (uncentred, so the mean
 * difference counts: its direction dominates when refusal is close to rank 1).
 */
export interface PointSubspace extends Subspace {
  point: number;
  pairs: number;
  /** Silhouette of harmful vs harmless residuals projected onto this subspace (K coordinates each). */
  silhouette: number;
}

export interface MeasureOptions {
  batchSize?: number;
  /** Also measure the top-K subspace of the paired differences at every point. */
  topK?: number;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface ClassActivations {
  count: number;
  /** Running sums [points][hidden], accumulated on the GPU. */
  sums: GPUBuffer;
  /** Per point, the last-token residual of every prompt [count][hidden]. */
  rows: GPUBuffer[];
}

/**
 * Runs both prompt sets (already chat-formatted and tokenised) and measures the difference of means
 * at the last token at every point of the residual stream. Means are accumulated on the GPU by
 * accumulating taps; the per-prompt residuals stay on the GPU and only their projections on d̂
 * come back, for the effect size.
 */
export async function measure(model: LlamaModel, harmful: readonly (readonly number[])[], harmless: readonly (readonly number[])[], options: MeasureOptions = {}): Promise<Measurement> {
  if (harmful.length < 2 || harmless.length < 2) throw new RangeError(`measuring needs at least 2 prompts of each kind (got ${harmful.length} harmful, ${harmless.length} harmless)`);
  const { gpu, config } = model;
  const H = config.hiddenSize;
  const points = config.numLayers + 1;
  const total = harmful.length + harmless.length;
  const classes: ClassActivations[] = [];
  try {
    for (const [offset, prompts] of [
      [0, harmful],
      [harmful.length, harmless],
    ] as const) {
      classes.push(
        await collectLastTokenResiduals(model, prompts, {
          batchSize: options.batchSize,
          onProgress: (done) => options.onProgress?.(offset + done, total),
          signal: options.signal,
        }),
      );
    }
    const [harmfulActs, harmlessActs] = classes as [ClassActivations, ClassActivations];
    const harmfulMeans = await means(gpu, harmfulActs, points, H);
    const harmlessMeans = await means(gpu, harmlessActs, points, H);
    const directions = harmfulMeans.map((mH, l) => {
      const d = Float64Array.from(mH, (v, i) => v - harmlessMeans[l]![i]!);
      const n = norm(d);
      return Float32Array.from(d, (v) => (n === 0 ? 0 : v / n));
    });
    const projections = {
      harmful: await project(gpu, harmfulActs, directions, H),
      harmless: await project(gpu, harmlessActs, directions, H),
    };
    const scores = directions.map((direction, point): PointScore => {
      const gap = dot(harmfulMeans[point]!, direction) - dot(harmlessMeans[point]!, direction);
      const scale = (norm(harmfulMeans[point]!) + norm(harmlessMeans[point]!)) / 2;
      return {
        point,
        gap,
        relativeGap: scale === 0 ? 0 : gap / scale,
        cosine: cosine(harmfulMeans[point]!, harmlessMeans[point]!),
        effectSize: effectSize(projections.harmful[point]!, projections.harmless[point]!),
      };
    });
    const subspaces = options.topK === undefined ? undefined : await measureSubspaces(gpu, harmfulActs, harmlessActs, directions, options.topK, H);
    return { hiddenSize: H, points, harmfulCount: harmful.length, harmlessCount: harmless.length, harmfulMeans, harmlessMeans, directions, scores, projections, ...(subspaces && { subspaces }) };
  } finally {
    for (const c of classes) releaseActivations(gpu, c);
  }
}

/**
 * Runs prompts and keeps, at the embedding and after every layer, the running sum of the last-token
 * residuals and each prompt's own last-token residual, all on the GPU. Free with `releaseActivations`.
 */
export async function collectLastTokenResiduals(model: LlamaModel, prompts: readonly (readonly number[])[], options: MeasureOptions = {}): Promise<ClassActivations> {
  const { gpu, config } = model;
  const activations = allocate(gpu, prompts.length, config.numLayers + 1, config.hiddenSize);
  try {
    await prefillPrompts(model, prompts, { batchSize: options.batchSize, hooks: residualHooks(activations, config.numLayers), onProgress: options.onProgress, signal: options.signal });
  } catch (error) {
    releaseActivations(gpu, activations);
    throw error;
  }
  return activations;
}

export function releaseActivations(gpu: Gpu, activations: ClassActivations): void {
  gpu.destroyBuffer(activations.sums);
  for (const b of activations.rows) gpu.destroyBuffer(b);
}

function allocate(gpu: Gpu, count: number, points: number, hidden: number): ClassActivations {
  const sums = gpu.createBuffer(points * hidden * 4, 'residual sums');
  const rows: GPUBuffer[] = [];
  try {
    for (let p = 0; p < points; p++) rows.push(gpu.createBuffer(count * hidden * 4, `last-token residuals ${p}`));
  } catch (error) {
    gpu.destroyBuffer(sums);
    for (const b of rows) gpu.destroyBuffer(b);
    throw error;
  }
  gpu.write(sums, new Float32Array(points * hidden));
  return { count, sums, rows };
}

/** Hooks at the embedding and after every layer: accumulate the last token, and keep it per prompt. */
function residualHooks(activations: ClassActivations, numLayers: number): Hook[] {
  const hidden = activations.sums.size / 4 / (numLayers + 1);
  const hooks: Hook[] = [];
  for (let p = 0; p <= numLayers; p++) {
    const at = p === 0 ? ({ point: 'embed' } as const) : ({ point: 'resid_post', layers: [p - 1] } as const);
    hooks.push({ ...at, positions: 'last', action: { kind: 'accumulate', sums: activations.sums, offset: p * hidden } });
    hooks.push({ ...at, positions: 'last', action: { kind: 'write', buffer: activations.rows[p]!, rowsPerLayer: activations.count } });
  }
  return hooks;
}

async function means(gpu: Gpu, activations: ClassActivations, points: number, hidden: number): Promise<Float32Array[]> {
  const sums = await gpu.readF32(activations.sums);
  return Array.from({ length: points }, (_, p) => Float32Array.from(sums.subarray(p * hidden, (p + 1) * hidden), (s) => s / activations.count));
}

/** Projections of every stored residual on its point's direction, as one matmul per point on the GPU. */
export async function project(gpu: Gpu, activations: ClassActivations, directions: Float32Array[], hidden: number): Promise<Float32Array[]> {
  const out = gpu.createBuffer(directions.length * activations.count * 4, 'projections');
  const inputs: GPUBuffer[] = [];
  try {
    const batch = gpu.batch('projections');
    for (const [p, rows] of activations.rows.entries()) {
      // The stored residuals [count, hidden] act as the matrix, d̂ as the single input row.
      const matrix: PackedMatrix = { name: `residuals ${p}`, dtype: 'F32', rows: activations.count, cols: hidden, chunks: [{ buffer: rows, rowStart: 0, rows: activations.count }] };
      const x = gpu.upload(directions[p]!, `direction ${p}`);
      inputs.push(x);
      recordMatmul(batch, { x, tokens: 1, weight: matrix, y: out, outStride: activations.count * directions.length, outOffset: p * activations.count });
    }
    await batch.submit();
    const values = await gpu.readF32(out);
    return directions.map((_, p) => values.slice(p * activations.count, (p + 1) * activations.count));
  } finally {
    gpu.destroyBuffer(out);
    for (const x of inputs) gpu.destroyBuffer(x);
  }
}

/** The Gram matrix of each point's paired differences on the GPU, its top-K eigenvectors on the CPU, and the silhouette in them. */
async function measureSubspaces(gpu: Gpu, harmful: ClassActivations, harmless: ClassActivations, meanDirections: Float32Array[], k: number, hidden: number): Promise<PointSubspace[]> {
  if (!Number.isInteger(k) || k < 1 || k > hidden) throw new RangeError(`the subspace rank must be an integer in 1..${hidden}, got ${k}`);
  const pairs = Math.min(harmful.count, harmless.count);
  const subspaces: PointSubspace[] = [];
  for (const [point, rows] of harmful.rows.entries()) {
    const gram = gpu.createBuffer(hidden * hidden * 4, `gram ${point}`);
    let values: Float32Array;
    try {
      const batch = gpu.batch(`gram ${point}`);
      recordGramDifference(batch, { a: { buffer: rows, size: pairs * hidden * 4 }, b: { buffer: harmless.rows[point]!, size: pairs * hidden * 4 }, count: pairs, dim: hidden, gram: { buffer: gram } });
      await batch.submit();
      values = await gpu.readF32(gram);
    } finally {
      gpu.destroyBuffer(gram);
    }
    const subspace = topSingularVectors(values, hidden, k, meanDirections[point]);
    subspaces.push({ point, pairs, ...subspace, silhouette: NaN });
  }
  // Coordinates of every prompt in its point's subspace: K projections, one matmul per point and vector.
  const coordinates = async (acts: ClassActivations) => {
    const perVector: Float32Array[][] = [];
    for (let j = 0; j < k; j++) perVector.push(await project(gpu, acts, subspaces.map((s) => s.basis[j]!), hidden));
    return subspaces.map((_, p) => Array.from({ length: acts.count }, (_, i) => Float64Array.from({ length: k }, (_, j) => perVector[j]![p]![i]!)));
  };
  const harmfulCoordinates = await coordinates(harmful);
  const harmlessCoordinates = await coordinates(harmless);
  for (const [p, s] of subspaces.entries()) s.silhouette = silhouetteScore(harmfulCoordinates[p]!, harmlessCoordinates[p]!);
  return subspaces;
}
