import { randomBytes } from 'node:crypto';
import { link, open, readFile, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { TrialObjectives, TrialRecord } from '../index.ts';
import { checkStudySettings, headerLine, parseStudy, trialLine } from '../abliterate/optimize/study.ts';
import { UsageError } from './common.ts';

/** A study file open for appending trials, each written and flushed to disk before the next trial starts. */
export class StudyFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    /** Trials already in the file (a resumed study). */
    readonly previous: TrialRecord[],
  ) {}

  /**
   * Opens `path`: a new study is created with its header (under a temporary name, then linked into
   * place, so two runs cannot both create it); an existing one must have been made with the same
   * settings, and a half-written last line (a killed run) is cut off.
   */
  static async open(path: string, settings: Record<string, unknown>): Promise<StudyFile> {
    let text: string | undefined;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw new UsageError(`cannot read the study ${path}: ${(error as Error).message}`);
    }
    if (text === undefined) {
      const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
      const handle = await open(temp, 'wx');
      try {
        await handle.writeFile(headerLine(settings));
        await handle.sync();
      } finally {
        await handle.close();
      }
      try {
        await link(temp, path);
      } catch (error) {
        throw new UsageError(`cannot create the study ${path}: ${(error as NodeJS.ErrnoException).code === 'EEXIST' ? 'another run created it meanwhile' : (error as Error).message}`);
      } finally {
        await unlink(temp).catch(() => undefined);
      }
      return new StudyFile(path, await open(path, 'r+'), []);
    }
    let parsed;
    try {
      parsed = parseStudy(text, `the study ${path}`);
      checkStudySettings(parsed.header, settings, `the study ${path}`);
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
    const handle = await open(path, 'r+');
    const bytes = Buffer.byteLength(text.slice(0, parsed.completeLength), 'utf8');
    if (bytes !== Buffer.byteLength(text, 'utf8')) await handle.truncate(bytes);
    return new StudyFile(path, handle, parsed.trials);
  }

  /** Appends one trial and flushes it to the disk. */
  async append(trial: TrialRecord, original: TrialObjectives): Promise<void> {
    const { size } = await this.handle.stat();
    await this.handle.write(trialLine(trial, original), size, 'utf8');
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
