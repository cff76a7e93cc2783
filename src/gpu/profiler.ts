import type { ComputeBatch } from './gpu.ts';
import { GpuError } from './errors.ts';
import type { Gpu } from './gpu.ts';

/** How a duration was measured. */
export type TimingMethod = 'timestamp-query' | 'cpu';

/** Durations of repeated runs of the same work, in milliseconds. */
export interface Timings {
  /** Between the timestamps written at the start of the first and the end of the last compute pass. */
  gpuMs: number[] | undefined;
  /** Wall time from submit to `onSubmittedWorkDone()` (includes encoding and queue overhead). */
  cpuMs: number[];
}

/**
 * GPU timestamps around compute passes (`timestamp-query`). Each measurement takes a pair of
 * queries; `writes(i)` gives the `timestampWrites` of pair i for `ComputeBatch.submit`, and
 * `read(n)` resolves the first n pairs into durations.
 */
export class GpuTimer {
  private readonly querySet: GPUQuerySet;
  private readonly resolveBuffer: GPUBuffer;

  private constructor(
    private readonly gpu: Gpu,
    readonly capacity: number,
  ) {
    const { device } = gpu;
    this.querySet = device.createQuerySet({ label: 'profiler timestamps', type: 'timestamp', count: 2 * capacity });
    this.resolveBuffer = device.createBuffer({
      label: 'profiler timestamps',
      size: 16 * capacity,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
  }

  /** A timer for up to `capacity` measurements, or undefined when the adapter has no timestamp queries. */
  static create(gpu: Gpu, capacity = 64): GpuTimer | undefined {
    if (!gpu.features.timestampQuery) return undefined;
    return new GpuTimer(gpu, capacity);
  }

  writes(index: number): GPUComputePassTimestampWrites {
    if (!Number.isInteger(index) || index < 0 || index >= this.capacity) throw new GpuError(`timer slot ${index} is outside 0..${this.capacity - 1}`);
    return { querySet: this.querySet, beginningOfPassWriteIndex: 2 * index, endOfPassWriteIndex: 2 * index + 1 };
  }

  /** Durations of measurements 0..count-1 in milliseconds, once the work that wrote them has run. */
  async read(count: number): Promise<number[]> {
    if (count === 0) return [];
    const { device } = this.gpu;
    const encoder = device.createCommandEncoder({ label: 'profiler resolve' });
    encoder.resolveQuerySet(this.querySet, 0, 2 * count, this.resolveBuffer, 0);
    device.queue.submit([encoder.finish()]);
    const ticks = new BigUint64Array(await this.gpu.read(this.resolveBuffer, 0, 16 * count));
    const out: number[] = [];
    for (let i = 0; i < count; i++) out.push(Number(ticks[2 * i + 1]! - ticks[2 * i]!) / 1e6);
    return out;
  }

  dispose(): void {
    this.querySet.destroy();
    this.resolveBuffer.destroy();
  }
}

export interface TimeOptions {
  /** Timed runs (at least 1). */
  reps: number;
  /** Untimed runs first (pipeline creation, caches, lazy allocation). */
  warmup?: number;
  /** Timestamps too, when given (its capacity must cover `reps`). */
  timer?: GpuTimer | undefined;
}

/**
 * Runs a recorded batch `warmup + reps` times, one submission each, waiting for each to finish, and
 * returns each timed run's CPU wall time and, with a timer, its GPU time.
 */
export async function timeBatch(batch: ComputeBatch, options: TimeOptions): Promise<Timings> {
  const { gpu } = batch;
  const { reps, timer } = options;
  if (timer && reps > timer.capacity) throw new GpuError(`${reps} timed runs exceed the timer's ${timer.capacity} slots`);
  for (let i = 0; i < (options.warmup ?? 0); i++) {
    await batch.submit();
    await gpu.finish();
  }
  const cpuMs: number[] = [];
  for (let i = 0; i < reps; i++) {
    const start = performance.now();
    await batch.submit(timer ? { timestampWrites: timer.writes(i) } : {});
    await gpu.device.queue.onSubmittedWorkDone();
    cpuMs.push(performance.now() - start);
  }
  await gpu.finish();
  return { gpuMs: timer ? await timer.read(reps) : undefined, cpuMs };
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
