import type { ComputeBatch } from '../gpu/gpu.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { ALL_FINITE, recordCheckFinite } from '../kernels/checkFinite.ts';

/** NaN or infinity appeared in the forward pass: the message names the first point where it did. */
export class NonFiniteError extends Error {
  override name = 'NonFiniteError';
}

/** Where a check sits in the forward pass: after the embedding, after a decoder layer, or on the logits. */
export type CheckPoint = 'embed' | number | 'logits';

/**
 * Non-finite values caught on the GPU. Each checkpoint of a forward step writes the index of the
 * first NaN or ±Inf it sees into its own flag: a small kernel after the embedding and on the
 * logits, and the residual adds of every layer themselves (no extra dispatch). The flags persist across steps and are read back
 * only by `verify()`, where results are read anyway, so a step costs no extra round trip.
 */
export class FiniteCheck {
  private readonly flags: GPUBuffer;
  /** Row width of the buffer last checked at each slot, to name the row and column of a find. */
  private readonly widths: number[];

  constructor(
    private readonly gpu: Gpu,
    private readonly numLayers: number,
  ) {
    this.widths = new Array<number>(numLayers + 2).fill(1);
    this.flags = gpu.createBuffer((numLayers + 2) * 4, 'non-finite flags');
    this.reset();
  }

  private slot(point: CheckPoint): number {
    return point === 'embed' ? 0 : point === 'logits' ? this.numLayers + 1 : point + 1;
  }

  /** Records the check of `rows` × `width` f32 values of `x` at `point`. */
  record(batch: ComputeBatch, point: CheckPoint, x: GPUBuffer, rows: number, width: number): void {
    recordCheckFinite(batch, { x, n: rows * width, ...this.target(point, width) });
  }

  /** The flag a kernel that checks its own output (the residual add) writes for `point`, for rows of `width` values. */
  target(point: CheckPoint, width: number): { flags: GPUBuffer; slot: number } {
    const slot = this.slot(point);
    this.widths[slot] = width;
    return { flags: this.flags, slot };
  }

  /** Throws a `NonFiniteError` naming the first checkpoint that saw NaN or ±Inf since the last verify; clears the flags. */
  async verify(): Promise<void> {
    const flags = await this.gpu.readU32(this.flags);
    const slot = flags.findIndex((f) => f !== ALL_FINITE);
    if (slot < 0) return;
    this.reset();
    const index = flags[slot]!;
    const width = this.widths[slot]!;
    const where = `row ${Math.floor(index / width)}, column ${index % width}`;
    if (slot === 0) throw new NonFiniteError(`non-finite values (NaN or infinity) in the token embeddings (${where}): model.embed_tokens.weight holds them`);
    if (slot === this.numLayers + 1) {
      throw new NonFiniteError(`non-finite logits (NaN or infinity) at ${where}: the final norm or the output projection holds NaN or infinity, or the logits overflow`);
    }
    const layer = slot - 1;
    throw new NonFiniteError(
      `non-finite values (NaN or infinity) in the residual stream after layer ${layer} (${where}): the weights of layer ${layer} hold NaN or infinity, or its activations overflow`,
    );
  }

  private reset(): void {
    this.gpu.write(this.flags, new Uint32Array(this.numLayers + 2).fill(ALL_FINITE));
  }

  dispose(): void {
    this.gpu.destroyBuffer(this.flags);
  }
}
