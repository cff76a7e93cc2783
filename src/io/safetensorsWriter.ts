/**
 * Safetensors writer, streaming: the header is computed from names, dtypes and shapes alone, then
 * each tensor's bytes are asked for, checked and written in turn, so a model is never held in
 * memory whole. The layout is the reference implementation's (huggingface/safetensors): tensors
 * ordered by dtype alignment, largest first, then by name; the JSON written compactly with
 * `__metadata__` first; the header padded with spaces to a multiple of 8 bytes, so every tensor
 * starts aligned to its element size. Same inputs, same bytes as `safetensors.serialize`, except
 * that metadata keys keep their insertion order.
 *
 * Also: shard plans (`planShards`, or `shardsFromWeightMap` to mirror an input's layout), the
 * index file, and `writeSafetensorsModel`, which writes shards and index through any target (an
 * output folder in Node, memory in a browser).
 */
import { INDEX_FILE, isStoredDtype, SINGLE_FILE, STORED_DTYPE_BITS, type StoredDtype } from './safetensors.ts';

/** Where bytes go: a file, a download, memory. */
export interface ByteSink {
  /** For messages. */
  readonly name?: string;
  write(chunk: Uint8Array): Promise<void>;
  /** Everything is written: flush and finish. */
  close(): Promise<void>;
  /** Give up: discard what was written (delete the partial file). Safe to call after a failure. */
  abort(): Promise<void>;
}

export interface TensorToWrite {
  name: string;
  dtype: StoredDtype;
  shape: readonly number[];
  /**
   * The tensor's bytes (little-endian), asked for once, when its turn comes: one array, or chunks
   * (e.g. rows read back from the GPU piece by piece) that together make the whole tensor.
   */
  bytes: () => Promise<Uint8Array> | AsyncIterable<Uint8Array>;
}

/** Where a tensor lands in the file. */
export interface TensorLayout {
  readonly name: string;
  readonly dtype: StoredDtype;
  readonly shape: readonly number[];
  /** Offset in the data region (the header's `data_offsets[0]`). */
  readonly dataOffset: number;
  readonly byteLength: number;
}

export interface SafetensorsLayout {
  /** The 8-byte length followed by the padded JSON header. */
  readonly header: Uint8Array;
  /** The tensors in the order their bytes follow the header. */
  readonly tensors: readonly TensorLayout[];
  readonly dataLength: number;
  /** Size of the whole file. */
  readonly fileLength: number;
}

/** Invalid input to the writer (bad name, shape or dtype, wrong byte count, sink refused a write). */
export class SafetensorsWriteError extends Error {
  override name = 'SafetensorsWriteError';
  constructor(
    message: string,
    readonly tensor?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Order of the reference's `Dtype` enum; tensors are written largest rank first. */
const DTYPE_RANK = new Map(Object.keys(STORED_DTYPE_BITS).map((dtype, i) => [dtype, i]));

/** Bytes taken by `shape` elements of `dtype`; throws a `SafetensorsWriteError` when invalid. */
export function tensorByteLength(name: string, dtype: StoredDtype, shape: readonly number[]): number {
  if (!isStoredDtype(dtype)) throw new SafetensorsWriteError(`tensor ${JSON.stringify(name)}: unknown dtype ${JSON.stringify(dtype)}`, name);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsWriteError(`tensor ${JSON.stringify(name)}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`, name);
  }
  const bits = STORED_DTYPE_BITS[dtype];
  let count = shape.includes(0) ? 0 : 1;
  for (const d of shape) {
    count *= d;
    if (count * bits > Number.MAX_SAFE_INTEGER) throw new SafetensorsWriteError(`tensor ${JSON.stringify(name)}: shape [${shape.join(', ')}] is too large`, name);
  }
  if ((count * bits) % 8 !== 0) {
    throw new SafetensorsWriteError(`tensor ${JSON.stringify(name)}: ${count} elements of ${dtype} (${bits} bits each) are not a whole number of bytes`, name);
  }
  return (count * bits) / 8;
}

/** Computes the header and the position of every tensor, without touching any data. */
export function layoutSafetensors(tensors: readonly Pick<TensorToWrite, 'name' | 'dtype' | 'shape'>[], metadata?: Readonly<Record<string, string>>): SafetensorsLayout {
  const names = new Set<string>();
  for (const t of tensors) {
    if (typeof t.name !== 'string' || t.name === '') throw new SafetensorsWriteError(`tensor name ${JSON.stringify(t.name)} is not a non-empty string`);
    if (t.name === '__metadata__') throw new SafetensorsWriteError('"__metadata__" is reserved and cannot name a tensor', t.name);
    if (names.has(t.name)) throw new SafetensorsWriteError(`tensor ${JSON.stringify(t.name)} is listed twice`, t.name);
    names.add(t.name);
  }
  const sized = tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape], byteLength: tensorByteLength(t.name, t.dtype, t.shape) }));
  sized.sort((a, b) => DTYPE_RANK.get(b.dtype)! - DTYPE_RANK.get(a.dtype)! || compareCodePoints(a.name, b.name));
  let offset = 0;
  const layout: TensorLayout[] = sized.map((t) => {
    const entry = Object.freeze({ name: t.name, dtype: t.dtype, shape: Object.freeze(t.shape), dataOffset: offset, byteLength: t.byteLength });
    offset += t.byteLength;
    return entry;
  });
  const parts: string[] = [];
  if (metadata !== undefined) {
    const fields = Object.entries(metadata).map(([key, value]) => {
      if (typeof value !== 'string') throw new SafetensorsWriteError(`metadata ${JSON.stringify(key)} is ${typeof value}, expected a string`);
      return `${JSON.stringify(key)}:${JSON.stringify(value)}`;
    });
    parts.push(`"__metadata__":{${fields.join(',')}}`);
  }
  for (const t of layout) {
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${t.dataOffset},${t.dataOffset + t.byteLength}]}`);
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + json.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, tensors: layout, dataLength: offset, fileLength: header.byteLength + offset };
}

/**
 * Writes one safetensors file to `sink`, tensor by tensor, then closes it. On any failure the sink
 * is aborted (the partial file removed) and the error rethrown.
 */
export async function writeSafetensors(sink: ByteSink, tensors: readonly TensorToWrite[], metadata?: Readonly<Record<string, string>>): Promise<SafetensorsLayout> {
  const where = sink.name ? `${sink.name}: ` : '';
  try {
    const layout = layoutSafetensors(tensors, metadata);
    const byName = new Map(tensors.map((t) => [t.name, t]));
    await sink.write(layout.header);
    for (const entry of layout.tensors) {
      const expected = entry.byteLength;
      const wrong = (got: string) =>
        new SafetensorsWriteError(`${where}tensor ${JSON.stringify(entry.name)}: got ${got} bytes, expected ${expected} (shape [${entry.shape.join(', ')}] of ${entry.dtype})`, entry.name);
      const data = byName.get(entry.name)!.bytes();
      if (isAsyncIterable(data)) {
        let written = 0;
        for await (const chunk of data) {
          if (!(chunk instanceof Uint8Array)) throw wrong('a non-byte chunk instead of');
          if (written + chunk.byteLength > expected) throw wrong(`at least ${written + chunk.byteLength}`);
          if (chunk.byteLength > 0) await sink.write(chunk);
          written += chunk.byteLength;
        }
        if (written !== expected) throw wrong(String(written));
      } else {
        const bytes = await data;
        if (!(bytes instanceof Uint8Array)) throw wrong('no');
        if (bytes.byteLength !== expected) throw wrong(String(bytes.byteLength));
        if (expected > 0) await sink.write(bytes);
      }
    }
    await sink.close();
    return layout;
  } catch (error) {
    try {
      await sink.abort();
    } catch {
      // The original error matters more than a failed cleanup.
    }
    throw error;
  }
}

/** Collects what is written in memory, as Blob parts (browsers may keep large ones on disk). */
export class MemorySink implements ByteSink {
  private parts: Blob[] = [];
  private state: 'open' | 'closed' | 'aborted' = 'open';
  /** Bytes written so far. */
  size = 0;

  constructor(readonly name?: string) {}

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new Error(`${this.name ?? 'memory sink'}: write after ${this.state === 'closed' ? 'close' : 'abort'}`);
    this.parts.push(new Blob([chunk as Uint8Array<ArrayBuffer>])); // copies: the caller may reuse its buffer
    this.size += chunk.byteLength;
  }

  async close(): Promise<void> {
    if (this.state === 'aborted') throw new Error(`${this.name ?? 'memory sink'}: close after abort`);
    this.state = 'closed';
  }

  async abort(): Promise<void> {
    this.state = 'aborted';
    this.parts = [];
    this.size = 0;
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  /** Everything written, as one Blob (e.g. for a download). */
  blob(type = 'application/octet-stream'): Blob {
    return new Blob(this.parts, { type });
  }

  async bytes(): Promise<Uint8Array> {
    return new Uint8Array(await this.blob().arrayBuffer());
  }
}

// ---------------------------------------------------------------------------------------------
// Sharded models

export interface ShardPlan {
  /** In writing order; `file` names as transformers gives them. */
  readonly shards: readonly { readonly file: string; readonly tensors: readonly string[]; readonly byteLength: number }[];
  /** Tensor name → shard file. */
  readonly weightMap: ReadonlyMap<string, string>;
  /** Sum of all tensor byte lengths (the index's `metadata.total_size`). */
  readonly totalSize: number;
}

type Sized = Pick<TensorToWrite, 'name' | 'dtype' | 'shape'>;

/**
 * Splits tensors, in the given order, into shards of at most `maxShardBytes` of tensor data, as
 * huggingface_hub does: a new shard starts when the next tensor would overflow the current one,
 * and a tensor larger than the limit gets a shard of its own. One shard is `model.safetensors`;
 * several are `model-00001-of-0000N.safetensors`.
 */
export function planShards(tensors: readonly Sized[], maxShardBytes: number): ShardPlan {
  if (!(maxShardBytes > 0)) throw new RangeError(`maxShardBytes must be positive, got ${maxShardBytes}`);
  const groups: { tensors: string[]; byteLength: number }[] = [];
  let current: { tensors: string[]; byteLength: number } | undefined;
  let totalSize = 0;
  for (const t of tensors) {
    const size = tensorByteLength(t.name, t.dtype, t.shape);
    totalSize += size;
    if (!current || (current.tensors.length > 0 && current.byteLength + size > maxShardBytes)) {
      current = { tensors: [], byteLength: 0 };
      groups.push(current);
    }
    current.tensors.push(t.name);
    current.byteLength += size;
  }
  if (groups.length === 0) groups.push({ tensors: [], byteLength: 0 });
  const width = 5;
  const n = groups.length;
  const shards = groups.map((g, i) => ({
    file: n === 1 ? SINGLE_FILE : `model-${String(i + 1).padStart(width, '0')}-of-${String(n).padStart(width, '0')}.safetensors`,
    tensors: g.tensors,
    byteLength: g.byteLength,
  }));
  return finishPlan(shards, totalSize);
}

/**
 * The shard layout given by `weightMap` (tensor → file, e.g. an input model's `weightMap`): each
 * file holds its tensors in the given order; files are sorted by name. Entries of the map that
 * name no tensor here are ignored; a tensor the map does not place is an error.
 */
export function shardsFromWeightMap(tensors: readonly Sized[], weightMap: ReadonlyMap<string, string> | Readonly<Record<string, string>>): ShardPlan {
  const lookup = weightMap instanceof Map ? (name: string) => weightMap.get(name) : (name: string) => (Object.prototype.hasOwnProperty.call(weightMap, name) ? (weightMap as Record<string, string>)[name] : undefined);
  const byFile = new Map<string, { tensors: string[]; byteLength: number }>();
  let totalSize = 0;
  for (const t of tensors) {
    const file = lookup(t.name);
    if (typeof file !== 'string' || file === '') throw new SafetensorsWriteError(`tensor ${JSON.stringify(t.name)} has no shard in the weight map`, t.name);
    const size = tensorByteLength(t.name, t.dtype, t.shape);
    totalSize += size;
    let group = byFile.get(file);
    if (!group) byFile.set(file, (group = { tensors: [], byteLength: 0 }));
    group.tensors.push(t.name);
    group.byteLength += size;
  }
  const shards = [...byFile].sort(([a], [b]) => compareCodePoints(a, b)).map(([file, g]) => ({ file, tensors: g.tensors, byteLength: g.byteLength }));
  return finishPlan(shards, totalSize);
}

function finishPlan(shards: { file: string; tensors: string[]; byteLength: number }[], totalSize: number): ShardPlan {
  const weightMap = new Map<string, string>();
  for (const shard of shards) for (const name of shard.tensors) weightMap.set(name, shard.file);
  return { shards, weightMap, totalSize };
}

/**
 * `model.safetensors.index.json` as transformers writes it (`json.dumps(index, indent=2,
 * sort_keys=True)` plus a newline): `metadata.total_size` (plus `extraMetadata`, numbers or
 * strings) and the weight map sorted by tensor name.
 */
export function buildIndex(plan: Pick<ShardPlan, 'weightMap' | 'totalSize'>, extraMetadata: Readonly<Record<string, string | number>> = {}): string {
  const metadata = new Map<string, string | number>(Object.entries(extraMetadata));
  metadata.set('total_size', plan.totalSize);
  const field = (key: string, value: string | number, indent: string) => `${indent}${pyJson(key)}: ${typeof value === 'number' ? String(value) : pyJson(value)}`;
  const block = (entries: [string, string | number][]) =>
    entries.length === 0 ? '{}' : `{\n${entries.sort(([a], [b]) => compareCodePoints(a, b)).map(([k, v]) => field(k, v, '    ')).join(',\n')}\n  }`;
  return `{\n  "metadata": ${block([...metadata])},\n  "weight_map": ${block([...plan.weightMap])}\n}\n`;
}

/** Where a sharded model goes: an output folder (Node) or an in-memory collection (browser). */
export interface ModelWriteTarget {
  sink(file: string): Promise<ByteSink>;
  writeFile(file: string, data: string | Uint8Array): Promise<void>;
}

export interface ModelWriteOptions {
  /** Mirror this layout (tensor → shard file), e.g. the input's `weightMap`. */
  weightMap?: ReadonlyMap<string, string> | Readonly<Record<string, string>>;
  /** Otherwise split at this many bytes per shard (default: one file). */
  maxShardBytes?: number;
  /** `__metadata__` of every shard. */
  metadata?: Readonly<Record<string, string>>;
  /** Extra fields of the index's `metadata` (besides `total_size`). */
  indexMetadata?: Readonly<Record<string, string | number>>;
  /** Write the index: default unless the layout is the single file `model.safetensors`. */
  index?: boolean;
  /** Called after each shard is written. */
  onShard?: (file: string, done: number, total: number) => void;
}

/** Writes shard after shard through `target`, then the index. Returns the plan it followed. */
export async function writeSafetensorsModel(target: ModelWriteTarget, tensors: readonly TensorToWrite[], options: ModelWriteOptions = {}): Promise<ShardPlan> {
  const plan = options.weightMap ? shardsFromWeightMap(tensors, options.weightMap) : planShards(tensors, options.maxShardBytes ?? Infinity);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  let done = 0;
  for (const shard of plan.shards) {
    const sink = await target.sink(shard.file);
    await writeSafetensors(
      sink,
      shard.tensors.map((name) => byName.get(name)!),
      options.metadata,
    );
    options.onShard?.(shard.file, ++done, plan.shards.length);
  }
  const single = plan.shards.length === 1 && plan.shards[0]!.file === SINGLE_FILE;
  if (options.index ?? !single) await target.writeFile(INDEX_FILE, buildIndex(plan, options.indexMetadata));
  return plan;
}

/** Collects the files of a model in memory (browser downloads, tests). */
export class MemoryTarget implements ModelWriteTarget {
  readonly files = new Map<string, MemorySink>();

  async sink(file: string): Promise<ByteSink> {
    if (this.files.has(file)) throw new Error(`${file} is written twice`);
    const sink = new MemorySink(file);
    this.files.set(file, sink);
    return sink;
  }

  async writeFile(file: string, data: string | Uint8Array): Promise<void> {
    const sink = await this.sink(file);
    await sink.write(typeof data === 'string' ? new TextEncoder().encode(data) : data);
    await sink.close();
  }

  /** The finished files as Blobs, for `BlobFolder` or a download. */
  blobs(): Map<string, Blob> {
    return new Map([...this.files].filter(([, sink]) => sink.closed).map(([file, sink]) => [file, sink.blob()]));
  }
}

// ---------------------------------------------------------------------------------------------

function isAsyncIterable(value: unknown): value is AsyncIterable<Uint8Array> {
  return typeof value === 'object' && value !== null && Symbol.asyncIterator in value;
}

/** Orders strings by code point, i.e. by their UTF-8 bytes, as Rust and Python compare them. */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // Surrogates (0xd800–0xdfff) encode code points above every BMP character.
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

/** A JSON string as Python's `json.dumps` writes it (everything outside printable ASCII escaped). */
function pyJson(value: string): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
