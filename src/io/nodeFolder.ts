import { open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { checkRange, FileMissingError, type ByteSource, type FileFolder } from './byteSource.ts';

/** A model directory on disk; files are read by range, never whole. */
export class NodeFolder implements FileFolder {
  constructor(readonly name: string) {}

  async has(file: string): Promise<boolean> {
    try {
      return (await stat(join(this.name, file))).isFile();
    } catch {
      return false;
    }
  }

  async list(): Promise<string[]> {
    const entries = await readdir(this.name, { withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => e.name).sort();
  }

  async open(file: string): Promise<ByteSource> {
    const path = join(this.name, file);
    let size: number;
    try {
      const info = await stat(path);
      if (!info.isFile()) throw new FileMissingError(this.name, file);
      size = info.size;
    } catch (error) {
      if (error instanceof FileMissingError || (error as NodeJS.ErrnoException).code === 'ENOENT') throw new FileMissingError(this.name, file);
      throw error;
    }
    return new NodeFileSource(path, file, size);
  }

  async readText(file: string): Promise<string> {
    try {
      return await readFile(join(this.name, file), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new FileMissingError(this.name, file);
      throw error;
    }
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
    const handle = await open(this.path, 'r');
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
