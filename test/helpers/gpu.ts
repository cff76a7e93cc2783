import { createNodeGpu, type NodeGpuOptions } from '../../src/gpu/node.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';

/** A real Dawn device for tests (the adapter from ABLITERATE_ADAPTER, else the best found). */
export function testGpu(options: NodeGpuOptions = {}): Promise<Gpu> {
  return createNodeGpu(options);
}

/** A storage buffer filled with NaN, so any element a kernel fails to write shows up in the result. */
export function poisonedBuffer(gpu: Gpu, count: number, label: string): GPUBuffer {
  const buffer = gpu.createBuffer(count * 4, label);
  gpu.write(buffer, new Float32Array(count).fill(Number.NaN));
  return buffer;
}

export function f32(values: ArrayLike<number>): Float32Array {
  return Float32Array.from(values as ArrayLike<number>);
}
