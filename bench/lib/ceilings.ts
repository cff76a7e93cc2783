import { Kernel } from '../../src/gpu/kernel.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { workgroups1D } from '../../src/gpu/dispatch.ts';
import type { Bench, Measured } from './runner.ts';

/**
 * Ceilings of the adapter, measured in the same run as the kernels they judge:
 * - bandwidth, two ceilings: the driver's copyBufferToBuffer (a memcpy on CPU drivers, which no
 *   shader can match there), and the streaming rate of the best read kernel (the roof of anything a
 *   kernel does, matvec first); a trivial copy kernel is measured too. Bytes moved = bytes read +
 *   bytes written. Kernel ratios (%BW) and the decode bandwidth limit use the streaming ceiling;
 *   %copy is against the driver's copy;
 * - arithmetic: an FMA kernel with eight independent vec4 chains per invocation (no memory traffic);
 *   the best matmul of the run may beat it and then becomes the ceiling.
 */
export interface Ceilings {
  copyBufferGBs: number;
  copyKernelGBs: number;
  /** A kernel that only reads (sums 16-byte words into one value per invocation): the roof of matvec. */
  readKernelGBs: number;
  fmaGflops: number;
  /** The streaming ceiling every %BW is a fraction of: the best read kernel (readKernelGBs). */
  bandwidthGBs: number;
  /** max(fmaGflops, best matmul) — completed after the kernels ran. */
  gflops: number;
  copyBytes: number;
  /** Which access order of the read kernel was the faster. */
  readOrder: 'contiguous' | 'strided';
}

/** The same ceilings measured again at the end of the run, and whether ratios can be trusted. */
export interface CeilingCheck {
  before: { copyBufferGBs: number; readKernelGBs: number; fmaGflops: number };
  after: { copyBufferGBs: number; readKernelGBs: number; fmaGflops: number };
  /** |after / before − 1| of each ceiling. */
  drift: { copyBufferGBs: number; readKernelGBs: number; fmaGflops: number };
  /** The largest drift allowed. */
  margin: number;
  /** false when a ceiling moved by more than the margin: the machine's load changed, ratios are withheld. */
  steady: boolean;
}

/**
 * How far a ceiling may move between the start and the end of a run before its ratios are withheld.
 * On a quiet machine repeated ceilings agree within a few percent; under a changing load they move
 * by 2× and more, and a ratio to either measurement would mean nothing.
 */
export const CEILING_MARGIN = 0.2;

// Each invocation reads PER 16-byte words: spaced by the grid (CONTIGUOUS = false: neighbouring
// invocations read neighbouring words, the coalesced order of GPUs) or consecutive ones (CONTIGUOUS =
// true: each invocation streams its own run, the order CPU drivers vectorise best). Both are timed and
// the faster counts. The read kernel sums what it reads; the copy kernel stores it.
const PER = 16;

function streamSource(copy: boolean, contiguous: boolean): string {
  const at = contiguous ? 'i * PER + j' : 'i + j * params.stride';
  return `
const PER: u32 = ${PER}u;
struct Params { count: u32, stride: u32, }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<${copy ? 'vec4<f32>' : 'f32'}>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * 64u;
  if (i >= params.stride) {
    return;
  }
  var acc = vec4<f32>(0.0);
  for (var j = 0u; j < PER; j++) {
    let at = ${at};
    if (at < params.count) {
      ${copy ? 'dst[at] = src[at];' : 'acc += src[at];'}
    }
  }
  ${copy ? '' : 'dst[i] = acc.x + acc.y + acc.z + acc.w;'}
}
`;
}

// Eight independent chains of 4-wide FMAs per invocation; the multiplier and addend come from the
// uniform so that nothing folds at compile time.
const FMA_SOURCE = `
struct Params { iterations: u32, a: f32, b: f32, }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * 64u;
  let a = vec4<f32>(params.a);
  let b = vec4<f32>(params.b);
  var v0 = vec4<f32>(f32(i) * 1e-9);
  var v1 = v0 + 0.1; var v2 = v0 + 0.2; var v3 = v0 + 0.3;
  var v4 = v0 + 0.4; var v5 = v0 + 0.5; var v6 = v0 + 0.6; var v7 = v0 + 0.7;
  for (var n = 0u; n < params.iterations; n++) {
    v0 = fma(v0, a, b); v1 = fma(v1, a, b); v2 = fma(v2, a, b); v3 = fma(v3, a, b);
    v4 = fma(v4, a, b); v5 = fma(v5, a, b); v6 = fma(v6, a, b); v7 = fma(v7, a, b);
  }
  let s = (v0 + v1) + (v2 + v3) + (v4 + v5) + (v6 + v7);
  out[i] = s.x + s.y + s.z + s.w;
}
`;

/** FLOPs of one FMA-kernel invocation per iteration: 8 chains × 4 lanes × 2. */
const FMA_FLOPS_PER_ITERATION = 64;

function benchKernel(gpu: Gpu, name: string, source: string): Kernel {
  return new Kernel(gpu.device, name, {}, source);
}

/** Times copyBufferToBuffer of the two buffers; records the row. */
async function timeCopyBuffer(bench: Bench, src: GPUBuffer, dst: GPUBuffer, bytes: number, when: string): Promise<number> {
  const copy = bench.gpu.batch('copyBufferToBuffer');
  copy.copy(src, 0, dst, 0, bytes);
  const measured = await bench.time(copy, undefined, { timestamps: false });
  bench.record({ section: 'ceiling', kernel: `copyBufferToBuffer${when}`, shape: mib(bytes), dtype: '-', bytes: 2 * bytes, flops: 0, measured });
  return rate(2 * bytes, measured);
}

/** Times the copy or read kernel in one access order; records the row; returns GB/s. */
async function timeStream(bench: Bench, kind: 'copy' | 'read', contiguous: boolean, src: GPUBuffer, dst: GPUBuffer, bytes: number, when: string): Promise<number> {
  const { gpu } = bench;
  const count = bytes / 16;
  const stride = Math.ceil(count / PER);
  const kernel = benchKernel(gpu, `bench ${kind}${contiguous ? ' contiguous' : ''}`, streamSource(kind === 'copy', contiguous));
  const batch = gpu.batch(`${kind} kernel`);
  batch.dispatch(kernel, { params: { count, stride }, src, dst }, workgroups1D(stride, 64), mib(bytes));
  const measured = await bench.time(batch);
  const moved = kind === 'copy' ? 2 * bytes : bytes;
  bench.record({ section: 'ceiling', kernel: `${kind} kernel${when}`, shape: mib(bytes), dtype: contiguous ? 'contiguous' : 'strided', bytes: moved, flops: 0, measured });
  return rate(moved, measured);
}

/** Times the FMA kernel; records the row; returns GFLOP/s. */
async function timeFma(bench: Bench, when: string): Promise<number> {
  const { gpu } = bench;
  const fma = benchKernel(gpu, 'bench fma', FMA_SOURCE);
  const invocations = 64 * 1024;
  const iterations = bench.options.quick ? 256 : 1024;
  const out = gpu.createBuffer(invocations * 4, 'fma out');
  try {
    const fb = gpu.batch('fma');
    fb.dispatch(fma, { params: { iterations, a: 0.999, b: 1e-3 }, out }, workgroups1D(invocations, 64), `${invocations}×${iterations}`);
    const measured = await bench.time(fb);
    const flops = invocations * iterations * FMA_FLOPS_PER_ITERATION;
    bench.record({ section: 'ceiling', kernel: `fma${when}`, shape: `${invocations} inv × ${iterations} it`, dtype: 'f32', bytes: 0, flops, measured });
    return rate(flops, measured);
  } finally {
    gpu.destroyBuffer(out);
  }
}

/** Runs `body` with the two large buffers the bandwidth ceilings stream. */
async function withStreamBuffers<T>(bench: Bench, body: (src: GPUBuffer, dst: GPUBuffer, bytes: number) => Promise<T>): Promise<T> {
  const { gpu } = bench;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  const bytes = Math.min(bench.options.quick ? 64 * 2 ** 20 : 256 * 2 ** 20, Math.floor(limit / 16) * 16);
  const src = gpu.createBuffer(bytes, 'ceiling source');
  const dst = gpu.createBuffer(bytes, 'ceiling destination');
  try {
    return await body(src, dst, bytes);
  } finally {
    gpu.destroyBuffer(src);
    gpu.destroyBuffer(dst);
  }
}

export async function measureCeilings(bench: Bench): Promise<Ceilings> {
  return withStreamBuffers(bench, async (src, dst, bytes) => {
    const copyBufferGBs = await timeCopyBuffer(bench, src, dst, bytes, '');
    let copyKernelGBs = 0;
    let readKernelGBs = 0;
    let readOrder: Ceilings['readOrder'] = 'contiguous';
    for (const contiguous of [false, true]) copyKernelGBs = Math.max(copyKernelGBs, await timeStream(bench, 'copy', contiguous, src, dst, bytes, ''));
    for (const contiguous of [false, true]) {
      const gbs = await timeStream(bench, 'read', contiguous, src, dst, bytes, '');
      if (gbs > readKernelGBs) {
        readKernelGBs = gbs;
        readOrder = contiguous ? 'contiguous' : 'strided';
      }
    }
    const fmaGflops = await timeFma(bench, '');
    return { copyBufferGBs, copyKernelGBs, readKernelGBs, fmaGflops, bandwidthGBs: readKernelGBs, gflops: fmaGflops, copyBytes: bytes, readOrder };
  });
}

/**
 * Measures the driver's copy, the read kernel (in the order that won) and the FMA kernel again,
 * after the cases they judge, and compares them with the first measurement.
 */
export async function checkCeilings(bench: Bench, first: Ceilings, margin = CEILING_MARGIN): Promise<CeilingCheck> {
  const after = await withStreamBuffers(bench, async (src, dst, bytes) => ({
    copyBufferGBs: await timeCopyBuffer(bench, src, dst, bytes, ' (end)'),
    readKernelGBs: await timeStream(bench, 'read', first.readOrder === 'contiguous', src, dst, bytes, ' (end)'),
    fmaGflops: await timeFma(bench, ' (end)'),
  }));
  const before = { copyBufferGBs: first.copyBufferGBs, readKernelGBs: first.readKernelGBs, fmaGflops: first.fmaGflops };
  const move = (k: keyof typeof before) => Math.abs(after[k] / before[k] - 1);
  const drift = { copyBufferGBs: move('copyBufferGBs'), readKernelGBs: move('readKernelGBs'), fmaGflops: move('fmaGflops') };
  return { before, after, drift, margin, steady: Math.max(drift.copyBufferGBs, drift.readKernelGBs, drift.fmaGflops) <= margin };
}

/** One line saying how the ceilings held, for the printed report. */
export function describeCheck(check: CeilingCheck): string {
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
  const one = (name: string, k: keyof CeilingCheck['before'], unit: string) =>
    `${name} ${check.before[k].toFixed(2)} → ${check.after[k].toFixed(2)} ${unit} (${pct(check.drift[k])})`;
  const parts = [one('copyBufferToBuffer', 'copyBufferGBs', 'GB/s'), one('read kernel', 'readKernelGBs', 'GB/s'), one('FMA', 'fmaGflops', 'GFLOP/s')].join(', ');
  return check.steady
    ? `ceilings at the start and the end of the run agree within ±${pct(check.margin)}: ${parts}`
    : `RATIOS WITHHELD: a ceiling moved by more than ±${pct(check.margin)} between the start and the end of the run (the machine's load changed): ${parts}`;
}

/** Units per nanosecond = G units per second. */
function rate(units: number, measured: Measured): number {
  return units / (measured.ms * 1e6);
}

function mib(bytes: number): string {
  return `${Math.round(bytes / 2 ** 20)} MiB`;
}
