import type { ComputeBatch } from '../gpu/gpu.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { recordAccumulateRows, recordAddVector, recordGatherRows, recordProjectOut } from '../kernels/rows.ts';

/** Named points of the residual stream, as in TransformerLens' hook names. */
export const TAP_POINTS = ['embed', 'resid_pre', 'attn_out', 'resid_mid', 'mlp_out', 'resid_post', 'final_norm'] as const;
export type TapPoint = (typeof TAP_POINTS)[number];

/** Points that occur once per layer; `embed` and `final_norm` occur once per forward. */
export const LAYER_POINTS: readonly TapPoint[] = ['resid_pre', 'attn_out', 'resid_mid', 'mlp_out', 'resid_post'];

/**
 * Which token rows of each sequence a hook sees: the last token, every token, or a list of
 * positions (negative counts from the end of the sequence in this forward step).
 */
export type PositionSelector = 'last' | 'all' | readonly number[];

/** What a hook does at its point. */
export type HookAction =
  /** Copies the selected rows into `buffer`, laid out [hook layer index][row][dim]; `rowsPerLayer` rows per layer. */
  | { kind: 'write'; buffer: GPUBuffer; rowsPerLayer: number }
  /** Adds the sum of the selected rows into `sums`, laid out [hook layer index][dim], from element `offset` on. */
  | { kind: 'accumulate'; sums: GPUBuffer; offset?: number }
  /** h ← h − α Σ_j (h·d_j) d_j with `basis` holding `directions` orthonormal rows; only where h·d_0 > threshold if given. */
  | { kind: 'project_out'; basis: GPUBuffer; directions: number; alpha: number; threshold?: number | undefined }
  /** h ← h + scale · vector; only where h·condition.direction > condition.threshold if given. */
  | { kind: 'add'; vector: GPUBuffer; scale: number; condition?: { direction: GPUBuffer; threshold: number } | undefined };

export interface Hook {
  point: TapPoint;
  /** Layers this hook applies to (layer points only); defaults to every layer, in order. */
  layers?: readonly number[] | undefined;
  positions: PositionSelector;
  action: HookAction;
}

/** One sequence's rows in a forward step: rows [start, start + length) hold positions [firstPosition, …). */
export interface StepSequence {
  start: number;
  length: number;
  firstPosition: number;
}

/** The row indices a selector picks in one forward step. */
export function selectRows(selector: PositionSelector, sequences: readonly StepSequence[]): number[] {
  const rows: number[] = [];
  for (const s of sequences) {
    if (selector === 'all') {
      for (let r = 0; r < s.length; r++) rows.push(s.start + r);
    } else if (selector === 'last') {
      if (s.length > 0) rows.push(s.start + s.length - 1);
    } else {
      const end = s.firstPosition + s.length;
      for (const p of selector) {
        const position = p < 0 ? end + p : p;
        if (position >= s.firstPosition && position < end) rows.push(s.start + position - s.firstPosition);
      }
    }
  }
  return rows;
}

/**
 * The hooks of one forward step: row-index buffers are built once per step and selector, and
 * `write` hooks advance through their buffers step by step.
 */
export class HookRunner {
  private readonly rowBuffers = new Map<string, { buffer: GPUBuffer; count: number }>();
  private readonly writtenRows = new Map<Hook, number>();

  constructor(
    readonly hooks: readonly Hook[],
    private readonly numLayers: number,
  ) {
    for (const hook of hooks) {
      for (const layer of hook.layers ?? []) {
        if (!Number.isInteger(layer) || layer < 0 || layer >= numLayers) throw new RangeError(`hook at ${hook.point}: layer ${layer} is outside 0..${numLayers - 1}`);
      }
    }
  }

  has(point: TapPoint): boolean {
    return this.hooks.some((h) => h.point === point);
  }

  /** Records the hooks at `point` (of `layer`, for layer points) on rows of `x` ([tokens, dim]). */
  record(batch: ComputeBatch, point: TapPoint, layer: number | undefined, x: GPUBuffer, dim: number, sequences: readonly StepSequence[]): void {
    for (const hook of this.hooks) {
      if (hook.point !== point) continue;
      const layers = hook.layers ?? range(this.numLayers);
      const index = layer === undefined ? 0 : layers.indexOf(layer);
      if (index < 0) continue;
      const rows = this.rows(batch, hook.positions, sequences);
      if (rows.count === 0) continue;
      const action = hook.action;
      switch (action.kind) {
        case 'write': {
          const done = this.writtenRows.get(hook) ?? 0;
          if (done + rows.count > action.rowsPerLayer) throw new RangeError(`hook at ${point}: ${done + rows.count} rows exceed its buffer of ${action.rowsPerLayer} rows per layer`);
          recordGatherRows(batch, { x, rows: rows.buffer, count: rows.count, dim, out: action.buffer, outRow: index * action.rowsPerLayer + done });
          break;
        }
        case 'accumulate':
          recordAccumulateRows(batch, { x, rows: rows.buffer, count: rows.count, dim, sums: action.sums, offset: (action.offset ?? 0) + index * dim });
          break;
        case 'project_out':
          recordProjectOut(batch, { x, rows: rows.buffer, count: rows.count, dim, basis: action.basis, directions: action.directions, alpha: action.alpha, threshold: action.threshold });
          break;
        case 'add':
          recordAddVector(batch, { x, rows: rows.buffer, count: rows.count, dim, vector: action.vector, scale: action.scale, condition: action.condition });
          break;
      }
    }
  }

  /** Call once a step's batch was submitted: write hooks move on by the rows they wrote, and row lists are freed. */
  endStep(gpu: Gpu, sequences: readonly StepSequence[]): void {
    for (const hook of this.hooks) {
      if (hook.action.kind !== 'write') continue;
      this.writtenRows.set(hook, (this.writtenRows.get(hook) ?? 0) + selectRows(hook.positions, sequences).length);
    }
    for (const { buffer } of this.rowBuffers.values()) gpu.destroyBuffer(buffer);
    this.rowBuffers.clear();
  }

  private rows(batch: ComputeBatch, selector: PositionSelector, sequences: readonly StepSequence[]): { buffer: GPUBuffer; count: number } {
    const key = typeof selector === 'string' ? selector : selector.join(',');
    let entry = this.rowBuffers.get(key);
    if (!entry) {
      const rows = selectRows(selector, sequences);
      const buffer = batch.gpu.upload(Uint32Array.from(rows.length ? rows : [0]), `hook rows ${key}`);
      entry = { buffer, count: rows.length };
      this.rowBuffers.set(key, entry);
    }
    return entry;
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
