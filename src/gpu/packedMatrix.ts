import type { Gpu } from '../gpu/gpu.ts';
import { bytesPerElement, type Dtype } from '../io/dtype.ts';

/** One row range of a matrix in its own GPU buffer. */
export interface MatrixChunk {
  buffer: GPUBuffer;
  rowStart: number;
  rows: number;
}

/**
 * A 2-D weight [rows, cols] kept on the GPU in its file dtype, packed in u32 words and decoded by
 * the kernels. A matrix larger than one storage binding is split into row chunks.
 */
export interface PackedMatrix {
  name: string;
  dtype: Dtype;
  rows: number;
  cols: number;
  chunks: MatrixChunk[];
}

/** The defines that select a kernel's weight decoder (shaders/common/weights.wgsl). */
export function weightDefines(dtype: Dtype): { WEIGHT_F32: boolean; WEIGHT_BF16: boolean } {
  return { WEIGHT_F32: dtype === 'F32', WEIGHT_BF16: dtype === 'BF16' };
}

/** Largest number of rows per chunk so that a chunk fits one binding and starts on a whole u32 word. */
export function rowsPerChunk(rows: number, cols: number, bytesPerElement: number, maxBindingBytes: number): number {
  const rowBytes = cols * bytesPerElement;
  let perChunk = Math.max(1, Math.floor(maxBindingBytes / rowBytes));
  if (perChunk >= rows) return rows;
  // Chunks of 16-bit elements must begin on an even element so they start at a word boundary.
  if (bytesPerElement === 2 && (perChunk * cols) % 2 === 1) perChunk -= 1;
  if (perChunk < 1) throw new Error(`a single row of ${rowBytes} bytes does not fit a storage binding of ${maxBindingBytes} bytes`);
  return perChunk;
}

/**
 * Uploads a [rows, cols] matrix in its file dtype, split into row chunks that each fit one storage
 * binding; `readRows` supplies the stored bytes of a row range, so host memory holds one chunk.
 */
export async function uploadMatrix(
  gpu: Gpu,
  name: string,
  dtype: Dtype,
  rows: number,
  cols: number,
  readRows: (rowStart: number, rowCount: number) => Promise<Uint8Array>,
): Promise<PackedMatrix> {
  const perChunk = rowsPerChunk(rows, cols, bytesPerElement(dtype), gpu.limits.maxStorageBufferBindingSize);
  const chunks: MatrixChunk[] = [];
  try {
    for (let rowStart = 0; rowStart < rows; rowStart += perChunk) {
      const count = Math.min(perChunk, rows - rowStart);
      const bytes = await readRows(rowStart, count);
      chunks.push({ buffer: gpu.upload(bytes, chunks.length ? `${name}[${rowStart}:]` : name), rowStart, rows: count });
    }
  } catch (error) {
    for (const c of chunks) gpu.destroyBuffer(c.buffer);
    throw error;
  }
  return { name, dtype, rows, cols, chunks };
}
