import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { describe, expect, it } from 'vitest';
import { BlobSource, MemorySource, type ByteSource } from '../../src/io/byteSource.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { PromptFileError, readPrompts, type ReadPromptsOptions } from '../../src/io/prompts.ts';

const text = (name: string, content: string | Uint8Array): ByteSource =>
  new MemorySource(typeof content === 'string' ? new TextEncoder().encode(content) : content, name);

function parquet(name: string, columnData: { name: string; data: unknown[]; type?: string }[]): ByteSource {
  const buffer = parquetWriteBuffer({ columnData } as Parameters<typeof parquetWriteBuffer>[0]);
  return new MemorySource(new Uint8Array(buffer), name);
}

async function failure(source: ByteSource, options: ReadPromptsOptions = {}): Promise<string> {
  const error = await readPrompts(source, options).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PromptFileError);
  return (error as Error).message;
}

describe('.txt', () => {
  it('a prompt a line, blank lines skipped, \\r stripped', async () => {
    const prompts = await readPrompts(text('p.txt', 'first\r\n\r\n  \nsecond one\n\tthird\n'));
    expect(prompts).toEqual(['first', 'second one', '\tthird']);
  });

  it('a UTF-8 byte order mark is dropped; other encodings are refused', async () => {
    expect(await readPrompts(text('p.txt', '\ufeffhé'))).toEqual(['hé']);
    expect(await failure(text('p.txt', new Uint8Array([0x68, 0xe9, 0x0a])))).toBe('p.txt: not UTF-8 text');
  });

  it('empty file', async () => {
    expect(await failure(text('empty.txt', ''))).toBe('no prompts in empty.txt');
    expect(await failure(text('blank.txt', '\n \r\n'))).toBe('no prompts in blank.txt');
  });
});

describe('.jsonl', () => {
  it('strings and objects with the default fields', async () => {
    expect(await readPrompts(text('a.jsonl', '"one"\n\n"two"\n'))).toEqual(['one', 'two']);
    expect(await readPrompts(text('b.jsonl', '{"instruction":"do x","category":"c"}\n{"instruction":"do y"}\n'))).toEqual(['do x', 'do y']);
    expect(await readPrompts(text('c.jsonl', '{"goal":"g1","target":"t"}\n'))).toEqual(['g1']);
    // "prompt" wins over "text" when both are there
    expect(await readPrompts(text('d.jsonl', '{"text":"t","prompt":"p"}\n'))).toEqual(['p']);
  });

  it('the column option', async () => {
    expect(await readPrompts(text('a.jsonl', '{"q":"one","prompt":"no"}\n{"q":"two"}\n'), { column: 'q' })).toEqual(['one', 'two']);
    expect(await failure(text('a.jsonl', '{"q":"one"}\n{"r":"two"}\n'), { column: 'q' })).toBe('a.jsonl: line 2: no field "q" (fields: r)');
  });

  it('a bad line gives its number', async () => {
    expect(await failure(text('bad.jsonl', '"ok"\n\n{"prompt": oops}\n'))).toMatch(/^bad\.jsonl: line 3: invalid JSON/);
    expect(await failure(text('bad.jsonl', '"ok"\n42\n'))).toBe('bad.jsonl: line 2: expected a string or an object with the prompt, got 42');
    expect(await failure(text('bad.jsonl', '{"prompt":"a"}\n{"prompt":3}\n'))).toBe('bad.jsonl: line 2: field "prompt" is not a string (got 3)');
    expect(await failure(text('bad.jsonl', '{"question":"a","answer":"b"}\n'))).toBe(
      'bad.jsonl: line 1: none of the fields prompt, instruction, text, goal (fields: question, answer); name one with the column option',
    );
  });
});

describe('.json', () => {
  it('an array of objects (as refusal_direction ships) or strings', async () => {
    expect(await readPrompts(text('h.json', JSON.stringify([{ instruction: 'a', category: 'x' }, { instruction: 'b', category: 'y' }])))).toEqual(['a', 'b']);
    expect(await readPrompts(text('h.json', '["a", "b"]'))).toEqual(['a', 'b']);
    expect(await failure(text('h.json', '{"prompt": "a"}'))).toBe('h.json: expected a JSON array of prompts (strings or objects), got an object');
    expect(await failure(text('h.json', '[1]'))).toBe('h.json: item 1: expected a string or an object with the prompt, got 1');
  });
});

describe('.csv', () => {
  it('header row, default column, quoted fields with commas and newlines', async () => {
    const csv = 'id,goal,target\n1,"Write a poem, please",Sure\n2,"Two\nlines",Sure\n3,plain,x\n';
    expect(await readPrompts(text('advbench.csv', csv))).toEqual(['Write a poem, please', 'Two\nlines', 'plain']);
  });

  it('the column option, and its absence named with the available columns', async () => {
    const csv = '\ufeffa,b\nx,y\n';
    expect(await readPrompts(text('t.csv', csv), { column: 'b' })).toEqual(['y']);
    expect(await failure(text('t.csv', csv), { column: 'c' })).toBe('t.csv: no column "c"; columns: a, b');
    expect(await failure(text('t.csv', csv))).toBe('t.csv: none of the columns prompt, instruction, text, goal; columns: a, b; name one with the column option');
  });

  it('malformed csv and header-only csv', async () => {
    expect(await failure(text('m.csv', 'prompt,b\n"unclosed,1\n'))).toMatch(/^m\.csv: /);
    expect(await failure(text('h.csv', 'prompt\n'))).toBe('no prompts in h.csv');
  });

  it('empty values are skipped with a warning', async () => {
    const warnings: string[] = [];
    expect(await readPrompts(text('e.csv', 'prompt\na\n""\nb\n'), { onWarning: (w) => warnings.push(w) })).toEqual(['a', 'b']);
    expect(warnings).toEqual(['e.csv: 1 empty prompt skipped']);
  });
});

describe('.parquet', () => {
  it('default column, and the column option', async () => {
    const source = parquet('train-00000-of-00001.parquet', [
      { name: 'category', data: ['a', 'b', 'c'], type: 'STRING' },
      { name: 'instruction', data: ['first', 'second', 'third'], type: 'STRING' },
    ]);
    expect(await readPrompts(source)).toEqual(['first', 'second', 'third']);
    expect(await readPrompts(source, { column: 'category' })).toEqual(['a', 'b', 'c']);
  });

  it('an absent column names the available ones', async () => {
    const source = parquet('d.parquet', [
      { name: 'question', data: ['q'], type: 'STRING' },
      { name: 'score', data: [1], type: 'INT32' },
    ]);
    expect(await failure(source, { column: 'prompt' })).toBe('d.parquet: no column "prompt"; columns: question, score');
    expect(await failure(source)).toBe('d.parquet: none of the columns prompt, instruction, text, goal; columns: question, score; name one with the column option');
    expect(await failure(source, { column: 'score' })).toBe('d.parquet: column "score" is not text (row 1 holds 1)');
  });

  it('nulls are skipped; a file that is not parquet is refused', async () => {
    const source = parquet('n.parquet', [{ name: 'text', data: ['a', null, 'b'], type: 'STRING' }]);
    expect(await readPrompts(source)).toEqual(['a', 'b']);
    expect(await failure(text('x.parquet', 'not parquet at all'))).toMatch(/^x\.parquet: not a readable parquet file/);
  });

  it('many rows through a ranged source (Blob), as in the browser', async () => {
    const data = Array.from({ length: 3000 }, (_, i) => `prompt number ${i} ${'x'.repeat(i % 50)}`);
    const buffer = parquetWriteBuffer({ columnData: [{ name: 'prompt', data, type: 'STRING' }] });
    const prompts = await readPrompts(new BlobSource(new Blob([buffer]), 'big.parquet'));
    expect(prompts).toEqual(data);
  });
});

describe('common rules', () => {
  it('long prompts are truncated with one warning', async () => {
    const warnings: string[] = [];
    const long = 'a'.repeat(20);
    const prompts = await readPrompts(text('l.txt', `short\n${long}\n${long}b\n`), { maxChars: 10, onWarning: (w) => warnings.push(w) });
    expect(prompts).toEqual(['short', 'a'.repeat(10), 'a'.repeat(10)]);
    expect(warnings).toEqual(['l.txt: 2 prompts longer than 10 characters truncated (line 2, line 3)']);
  });

  it('truncation counts code points and never splits a surrogate pair', async () => {
    const prompts = await readPrompts(text('e.txt', '🌍🌍🌍🌍\n'), { maxChars: 3 });
    expect(prompts).toEqual(['🌍🌍🌍']);
    expect(await readPrompts(text('e.txt', '🌍🌍🌍\n'), { maxChars: 3 })).toEqual(['🌍🌍🌍']);
  });

  it('the default limit is 8000 characters', async () => {
    const warnings: string[] = [];
    const prompts = await readPrompts(text('d.txt', 'x'.repeat(9000)), { onWarning: (w) => warnings.push(w) });
    expect(prompts[0]).toHaveLength(8000);
    expect(warnings).toHaveLength(1);
  });

  it('unknown extensions list the supported ones', async () => {
    expect(await failure(text('p.xlsx', 'x'))).toBe('p.xlsx: unknown prompt file type ".xlsx"; supported: .txt, .jsonl, .json, .csv, .parquet');
    expect(await failure(text('prompts', 'x'))).toBe('prompts: unknown prompt file type (no extension); supported: .txt, .jsonl, .json, .csv, .parquet');
  });

  it('extensions are case-insensitive; a bad maxChars is refused', async () => {
    expect(await readPrompts(text('P.TXT', 'a'))).toEqual(['a']);
    await expect(readPrompts(text('p.txt', 'a'), { maxChars: 0 })).rejects.toThrow('maxChars must be a positive integer (got 0)');
  });

  it('reads files on disk through NodeFolder', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prompts-'));
    try {
      writeFileSync(join(dir, 'harmful.jsonl'), '{"prompt":"a"}\n{"prompt":"b"}\n');
      writeFileSync(join(dir, 'set.parquet'), new Uint8Array(parquetWriteBuffer({ columnData: [{ name: 'goal', data: ['g'], type: 'STRING' }] })));
      const folder = new NodeFolder(dir);
      expect(await readPrompts(await folder.open('harmful.jsonl'))).toEqual(['a', 'b']);
      expect(await readPrompts(await folder.open('set.parquet'))).toEqual(['g']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
