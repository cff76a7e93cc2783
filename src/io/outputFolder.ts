/**
 * Output folders that appear whole or not at all (Node). Everything is written into a hidden
 * sibling `.<name>.tmp-<pid>-<random>`, which `commit()` renames to the final name; `abort()`
 * removes it. An existing output is refused unless `force`, and even then it is only replaced at
 * commit: moved aside, the new folder renamed in, the old one deleted. The input model's folder is
 * never written: an output equal to it, inside it or containing it is refused (real paths, so
 * symbolic links do not get around the check). A crash leaves only the hidden temporary folder,
 * which the next write of the same output removes once its process is gone.
 */
import { randomBytes } from 'node:crypto';
import { copyFile as fsCopyFile, lstat, mkdir, open, readdir, realpath, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { ByteSink, ModelWriteTarget } from './safetensorsWriter.ts';

export type OutputFolderErrorKind =
  /** The output exists and `force` was not given. */
  | 'exists'
  /** The output is the input folder. */
  | 'is-input'
  /** The output would be inside the input folder. */
  | 'inside-input'
  /** The input folder is inside the output (replacing the output would delete it). */
  | 'contains-input'
  /** The output path exists and is not a folder. */
  | 'not-a-folder'
  /** A file name that is empty, absolute or leaves the folder. */
  | 'bad-name'
  /** Used after `commit()` or `abort()`. */
  | 'finished'
  /** `commit()` while a sink is still open. */
  | 'open-sinks';

export class OutputFolderError extends Error {
  override name = 'OutputFolderError';
  constructor(
    readonly kind: OutputFolderErrorKind,
    /** The output folder's path. */
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

/** Writing into the output failed (disk full, file too large, I/O error); the message names the file. */
export class OutputWriteError extends Error {
  override name = 'OutputWriteError';
}

function writeError(what: string, error: unknown): OutputWriteError {
  return new OutputWriteError(`${what}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}

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
  /** Copies a file from elsewhere (config, tokenizer) into the output. */
  copyFile(name: string, from: string): Promise<void>;
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
  if (dirname(path) === path) throw new OutputFolderError('bad-name', path, `${path}: cannot write an output folder at the root of the file system`);
  const inputs = options.inputPath === undefined ? [] : typeof options.inputPath === 'string' ? [options.inputPath] : [...options.inputPath];
  await checkPaths(path, inputs, options.force === true);
  const parent = dirname(path);
  const tempPath = join(parent, `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
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

/** Whether a process with this id is running (on this machine). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temporary folders of this output left by killed writers (SIGKILL, power loss): those
 * whose process id no longer runs. A live writer's folder is never touched.
 */
async function removeStaleTemporaries(parent: string, name: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(parent);
  } catch {
    return; // the parent does not exist yet
  }
  const prefix = `.${name}.tmp-`;
  for (const entry of entries) {
    if (!entry.startsWith(prefix)) continue;
    const match = /^(\d+)-[0-9a-f]{8}$/.exec(entry.slice(prefix.length));
    if (match && !isRunning(Number(match[1]))) await rm(join(parent, entry), { recursive: true, force: true });
  }
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

  async copyFile(name: string, from: string): Promise<void> {
    const target = await this.prepare(name);
    await fsCopyFile(from, target, 1 /* COPYFILE_EXCL */).catch((error: unknown) => {
      throw writeError(`cannot write ${name}`, error);
    });
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
      throw new OutputFolderError('open-sinks', this.path, `${this.path}: cannot commit while files are still being written (${names})`);
    }
    await checkPaths(this.path, this.inputs, this.force);
    const existing = await lstat(this.path).catch(() => undefined);
    if (existing) {
      // checkPaths refused this without force; it may have appeared since.
      if (!this.force) throw new OutputFolderError('exists', this.path, `${this.path} already exists (appeared while writing); use --force to replace it`);
      const aside = join(dirname(this.path), `.${basename(this.path)}.old-${process.pid}-${randomBytes(4).toString('hex')}`);
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
    if (this.state !== 'open') throw new OutputFolderError('finished', this.path, `${this.path}: output folder already ${this.state}`);
  }

  /** Validates `name` and creates its subfolders; returns its path in the temporary folder. */
  private async prepare(name: string): Promise<string> {
    this.assertOpen();
    const parts = name.split(/[/\\]/);
    if (name === '' || isAbsolute(name) || /^[a-zA-Z]:/.test(name) || name.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw new OutputFolderError('bad-name', this.path, `${this.path}: ${JSON.stringify(name)} is not a file name inside the output folder`);
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
      handle = await open(path, 'wx');
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

/** The real path of `path`, following links of the part that exists; the rest is appended as is. */
async function realOrResolved(path: string): Promise<string> {
  const absolute = resolve(path);
  try {
    return await realpath(absolute);
  } catch {
    const parent = dirname(absolute);
    if (parent === absolute) return absolute;
    return join(await realOrResolved(parent), basename(absolute));
  }
}

/** True when `child` is strictly inside `parent` (both absolute and normalised). */
function isInside(parent: string, child: string): boolean {
  const r = relative(parent, child);
  return r !== '' && r !== '..' && !r.startsWith(`..${sep}`) && !isAbsolute(r);
}

async function checkPaths(path: string, inputs: readonly string[], force: boolean): Promise<void> {
  const output = await realOrResolved(path);
  for (const input of inputs) {
    const real = await realOrResolved(input);
    if (real === output) throw new OutputFolderError('is-input', path, `${path} is the input folder; write the output to a new folder`);
    if (isInside(real, output)) throw new OutputFolderError('inside-input', path, `${path} is inside the input folder ${input}; write the output elsewhere`);
    if (isInside(output, real)) throw new OutputFolderError('contains-input', path, `${path} contains the input folder ${input}; replacing it would destroy the input`);
  }
  const existing = await lstat(path).catch(() => undefined);
  if (!existing) return;
  if (!force) throw new OutputFolderError('exists', path, `${path} already exists; use --force to replace it`);
  const target = existing.isSymbolicLink() ? await lstat(output).catch(() => undefined) : existing;
  if (target && !target.isDirectory()) throw new OutputFolderError('not-a-folder', path, `${path} exists and is not a folder; refusing to replace it`);
}
