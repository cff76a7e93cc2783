/**
 * Random access to the bytes of one file, the same in Node (file ranges) and in the browser
 * (`File.slice`), so that weights stream tensor by tensor and never need the whole file in memory.
 */
export interface ByteSource {
  /** File name for messages (the path relative to the model folder, or the file's name). */
  readonly name: string;
  readonly size: number;
  /** Reads exactly `length` bytes at `offset`; throws if the range is outside the file. */
  read(offset: number, length: number): Promise<Uint8Array>;
}

/** A folder of files: a model directory on disk, or the files a user picked in a browser. */
export interface FileFolder {
  /** Where the folder is, for messages ("models/tiny-chat", or the picked folder's name). */
  readonly name: string;
  has(file: string): Promise<boolean>;
  /** Names of the files directly in the folder, sorted. */
  list(): Promise<string[]>;
  /** Opens a file for ranged reads; throws FileMissingError when absent. */
  open(file: string): Promise<ByteSource>;
  /** Reads a whole text file (UTF-8); refuses one larger than `maxBytes` (default MAX_TEXT_FILE_BYTES). */
  readText(file: string, maxBytes?: number): Promise<string>;
}

/**
 * Largest text files read whole: the JSON and template files of a model folder (config.json,
 * tokenizer_config.json, chat templates, the shard index). `tokenizer.json` may be larger
 * (MAX_TOKENIZER_BYTES): the vocabularies of multilingual models reach tens of MB.
 */
export const MAX_TEXT_FILE_BYTES = 16 * 2 ** 20;
export const MAX_TOKENIZER_BYTES = 64 * 2 ** 20;

export class FileMissingError extends Error {
  override name = 'FileMissingError';
  constructor(
    readonly folder: string,
    readonly file: string,
  ) {
    super(`${folder}: ${file} is missing`);
  }
}

/** The path exists but is not a regular file: a folder, a FIFO, a device, a socket. */
export class NotRegularFileError extends Error {
  override name = 'NotRegularFileError';
  constructor(
    /** The path or name for messages. */
    readonly path: string,
    /** "a folder", "a FIFO", "a device", "a socket". */
    readonly kind: string,
  ) {
    super(`${path} is ${kind}, not a regular file`);
  }
}

/** A file read whole is larger than its limit; the message says both sizes (never the content). */
export class FileTooLargeError extends Error {
  override name = 'FileTooLargeError';
  constructor(
    readonly path: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super(`${path} is ${formatSize(size)}, more than the ${formatSize(limit)} this file may have`);
  }
}

/** Bytes in the largest binary unit that keeps a whole number of them. */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) {
    if (bytes >= size) return `${Number((bytes / size).toFixed(1))} ${unit}`;
  }
  return `${bytes} bytes`;
}

export class ReadRangeError extends Error {
  override name = 'ReadRangeError';
}

export function checkRange(source: { name: string; size: number }, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > source.size) {
    throw new ReadRangeError(`${source.name}: read of ${length} bytes at offset ${offset} is outside the file (${source.size} bytes)`);
  }
}

/** A `ByteSource` over a Blob or File (browser, or Node's Blob). */
export class BlobSource implements ByteSource {
  constructor(
    private readonly blob: Blob,
    readonly name: string,
  ) {}

  get size(): number {
    return this.blob.size;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(this, offset, length);
    return new Uint8Array(await this.blob.slice(offset, offset + length).arrayBuffer());
  }
}

/** A `ByteSource` over bytes already in memory. */
export class MemorySource implements ByteSource {
  constructor(
    private readonly bytes: Uint8Array,
    readonly name: string,
  ) {}

  get size(): number {
    return this.bytes.byteLength;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(this, offset, length);
    return this.bytes.subarray(offset, offset + length);
  }
}

/** A folder made of `File` objects, keyed by their path relative to the folder (browser uploads, tests). */
export class BlobFolder implements FileFolder {
  constructor(
    readonly name: string,
    private readonly files: ReadonlyMap<string, Blob>,
  ) {}

  async has(file: string): Promise<boolean> {
    return this.files.has(file);
  }

  async list(): Promise<string[]> {
    return [...this.files.keys()].filter((f) => !f.includes('/')).sort();
  }

  async open(file: string): Promise<ByteSource> {
    const blob = this.files.get(file);
    if (!blob) throw new FileMissingError(this.name, file);
    return new BlobSource(blob, file);
  }

  async readText(file: string, maxBytes = MAX_TEXT_FILE_BYTES): Promise<string> {
    const blob = this.files.get(file);
    if (!blob) throw new FileMissingError(this.name, file);
    if (blob.size > maxBytes) throw new FileTooLargeError(`${this.name}/${file}`, blob.size, maxBytes);
    return blob.text();
  }
}
