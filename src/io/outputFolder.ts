/**
 * Output folders that appear whole or not at all (Node). Everything is written into a hidden
 * sibling `.<name>.tmp-<pid>-<random>`, which `commit()` renames to the final name; `abort()`
 * removes it. An existing output is refused unless `force`, and even then it is only replaced at
 * commit: moved aside, the new folder renamed in, the old one deleted. The input model's folder is
 * never written: an output equal to it, inside it or containing it is refused (real paths, so
 * symbolic links do not get around the check). A crash leaves only the hidden temporary folder,
 * which the next write of the same output removes once its process is gone.
 */
import { constants } from 'node:fs';
import { lstat, mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { asidePath, inputList, OutputPathError, OutputWriteError, refuseInputs, removeStaleTemporaries, temporaryPath, writeError, type OutputPathErrorKind } from './outputPaths.ts';
import type { ByteSink, ModelWriteTarget } from './safetensorsWriter.ts';

export { OutputWriteError };
/** Output folders' errors are those of output paths in general. */
export { OutputPathError as OutputFolderError };
export type OutputFolderErrorKind = OutputPathErrorKind;

export interface OutputFolderOptions {
  /** Replace an existing output folder (at commit). */
  force?: boolean;
  /** The input model's folder (or folders): never written into or over. */
  inputPath?: string | readonly string[];
}

export interface OutputFolder extends ModelWriteTarget {
  /** The final path (absolute). */
  readonly path: string;
  /** The temporary folder being written. */
  readonly tempPath: string;
  /** Writes a whole file (`name` may contain subfolders; never `..`). */
  writeFile(name: string, data: string | Uint8Array): Promise<void>;
  /** A streaming sink for a new file; close it before `commit()`. */
  sink(name: string): Promise<ByteSink>;
  /** Renames the temporary folder to the final path (replacing an old output with `force`). */
  commit(): Promise<void>;
  /** Removes the temporary folder and everything in it. Safe to call more than once. */
  abort(): Promise<void>;
}

/** Checks the paths and creates the temporary folder. */
export async function createOutputFolder(finalPath: string, options: OutputFolderOptions = {}): Promise<OutputFolder> {
  const path = resolve(finalPath);
  if (dirname(path) === path) throw new OutputPathError('bad-name', path, `${path}: cannot write an output folder at the root of the file system`);
  const inputs = inputList(options.inputPath);
  await checkPaths(path, inputs, options.force === true);
  const parent = dirname(path);
  const tempPath = temporaryPath(path);
  await removeStaleTemporaries(parent, basename(path));
  try {
    await mkdir(parent, { recursive: true });
    await mkdir(tempPath);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const where = (error as NodeJS.ErrnoException).path;
    if ((code === 'EEXIST' || code === 'ENOTDIR') && where !== undefined && where !== tempPath) {
      throw new OutputWriteError(`cannot create the output folder ${path}: ${where} is a file, not a folder`, { cause: error });
    }
    throw writeError(`cannot create the output folder ${path}`, error);
  }
  return new NodeOutputFolder(path, tempPath, inputs, options.force === true);
}

class NodeOutputFolder implements OutputFolder {
  private state: 'open' | 'committed' | 'aborted' = 'open';
  private readonly openSinks = new Set<NodeFileSink>();

  constructor(
    readonly path: string,
    readonly tempPath: string,
    private readonly inputs: readonly string[],
    private readonly force: boolean,
  ) {}

  async writeFile(name: string, data: string | Uint8Array): Promise<void> {
    const sink = await this.sink(name);
    try {
      await sink.write(typeof data === 'string' ? new TextEncoder().encode(data) : data);
      await sink.close();
    } catch (error) {
      await sink.abort();
      throw error;
    }
  }


  async sink(name: string): Promise<ByteSink> {
    const target = await this.prepare(name);
    const sink = await NodeFileSink.create(target, name, (s) => this.openSinks.delete(s));
    this.openSinks.add(sink);
    return sink;
  }

  async commit(): Promise<void> {
    this.assertOpen();
    if (this.openSinks.size > 0) {
      const names = [...this.openSinks].map((s) => s.name).join(', ');
      throw new OutputPathError('open-sinks', this.path, `${this.path}: cannot commit while files are still being written (${names})`);
    }
    await checkPaths(this.path, this.inputs, this.force);
    const existing = await lstat(this.path).catch(() => undefined);
    if (existing) {
      // checkPaths refused this without force; it may have appeared since.
      if (!this.force) throw new OutputPathError('exists', this.path, `${this.path} already exists (appeared while writing); use --force to replace it`);
      const aside = asidePath(this.path);
      await rename(this.path, aside).catch((error: unknown) => {
        throw writeError(`cannot move the old ${this.path} aside`, error);
      });
      try {
        await rename(this.tempPath, this.path);
      } catch (error) {
        await rename(aside, this.path).catch(() => undefined);
        throw writeError(`cannot rename the finished output to ${this.path}`, error);
      }
      this.state = 'committed';
      await rm(aside, { recursive: true, force: true });
    } else {
      await rename(this.tempPath, this.path).catch((error: unknown) => {
        throw writeError(`cannot rename the finished output to ${this.path}`, error);
      });
      this.state = 'committed';
    }
  }

  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await Promise.all([...this.openSinks].map((s) => s.abort().catch(() => undefined)));
    await rm(this.tempPath, { recursive: true, force: true });
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new OutputPathError('finished', this.path, `${this.path}: output folder already ${this.state}`);
  }

  /** Validates `name` and creates its subfolders; returns its path in the temporary folder. */
  private async prepare(name: string): Promise<string> {
    this.assertOpen();
    const parts = name.split(/[/\\]/);
    if (name === '' || isAbsolute(name) || /^[a-zA-Z]:/.test(name) || name.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw new OutputPathError('bad-name', this.path, `${this.path}: ${JSON.stringify(name)} is not a file name inside the output folder`);
    }
    const target = join(this.tempPath, ...parts);
    if (parts.length > 1) await mkdir(dirname(target), { recursive: true });
    return target;
  }
}

/** A `ByteSink` writing a new file (never an existing one) through a Node file handle. */
export class NodeFileSink implements ByteSink {
  private done = false;

  private constructor(
    private readonly handle: FileHandle,
    readonly path: string,
    readonly name: string,
    private readonly onFinish?: (sink: NodeFileSink) => void,
  ) {}

  /** Creates `path`; fails if it exists. */
  static async create(path: string, name = path, onFinish?: (sink: NodeFileSink) => void): Promise<NodeFileSink> {
    let handle: FileHandle;
    try {
      // Exclusive, and never through a link: only a new file in the temporary folder is written.
      handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o666);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`${name} is written twice (it already exists)`);
      throw error;
    }
    return new NodeFileSink(handle, path, name, onFinish);
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.done) throw new Error(`${this.name}: write after close or abort`);
    let offset = 0;
    try {
      while (offset < chunk.byteLength) {
        const { bytesWritten } = await this.handle.write(chunk, offset, chunk.byteLength - offset);
        offset += bytesWritten;
      }
    } catch (error) {
      throw writeError(`cannot write ${this.name}`, error);
    }
  }

  /** Flushes to disk and closes. */
  async close(): Promise<void> {
    if (this.done) throw new Error(`${this.name}: closed twice, or closed after abort`);
    this.done = true;
    try {
      await this.handle.sync();
    } catch (error) {
      throw writeError(`cannot write ${this.name}`, error);
    } finally {
      await this.handle.close();
      this.onFinish?.(this);
    }
  }

  /** Closes and deletes the partial file. */
  async abort(): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.handle.close().catch(() => undefined);
    }
    await rm(this.path, { force: true });
    this.onFinish?.(this);
  }
}

// ---------------------------------------------------------------------------------------------

async function checkPaths(path: string, inputs: readonly string[], force: boolean): Promise<void> {
  await refuseInputs(path, inputs, true);
  const existing = await lstat(path).catch(() => undefined);
  if (!existing) return;
  if (!force) throw new OutputPathError('exists', path, `${path} already exists; use --force to replace it`);
  const target = existing.isSymbolicLink() ? await stat(path).catch(() => undefined) : existing;
  if (target && !target.isDirectory()) throw new OutputPathError('not-a-folder', path, `${path} exists and is not a folder; refusing to replace it`);
}
