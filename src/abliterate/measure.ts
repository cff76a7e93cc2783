import type { Gpu } from '../gpu/gpu.ts';
import { recordGramDifference } from '../kernels/gram.ts';
import { recordMatmul } from '../kernels/matmul.ts';
import type { LlamaModel } from '../model/model.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import type { Hook, PositionSelector } from '../model/taps.ts';
import { checkClipQuantile, orthogonalTo, sparsify, sparsifyCount, unit, winsorize } from './hygiene.ts';
import { instructionOffset } from './instruction.ts';
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

/** Where in each prompt a residual is read: its last token, or the last token of the user's content (instruction.ts). */
export type TokenPosition = 'last' | 'instruction';
/** What `measure` reads: one of the two positions, or both (DBDI: harm detection at the instruction, refusal execution at the last token). */
export type MeasurePosition = TokenPosition | 'both';

/** The means, unit directions, scores and projections of one token position at every point. */
export interface DirectionSet {
  /** Absent: the last token. */
  position?: TokenPosition;
  harmfulMeans: Float32Array[];
  harmlessMeans: Float32Array[];
  /** Unit refusal direction d̂ at each point (after the hygiene asked for, see `MeasureOptions`). */
  directions: Float32Array[];
  scores: PointScore[];
  /** Per point, each prompt's residual at this position projected on that point's d̂. */
  projections: { harmful: Float32Array[]; harmless: Float32Array[] };
}

export interface Measurement extends DirectionSet {
  hiddenSize: number;
  /** Residual-stream points measured: numLayers + 1. */
  points: number;
  harmfulCount: number;
  harmlessCount: number;
  /** With `topK`: the refusal subspace at every point (of this set's position). */
  subspaces?: PointSubspace[];
  /**
   * With position 'both': the harm-detection directions (HDD), read at the instruction-final token;
   * the measurement itself is then the refusal-execution direction (RED) at the last token.
   */
  harmDetection?: DirectionSet;
  /** With an instruction position: how many tokens from the end the instruction-final token is (the template's suffix + 1). */
  instructionOffset?: number;
  /** With `borderline` prompts: the unit false-refusal direction (borderline mean − harmless mean) at each point, per position measured. */
  falseRefusal?: Partial<Record<TokenPosition, Float32Array[]>>;
  /** The hygiene applied, as given (absent: none). */
  hygiene?: DirectionHygiene;
}

/** How the directions were cleaned (hygiene.ts); each is off when absent. */
export interface DirectionHygiene {
  /** Winsorize every prompt's residual at its own q and 1 − q quantiles before the means; q in (0, 0.5). */
  clipQuantile?: number;
  /** Keep this many of each direction's largest |components| (an integer ≥ 1), or this fraction of them (in (0, 1)), and renormalise. */
  sparsify?: number;
  /** Take the direction orthogonal to the harmless mean ("projected abliteration"). */
  projected?: boolean;
  /** Number of borderline-benign prompts whose false-refusal direction the refusal direction was made orthogonal to. */
  borderlinePrompts?: number;
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
  /** Where the residuals are read; default 'last'. */
  position?: MeasurePosition;
  /** Winsorize each prompt's residual at its own quantiles q and 1 − q before the means. */
  clipQuantile?: number;
  /** Keep the top-k |components| of every direction (k ≥ 1, or a fraction in (0, 1)) and renormalise. */
  sparsify?: number;
  /** Directions orthogonal to the harmless mean. */
  projected?: boolean;
  /**
   * Borderline-benign prompts (chat-formatted and tokenised): the false-refusal direction, their
   * mean less the harmless mean, is removed from the refusal direction at every point.
   */
  borderline?: readonly (readonly number[])[];
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface ClassActivations {
  count: number;
  /** Running sums [points][hidden], accumulated on the GPU. */
  sums: GPUBuffer;
  /** Per point, the residual of every prompt at one token position [count][hidden]. */
  rows: GPUBuffer[];
}

/**
 * Runs both prompt sets (already chat-formatted and tokenised) and measures the difference of means
 * at every point of the residual stream, at the last token and/or the instruction-final token. Means
 * are accumulated on the GPU by accumulating taps; the per-prompt residuals stay on the GPU and only
 * their projections on d̂ come back, for the effect size (unless winsorization or the subspace needs them).
 */
export async function measure(model: LlamaModel, harmful: readonly (readonly number[])[], harmless: readonly (readonly number[])[], options: MeasureOptions = {}): Promise<Measurement> {
  if (harmful.length < 2 || harmless.length < 2) throw new RangeError(`measuring needs at least 2 prompts of each kind (got ${harmful.length} harmful, ${harmless.length} harmless)`);
  const { gpu, config } = model;
  const H = config.hiddenSize;
  const points = config.numLayers + 1;
  if (options.clipQuantile !== undefined) checkClipQuantile(options.clipQuantile);
  const keep = options.sparsify === undefined ? undefined : sparsifyCount(options.sparsify, H);
  const borderline = options.borderline;
  if (borderline && borderline.length < 2) throw new RangeError(`the false-refusal direction needs at least 2 borderline prompts (got ${borderline.length})`);
  const position = options.position ?? 'last';
  const positions: TokenPosition[] = position === 'both' ? ['last', 'instruction'] : [position];
  const instructionOffset = positions.includes('instruction')
    ? Math.max(
        instructionOffsetOf(model, harmful, 'harmful prompt'),
        instructionOffsetOf(model, harmless, 'harmless prompt'),
        ...(borderline ? [instructionOffsetOf(model, borderline, 'borderline prompt')] : []),
      )
    : undefined;
  const selectors = positions.map((p): PositionSelector => (p === 'last' ? 'last' : [-instructionOffset!]));
  const sets: (readonly (readonly number[])[])[] = [harmful, harmless, ...(borderline ? [borderline] : [])];
  const total = sets.reduce((n, s) => n + s.length, 0);
  // [set][position]
  const classes: ClassActivations[][] = [];
  try {
    let offset = 0;
    for (const prompts of sets) {
      const start = offset;
      classes.push(
        await collectResiduals(model, prompts, selectors, {
          batchSize: options.batchSize,
          onProgress: (done) => options.onProgress?.(start + done, total),
          signal: options.signal,
        }),
      );
      offset += prompts.length;
    }
    if (options.clipQuantile !== undefined) for (const perPosition of classes) for (const acts of perPosition) await winsorizeActivations(gpu, acts, options.clipQuantile, H);
    const falseRefusal: Partial<Record<TokenPosition, Float32Array[]>> = {};
    const measured: DirectionSet[] = [];
    for (const [index, at] of positions.entries()) {
      const harmfulActs = classes[0]![index]!;
      const harmlessActs = classes[1]![index]!;
      const harmfulMeans = await means(gpu, harmfulActs, points, H);
      const harmlessMeans = await means(gpu, harmlessActs, points, H);
      let against: Float32Array[] | undefined;
      if (borderline) {
        const borderlineMeans = await means(gpu, classes[2]![index]!, points, H);
        against = falseRefusal[at] = borderlineMeans.map((m, p) => unit(Float64Array.from(m, (x, i) => x - harmlessMeans[p]![i]!)));
      }
      const directions = harmfulMeans.map((mH, p) => {
        let d: Float64Array = Float64Array.from(mH, (x, i) => x - harmlessMeans[p]![i]!);
        const constraints = [...(options.projected ? [harmlessMeans[p]!] : []), ...(against ? [against[p]!] : [])];
        if (constraints.length) d = orthogonalTo(d, constraints);
        if (keep !== undefined) d = sparsify(d, keep);
        return unit(d);
      });
      const projections = {
        harmful: await project(gpu, harmfulActs, directions, H),
        harmless: await project(gpu, harmlessActs, directions, H),
      };
      measured.push({ position: at, harmfulMeans, harmlessMeans, directions, scores: pointScores(harmfulMeans, harmlessMeans, directions, projections), projections });
    }
    const main = measured[0]!;
    const subspaces = options.topK === undefined ? undefined : await measureSubspaces(gpu, classes[0]![0]!, classes[1]![0]!, main.directions, options.topK, H);
    const hygiene: DirectionHygiene = {
      ...(options.clipQuantile !== undefined && { clipQuantile: options.clipQuantile }),
      ...(options.sparsify !== undefined && { sparsify: options.sparsify }),
      ...(options.projected && { projected: true }),
      ...(borderline && { borderlinePrompts: borderline.length }),
    };
    return {
      hiddenSize: H,
      points,
      harmfulCount: harmful.length,
      harmlessCount: harmless.length,
      ...main,
      ...(subspaces && { subspaces }),
      ...(measured[1] && { harmDetection: measured[1] }),
      ...(instructionOffset !== undefined && { instructionOffset }),
      ...(borderline && { falseRefusal }),
      ...(Object.keys(hygiene).length > 0 && { hygiene }),
    };
  } finally {
    for (const perPosition of classes) for (const c of perPosition) releaseActivations(gpu, c);
  }
}

function instructionOffsetOf(model: LlamaModel, prompts: readonly (readonly number[])[], set: string): number {
  return instructionOffset(model.tokenizer, prompts, set);
}

/** The figures of every point: the gap along d̂, its relative size, the cosine of the means, and the effect size of the projections. */
function pointScores(harmfulMeans: Float32Array[], harmlessMeans: Float32Array[], directions: Float32Array[], projections: DirectionSet['projections']): PointScore[] {
  return directions.map((direction, point): PointScore => {
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
}

/**
 * Runs prompts and keeps, at the embedding and after every layer, the running sum of the last-token
 * residuals and each prompt's own last-token residual, all on the GPU. Free with `releaseActivations`.
 */
export async function collectLastTokenResiduals(model: LlamaModel, prompts: readonly (readonly number[])[], options: MeasureOptions = {}): Promise<ClassActivations> {
  return (await collectResiduals(model, prompts, ['last'], options))[0]!;
}

/**
 * One prefill of the prompts that keeps, for each token position selector (one row per prompt
 * each), the running sums and the per-prompt residuals at every point.
 */
async function collectResiduals(model: LlamaModel, prompts: readonly (readonly number[])[], selectors: readonly PositionSelector[], options: MeasureOptions): Promise<ClassActivations[]> {
  const { gpu, config } = model;
  const activations: ClassActivations[] = [];
  try {
    for (let i = 0; i < selectors.length; i++) activations.push(allocate(gpu, prompts.length, config.numLayers + 1, config.hiddenSize));
    const hooks = selectors.flatMap((positions, i) => residualHooks(activations[i]!, config.numLayers, positions));
    await prefillPrompts(model, prompts, { batchSize: options.batchSize, hooks, onProgress: options.onProgress, signal: options.signal });
  } catch (error) {
    for (const a of activations) releaseActivations(gpu, a);
    throw error;
  }
  return activations;
}

/** Winsorizes every stored residual (read back, clipped, written back) and makes the sums those of the clipped residuals. */
async function winsorizeActivations(gpu: Gpu, activations: ClassActivations, q: number, hidden: number): Promise<void> {
  const sums = new Float32Array(activations.rows.length * hidden);
  for (const [p, buffer] of activations.rows.entries()) {
    const rows = await gpu.readF32(buffer);
    const total = new Float64Array(hidden);
    for (let r = 0; r < activations.count; r++) {
      const row = rows.subarray(r * hidden, (r + 1) * hidden);
      winsorize(row, q);
      for (let i = 0; i < hidden; i++) total[i]! += row[i]!;
    }
    sums.set(total, p * hidden);
    gpu.write(buffer, rows);
  }
  gpu.write(activations.sums, sums);
}

export function releaseActivations(gpu: Gpu, activations: ClassActivations): void {
  gpu.destroyBuffer(activations.sums);
  for (const b of activations.rows) gpu.destroyBuffer(b);
}

function allocate(gpu: Gpu, count: number, points: number, hidden: number): ClassActivations {
  const sums = gpu.createBuffer(points * hidden * 4, 'residual sums');
  const rows: GPUBuffer[] = [];
  try {
    for (let p = 0; p < points; p++) rows.push(gpu.createBuffer(count * hidden * 4, `residuals ${p}`));
  } catch (error) {
    gpu.destroyBuffer(sums);
    for (const b of rows) gpu.destroyBuffer(b);
    throw error;
  }
  gpu.write(sums, new Float32Array(points * hidden));
  return { count, sums, rows };
}

/** Hooks at the embedding and after every layer: accumulate the selected token, and keep it per prompt. */
function residualHooks(activations: ClassActivations, numLayers: number, positions: PositionSelector): Hook[] {
  const hidden = activations.sums.size / 4 / (numLayers + 1);
  const hooks: Hook[] = [];
  for (let p = 0; p <= numLayers; p++) {
    const at = p === 0 ? ({ point: 'embed' } as const) : ({ point: 'resid_post', layers: [p - 1] } as const);
    hooks.push({ ...at, positions, action: { kind: 'accumulate', sums: activations.sums, offset: p * hidden } });
    hooks.push({ ...at, positions, action: { kind: 'write', buffer: activations.rows[p]!, rowsPerLayer: activations.count } });
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
