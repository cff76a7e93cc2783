/**
 * Where the page writes the cut model. With the File System Access API each file is streamed to
 * disk through a `FileSystemWritableFileStream` (the browser writes a temporary file and moves it
 * in place on close), so a model of several GB never sits in memory. Without it, files are
 * collected as Blob parts (which the browser may page to disk) and offered as downloads: one
 * uncompressed .tar made of the same parts, or file by file — never a second copy of the bytes.
 */
import type { ByteSink, ModelWriteTarget } from 'abliterate';
import type { DirectoryHandle, WritableFileStream } from './folders.ts';

const encoder = new TextEncoder();

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new DOMException('the export was cancelled', 'AbortError');
}

/** A sink over a writable file stream; aborting discards the temporary file. */
class WritableSink implements ByteSink {
  constructor(
    readonly name: string,
    private readonly stream: WritableFileStream,
    private readonly signal: AbortSignal | undefined,
  ) {}

  async write(chunk: Uint8Array): Promise<void> {
    throwIfAborted(this.signal);
    await this.stream.write(chunk);
  }

  async close(): Promise<void> {
    throwIfAborted(this.signal);
    await this.stream.close();
  }

  async abort(): Promise<void> {
    await this.stream.abort().catch(() => undefined);
  }
}

/** Writes a model's files into a folder on disk that the user picked. */
export class DirectoryTarget implements ModelWriteTarget {
  readonly files: string[] = [];

  constructor(
    readonly dir: DirectoryHandle,
    private readonly signal?: AbortSignal,
  ) {}

  async sink(file: string): Promise<ByteSink> {
    throwIfAborted(this.signal);
    const handle = await this.dir.getFileHandle(file, { create: true });
    this.files.push(file);
    return new WritableSink(file, await handle.createWritable(), this.signal);
  }

  async writeFile(file: string, data: string | Uint8Array): Promise<void> {
    const sink = await this.sink(file);
    try {
      await sink.write(typeof data === 'string' ? encoder.encode(data) : data);
      await sink.close();
    } catch (error) {
      await sink.abort();
      throw error;
    }
  }
}

/** A new subfolder `<name>`, `<name>-2`, … of `parent` (never an existing one: nothing is overwritten). */
export async function createSubfolder(parent: DirectoryHandle, name: string): Promise<DirectoryHandle> {
  for (let i = 1; i < 1000; i++) {
    const candidate = i === 1 ? name : `${name}-${i}`;
    try {
      await parent.getDirectoryHandle(candidate);
    } catch (error) {
      if ((error as DOMException).name === 'NotFoundError') return parent.getDirectoryHandle(candidate, { create: true });
      throw error;
    }
  }
  throw new Error(`${parent.name} already has folders ${name} to ${name}-999; choose another folder`);
}

/** Wraps a target so that every write first checks the signal (cancelling an export). */
export function abortableTarget(target: ModelWriteTarget, signal: AbortSignal): ModelWriteTarget {
  return {
    sink: async (file) => {
      throwIfAborted(signal);
      const sink = await target.sink(file);
      return {
        name: sink.name,
        write: async (chunk) => {
          throwIfAborted(signal);
          await sink.write(chunk);
        },
        close: () => sink.close(),
        abort: () => sink.abort(),
      };
    },
    writeFile: async (file, data) => {
      throwIfAborted(signal);
      await target.writeFile(file, data);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// tar (POSIX ustar), made of Blob parts: the file contents are referenced, not copied.

const BLOCK = 512;

function writeString(header: Uint8Array, offset: number, length: number, text: string): void {
  const bytes = encoder.encode(text);
  if (bytes.length > length) throw new Error(`tar: "${text}" is longer than ${length} bytes`);
  header.set(bytes, offset);
}

function writeOctal(header: Uint8Array, offset: number, length: number, value: number): void {
  writeString(header, offset, length, `${value.toString(8).padStart(length - 1, '0')}\0`);
}

/** Sizes of 8 GiB and more do not fit 11 octal digits: GNU tar's base-256 form (first byte 0x80). */
function writeSize(header: Uint8Array, size: number): void {
  if (size < 8 ** 11) return writeOctal(header, 124, 12, size);
  header[124] = 0x80;
  let rest = size;
  for (let i = 135; i > 124; i--) {
    header[i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
}

function tarHeader(path: string, size: number, type: '0' | '5', mtime: number): Uint8Array {
  const header = new Uint8Array(BLOCK);
  let name = path;
  let prefix = '';
  if (encoder.encode(path).length > 100) {
    const cut = path.lastIndexOf('/', 155);
    if (cut <= 0 || encoder.encode(path.slice(cut + 1)).length > 100) throw new Error(`tar: the path ${path} is too long`);
    prefix = path.slice(0, cut);
    name = path.slice(cut + 1);
  }
  writeString(header, 0, 100, name);
  writeOctal(header, 100, 8, type === '5' ? 0o755 : 0o644);
  writeOctal(header, 108, 8, 0);
  writeOctal(header, 116, 8, 0);
  writeSize(header, type === '5' ? 0 : size);
  writeOctal(header, 136, 12, Math.floor(mtime / 1000));
  header.fill(0x20, 148, 156); // the checksum is computed with its own field as spaces
  writeString(header, 156, 1, type);
  writeString(header, 257, 6, 'ustar\0');
  writeString(header, 263, 2, '00');
  writeString(header, 345, 155, prefix);
  let sum = 0;
  for (const byte of header) sum += byte;
  writeString(header, 148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return header;
}

/** An uncompressed tar of `files` inside a folder named `root`. */
export function tarBlob(root: string, files: ReadonlyMap<string, Blob>): Blob {
  const mtime = Date.now();
  const parts: BlobPart[] = [tarHeader(`${root}/`, 0, '5', mtime) as Uint8Array<ArrayBuffer>];
  for (const [name, blob] of files) {
    parts.push(tarHeader(`${root}/${name}`, blob.size, '0', mtime) as Uint8Array<ArrayBuffer>, blob);
    const padding = (BLOCK - (blob.size % BLOCK)) % BLOCK;
    if (padding) parts.push(new Uint8Array(padding));
  }
  parts.push(new Uint8Array(2 * BLOCK));
  return new Blob(parts, { type: 'application/x-tar' });
}

// ---------------------------------------------------------------------------------------------

/** Object URLs handed out for downloads, revoked when their results are dropped. */
export class DownloadLinks {
  private urls: string[] = [];

  url(blob: Blob): string {
    const url = URL.createObjectURL(blob);
    this.urls.push(url);
    return url;
  }

  /** Starts a download of `blob` as `name`. */
  download(blob: Blob, name: string): void {
    const a = document.createElement('a');
    a.href = this.url(blob);
    a.download = name;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
  }

  revokeAll(): void {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
  }
}
