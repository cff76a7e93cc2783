import { loadavg } from 'node:os';
import type { ComputeBatch } from '../../src/gpu/gpu.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { GpuTimer, median, timeBatch, type TimingMethod } from '../../src/gpu/profiler.ts';

export interface BenchOptions {
  /** Runs only cases whose "section kernel shape dtype variant" matches. */
  only: RegExp | undefined;
  quick: boolean;
  sweep: boolean;
}

/** One timed piece of work: median over repeated runs after warm-up. */
export interface Measured {
  /** The time reported: the GPU timestamps' median where the adapter has them, else the CPU one. */
  ms: number;
  method: TimingMethod;
  gpuMs: number | undefined;
  cpuMs: number;
  /** The fastest timed run (same method as `ms`): the least disturbed on a shared machine. */
  minMs: number;
  reps: number;
}

export interface Row {
  section: 'ceiling' | 'kernel' | 'sweep' | 'e2e';
  kernel: string;
  shape: string;
  dtype: string;
  variant?: string;
  bytes: number;
  flops: number;
  measured: Measured;
  gflops?: number;
  gbs?: number;
  /** Fractions of the measured ceilings, filled in at the end. */
  flopFraction?: number;
  /** Of the streaming ceiling (best read kernel). */
  bandwidthFraction?: number;
  /** Of the driver's copyBufferToBuffer. */
  copyFraction?: number;
}

/**
 * Times batches adaptively: a warm-up run (pipelines, first touch), a second run to estimate, then
 * as many timed runs as fit the per-case budget (at least 3, or 2 for runs over 2 s).
 */
export class Bench {
  readonly rows: Row[] = [];
  readonly notes: string[] = [];
  readonly timer: GpuTimer | undefined;
  readonly startedAt = Date.now();
  /** The 1-, 5- and 15-minute load averages when the run started. */
  readonly loadAtStart = loadavg();
  readonly loadBefore = this.loadAtStart[0]!;

  constructor(
    readonly gpu: Gpu,
    readonly options: BenchOptions,
  ) {
    this.timer = GpuTimer.create(gpu, 64);
  }

  /** Milliseconds of repeated runs each case may spend. */
  get budgetMs(): number {
    return this.options.quick ? 150 : 600;
  }

  wants(...parts: string[]): boolean {
    return !this.options.only || this.options.only.test(parts.join(' '));
  }

  /** `timestamps: false` for batches without a compute pass (copies), which timestamps cannot bracket. */
  async time(batch: ComputeBatch, budgetMs = this.budgetMs, { timestamps = true } = {}): Promise<Measured> {
    const { gpu } = this;
    const first = await timeBatch(batch, { reps: 1, warmup: 0 });
    let estimate = first.cpuMs[0]!;
    if (estimate < 2000) estimate = (await timeBatch(batch, { reps: 1 })).cpuMs[0]!;
    const maxReps = this.options.quick ? 8 : 30;
    const reps = estimate > 2000 ? 2 : Math.max(3, Math.min(maxReps, Math.round(budgetMs / Math.max(estimate, 1e-3))));
    const t = await timeBatch(batch, { reps, timer: timestamps ? this.timer : undefined });
    await gpu.throwPendingErrors();
    const cpuMs = median(t.cpuMs);
    const gpuMs = t.gpuMs && median(t.gpuMs);
    // Timestamps are used when present and plausible (positive, not above the wall time around them).
    const useGpu = gpuMs !== undefined && gpuMs > 0 && gpuMs <= cpuMs * 1.05;
    const minMs = Math.min(...(useGpu ? t.gpuMs! : t.cpuMs));
    return { ms: useGpu ? gpuMs : cpuMs, method: useGpu ? 'timestamp-query' : 'cpu', gpuMs, cpuMs, minMs, reps };
  }

  record(row: Omit<Row, 'gflops' | 'gbs'>): Row {
    const full: Row = {
      ...row,
      gflops: row.flops ? row.flops / (row.measured.ms * 1e6) : undefined,
      gbs: row.bytes ? row.bytes / (row.measured.ms * 1e6) : undefined,
    };
    this.rows.push(full);
    if (process.env.BENCH_VERBOSE) process.stderr.write(`${formatRow(full)}\n`);
    return full;
  }

  note(text: string): void {
    this.notes.push(text);
    process.stderr.write(`note: ${text}\n`);
  }
}

export function formatRow(r: Row): string {
  return `${r.section} ${r.kernel} ${r.shape} ${r.dtype} ${r.variant ?? ''} ${r.measured.ms.toFixed(3)} ms ${r.gflops?.toFixed(2) ?? '-'} GFLOP/s ${r.gbs?.toFixed(2) ?? '-'} GB/s`;
}
