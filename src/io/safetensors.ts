/**
 * Safetensors reader: single files and sharded models (`model.safetensors.index.json`), streamed
 * through `ByteSource` ranges — the header first, then each tensor's bytes when asked for.
 *
 * Format: 8 bytes little-endian u64 `N`; `N` bytes of UTF-8 JSON (an object, possibly padded with
 * trailing spaces); then the data region, which starts at `8 + N`. Each tensor entry is
 * `{"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}` with offsets relative to the
 * data region; the optional `__metadata__` entry maps strings to strings.
 *
 * Every structural fault is a `SafetensorsError` naming the file. The checks are those of the
 * reference implementation (huggingface/safetensors) plus duplicate keys, which JSON parsers would
 * otherwise resolve silently. One deliberate difference: the reference requires the tensors to
 * tile the data region exactly; this reader tolerates unused bytes between tensors and after the
 * last one (it never reads them), while still rejecting overlaps and anything outside the file.
 *
 * Tensors of every dtype of the format are validated; only F32, F16 and BF16 appear in `tensors`.
 * The others (I64 buffers, U8 masks, ...) are listed in `allTensors`, readable as raw bytes, and
 * `tensor(name)` on one of them throws "unsupported dtype".
 */
import { FileMissingError, type ByteSource, type FileFolder } from './byteSource.ts';
import { isSupportedDtype, SUPPORTED_DTYPES, type Dtype } from './dtype.ts';
import { jsonErrorReason } from './json.ts';

export type { Dtype } from './dtype.ts';
export { bytesPerElement, SUPPORTED_DTYPES, isSupportedDtype } from './dtype.ts';

/** Every dtype of the safetensors format (v0.8), with its size in bits, in the reference's order. */
export const STORED_DTYPE_BITS = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
} as const;

/** Any dtype a safetensors file may declare. */
export type StoredDtype = keyof typeof STORED_DTYPE_BITS;

export function isStoredDtype(value: unknown): value is StoredDtype {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(STORED_DTYPE_BITS, value);
}

/** Largest header the reference implementation accepts. */
export const MAX_HEADER_BYTES = 100_000_000;
export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

/** A tensor as stored, whatever its dtype. */
export interface StoredTensorInfo {
  readonly name: string;
  readonly dtype: StoredDtype;
  readonly shape: readonly number[];
  /** File name (relative to the model folder). */
  readonly file: string;
  /** Absolute offset of the first byte in the file. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

/** A tensor the engine can compute with. */
export interface TensorInfo extends StoredTensorInfo {
  readonly dtype: Dtype;
}

export type SafetensorsErrorKind =
  /** File shorter than the 8-byte header length. */
  | 'too-short'
  /** Header length runs past the end of the file. */
  | 'header-length'
  /** Header length above 100 MB. */
  | 'header-too-large'
  /** Header is not valid UTF-8. */
  | 'header-encoding'
  /** Header is not valid JSON. */
  | 'header-json'
  /** Header JSON is not an object. */
  | 'header-not-object'
  /** The same key twice in one JSON object. */
  | 'duplicate-key'
  /** `__metadata__` is not an object of strings. */
  | 'metadata'
  /** A tensor entry is not an object, or its dtype or shape is missing or malformed. */
  | 'tensor-entry'
  /** A dtype the format does not define. */
  | 'unknown-dtype'
  /** `data_offsets` is not two non-negative integers with begin ≤ end. */
  | 'offsets'
  /** A tensor's bytes lie past the end of the file. */
  | 'out-of-bounds'
  /** `data_offsets` span ≠ product(shape) × dtype size. */
  | 'size-mismatch'
  /** Two tensors share bytes. */
  | 'overlap'
  /** The index file is malformed. */
  | 'index'
  /** The index names a shard file that is not in the folder. */
  | 'shard-missing'
  /** The index names a tensor its shard does not contain. */
  | 'shard-tensor-missing'
  /** The folder has neither `model.safetensors` nor `model.safetensors.index.json`. */
  | 'no-weights'
  /** The tensor asked for does not exist. */
  | 'tensor-missing'
  /** The tensor exists but its dtype is not F32, F16 or BF16. */
  | 'unsupported-dtype'
  /** Reading bytes failed (file changed or truncated since it was opened, I/O error). */
  | 'read';

/** A malformed or unreadable safetensors file or model folder. The message names the file. */
export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
  constructor(
    readonly kind: SafetensorsErrorKind,
    /** The faulty file, relative to the model folder (or the folder, for `no-weights`). */
    readonly file: string,
    message: string,
    /** The tensor concerned, when there is one. */
    readonly tensor?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface OpenOptions {
  /** How messages name the file (e.g. "models/tiny/model.safetensors"); defaults to the source's name. */
  label?: string;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** One safetensors file, its header parsed and validated; tensor bytes are read on demand. */
export class SafetensorsFile {
  /** Name of the file (the source's name). */
  readonly name: string;
  /** How messages name the file. */
  readonly label: string;
  readonly size: number;
  /** `N`, the JSON header's length in bytes. */
  readonly headerLength: number;
  /** Absolute offset of the data region (`8 + N`). */
  readonly dataOffset: number;
  /** The F32, F16 and BF16 tensors, in file order. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** Every tensor, whatever its dtype, in file order. */
  readonly allTensors: ReadonlyMap<string, StoredTensorInfo>;
  /** The `__metadata__` entry (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;

  private constructor(
    private readonly source: ByteSource,
    label: string,
    headerLength: number,
    all: StoredTensorInfo[],
    metadata: Record<string, string>,
  ) {
    this.name = source.name;
    this.label = label;
    this.size = source.size;
    this.headerLength = headerLength;
    this.dataOffset = 8 + headerLength;
    this.allTensors = new Map(all.map((info) => [info.name, info]));
    this.tensors = new Map(all.filter((info): info is TensorInfo => isSupportedDtype(info.dtype)).map((info) => [info.name, info]));
    this.metadata = Object.freeze(metadata);
  }

  /** Reads and validates the header (two reads: the length, then the JSON). */
  static async open(source: ByteSource, options: OpenOptions = {}): Promise<SafetensorsFile> {
    const file = source.name;
    const label = options.label ?? file;
    const fail = (kind: SafetensorsErrorKind, detail: string, tensor?: string): never => {
      throw new SafetensorsError(kind, file, `${label}: ${detail}`, tensor);
    };
    const size = source.size;
    if (!Number.isSafeInteger(size) || size < 8) {
      fail('too-short', `file is ${size} bytes, too short for a safetensors file (the header length alone takes 8 bytes)`);
    }
    const prefix = await readBytes(source, label, 0, 8, 'the header length');
    const declared = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
    if (declared > BigInt(MAX_HEADER_BYTES)) {
      // The declared length is the file's first 8 bytes: never shown, the file may be anything.
      fail('header-too-large', `the header length in the first 8 bytes is larger than the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file, or a corrupt one)`);
    }
    const headerLength = Number(declared);
    if (8 + headerLength > size) {
      fail('header-length', `the header length in the first 8 bytes runs past the end of the file (${size} bytes): the file is truncated, or not a safetensors file`);
    }
    const headerBytes = await readBytes(source, label, 8, headerLength, 'the header');
    let text: string;
    try {
      text = utf8.decode(headerBytes);
    } catch {
      return fail('header-encoding', 'header is not valid UTF-8');
    }
    const header = parseJsonObject(text, (kind, detail) => fail(kind === 'json' ? 'header-json' : kind === 'not-object' ? 'header-not-object' : 'duplicate-key', `header ${detail}`));

    const dataLength = size - 8 - headerLength;
    let metadata: Record<string, string> = {};
    const all: StoredTensorInfo[] = [];
    for (const [name, entry] of Object.entries(header)) {
      if (name === '__metadata__') {
        metadata = parseMetadata(entry, (detail) => fail('metadata', `__metadata__ ${detail}`));
        continue;
      }
      const quoted = JSON.stringify(name);
      if (!isPlainObject(entry)) fail('tensor-entry', `tensor ${quoted}: entry is ${describe(entry)}, expected an object with dtype, shape and data_offsets`, name);
      const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
      if (dtype === undefined) fail('tensor-entry', `tensor ${quoted} has no dtype`, name);
      if (typeof dtype !== 'string') fail('tensor-entry', `tensor ${quoted}: dtype is ${describe(dtype)}, expected a string such as "BF16"`, name);
      if (!isStoredDtype(dtype)) {
        fail('unknown-dtype', `unsupported dtype ${JSON.stringify(dtype)} in tensor ${quoted} (supported: ${SUPPORTED_DTYPES.join(', ')}; not a safetensors dtype at all)`, name);
      }
      const storedDtype = dtype as StoredDtype;
      if (shape === undefined) fail('tensor-entry', `tensor ${quoted} has no shape`, name);
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
        fail('tensor-entry', `tensor ${quoted}: shape ${short(shape)} is not a list of non-negative integers`, name);
      }
      const dims = shape as number[];
      if (offsets === undefined) fail('offsets', `tensor ${quoted} has no data_offsets`, name);
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && (o as number) >= 0)) {
        fail('offsets', `tensor ${quoted}: data_offsets ${short(offsets)} is not two non-negative integers [begin, end]`, name);
      }
      const [begin, end] = offsets as [number, number];
      if (begin > end) fail('offsets', `tensor ${quoted}: data_offsets [${begin}, ${end}] end before they begin`, name);
      const bits = STORED_DTYPE_BITS[storedDtype];
      const count = elementCountOf(dims);
      const span = end - begin;
      if (count === undefined || count * bits !== span * 8) {
        const expected = count === undefined ? 'more bytes than any file holds' : `${(count * bits) / 8} bytes`;
        fail('size-mismatch', `tensor ${quoted}: shape [${dims.join(', ')}] of ${storedDtype} takes ${expected}, but data_offsets [${begin}, ${end}] span ${span}`, name);
      }
      if (end > dataLength) {
        fail('out-of-bounds', `tensor ${quoted}: data_offsets [${begin}, ${end}] run past the end of the file (the data region holds ${dataLength} bytes, from offset ${8 + headerLength} to ${size})`, name);
      }
      all.push(Object.freeze({ name, dtype: storedDtype, shape: Object.freeze(dims.slice()), file, byteOffset: 8 + headerLength + begin, byteLength: span }));
    }
    all.sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    let previous: StoredTensorInfo | undefined;
    for (const info of all) {
      if (info.byteLength === 0) continue;
      if (previous && info.byteOffset < previous.byteOffset + previous.byteLength) {
        const range = (t: StoredTensorInfo) => `[${t.byteOffset - 8 - headerLength}, ${t.byteOffset - 8 - headerLength + t.byteLength})`;
        fail('overlap', `tensors ${JSON.stringify(previous.name)} ${range(previous)} and ${JSON.stringify(info.name)} ${range(info)} overlap`, info.name);
      }
      previous = info;
    }
    return new SafetensorsFile(source, label, headerLength, all, metadata);
  }

  has(name: string): boolean {
    return this.allTensors.has(name);
  }

  /** The tensor's description; throws if it is missing or of a dtype the engine cannot compute with. */
  tensor(name: string): TensorInfo {
    return supported(this.stored(name), this.label);
  }

  /** The tensor's bytes (any dtype), read in one range. May be a view of a larger buffer. */
  async read(name: string): Promise<Uint8Array> {
    const info = this.stored(name);
    return readBytes(this.source, this.label, info.byteOffset, info.byteLength, `tensor ${JSON.stringify(name)}`, name);
  }

  /** `byteLength` bytes of the tensor starting `byteStart` bytes into it (to split huge tensors by rows). */
  async readRange(name: string, byteStart: number, byteLength: number): Promise<Uint8Array> {
    const info = this.stored(name);
    if (!Number.isSafeInteger(byteStart) || !Number.isSafeInteger(byteLength) || byteStart < 0 || byteLength < 0 || byteStart + byteLength > info.byteLength) {
      throw new RangeError(`${this.label}: bytes [${byteStart}, ${byteStart + byteLength}) are outside tensor ${JSON.stringify(name)} (${info.byteLength} bytes)`);
    }
    return readBytes(this.source, this.label, info.byteOffset + byteStart, byteLength, `tensor ${JSON.stringify(name)}`, name);
  }

  private stored(name: string): StoredTensorInfo {
    const info = this.allTensors.get(name);
    if (!info) throw new SafetensorsError('tensor-missing', this.name, `${this.label}: tensor ${JSON.stringify(name)} is missing (the file has ${this.allTensors.size} tensors)`, name);
    return info;
  }
}

/**
 * Where multimodal checkpoints keep their text decoder, as [prefix in the files, prefix the engine
 * reads] pairs: Gemma 3's Gemma3ForConditionalGeneration as published (`language_model.model.*`,
 * `language_model.lm_head.*`) and as newer transformers save it (`model.language_model.*`). The
 * decoder's tensors are read under a causal LM's names (`model.*`, `lm_head.*`); the others (the
 * vision tower, the projector) keep their names, are not used, and are exported unchanged.
 */
const TEXT_DECODER_LAYOUTS: readonly (readonly [file: string, engine: string])[][] = [
  [
    ['language_model.model.', 'model.'],
    ['language_model.lm_head.', 'lm_head.'],
  ],
  [['model.language_model.', 'model.']],
];

/** The layout of a multimodal checkpoint whose text decoder is under a prefix, if the names are one. */
function textDecoderLayout(names: ReadonlySet<string> | ReadonlyMap<string, unknown>): readonly (readonly [string, string])[] | undefined {
  if (names.has('model.embed_tokens.weight')) return undefined;
  return TEXT_DECODER_LAYOUTS.find((layout) => names.has(`${layout[0]![0]}embed_tokens.weight`));
}

/**
 * The weights of a model folder: `model.safetensors`, or the shards listed by
 * `model.safetensors.index.json`. When both exist the single file is used, as transformers does.
 * A multimodal checkpoint's text decoder (`TEXT_DECODER_LAYOUTS`) is read under a causal LM's
 * tensor names; `fileName` gives a tensor's name in the files.
 */
export class SafetensorsModel {
  /** Each shard file, opened once. */
  readonly shards: ReadonlyMap<string, SafetensorsFile>;
  /** The F32, F16 and BF16 tensors of all files (shard order, then file order). */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** Every tensor, whatever its dtype. */
  readonly allTensors: ReadonlyMap<string, StoredTensorInfo>;
  /** Tensor name → file, as the index lists it (all in `model.safetensors` for a single file). */
  readonly weightMap: ReadonlyMap<string, string>;
  /** Each file's `__metadata__`, by file name. */
  readonly metadata: ReadonlyMap<string, Readonly<Record<string, string>>>;
  /**
   * The prefix a multimodal checkpoint keeps its text decoder under in the files (e.g.
   * `language_model.model.`), or undefined when the names are a causal LM's.
   */
  readonly textDecoderPrefix: string | undefined;
  /** Engine name → name in the files, for the tensors whose names differ. */
  private readonly fileNames = new Map<string, string>();

  private constructor(
    /** The folder's name, for messages. */
    readonly folder: string,
    /** `model.safetensors.index.json` for a sharded model; undefined for a single file. */
    readonly indexFile: string | undefined,
    /** The index's `metadata` object (e.g. `total_size`); empty for a single file. */
    readonly indexMetadata: Readonly<Record<string, unknown>>,
    /** The weight files, sorted by name. */
    readonly files: readonly string[],
    shards: Map<string, SafetensorsFile>,
    weightMap: Map<string, string>,
  ) {
    this.shards = shards;
    const layout = textDecoderLayout(weightMap);
    this.textDecoderPrefix = layout?.[0]![0];
    const engineName = (name: string) => {
      const match = layout?.find(([file]) => name.startsWith(file));
      return match ? match[1] + name.slice(match[0].length) : name;
    };
    const all = new Map<string, StoredTensorInfo>();
    const renamed = new Map<string, string>();
    for (const file of files) {
      for (const info of shards.get(file)!.allTensors.values()) {
        if (weightMap.get(info.name) !== file) continue;
        const name = engineName(info.name);
        if (name !== info.name) {
          if (weightMap.has(name)) throw new SafetensorsError('tensor-entry', file, `${folder}: tensors ${JSON.stringify(info.name)} and ${JSON.stringify(name)} would both be the text decoder's ${JSON.stringify(name)}`, name);
          this.fileNames.set(name, info.name);
        }
        all.set(name, name === info.name ? info : Object.freeze({ ...info, name }));
      }
    }
    for (const [name, file] of weightMap) renamed.set(engineName(name), file);
    this.weightMap = renamed;
    this.allTensors = all;
    this.tensors = new Map([...all].filter((entry): entry is [string, TensorInfo] => isSupportedDtype(entry[1].dtype)));
    this.metadata = new Map(files.map((file) => [file, shards.get(file)!.metadata]));
  }

  static async open(folder: FileFolder): Promise<SafetensorsModel> {
    const where = (file: string) => `${folder.name.replace(/[/\\]+$/, '')}/${file}`;
    if (await folder.has(SINGLE_FILE)) {
      const file = await openShard(folder, SINGLE_FILE, where(SINGLE_FILE));
      const weightMap = new Map([...file.allTensors.keys()].map((name) => [name, SINGLE_FILE]));
      return new SafetensorsModel(folder.name, undefined, Object.freeze({}), [SINGLE_FILE], new Map([[SINGLE_FILE, file]]), weightMap);
    }
    if (!(await folder.has(INDEX_FILE))) {
      const hint = (await folder.has('pytorch_model.bin')) || (await folder.has('pytorch_model.bin.index.json')) ? ' (it has PyTorch .bin weights; only safetensors are read: convert them first)' : '';
      throw new SafetensorsError('no-weights', folder.name, `${folder.name}: no ${SINGLE_FILE} or ${INDEX_FILE} in the folder${hint}`);
    }
    const indexLabel = where(INDEX_FILE);
    const fail = (kind: SafetensorsErrorKind, detail: string, tensor?: string): never => {
      throw new SafetensorsError(kind, INDEX_FILE, `${indexLabel}: ${detail}`, tensor);
    };
    let text: string;
    try {
      text = await folder.readText(INDEX_FILE);
    } catch (error) {
      throw new SafetensorsError('read', INDEX_FILE, `${indexLabel}: cannot be read: ${messageOf(error)}`, undefined, { cause: error });
    }
    const index = parseJsonObject(text, (_kind, detail) => fail('index', detail));
    const rawMap = index['weight_map'];
    if (!isPlainObject(rawMap)) fail('index', `weight_map is ${describe(rawMap)}, expected an object mapping tensor names to shard files`);
    const rawMeta = index['metadata'];
    if (rawMeta !== undefined && rawMeta !== null && !isPlainObject(rawMeta)) fail('index', `metadata is ${describe(rawMeta)}, expected an object`);
    const weightMap = new Map<string, string>();
    for (const [name, file] of Object.entries(rawMap as Record<string, unknown>)) {
      if (typeof file !== 'string' || file === '') fail('index', `weight_map entry for tensor ${JSON.stringify(name)} is ${describe(file)}, expected a shard file name`, name);
      const shard = file as string;
      if (!isSafeRelativePath(shard)) fail('index', `weight_map puts tensor ${JSON.stringify(name)} in ${JSON.stringify(shard)}, which is not a file inside the model folder`, name);
      weightMap.set(name, shard);
    }
    if (weightMap.size === 0) fail('index', 'weight_map lists no tensors');
    const files = [...new Set(weightMap.values())].sort();
    for (const file of files) {
      if (!(await folder.has(file))) {
        const listed = [...weightMap].filter(([, f]) => f === file).map(([name]) => name);
        const first = listed[0]!;
        throw new SafetensorsError(
          'shard-missing',
          INDEX_FILE,
          `${indexLabel}: shard ${file} is missing from the folder (it should hold ${JSON.stringify(first)}${listed.length > 1 ? ` and ${listed.length - 1} more tensors` : ''})`,
          first,
        );
      }
    }
    const opened = await Promise.allSettled(files.map((file) => openShard(folder, file, where(file))));
    const shards = new Map<string, SafetensorsFile>();
    opened.forEach((result, i) => {
      if (result.status === 'rejected') throw result.reason;
      shards.set(files[i]!, result.value);
    });
    for (const [name, file] of weightMap) {
      if (!shards.get(file)!.has(name)) {
        throw new SafetensorsError('shard-tensor-missing', file, `${where(file)}: tensor ${JSON.stringify(name)} is listed in ${INDEX_FILE} but absent from this shard`, name);
      }
    }
    const indexMetadata = Object.freeze(isPlainObject(rawMeta) ? { ...(rawMeta as Record<string, unknown>) } : {});
    return new SafetensorsModel(folder.name, INDEX_FILE, indexMetadata, files, shards, weightMap);
  }

  get sharded(): boolean {
    return this.indexFile !== undefined;
  }

  /** The tensor's name in the files (differs from the engine's for a multimodal checkpoint's text decoder). */
  fileName(name: string): string {
    return this.fileNames.get(name) ?? name;
  }

  has(name: string): boolean {
    return this.allTensors.has(name);
  }

  /** The tensor's description; throws if it is missing or of a dtype the engine cannot compute with. */
  tensor(name: string): TensorInfo {
    return supported(this.stored(name), `${this.folder}/${this.weightMap.get(name)!}`);
  }

  async read(name: string): Promise<Uint8Array> {
    this.stored(name);
    return this.shards.get(this.weightMap.get(name)!)!.read(this.fileName(name));
  }

  async readRange(name: string, byteStart: number, byteLength: number): Promise<Uint8Array> {
    this.stored(name);
    return this.shards.get(this.weightMap.get(name)!)!.readRange(this.fileName(name), byteStart, byteLength);
  }

  private stored(name: string): StoredTensorInfo {
    const info = this.allTensors.get(name);
    if (!info) {
      const file = this.indexFile ?? SINGLE_FILE;
      throw new SafetensorsError('tensor-missing', file, `${this.folder}: tensor ${JSON.stringify(name)} is missing (the model has ${this.allTensors.size} tensors)`, name);
    }
    return info;
  }
}

// ---------------------------------------------------------------------------------------------

async function openShard(folder: FileFolder, file: string, label: string): Promise<SafetensorsFile> {
  let source: ByteSource;
  try {
    source = await folder.open(file);
  } catch (error) {
    if (error instanceof FileMissingError) throw new SafetensorsError('shard-missing', file, `${label}: file is missing`, undefined, { cause: error });
    throw new SafetensorsError('read', file, `${label}: cannot be opened: ${messageOf(error)}`, undefined, { cause: error });
  }
  return SafetensorsFile.open(source, { label });
}

function supported(info: StoredTensorInfo, label: string): TensorInfo {
  if (!isSupportedDtype(info.dtype)) {
    throw new SafetensorsError(
      'unsupported-dtype',
      info.file,
      `${label}: unsupported dtype ${info.dtype} in tensor ${JSON.stringify(info.name)} (supported: ${SUPPORTED_DTYPES.join(', ')})`,
      info.name,
    );
  }
  return info as TensorInfo;
}

/** Reads exactly `length` bytes; any failure becomes a `SafetensorsError` naming what was read. */
async function readBytes(source: ByteSource, label: string, offset: number, length: number, what: string, tensor?: string): Promise<Uint8Array> {
  if (length === 0) return new Uint8Array(0);
  let bytes: Uint8Array;
  try {
    bytes = await source.read(offset, length);
  } catch (error) {
    throw new SafetensorsError('read', source.name, `${label}: reading ${what} (${length} bytes at offset ${offset}) failed: ${messageOf(error)}`, tensor, { cause: error });
  }
  if (!(bytes instanceof Uint8Array) || bytes.byteLength !== length) {
    throw new SafetensorsError('read', source.name, `${label}: reading ${what} (${length} bytes at offset ${offset}) returned ${bytes instanceof Uint8Array ? bytes.byteLength : 'no'} bytes (was the file truncated?)`, tensor);
  }
  return bytes;
}

/** Number of elements, or undefined when it exceeds anything a file could hold (2^47). */
function elementCountOf(shape: readonly number[]): number | undefined {
  if (shape.includes(0)) return 0;
  let count = 1;
  for (const d of shape) {
    count *= d;
    if (count > 2 ** 47) return undefined;
  }
  return count;
}

function parseMetadata(entry: unknown, fail: (detail: string) => never): Record<string, string> {
  if (entry === null) return {};
  if (!isPlainObject(entry)) return fail(`is ${describe(entry)}, expected an object of strings`);
  for (const [key, value] of Object.entries(entry as Record<string, unknown>)) {
    if (typeof value !== 'string') fail(`entry ${JSON.stringify(key)} is ${describe(value)}, expected a string`);
  }
  // fromEntries defines own properties, so a "__proto__" key stays a plain key.
  return Object.fromEntries(Object.entries(entry as Record<string, string>));
}

type JsonFault = 'json' | 'not-object' | 'duplicate';

/** JSON.parse that insists on an object and rejects duplicate keys at any depth. */
function parseJsonObject(text: string, fail: (kind: JsonFault, detail: string) => never): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return fail('json', `is not valid JSON (${jsonErrorReason(error, text)})`);
  }
  if (!isPlainObject(value)) return fail('not-object', `is ${describe(value)}, expected a JSON object`);
  const duplicate = findDuplicateKey(text);
  if (duplicate) {
    return fail('duplicate', `has key ${JSON.stringify(duplicate.key)} twice${duplicate.parent === undefined ? '' : ` in ${JSON.stringify(duplicate.parent)}`}`);
  }
  return value as Record<string, unknown>;
}

interface Frame {
  keys: Set<string> | undefined; // undefined for arrays
  expectKey: boolean;
  name: string | undefined;
  lastKey: string | undefined;
}

/**
 * The first key repeated within one object of `text`, which must be valid JSON. Iterative, so deep
 * nesting cannot overflow the stack.
 */
export function findDuplicateKey(text: string): { key: string; parent: string | undefined } | undefined {
  const stack: Frame[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    const top = stack[stack.length - 1];
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      stack.push({ keys: c === 0x7b ? new Set() : undefined, expectKey: c === 0x7b, name: top?.keys ? top.lastKey : top?.name, lastKey: undefined });
      i++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      i++;
    } else if (c === 0x2c /* , */) {
      if (top?.keys) top.expectKey = true;
      i++;
    } else if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      while (j < n) {
        const d = text.charCodeAt(j);
        if (d === 0x5c /* \ */) {
          escaped = true;
          j += 2;
        } else if (d === 0x22) {
          break;
        } else {
          j++;
        }
      }
      if (top?.keys && top.expectKey) {
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
        if (top.keys.has(key)) return { key, parent: top.name };
        top.keys.add(key);
        top.lastKey = key;
        top.expectKey = false;
      }
      i = j + 1;
    } else {
      i++; // whitespace, ':', and the characters of numbers, true, false, null
    }
  }
  return undefined;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isSafeRelativePath(file: string): boolean {
  if (file.startsWith('/') || file.startsWith('\\') || /^[a-zA-Z]:/.test(file) || file.includes('\0')) return false;
  return file.split(/[/\\]/).every((part) => part !== '' && part !== '.' && part !== '..');
}

function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  return `${typeof value === 'string' ? 'the string' : `the ${typeof value}`} ${short(value)}`;
}

function short(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
