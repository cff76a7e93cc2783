import { constants, type Stats } from 'node:fs';
import { open, readdir, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { checkRange, FileMissingError, FileTooLargeError, MAX_TEXT_FILE_BYTES, NotRegularFileError, type ByteSource, type FileFolder } from './byteSource.ts';

/**
 * A model directory on disk; files are read by range, never whole (text files excepted, up to a
 * limit). Symbolic links are followed, so the Hugging Face cache's `snapshots/<revision>/` folders,
 * whose files are links into `blobs/`, read like any other.
 */
export class NodeFolder implements FileFolder {
  constructor(readonly name: string) {}

  /** Whether something is at `file` (a regular file or not: reading it then says what it is). */
  async has(file: string): Promise<boolean> {
    try {
      await stat(join(this.name, file));
      return true;
    } catch {
      return false;
    }
  }

  /** Regular files directly in the folder, and links to regular files. */
  async list(): Promise<string[]> {
    const entries = await readdir(this.name, { withFileTypes: true });
    const files: string[] = [];
    for (const entry of entries) {
      if (entry.isFile()) files.push(entry.name);
      else if (entry.isSymbolicLink() && (await stat(join(this.name, entry.name)).then((s) => s.isFile(), () => false))) files.push(entry.name);
    }
    return files.sort();
  }

  async open(file: string): Promise<ByteSource> {
    const path = join(this.name, file);
    const { handle, info } = await openRegularFile(path, () => new FileMissingError(this.name, file), join(this.name, file));
    await handle.close();
    return new NodeFileSource(path, file, info.size);
  }

  async readText(file: string, maxBytes = MAX_TEXT_FILE_BYTES): Promise<string> {
    return readTextFile(join(this.name, file), maxBytes, () => new FileMissingError(this.name, file));
  }
}

/** What a non-regular file is, for messages. */
function kindOf(info: Stats): string {
  if (info.isDirectory()) return 'a folder';
  if (info.isFIFO()) return 'a FIFO (named pipe)';
  if (info.isSocket()) return 'a socket';
  if (info.isCharacterDevice() || info.isBlockDevice()) return 'a device';
  return 'not a file';
}

/**
 * Opens a regular file for reading, following links. Non-blocking, so that a FIFO is reported
 * rather than waited on; `missing` makes the error for a path that does not exist.
 */
export async function openRegularFile(path: string, missing: () => Error, label = path): Promise<{ handle: FileHandle; info: Stats }> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw missing();
    if (code === 'EISDIR') throw new NotRegularFileError(label, 'a folder');
    if (code === 'ENXIO') throw new NotRegularFileError(label, 'a socket');
    throw error;
  }
  const info = await handle.stat();
  if (!info.isFile()) {
    await handle.close();
    throw new NotRegularFileError(label, kindOf(info));
  }
  return { handle, info };
}

/**
 * Reads a whole UTF-8 text file of at most `maxBytes`, refusing larger ones (and anything not a
 * regular file: `/dev/zero`, a FIFO) before reading them.
 */
export async function readTextFile(path: string, maxBytes: number, missing: () => Error, label = path): Promise<string> {
  const { handle, info } = await openRegularFile(path, missing, label);
  try {
    if (info.size > maxBytes) throw new FileTooLargeError(label, info.size, maxBytes);
    // A file growing while it is read stops at the limit plus one byte, which is refused.
    const bytes = new Uint8Array(Math.min(info.size, maxBytes) + 1);
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesRead } = await handle.read(bytes, done, bytes.byteLength - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done > maxBytes) throw new FileTooLargeError(label, done, maxBytes);
    return new TextDecoder().decode(bytes.subarray(0, done));
  } finally {
    await handle.close();
  }
}

class NodeFileSource implements ByteSource {
  constructor(
    private readonly path: string,
    readonly name: string,
    readonly size: number,
  ) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(this, offset, length);
    const { handle } = await openRegularFile(this.path, () => new Error(`${this.name}: the file was removed while it was being read`), this.name);
    try {
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(out, done, length - done, offset + done);
        if (bytesRead === 0) throw new Error(`${this.name}: file ended at ${offset + done} while reading ${length} bytes at ${offset} (was it truncated?)`);
        done += bytesRead;
      }
      return out;
    } finally {
      await handle.close();
    }
  }
}
