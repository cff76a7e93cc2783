import type { BufferBinding, ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';
import { GpuError } from '../gpu/errors.ts';


export interface SampleArgs {
  /** f32 [rows, cols], finite (mask with a large negative number, not −Infinity). */
  logits: BufferBinding;
  /** f32 [rows]: one uniform random number in [0, 1) per row. */
  random: BufferBinding;
  /** u32 [rows]: the sampled token of each row. */
  out: BufferBinding;
  rows: number;
  cols: number;
  /** > 0; for temperature 0 (greedy) use recordArgmax. */
  temperature: number;
  /** Keep the topK most likely tokens; 0 = off. */
  topK: number;
  /** Keep the fewest most likely tokens (after top-k) whose probability reaches topP; 1 = off. */
  topP: number;
  /** Invocations per row, a power of two from 2 to 128; default 32 on software adapters, 128 on GPUs. */
  workgroupSize?: number;
}

/**
 * Temperature / top-k / top-p sampling by inverse CDF over token index order, with the caller's
 * uniform numbers; one workgroup per row. Ties at a boundary keep the lowest token indices.
 */
export function recordSample(batch: ComputeBatch, args: SampleArgs): void {
  const { logits, random, out, rows, cols, temperature, topK, topP } = args;
  if (!(temperature > 0) || !Number.isFinite(temperature)) throw new GpuError(`sample: temperature must be > 0, got ${temperature} (use argmax for greedy decoding)`);
  if (!Number.isInteger(topK) || topK < 0) throw new GpuError(`sample: topK must be a non-negative integer, got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new GpuError(`sample: topP must be in (0, 1], got ${topP}`);
  if (cols <= 0) throw new GpuError('sample: no columns');
  if (rows === 0) return;
  // Invocations per row: every pass over the row ends in workgroup reductions, which cost the software
  // adapters more the wider the workgroup (measured on llvmpipe: 32 is fastest from 2k to 128k tokens).
  const WG = args.workgroupSize ?? (batch.gpu.adapter.software ? 32 : 128);
  if (!(WG >= 2 && WG <= 128 && (WG & (WG - 1)) === 0)) throw new GpuError(`sample: workgroupSize must be a power of two from 2 to 128, got ${WG}`);
  batch.dispatch(
    batch.gpu.kernel('sample.wgsl', { WG }),
    { params: { rows, cols, topK: Math.min(topK, cols), topP, invTemperature: 1 / temperature, keyBits: 32, invocations: WG, buckets: 16 }, logits, uniforms: random, tokens: out },
    workgroups1D(rows, 1),
    `rows=${rows} cols=${cols} temperature=${temperature} topK=${topK} topP=${topP}`,
  );
}
