import { Kernel } from '../../src/gpu/kernel.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { workgroups1D } from '../../src/gpu/dispatch.ts';
import type { Bench, Measured } from './runner.ts';

/**
 * Ceilings of the adapter, measured in the same run as the kernels they judge:
 * - bandwidth: a large copyBufferToBuffer, a trivial copy kernel (16-byte loads and stores), and a
 *   read-only kernel; bytes moved = bytes read + bytes written; the ceiling is the best of the three;
 * - arithmetic: an FMA kernel with eight independent vec4 chains per invocation (no memory traffic);
 *   the best matmul of the run may beat it and then becomes the ceiling.
 */
export interface Ceilings {
  copyBufferGBs: number;
  copyKernelGBs: number;
  /** A kernel that only reads (sums 16-byte words into one value per invocation): the roof of matvec. */
  readKernelGBs: number;
  fmaGflops: number;
  /** max(copyBufferGBs, copyKernelGBs, readKernelGBs). */
  bandwidthGBs: number;
  /** max(fmaGflops, best matmul) — completed after the kernels ran. */
  gflops: number;
  copyBytes: number;
}

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

export async function measureCeilings(bench: Bench): Promise<Ceilings> {
  const { gpu } = bench;
  const quick = bench.options.quick;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  const bytes = Math.min(quick ? 64 * 2 ** 20 : 256 * 2 ** 20, Math.floor(limit / 16) * 16);
  const src = gpu.createBuffer(bytes, 'ceiling source');
  const dst = gpu.createBuffer(bytes, 'ceiling destination');
  try {
    const copy = gpu.batch('copyBufferToBuffer');
    copy.copy(src, 0, dst, 0, bytes);
    const copyBuffer = await bench.time(copy, undefined, { timestamps: false });
    bench.record({ section: 'ceiling', kernel: 'copyBufferToBuffer', shape: mib(bytes), dtype: '-', bytes: 2 * bytes, flops: 0, measured: copyBuffer });

    const count = bytes / 16;
    const stride = Math.ceil(count / PER);
    const best: Record<'copy' | 'read', Measured | undefined> = { copy: undefined, read: undefined };
    for (const kind of ['copy', 'read'] as const) {
      for (const contiguous of [false, true]) {
        const kernel = benchKernel(gpu, `bench ${kind}${contiguous ? ' contiguous' : ''}`, streamSource(kind === 'copy', contiguous));
        const batch = gpu.batch(`${kind} kernel`);
        batch.dispatch(kernel, { params: { count, stride }, src, dst }, workgroups1D(stride, 64), mib(bytes));
        const measured = await bench.time(batch);
        const moved = kind === 'copy' ? 2 * bytes : bytes;
        bench.record({ section: 'ceiling', kernel: `${kind} kernel`, shape: mib(bytes), dtype: contiguous ? 'contiguous' : 'strided', bytes: moved, flops: 0, measured });
        if (!best[kind] || measured.ms < best[kind].ms) best[kind] = measured;
      }
    }
    const copyKernelTime = best.copy!;
    const readKernelTime = best.read!;

    const fma = benchKernel(gpu, 'bench fma', FMA_SOURCE);
    const invocations = 64 * 1024;
    const iterations = quick ? 256 : 1024;
    const out = gpu.createBuffer(invocations * 4, 'fma out');
    const fb = gpu.batch('fma');
    fb.dispatch(fma, { params: { iterations, a: 0.999, b: 1e-3 }, out }, workgroups1D(invocations, 64), `${invocations}×${iterations}`);
    const fmaTime = await bench.time(fb);
    const flops = invocations * iterations * FMA_FLOPS_PER_ITERATION;
    bench.record({ section: 'ceiling', kernel: 'fma', shape: `${invocations} inv × ${iterations} it`, dtype: 'f32', bytes: 0, flops, measured: fmaTime });
    gpu.destroyBuffer(out);

    const copyBufferGBs = rate(2 * bytes, copyBuffer);
    const copyKernelGBs = rate(2 * bytes, copyKernelTime);
    const readKernelGBs = rate(bytes, readKernelTime);
    const fmaGflops = rate(flops, fmaTime);
    return {
      copyBufferGBs,
      copyKernelGBs,
      readKernelGBs,
      fmaGflops,
      bandwidthGBs: Math.max(copyBufferGBs, copyKernelGBs, readKernelGBs),
      gflops: fmaGflops,
      copyBytes: bytes,
    };
  } finally {
    gpu.destroyBuffer(src);
    gpu.destroyBuffer(dst);
  }
}

/** Units per nanosecond = G units per second. */
function rate(units: number, measured: Measured): number {
  return units / (measured.ms * 1e6);
}

function mib(bytes: number): string {
  return `${Math.round(bytes / 2 ** 20)} MiB`;
}
