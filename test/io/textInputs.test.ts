/**
 * Reading inputs from disk: model folders whose files are links (the Hugging Face cache), files
 * that are not regular (a FIFO, a device, a folder) named as such rather than waited on or called
 * missing, text files capped before they are read, and JSON errors that never quote the file.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlobFolder, FileMissingError, FileTooLargeError, MAX_TEXT_FILE_BYTES, MemorySource, NotRegularFileError } from '../../src/io/byteSource.ts';
import { jsonErrorReason } from '../../src/io/json.ts';
import { NodeFolder, readTextFile } from '../../src/io/nodeFolder.ts';
import { MAX_PROMPT_FILE_BYTES, readPrompts } from '../../src/io/prompts.ts';

const root = mkdtempSync(join(tmpdir(), 'abliterate-text-inputs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function rejection(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(Error);
  return error as Error;
}

describe('a model folder of links (Hugging Face cache layout)', () => {
  it('lists, opens and reads files that are links into ../../blobs, and leaves out links to folders and broken links', async () => {
    const blobs = join(root, 'hf', 'blobs');
    const snapshot = join(root, 'hf', 'snapshots', 'abc123');
    mkdirSync(blobs, { recursive: true });
    mkdirSync(snapshot, { recursive: true });
    writeFileSync(join(blobs, 'a1'), '{"model_type": "llama"}');
    writeFileSync(join(blobs, 'b2'), 'weights');
    symlinkSync('../../blobs/a1', join(snapshot, 'config.json'));
    symlinkSync('../../blobs/b2', join(snapshot, 'model.safetensors'));
    symlinkSync('../../blobs', join(snapshot, 'a-folder-link'));
    symlinkSync('../../blobs/gone', join(snapshot, 'broken.json'));
    writeFileSync(join(snapshot, 'README.md'), 'a plain file');
    const folder = new NodeFolder(snapshot);
    expect(await folder.list()).toEqual(['README.md', 'config.json', 'model.safetensors']);
    expect(await folder.readText('config.json')).toBe('{"model_type": "llama"}');
    const source = await folder.open('model.safetensors');
    expect(source.size).toBe(7);
    expect(new TextDecoder().decode(await source.read(0, 7))).toBe('weights');
    expect(await folder.has('broken.json')).toBe(false);
    expect(await rejection(folder.open('broken.json'))).toBeInstanceOf(FileMissingError);
  });
});

describe('files that are not regular files', () => {
  const dir = join(root, 'special');
  mkdirSync(dir, { recursive: true });
  const fifo = join(dir, 'prompts.txt');
  execFileSync('mkfifo', [fifo]);
  mkdirSync(join(dir, 'config.json'));

  it('a FIFO is reported as one, at once (never opened for a blocking read)', async () => {
    const folder = new NodeFolder(dir);
    for (const read of [() => folder.open('prompts.txt'), () => folder.readText('prompts.txt')]) {
      const error = await rejection(read());
      expect(error).toBeInstanceOf(NotRegularFileError);
      expect(error.message).toBe(`${fifo} is a FIFO (named pipe), not a regular file`);
    }
    expect(await folder.has('prompts.txt')).toBe(true);
    // A FIFO is not listed as a file.
    expect(await folder.list()).toEqual([]);
  });

  it('a device and a folder are named as such, not as missing', async () => {
    const missing = () => new Error('missing');
    expect((await rejection(readTextFile('/dev/zero', 1024, missing))).message).toBe('/dev/zero is a device, not a regular file');
    expect((await rejection(new NodeFolder(dir).readText('config.json'))).message).toBe(`${join(dir, 'config.json')} is a folder, not a regular file`);
    expect((await rejection(readTextFile(join(dir, 'nothing.toml'), 1024, missing))).message).toBe('missing');
  });
});

describe('caps on text read whole', () => {
  it('a model folder text file over the cap is refused from its size, without reading it', async () => {
    const dir = join(root, 'large');
    mkdirSync(dir, { recursive: true });
    // Sparse: reading it would take 3 GB of memory.
    writeFileSync(join(dir, 'tokenizer_config.json'), '');
    truncateSync(join(dir, 'tokenizer_config.json'), 3 * 2 ** 30);
    const error = await rejection(new NodeFolder(dir).readText('tokenizer_config.json'));
    expect(error).toBeInstanceOf(FileTooLargeError);
    expect(error.message).toBe(`${join(dir, 'tokenizer_config.json')} is 3 GiB, more than the 16 MiB this file may have`);
    expect(MAX_TEXT_FILE_BYTES).toBe(16 * 2 ** 20);
    // The same in the browser's folder.
    const blob = new Blob([new Uint8Array(MAX_TEXT_FILE_BYTES + 1)]);
    expect((await rejection(new BlobFolder('picked', new Map([['chat_template.jinja', blob]])).readText('chat_template.jinja'))).message).toBe(
      'picked/chat_template.jinja is 16 MiB, more than the 16 MiB this file may have',
    );
  });

  it('a prompt file over 256 MiB is refused before reading', async () => {
    const source = { name: 'huge.txt', size: MAX_PROMPT_FILE_BYTES + 1, read: () => Promise.reject(new Error('read')) };
    expect((await rejection(readPrompts(source))).message).toBe('huge.txt is 256 MiB, more than the 256 MiB this file may have');
  });

  it('a 50 MB one-line prompt is cut to 8000 characters with a warning, without splitting it into characters', async () => {
    // 51 MB of UTF-8, 17 M characters outside Latin-1 (V8 keeps no cache of those one-character strings).
    const line = '語'.repeat(17_000_000);
    const warnings: string[] = [];
    const before = process.memoryUsage().heapUsed;
    const prompts = await readPrompts(new MemorySource(new TextEncoder().encode(`${line}\nshort\n`), 'long.txt'), { onWarning: (m) => warnings.push(m) });
    const grown = process.memoryUsage().heapUsed - before;
    expect(prompts.map((p) => p.length)).toEqual([8000, 5]);
    expect(warnings).toEqual(['long.txt: 1 prompt longer than 8000 characters truncated (line 1)']);
    // The text itself takes 34 MB; an array of its characters would take over 500 MB.
    console.log(`a 51 MB one-line prompt: JavaScript heap grew by ${(grown / 2 ** 20).toFixed(1)} MiB`);
    expect(grown).toBeLessThan(250 * 2 ** 20);
    // Characters outside the BMP count once each and are never split.
    const astral = await readPrompts(new MemorySource(new TextEncoder().encode('😀'.repeat(5)), 'a.txt'), { maxChars: 3 });
    expect(astral).toEqual(['😀😀😀']);
  });
});

describe('JSON errors never quote the file', () => {
  const reason = (text: string) => {
    try {
      JSON.parse(text);
    } catch (error) {
      return jsonErrorReason(error, text);
    }
    throw new Error('parsed');
  };

  it('says what and where, not the text', () => {
    expect(reason('root:x:0:0:root:/root:/bin/bash')).toBe('unexpected character');
    expect(reason('{"a": 1,\n  "b": secret}')).toBe('unexpected character');
    expect(reason('{"a": 1,\n  "b": 2')).toBe("expected ',' or '}' after property value at line 2, column 9");
    expect(reason('{"a": 1} trailing')).toBe('unexpected non-whitespace character after JSON at line 1, column 10');
    expect(reason('{"a":')).toBe('unexpected end of input');
  });

  it('in the messages of the model folder files', async () => {
    const dir = join(root, 'secret');
    mkdirSync(dir, { recursive: true });
    const secret = join(root, 'secret.txt');
    writeFileSync(secret, 'hunter2-password-value');
    symlinkSync(secret, join(dir, 'config.json'));
    const { loadModelConfig } = await import('../../src/model/config.ts');
    const error = await rejection(loadModelConfig(new NodeFolder(dir)));
    expect(error.message).toBe(`${dir}/config.json: invalid JSON (unexpected character)`);
    const jsonl = new MemorySource(new TextEncoder().encode('{"prompt": "ok"}\nhunter2\n'), 'p.jsonl');
    expect((await rejection(readPrompts(jsonl))).message).toBe('p.jsonl: line 2: invalid JSON (unexpected character)');
    const csv = new MemorySource(new TextEncoder().encode('prompt,b\n"x"hunter2,1\n'), 'p.csv');
    expect((await rejection(readPrompts(csv))).message).toBe('p.csv: line 2: invalid CSV (invalid closing quote)');
  });
});
