import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { createOutputFolder, OutputFolderError, type OutputFolderErrorKind } from '../../src/io/outputFolder.ts';
import { writeSafetensors } from '../../src/io/safetensorsWriter.ts';

const root = await mkdtemp(join(tmpdir(), 'abliterate-output-'));
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let dir: string;
let input: string;
let case_ = 0;
beforeEach(async () => {
  dir = join(root, `case-${case_++}`);
  input = join(dir, 'input-model');
  await mkdir(input, { recursive: true });
  await writeFile(join(input, 'config.json'), '{"model_type":"llama"}');
});

async function refused(promise: Promise<unknown>, kind: OutputFolderErrorKind, pattern?: RegExp): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(OutputFolderError);
  expect((error as OutputFolderError).kind, (error as Error).message).toBe(kind);
  if (pattern) expect((error as Error).message).toMatch(pattern);
}

describe('output folders', () => {
  it('writes into a hidden temporary sibling and renames it at commit', async () => {
    const path = join(dir, 'out');
    const out = await createOutputFolder(path, { inputPath: input });
    expect(out.tempPath).toMatch(new RegExp(`/\\.out\\.tmp-${process.pid}-[0-9a-f]{16}$`));
    await out.writeFile('config.json', '{"a":1}');
    await out.writeFile('sub/dir/file.bin', new Uint8Array([1, 2, 3]));
    const sink = await out.sink('model.safetensors');
    await writeSafetensors(sink, [{ name: 'w', dtype: 'F32', shape: [1], bytes: async () => new Uint8Array(4) }]);
    expect(await readdir(dir)).not.toContain('out');
    await out.commit();
    expect((await readdir(dir)).sort()).toEqual(['input-model', 'out']);
    expect((await readdir(path)).sort()).toEqual(['config.json', 'model.safetensors', 'sub']);
    expect(await readFile(join(path, 'config.json'), 'utf8')).toBe('{"a":1}');
    expect([...(await readFile(join(path, 'sub/dir/file.bin')))]).toEqual([1, 2, 3]);
    await refused(out.writeFile('late.txt', 'x'), 'finished');
    await refused(out.commit(), 'finished');
  });

  it('abort leaves nothing behind', async () => {
    const out = await createOutputFolder(join(dir, 'out'));
    await out.writeFile('a.txt', 'a');
    const sink = await out.sink('b.bin');
    await sink.write(new Uint8Array(10));
    await out.abort();
    await out.abort();
    expect(await readdir(dir)).toEqual(['input-model']);
  });


  it('removes the temporary folders of killed writers of the same output, never those of live ones', async () => {
    // A process id that is free: the largest a Linux pid can be is 2^22.
    const dead = `.out.tmp-${2 ** 22 + 1}-0badc0de`;
    const live = `.out.tmp-${process.pid}-0a0b0c0d`;
    const otherOutput = `.other.tmp-${2 ** 22 + 1}-0badc0de`;
    for (const name of [dead, live, otherOutput]) await mkdir(join(dir, name, 'sub'), { recursive: true });
    const out = await createOutputFolder(join(dir, 'out'));
    await out.abort();
    expect((await readdir(dir)).sort()).toEqual([otherOutput, live, 'input-model'].sort());
  });
  it('refuses the input folder, a folder inside it, and a folder containing it', async () => {
    await refused(createOutputFolder(input, { inputPath: input, force: true }), 'is-input', /is the input folder/);
    await refused(createOutputFolder(join(input, '.'), { inputPath: `${input}/` }), 'is-input');
    await refused(createOutputFolder(join(input, 'cut'), { inputPath: input }), 'inside-input', /inside the input folder/);
    await refused(createOutputFolder(join(input, 'a', 'b'), { inputPath: input }), 'inside-input');
    await refused(createOutputFolder(dir, { inputPath: input, force: true }), 'contains-input', /would destroy the input/);
    // Through a symbolic link: real paths are compared.
    await symlink(input, join(dir, 'link'));
    await refused(createOutputFolder(join(dir, 'link'), { inputPath: input, force: true }), 'is-input');
    await refused(createOutputFolder(join(dir, 'link', 'out'), { inputPath: input }), 'inside-input');
    await refused(createOutputFolder(join(dir, 'elsewhere'), { inputPath: [join(dir, 'other'), join(dir, 'elsewhere', 'in')] }), 'contains-input');
    // A sibling whose name starts with the input's is fine.
    const out = await createOutputFolder(`${input}-cut`, { inputPath: input });
    await out.abort();
    expect((await readdir(dir)).sort()).toEqual(['input-model', 'link']);
    expect(await readdir(input)).toEqual(['config.json']);
  });

  it('refuses an existing output without force', async () => {
    const path = join(dir, 'out');
    await mkdir(path);
    await refused(createOutputFolder(path), 'exists', /already exists/);
    await writeFile(join(dir, 'file'), 'x');
    await refused(createOutputFolder(join(dir, 'file'), { force: true }), 'not-a-folder');
  });

  it('with force, replaces an existing output only at commit', async () => {
    const path = join(dir, 'out');
    await mkdir(path);
    await writeFile(join(path, 'old.txt'), 'old');
    const out = await createOutputFolder(path, { force: true, inputPath: input });
    await out.writeFile('new.txt', 'new');
    expect(await readdir(path)).toEqual(['old.txt']);
    await out.commit();
    expect(await readdir(path)).toEqual(['new.txt']);
    expect((await readdir(dir)).sort()).toEqual(['input-model', 'out']);
    // An aborted forced write keeps the old output.
    const again = await createOutputFolder(path, { force: true });
    await again.writeFile('newer.txt', 'x');
    await again.abort();
    expect(await readdir(path)).toEqual(['new.txt']);
  });

  it('refuses an output that appeared while writing, unless forced', async () => {
    const path = join(dir, 'out');
    const out = await createOutputFolder(path);
    await out.writeFile('a.txt', 'a');
    await mkdir(path);
    await refused(out.commit(), 'exists');
    await out.abort();
    expect((await readdir(dir)).sort()).toEqual(['input-model', 'out']);
  });

  it('refuses bad names, unfinished files, and files written twice', async () => {
    const out = await createOutputFolder(join(dir, 'out'));
    for (const name of ['', '../escape', '/abs', 'a/../../b', 'a//b', '.']) await refused(out.writeFile(name, 'x'), 'bad-name');
    await out.writeFile('a.txt', 'a');
    await expect(out.writeFile('a.txt', 'b')).rejects.toThrow(/a\.txt is written twice/);
    const sink = await out.sink('open.bin');
    await refused(out.commit(), 'open-sinks', /open\.bin/);
    await sink.close();
    await out.commit();
    expect((await readdir(join(dir, 'out'))).sort()).toEqual(['a.txt', 'open.bin']);
    expect((await readdir(dir)).sort()).toEqual(['input-model', 'out']);
  });
});
