/**
 * Single output files (a directions file, a report) that appear whole or not at all (Node).
 *
 * `createOutputFile` checks the path before any work is done — not the input model's folder nor
 * inside it (real paths), its folder exists, it is not a folder, it exists only if `force` — and
 * creates the temporary file at once, so that a folder that cannot be written fails in
 * milliseconds rather than after the measurement. The temporary file is a hidden sibling with an
 * unguessable name (`outputPaths.temporaryPath`), created exclusively and never through a link
 * (O_CREAT | O_EXCL | O_NOFOLLOW): nothing planted in the folder can redirect the write. `commit()`
 * flushes it to disk and renames it over the final name, which replaces a file or a link there but
 * never writes through one.
 */
import { constants } from 'node:fs';
import { lstat, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { inputList, OutputPathError, OutputWriteError, refuseInputs, removeStaleTemporaries, temporaryPath, writeError } from './outputPaths.ts';

export interface OutputFileOptions {
  /** Replace an existing file (at commit). */
  force?: boolean;
  /** The input model's folder (or folders): never written into. */
  inputPath?: string | readonly string[];
}

export interface OutputFile {
  /** The final path (absolute). */
  readonly path: string;
  /** The temporary file being written. */
  readonly tempPath: string;
  /** Appends bytes (or UTF-8 text) to the temporary file. */
  write(data: string | Uint8Array): Promise<void>;
  /** Flushes the file and renames it to the final path. */
  commit(): Promise<void>;
  /** Removes the temporary file. Safe to call more than once. */
  abort(): Promise<void>;
}

/** Checks the path and creates the temporary file. */
export async function createOutputFile(finalPath: string, options: OutputFileOptions = {}): Promise<OutputFile> {
  const path = resolve(finalPath);
  const force = options.force === true;
  const inputs = inputList(options.inputPath);
  await checkFilePath(path, inputs, force);
  const parent = dirname(path);
  await removeStaleTemporaries(parent, basename(path));
  const tempPath = temporaryPath(path);
  let handle: FileHandle;
  try {
    handle = await open(tempPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o666);
  } catch (error) {
    // The system's reason without the temporary name, which means nothing to the user.
    const reason = error instanceof Error ? error.message.replace(/, open '.*'$/, '') : String(error);
    throw new OutputWriteError(`cannot write ${path}: ${reason}`, { cause: error });
  }
  return new NodeOutputFile(path, tempPath, handle, inputs, force);
}

/** Writes a whole file through a temporary one: created exclusively, flushed, renamed. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, options: OutputFileOptions = {}): Promise<void> {
  const file = await createOutputFile(path, options);
  try {
    await file.write(data);
    await file.commit();
  } catch (error) {
    await file.abort();
    throw error;
  }
}

class NodeOutputFile implements OutputFile {
  private state: 'open' | 'committed' | 'aborted' = 'open';

  constructor(
    readonly path: string,
    readonly tempPath: string,
    private readonly handle: FileHandle,
    private readonly inputs: readonly string[],
    private readonly force: boolean,
  ) {}

  async write(data: string | Uint8Array): Promise<void> {
    this.assertOpen();
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    let offset = 0;
    try {
      while (offset < bytes.byteLength) {
        const { bytesWritten } = await this.handle.write(bytes, offset, bytes.byteLength - offset);
        offset += bytesWritten;
      }
    } catch (error) {
      throw writeError(`cannot write ${this.path}`, error);
    }
  }

  async commit(): Promise<void> {
    this.assertOpen();
    try {
      await this.handle.sync();
    } catch (error) {
      throw writeError(`cannot write ${this.path}`, error);
    }
    // Checked again: the path may have changed while the work ran.
    await checkFilePath(this.path, this.inputs, this.force);
    await this.handle.close();
    this.state = 'committed';
    try {
      await rename(this.tempPath, this.path);
    } catch (error) {
      this.state = 'aborted';
      await rm(this.tempPath, { force: true });
      throw writeError(`cannot rename the finished file to ${this.path}`, error);
    }
    await syncFolder(dirname(this.path));
  }

  async abort(): Promise<void> {
    if (this.state === 'aborted') return;
    if (this.state === 'open') await this.handle.close().catch(() => undefined);
    this.state = 'aborted';
    await rm(this.tempPath, { force: true });
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new OutputPathError('finished', this.path, `${this.path}: output file already ${this.state}`);
  }
}

/** Makes the rename durable; some file systems do not sync folders, which is fine. */
async function syncFolder(path: string): Promise<void> {
  const handle = await open(path, constants.O_RDONLY).catch(() => undefined);
  await handle?.sync().catch(() => undefined);
  await handle?.close();
}

async function checkFilePath(path: string, inputs: readonly string[], force: boolean): Promise<void> {
  await refuseInputs(path, inputs, false);
  const parent = dirname(path);
  const folder = await stat(parent).catch(() => undefined);
  if (!folder) throw new OutputPathError('no-parent', path, `cannot write ${path}: the folder ${parent} does not exist`);
  if (!folder.isDirectory()) throw new OutputPathError('no-parent', path, `cannot write ${path}: ${parent} is not a folder`);
  const existing = await lstat(path).catch(() => undefined);
  if (!existing) return;
  // What a link points to decides; a dangling link is replaced like a file.
  const target = existing.isSymbolicLink() ? ((await stat(path).catch(() => undefined)) ?? existing) : existing;
  if (target.isDirectory()) throw new OutputPathError('not-a-file', path, `${path} is a folder; give the name of a file to write`);
  if (!target.isFile() && !target.isSymbolicLink()) throw new OutputPathError('not-a-file', path, `${path} exists and is not a regular file; refusing to replace it`);
  if (!force) throw new OutputPathError('exists', path, `${path} already exists; use --force to replace it`);
}
