import { createNodeGpu, type NodeGpuOptions } from '../../src/gpu/node.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { bytesPerElement, decodeToFloat64, encodeFromFloat32, type Dtype } from '../../src/io/dtype.ts';
import { uploadMatrix, type PackedMatrix } from '../../src/gpu/packedMatrix.ts';

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

/** Uploads a [rows, cols] matrix in `dtype` and returns it with the exact values it holds after rounding. */
export async function packedMatrix(
  gpu: Gpu,
  name: string,
  dtype: Dtype,
  rows: number,
  cols: number,
  values: ArrayLike<number>,
): Promise<{ matrix: PackedMatrix; stored: Float64Array }> {
  const bytes = encodeFromFloat32(Float32Array.from(values), dtype);
  const rowBytes = cols * bytesPerElement(dtype);
  const matrix = await uploadMatrix(gpu, name, dtype, rows, cols, async (start, count) => bytes.slice(start * rowBytes, (start + count) * rowBytes));
  return { matrix, stored: decodeToFloat64(bytes, dtype) };
}

export function destroyMatrix(gpu: Gpu, matrix: PackedMatrix): void {
  for (const chunk of matrix.chunks) gpu.destroyBuffer(chunk.buffer);
}
