/**
 * What output folders and output files share (Node): their temporary names, the removal of those a
 * killed writer left, the refusal to write into or over the input model, and their errors.
 */
import { randomBytes } from 'node:crypto';
import { readdir, realpath, rm } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';

export type OutputPathErrorKind =
  /** The output exists and `force` was not given. */
  | 'exists'
  /** The output is the input folder. */
  | 'is-input'
  /** The output would be inside the input folder. */
  | 'inside-input'
  /** The input folder is inside the output (replacing the output would delete it). */
  | 'contains-input'
  /** An output folder's path exists and is not a folder. */
  | 'not-a-folder'
  /** An output file's path is a folder, or something else that is not a regular file. */
  | 'not-a-file'
  /** The folder an output file goes into does not exist, or is not a folder. */
  | 'no-parent'
  /** A file name that is empty, absolute or leaves the folder. */
  | 'bad-name'
  /** Used after `commit()` or `abort()`. */
  | 'finished'
  /** `commit()` while a sink is still open. */
  | 'open-sinks';

/** The output path was refused (before anything was written) or misused. */
export class OutputPathError extends Error {
  override name = 'OutputPathError';
  constructor(
    readonly kind: OutputPathErrorKind,
    /** The output's path. */
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

/** Writing the output failed (disk full, file too large, I/O error); the message names the file. */
export class OutputWriteError extends Error {
  override name = 'OutputWriteError';
}

export function writeError(what: string, error: unknown): OutputWriteError {
  return new OutputWriteError(`${what}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}

/**
 * A hidden sibling of `path` to write before renaming: `.<name>.tmp-<pid>-<16 hex digits>`. The
 * random part (64 bits from the system's generator) makes the name unguessable, and it is always
 * created exclusively (O_EXCL, or mkdir), so nothing planted at a name can redirect a write.
 */
export function temporaryPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(8).toString('hex')}`);
}

/** A sibling to move an old output to while the new one is renamed in. */
export function asidePath(path: string): string {
  return join(dirname(path), `.${basename(path)}.old-${process.pid}-${randomBytes(8).toString('hex')}`);
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
 * Removes the temporaries of the output `name` in `parent` left by killed writers (SIGKILL, power
 * loss): those whose process id no longer runs. A live writer's temporary is never touched.
 */
export async function removeStaleTemporaries(parent: string, name: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(parent);
  } catch {
    return; // the parent does not exist yet
  }
  const prefix = `.${name}.tmp-`;
  for (const entry of entries) {
    if (!entry.startsWith(prefix)) continue;
    // 8 hex digits: the names of earlier versions.
    const match = /^(\d+)-[0-9a-f]{8}(?:[0-9a-f]{8})?$/.exec(entry.slice(prefix.length));
    if (match && !isRunning(Number(match[1]))) await rm(join(parent, entry), { recursive: true, force: true });
  }
}

/** The real path of `path`, following links of the part that exists; the rest is appended as is. */
export async function realOrResolved(path: string): Promise<string> {
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
export function isInside(parent: string, child: string): boolean {
  const r = relative(parent, child);
  return r !== '' && r !== '..' && !r.startsWith(`..${sep}`) && !isAbsolute(r);
}

/**
 * Refuses an output that is an input folder, inside one, or (`containing`: for folders, which
 * replacing would delete) one that holds an input. Real paths, so links do not get around it.
 */
export async function refuseInputs(path: string, inputs: readonly string[], containing: boolean): Promise<void> {
  const output = await realOrResolved(path);
  for (const input of inputs) {
    const real = await realOrResolved(input);
    if (real === output) throw new OutputPathError('is-input', path, `${path} is the input folder; write the output to a new folder`);
    if (isInside(real, output)) throw new OutputPathError('inside-input', path, `${path} is inside the input folder ${input}; write the output elsewhere`);
    if (containing && isInside(output, real)) throw new OutputPathError('contains-input', path, `${path} contains the input folder ${input}; replacing it would destroy the input`);
  }
}

/** The input option of an output: none, one path or several. */
export function inputList(inputPath: string | readonly string[] | undefined): string[] {
  return inputPath === undefined ? [] : typeof inputPath === 'string' ? [inputPath] : [...inputPath];
}
