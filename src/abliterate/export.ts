import { bytesPerElement, unpackFromU32 } from '../io/dtype.ts';
import type { ModelWriteTarget, TensorToWrite } from '../io/safetensorsWriter.ts';
import { writeSafetensorsModel } from '../io/safetensorsWriter.ts';
import type { LlamaModel } from '../model/model.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import { isResident } from '../model/weights.ts';

/** Files of a model folder that are not weights and are copied unchanged (tokenizer, configs, templates, docs). */
function isCompanionFile(name: string): boolean {
  return !name.endsWith('.safetensors') && name !== 'model.safetensors.index.json' && !name.startsWith('.') && !name.endsWith('.bin') && !name.endsWith('.pt');
}

export interface ExportOptions {
  /** Stored in every shard's `__metadata__` under "abliteration" (JSON). */
  parameters: Readonly<Record<string, unknown>>;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Writes the model as it is now on the GPU, in the input's dtypes and shard layout: tensors a cut
 * changed are read back from the GPU; every other tensor is copied byte for byte from the input.
 * Shards are written one after another, each tensor streamed, so host memory holds one chunk.
 */
export async function exportModel(model: LlamaModel, target: ModelWriteTarget, options: ExportOptions): Promise<void> {
  const { tensors, weights } = model;
  const modified = (name: string): Promise<Uint8Array> | AsyncIterable<Uint8Array> =>
    isResident(weights) ? readBack(model, model.matrices().get(name)!) : weights.source.read(name);
  const list: TensorToWrite[] = [...tensors.allTensors.values()].map((info) => ({
    name: info.name,
    dtype: info.dtype,
    shape: info.shape,
    bytes: () => (model.modifiedTensors.has(info.name) ? modified(info.name) : tensors.read(info.name)),
  }));
  const inputMetadata = tensors.metadata.get(tensors.files[0]!) ?? {};
  const metadata = { ...inputMetadata, format: inputMetadata.format ?? 'pt', abliteration: JSON.stringify(options.parameters) };
  const companions = (await model.folder.list()).filter(isCompanionFile);
  const total = companions.length + tensors.files.length;
  let done = 0;
  for (const file of companions) {
    const source = await model.folder.open(file);
    await target.writeFile(file, await source.read(0, source.size));
    options.onProgress?.(++done, total);
  }
  await writeSafetensorsModel(target, list, {
    weightMap: tensors.sharded ? tensors.weightMap : undefined,
    metadata,
    indexMetadata: tensors.sharded ? carriedIndexMetadata(tensors.indexMetadata) : undefined,
    onShard: () => options.onProgress?.(++done, total),
  });
}

/** The stored bytes of a matrix on the GPU, chunk by chunk. */
async function* readBack(model: LlamaModel, matrix: PackedMatrix): AsyncIterable<Uint8Array> {
  const elementBytes = bytesPerElement(matrix.dtype);
  for (const chunk of matrix.chunks) {
    const count = chunk.rows * matrix.cols;
    const words = new Uint32Array(await model.gpu.read(chunk.buffer, 0, Math.ceil((count * elementBytes) / 4) * 4));
    yield unpackFromU32(words, matrix.dtype, count);
  }
}

/** The input index's own metadata fields, except the size, which the writer recomputes. */
function carriedIndexMetadata(metadata: Readonly<Record<string, unknown>>): Record<string, string | number> {
  return Object.fromEntries(
    Object.entries(metadata).filter((entry): entry is [string, string | number] => entry[0] !== 'total_size' && (typeof entry[1] === 'string' || typeof entry[1] === 'number')),
  );
}
