import { bytesPerElement, unpackFromU32 } from '../io/dtype.ts';
import type { ByteSource } from '../io/byteSource.ts';
import type { ByteSink, ModelWriteTarget, TensorToWrite } from '../io/safetensorsWriter.ts';
import { writeSafetensorsModel } from '../io/safetensorsWriter.ts';
import type { LlamaModel } from '../model/model.ts';
import type { PackedMatrix } from '../gpu/packedMatrix.ts';
import { isResident } from '../model/weights.ts';

/**
 * Weights in formats other than safetensors, and their indexes: not copied, since they would still
 * hold the uncut model (and can be many GB: GGUF, ONNX, PyTorch, TensorFlow, Flax, Core ML).
 */
const OTHER_WEIGHT_FILE = /\.(gguf|ggml|onnx|onnx_data|h5|hdf5|keras|bin|pt|pth|ckpt|msgpack|tflite|ot|pkl|pickle|npz|npy|mlmodel|engine|plan)$|^(pytorch_model|tf_model|flax_model)[\w.-]*\.index\.json$/i;

export type FilePlan = 'copy' | 'rewrite' | 'hidden' | 'other-weights';

/**
 * What the export does with a file of the input folder whose weight files are `shards`. Other
 * safetensors files (a `consolidated.safetensors` in another layout) hold the uncut weights too.
 */
export function planFile(name: string, shards: ReadonlySet<string>): FilePlan {
  if (shards.has(name) || name === 'model.safetensors.index.json') return 'rewrite';
  if (name.startsWith('.')) return 'hidden';
  if (OTHER_WEIGHT_FILE.test(name) || name.endsWith('.safetensors')) return 'other-weights';
  return 'copy';
}

/** What an export did with the files of the input folder besides the safetensors weights. */
export interface ExportFiles {
  /** Copied unchanged: configs, tokenizer, chat template, README, LICENSE, anything else not weights. */
  copied: string[];
  /** Left out and worth saying: weights in other formats. (Hidden files such as .gitattributes are left out silently.) */
  skipped: { file: string; reason: string }[];
}

/** Bytes per read when copying a file: memory stays bounded whatever the file's size. */
const COPY_CHUNK_BYTES = 4 * 2 ** 20;

export interface ExportOptions {
  /** Stored in every shard's `__metadata__` under "abliteration" (JSON). */
  parameters: Readonly<Record<string, unknown>>;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Writes the model as it is now on the GPU, in the input's dtypes and shard layout: tensors a cut
 * changed are read back from the GPU; every other tensor is copied byte for byte from the input.
 * Shards are written one after another, each tensor streamed, so host memory holds one chunk.
 * The other files directly in the input folder are copied chunk by chunk, except weights in other
 * formats and hidden files (`planFile`); subfolders are not copied. Returns what was copied and
 * what was left out.
 */
export async function exportModel(model: LlamaModel, target: ModelWriteTarget, options: ExportOptions): Promise<ExportFiles> {
  const { tensors, weights } = model;
  const modified = (name: string): Promise<Uint8Array> | AsyncIterable<Uint8Array> =>
    isResident(weights) ? readBackParts(model, model.tensorMatrices(name)) : weights.source.read(name);
  // Under the names of the files (a multimodal checkpoint's text decoder is read under other names).
  const list: TensorToWrite[] = [...tensors.allTensors.values()].map((info) => ({
    name: tensors.fileName(info.name),
    dtype: info.dtype,
    shape: info.shape,
    bytes: () => (model.isTensorModified(info.name) ? modified(info.name) : tensors.read(info.name)),
  }));
  const inputMetadata = tensors.metadata.get(tensors.files[0]!) ?? {};
  const metadata = { ...inputMetadata, format: inputMetadata.format ?? 'pt', abliteration: JSON.stringify(options.parameters) };
  const files: ExportFiles = { copied: [], skipped: [] };
  const shards = new Set(tensors.files);
  for (const file of await model.folder.list()) {
    const plan = planFile(file, shards);
    if (plan === 'copy') files.copied.push(file);
    else if (plan === 'other-weights') files.skipped.push({ file, reason: 'weights in another format (they would still hold the uncut model)' });
  }
  const total = files.copied.length + tensors.files.length;
  let done = 0;
  for (const file of files.copied) {
    await copyFile(await model.folder.open(file), await target.sink(file));
    options.onProgress?.(++done, total);
  }
  await writeSafetensorsModel(target, list, {
    weightMap: tensors.sharded ? new Map([...tensors.weightMap].map(([name, file]) => [tensors.fileName(name), file])) : undefined,
    metadata,
    indexMetadata: tensors.sharded ? carriedIndexMetadata(tensors.indexMetadata) : undefined,
    onShard: () => options.onProgress?.(++done, total),
  });
  return files;
}

/** Copies a file chunk by chunk: a README of gigabytes costs one chunk of memory. */
async function copyFile(source: ByteSource, sink: ByteSink): Promise<void> {
  try {
    for (let offset = 0; offset < source.size; offset += COPY_CHUNK_BYTES) {
      await sink.write(await source.read(offset, Math.min(COPY_CHUNK_BYTES, source.size - offset)));
    }
    await sink.close();
  } catch (error) {
    await sink.abort();
    throw error;
  }
}

/** The stored bytes of a tensor's matrices on the GPU (one, or the parts of a fused tensor in row order). */
async function* readBackParts(model: LlamaModel, parts: readonly PackedMatrix[]): AsyncIterable<Uint8Array> {
  for (const matrix of parts) yield* readBack(model, matrix);
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
