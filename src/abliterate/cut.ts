import type { Gpu } from '../gpu/gpu.ts';
import { recordMatmul } from '../kernels/matmul.ts';
import { recordColumnDot, recordRank1Update } from '../kernels/lowRank.ts';
import type { LlamaModel } from '../model/model.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import { isResident, type StreamedWeights } from '../model/weights.ts';
import { bytesPerElement, unpackFromU32 } from '../io/dtype.ts';

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
export type LayerKernel =
  | { kind: 'constant' }
  /** Heretic's tent: `max` at `peak`, falling linearly to `min` at distance `width` and beyond. */
  | { kind: 'tent'; peak: number; width: number; min: number; max: number };

export interface CutSpec {
  /** Unit direction in the residual stream. */
  direction: Float32Array;
  /** Strength: W ← W − α d̂ (d̂ᵀ W). Default 1. */
  alpha?: number;
  /** Per decoder layer multipliers of alpha (0 leaves a layer alone); default 1 for every layer. */
  layerWeights?: readonly number[];
  /** Per-layer multipliers for the attention output `o_proj` only, instead of `layerWeights`. */
  attentionLayerWeights?: readonly number[];
  /** Per-layer multipliers for the MLP output `down_proj` only, instead of `layerWeights`. */
  mlpLayerWeights?: readonly number[];
  /** Rescale every changed row of W to its norm before the cut. */
  preserveRowNorm?: boolean;
  /** Also orthogonalise the embedding: E ← E − α (E d̂) d̂ᵀ. */
  embedding?: boolean;
  /**
   * Keep a copy of every changed matrix on the GPU so `undo()` restores it bit for bit; without it,
   * undo applies the inverse update from the kept vectors (within one rounding step of each value).
   */
  snapshot?: boolean;
}

interface CutMatrix {
  matrix: PackedMatrix;
  alpha: number;
  /** The rank-1 factors: W −= α a bᵀ. */
  a: GPUBuffer;
  b: GPUBuffer;
  copies: GPUBuffer[];
}

/**
 * A cut applied to the model's weights. `undo()` puts the weights back, so a search can try many
 * cuts without reloading the model; `release()` frees what undo would need and keeps the cut.
 */
export interface AppliedCut {
  readonly tensors: string[];
  undo(): Promise<void>;
  release(): void;
}

/** A cut of resident weights, in place on the GPU. */
class ResidentCut implements AppliedCut {
  private done = false;

  constructor(
    private readonly model: LlamaModel,
    private readonly matrices: CutMatrix[],
    private readonly direction: GPUBuffer,
    readonly preserveRowNorm: boolean,
  ) {}

  get tensors(): string[] {
    return this.matrices.map((m) => m.matrix.name);
  }

  async undo(): Promise<void> {
    if (this.done) return;
    const { gpu } = this.model;
    const batch = gpu.batch('undo cut');
    for (const m of this.matrices) {
      if (m.copies.length) {
        m.matrix.chunks.forEach((chunk, i) => batch.copy(m.copies[i]!, 0, chunk.buffer, 0, chunk.buffer.size));
      } else {
        if (this.preserveRowNorm) throw new Error('a norm-preserving cut can only be undone from a snapshot (cut with snapshot: true)');
        recordRank1Update(batch, { matrix: m.matrix, a: m.a, b: m.b, alpha: -m.alpha });
      }
    }
    await batch.submit();
    for (const m of this.matrices) if (m.copies.length) this.model.modifiedTensors.delete(m.matrix.name);
    this.release();
  }

  /** Frees the kept vectors and snapshots; the cut stays in the weights. */
  release(): void {
    if (this.done) return;
    this.done = true;
    const { gpu } = this.model;
    for (const m of this.matrices) {
      for (const b of [m.a, m.b, ...m.copies]) if (b !== this.direction) gpu.destroyBuffer(b);
    }
    gpu.destroyBuffer(this.direction);
  }
}

/**
 * Removes a direction from the weights that write into the residual stream: for each selected
 * layer, `o_proj` and `down_proj` (v = d̂ᵀW, then W ← W − α d̂ vᵀ, in f32, stored back in the weight's
 * dtype with round-to-nearest-even), and optionally the embedding. All on the GPU, in place.
 */
export async function applyCut(model: LlamaModel, spec: CutSpec): Promise<AppliedCut> {
  const { gpu, config, weights } = model;
  if (spec.direction.length !== config.hiddenSize) throw new RangeError(`the direction has ${spec.direction.length} values; the model's hidden size is ${config.hiddenSize}`);
  const alpha = spec.alpha ?? 1;
  const layerWeights = spec.layerWeights ?? Array.from({ length: config.numLayers }, () => 1);
  const componentWeights = { o: spec.attentionLayerWeights ?? layerWeights, down: spec.mlpLayerWeights ?? layerWeights };
  for (const w of [layerWeights, componentWeights.o, componentWeights.down]) {
    if (w.length !== config.numLayers) throw new RangeError(`${w.length} layer weights for ${config.numLayers} layers`);
    if (!w.every(Number.isFinite)) throw new RangeError('layer weights must be finite numbers');
  }
  if (!isResident(weights)) return applyStreamedCut(model, weights, spec, alpha, componentWeights);
  const direction = gpu.upload(spec.direction, 'cut direction');
  const matrices: CutMatrix[] = [];
  const batch = gpu.batch('cut');
  try {
    const snapshot = (matrix: PackedMatrix) => (spec.snapshot ? copyMatrix(gpu, batch, matrix) : []);
    if (spec.embedding) {
      // E ← E − α (E d̂) d̂ᵀ: u = E d̂ by the matmul kernel (d̂ as the one input row), kept for undo.
      const E = weights.embed;
      const u = gpu.createBuffer(E.rows * 4, 'embedding projections');
      matrices.push({ matrix: E, alpha, a: u, b: direction, copies: snapshot(E) });
      recordMatmul(batch, { x: direction, tokens: 1, weight: E, y: u });
      recordRank1Update(batch, { matrix: E, a: u, b: direction, alpha, preserveRowNorm: spec.preserveRowNorm ?? false });
    }
    for (const [l, layer] of weights.layers.entries()) {
      for (const [matrix, matrixWeights] of [
        [layer.o, componentWeights.o],
        [layer.down, componentWeights.down],
      ] as const) {
        const layerAlpha = alpha * matrixWeights[l]!;
        if (layerAlpha === 0) continue;
        const v = gpu.createBuffer(matrix.cols * 4, `${matrix.name} v`);
        matrices.push({ matrix, alpha: layerAlpha, a: direction, b: v, copies: snapshot(matrix) });
        recordColumnDot(batch, { matrix, d: direction, v });
        recordRank1Update(batch, { matrix, a: direction, b: v, alpha: layerAlpha, preserveRowNorm: spec.preserveRowNorm ?? false });
      }
    }
    await batch.submit();
  } catch (error) {
    new ResidentCut(model, matrices, direction, false).release();
    throw error;
  }
  for (const m of matrices) model.modifiedTensors.add(m.matrix.name);
  return new ResidentCut(model, matrices, direction, spec.preserveRowNorm ?? false);
}

/**
 * The same cut on streamed weights: each matrix is uploaded, cut on the GPU, read back into the
 * host-side overlay that later uploads and the export read from, and freed. Undo restores the
 * overlay as it was, exactly.
 */
async function applyStreamedCut(
  model: LlamaModel,
  weights: StreamedWeights,
  spec: CutSpec,
  alpha: number,
  layerWeights: { o: readonly number[]; down: readonly number[] },
): Promise<AppliedCut> {
  const { gpu, config } = model;
  const replaced = weights.source.replaced;
  const previous = new Map<string, Uint8Array | undefined>();
  const wasModified = new Set(model.modifiedTensors);
  const direction = gpu.upload(spec.direction, 'cut direction');
  const preserveRowNorm = spec.preserveRowNorm ?? false;
  const cutOne = (name: string, matrixAlpha: number, embedding: boolean) =>
    weights.withMatrix(name, async (matrix) => {
      const scratch = gpu.createBuffer((embedding ? matrix.rows : matrix.cols) * 4, `${name} factor`);
      try {
        const batch = gpu.batch(`cut ${name}`);
        if (embedding) {
          recordMatmul(batch, { x: direction, tokens: 1, weight: matrix, y: scratch });
          recordRank1Update(batch, { matrix, a: scratch, b: direction, alpha: matrixAlpha, preserveRowNorm });
        } else {
          recordColumnDot(batch, { matrix, d: direction, v: scratch });
          recordRank1Update(batch, { matrix, a: direction, b: scratch, alpha: matrixAlpha, preserveRowNorm });
        }
        await batch.submit();
        if (!previous.has(name)) previous.set(name, replaced.get(name));
        replaced.set(name, await readMatrixBytes(gpu, matrix));
        model.modifiedTensors.add(name);
      } finally {
        gpu.destroyBuffer(scratch);
      }
    });
  try {
    if (spec.embedding) await cutOne('model.embed_tokens.weight', alpha, true);
    for (let l = 0; l < config.numLayers; l++) {
      if (layerWeights.o[l] !== 0) await cutOne(`model.layers.${l}.self_attn.o_proj.weight`, alpha * layerWeights.o[l]!, false);
      if (layerWeights.down[l] !== 0) await cutOne(`model.layers.${l}.mlp.down_proj.weight`, alpha * layerWeights.down[l]!, false);
    }
  } catch (error) {
    restore(previous, replaced);
    gpu.destroyBuffer(direction);
    throw error;
  }
  gpu.destroyBuffer(direction);
  let done = false;
  return {
    tensors: [...previous.keys()],
    async undo() {
      if (done) return;
      done = true;
      restore(previous, replaced);
      for (const name of previous.keys()) if (!wasModified.has(name)) model.modifiedTensors.delete(name);
    },
    release() {
      done = true;
    },
  };
}

function restore(previous: ReadonlyMap<string, Uint8Array | undefined>, replaced: Map<string, Uint8Array>): void {
  for (const [name, bytes] of previous) {
    if (bytes) replaced.set(name, bytes);
    else replaced.delete(name);
  }
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

function copyMatrix(gpu: Gpu, batch: ReturnType<Gpu['batch']>, matrix: PackedMatrix): GPUBuffer[] {
  return matrix.chunks.map((chunk) => {
    const copy = gpu.createBuffer(chunk.buffer.size, `${matrix.name} snapshot`);
    batch.copy(chunk.buffer, 0, copy, 0, chunk.buffer.size);
    return copy;
  });
}

/** Resolves a layer selection and kernel into one multiplier per decoder layer. */
export function layerWeights(numLayers: number, selection: LayerSelection, kernel: LayerKernel = { kind: 'constant' }, scores?: readonly number[]): number[] {
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
    if (kernel.kind === 'constant') return 1;
    const distance = Math.abs(l - kernel.peak);
    return distance >= kernel.width ? kernel.min : kernel.max + (kernel.min - kernel.max) * (distance / kernel.width);
  });
}
