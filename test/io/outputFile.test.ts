/**
 * Single output files: written under an unguessable temporary name created exclusively, renamed
 * into place; links planted at any name cannot redirect the write; the input folder and paths that
 * cannot be written are refused before anything is written.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { createOutputFile, writeFileAtomic } from '../../src/io/outputFile.ts';
import { OutputPathError, OutputWriteError, type OutputPathErrorKind } from '../../src/io/outputPaths.ts';

const root = await mkdtemp(join(tmpdir(), 'abliterate-output-file-'));
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let dir: string;
let input: string;
let victim: string;
let case_ = 0;
beforeEach(async () => {
  dir = join(root, `case-${case_++}`);
  input = join(dir, 'input-model');
  await mkdir(input, { recursive: true });
  await writeFile(join(input, 'model.safetensors'), 'the input weights');
  victim = join(dir, 'victim.txt');
  await writeFile(victim, 'must not change');
});

async function refused(promise: Promise<unknown>, kind: OutputPathErrorKind, message?: string | RegExp): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(OutputPathError);
  expect((error as OutputPathError).kind, (error as Error).message).toBe(kind);
  if (typeof message === 'string') expect((error as Error).message).toBe(message);
  else if (message) expect((error as Error).message).toMatch(message);
}

describe('output files', () => {
  it('are written under a hidden, random, exclusive temporary name and renamed at commit', async () => {
    const path = join(dir, 'dirs.safetensors');
    const a = await createOutputFile(path);
    const b = await createOutputFile(join(dir, 'other.safetensors'));
    expect(a.tempPath).toMatch(new RegExp(`/\\.dirs\\.safetensors\\.tmp-${process.pid}-[0-9a-f]{16}$`));
    // 64 random bits: no two names alike.
    expect(a.tempPath.slice(-16)).not.toBe(b.tempPath.slice(-16));
    await b.abort();
    // The temporary file exists from the start (the folder is known writable before the work).
    expect((await readdir(dir)).filter((e) => e.startsWith('.dirs'))).toEqual([a.tempPath.split('/').pop()]);
    await a.write('hello ');
    await a.write(new TextEncoder().encode('world'));
    expect((await readdir(dir)).includes('dirs.safetensors')).toBe(false);
    await a.commit();
    expect(await readFile(path, 'utf8')).toBe('hello world');
    expect((await readdir(dir)).sort()).toEqual(['dirs.safetensors', 'input-model', 'victim.txt']);
    await refused(a.write('late'), 'finished');
    await refused(a.commit(), 'finished');
  });

  it('abort leaves nothing', async () => {
    const out = await createOutputFile(join(dir, 'x.json'));
    await out.write('partial');
    await out.abort();
    await out.abort();
    expect((await readdir(dir)).sort()).toEqual(['input-model', 'victim.txt']);
  });

  it('a link planted at the predictable name of the old writer (.<out>.tmp-<pid>) is not followed', async () => {
    const path = join(dir, 'dirs.safetensors');
    await symlink(victim, join(dir, `.dirs.safetensors.tmp-${process.pid}`));
    await writeFileAtomic(path, 'new content');
    expect(await readFile(victim, 'utf8')).toBe('must not change');
    expect(await readFile(path, 'utf8')).toBe('new content');
  });

  it('a link at the final name is replaced, never written through (with force), and refused without', async () => {
    const path = join(dir, 'report.json');
    await symlink(victim, path);
    await refused(writeFileAtomic(path, 'x'), 'exists', `${path} already exists; use --force to replace it`);
    await writeFileAtomic(path, 'replaced', { force: true });
    expect(await readFile(victim, 'utf8')).toBe('must not change');
    expect(await readFile(path, 'utf8')).toBe('replaced');
    // A dangling link too.
    const dangling = join(dir, 'dangling.json');
    await symlink(join(dir, 'nowhere'), dangling);
    await writeFileAtomic(dangling, 'new', { force: true });
    expect(await readFile(dangling, 'utf8')).toBe('new');
  });

  it('refuses the input folder, anything inside it, and links leading into it, before writing', async () => {
    const weights = join(input, 'model.safetensors');
    await refused(createOutputFile(weights, { inputPath: input, force: true }), 'inside-input', `${weights} is inside the input folder ${input}; write the output elsewhere`);
    await refused(createOutputFile(join(input, 'new.safetensors'), { inputPath: input }), 'inside-input');
    await refused(createOutputFile(input, { inputPath: input, force: true }), 'is-input');
    // Through a link to the input folder, and a link to the weights.
    const alias = join(dir, 'alias');
    await symlink(input, alias);
    await refused(createOutputFile(join(alias, 'model.safetensors'), { inputPath: input, force: true }), 'inside-input');
    const link = join(dir, 'weights-link');
    await symlink(weights, link);
    await refused(createOutputFile(link, { inputPath: alias, force: true }), 'inside-input');
    expect(await readFile(weights, 'utf8')).toBe('the input weights');
    expect(await readdir(input)).toEqual(['model.safetensors']);
    expect(await readlink(link)).toBe(weights);
  });

  it('refuses a folder, a missing or non-folder parent, and a special file, before writing', async () => {
    await refused(createOutputFile(dir, { force: true }), 'not-a-file', `${dir} is a folder; give the name of a file to write`);
    const missing = join(dir, 'no-such-folder', 'out.json');
    await refused(createOutputFile(missing), 'no-parent', `cannot write ${missing}: the folder ${join(dir, 'no-such-folder')} does not exist`);
    const underFile = join(victim, 'out.json');
    await refused(createOutputFile(underFile), 'no-parent', `cannot write ${underFile}: ${victim} is not a folder`);
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    await refused(createOutputFile(fifo, { force: true }), 'not-a-file', `${fifo} exists and is not a regular file; refusing to replace it`);
    await refused(createOutputFile('/dev/null', { force: true }), 'not-a-file');
    expect((await readdir(dir)).sort()).toEqual(['fifo', 'input-model', 'victim.txt']);
  });

  it('a folder that cannot be written fails at creation, with the system reason', async () => {
    // Root writes anywhere but on a read-only file system: /proc is one everywhere.
    const error = await createOutputFile('/proc/abliterate-test.json').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(OutputWriteError);
    expect((error as Error).message).toMatch(/^cannot write \/proc\/abliterate-test\.json: E[A-Z]+: [^']+$/);
  });

  it('removes temporaries left by writers that no longer run, never a live one', async () => {
    const path = join(dir, 'dirs.safetensors');
    const dead = join(dir, `.dirs.safetensors.tmp-999999999-${'0'.repeat(16)}`);
    await writeFile(dead, 'left by a killed writer');
    const live = await createOutputFile(path);
    const names = await readdir(dir);
    expect(names).not.toContain(dead.split('/').pop());
    const second = await createOutputFile(path);
    expect(await readdir(dir)).toContain(live.tempPath.split('/').pop());
    await second.abort();
    await live.abort();
  });
});
