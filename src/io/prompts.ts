/**
 * Prompt files: `.txt` (a prompt a line), `.jsonl`, `.json`, `.csv` and `.parquet` (Hugging Face
 * datasets ship parquet), read from a `ByteSource` so that the same code serves a path in Node and
 * a picked file in the browser.
 */
import { parse as parseCsv } from 'csv-parse/browser/esm/sync';
import { parquetMetadataAsync, parquetReadObjects, parquetSchema, type AsyncBuffer } from 'hyparquet';
import { FileTooLargeError, type ByteSource } from './byteSource.ts';
import { jsonErrorReason } from './json.ts';

export interface ReadPromptsOptions {
  /** Column (csv, parquet) or field (jsonl, json) holding the prompt; default: the first of DEFAULT_PROMPT_COLUMNS present. */
  column?: string;
  /** Longer prompts are cut to this many characters (code points), with a warning. Default 8000. */
  maxChars?: number;
  /** Larger files are refused before they are read. Default MAX_PROMPT_FILE_BYTES (256 MiB). */
  maxBytes?: number;
  onWarning?: (message: string) => void;
}

export const DEFAULT_PROMPT_COLUMNS: readonly string[] = ['prompt', 'instruction', 'text', 'goal'];
export const PROMPT_FILE_EXTENSIONS: readonly string[] = ['.txt', '.jsonl', '.json', '.csv', '.parquet'];
export const DEFAULT_MAX_PROMPT_CHARS = 8000;
/** Prompt files are read whole (parquet by column chunks): larger ones are refused. */
export const MAX_PROMPT_FILE_BYTES = 256 * 2 ** 20;

export class PromptFileError extends Error {
  override name = 'PromptFileError';
}

/** One prompt and where it came from ("line 4", "row 12") for messages. */
interface Item {
  text: string;
  where: string;
}

export async function readPrompts(source: ByteSource, options: ReadPromptsOptions = {}): Promise<string[]> {
  const maxChars = options.maxChars ?? DEFAULT_MAX_PROMPT_CHARS;
  if (!Number.isSafeInteger(maxChars) || maxChars <= 0) throw new PromptFileError(`maxChars must be a positive integer (got ${maxChars})`);
  const name = source.name;
  const maxBytes = options.maxBytes ?? MAX_PROMPT_FILE_BYTES;
  if (source.size > maxBytes) throw new FileTooLargeError(name, source.size, maxBytes);
  const extension = /\.[^./\\]+$/.exec(name)?.[0].toLowerCase() ?? '';

  let items: Item[];
  switch (extension) {
    case '.txt':
      items = readText(await decodeText(source));
      break;
    case '.jsonl':
      items = readJsonLines(name, await decodeText(source), options.column);
      break;
    case '.json':
      items = readJsonArray(name, await decodeText(source), options.column);
      break;
    case '.csv':
      items = readCsv(name, await decodeText(source), options.column);
      break;
    case '.parquet':
      items = await readParquet(source, options.column);
      break;
    default:
      throw new PromptFileError(
        `${name}: unknown prompt file type ${extension === '' ? '(no extension)' : `"${extension}"`}; supported: ${PROMPT_FILE_EXTENSIONS.join(', ')}`,
      );
  }

  const prompts: string[] = [];
  const truncated: string[] = [];
  let empty = 0;
  for (const item of items) {
    if (item.text.trim() === '') {
      empty++;
      continue;
    }
    const cut = truncate(item.text, maxChars);
    if (cut !== item.text) truncated.push(item.where);
    prompts.push(cut);
  }
  if (prompts.length === 0) throw new PromptFileError(`no prompts in ${name}`);
  if (truncated.length > 0) {
    const shown = truncated.slice(0, 5).join(', ') + (truncated.length > 5 ? `, and ${truncated.length - 5} more` : '');
    options.onWarning?.(`${name}: ${truncated.length} prompt${truncated.length === 1 ? '' : 's'} longer than ${maxChars} characters truncated (${shown})`);
  }
  if (empty > 0 && extension !== '.txt') options.onWarning?.(`${name}: ${empty} empty prompt${empty === 1 ? '' : 's'} skipped`);
  return prompts;
}

/** The first `maxChars` code points of `text`, found without splitting it (a prompt may be a 50 MB line). */
function truncate(text: string, maxChars: number): string {
  if (text.length <= maxChars) return text; // UTF-16 length bounds the code point count
  let end = 0;
  for (let count = 0; count < maxChars && end < text.length; count++) end += text.codePointAt(end)! > 0xffff ? 2 : 1;
  return end >= text.length ? text : text.slice(0, end);
}

async function decodeText(source: ByteSource): Promise<string> {
  const bytes = await source.read(0, source.size);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new PromptFileError(`${source.name}: not UTF-8 text`);
  }
}

function lines(text: string): { line: string; number: number }[] {
  return text.split('\n').map((line, i) => ({ line: line.endsWith('\r') ? line.slice(0, -1) : line, number: i + 1 }));
}

function readText(text: string): Item[] {
  return lines(text)
    .filter(({ line }) => line.trim() !== '')
    .map(({ line, number }) => ({ text: line, where: `line ${number}` }));
}

/** Picks the prompt field of objects: the option, else the first default present in the first object. */
class FieldPicker {
  private chosen: string | undefined;

  constructor(
    private readonly name: string,
    private readonly column: string | undefined,
  ) {
    this.chosen = column;
  }

  pick(value: unknown, where: string): string {
    if (typeof value === 'string') return value;
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new PromptFileError(`${this.name}: ${where}: expected a string or an object with the prompt, got ${describe(value)}`);
    }
    const record = value as Record<string, unknown>;
    const keys = Object.keys(record);
    if (this.chosen === undefined) {
      this.chosen = DEFAULT_PROMPT_COLUMNS.find((key) => key in record);
      if (this.chosen === undefined) {
        throw new PromptFileError(
          `${this.name}: ${where}: none of the fields ${DEFAULT_PROMPT_COLUMNS.join(', ')} (fields: ${keys.join(', ') || 'none'}); name one with the column option`,
        );
      }
    }
    if (!(this.chosen in record)) {
      throw new PromptFileError(`${this.name}: ${where}: no field "${this.chosen}" (fields: ${keys.join(', ') || 'none'})`);
    }
    const field = record[this.chosen];
    if (typeof field !== 'string') {
      throw new PromptFileError(`${this.name}: ${where}: field "${this.chosen}" is not a string (got ${describe(field)})`);
    }
    return field;
  }

  get field(): string | undefined {
    return this.chosen ?? this.column;
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'an object';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

function readJsonLines(name: string, text: string, column: string | undefined): Item[] {
  const picker = new FieldPicker(name, column);
  const items: Item[] = [];
  for (const { line, number } of lines(text)) {
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new PromptFileError(`${name}: line ${number}: invalid JSON (${jsonErrorReason(error, line)})`);
    }
    items.push({ text: picker.pick(value, `line ${number}`), where: `line ${number}` });
  }
  return items;
}

function readJsonArray(name: string, text: string, column: string | undefined): Item[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new PromptFileError(`${name}: invalid JSON (${jsonErrorReason(error, text)})`);
  }
  if (!Array.isArray(value)) throw new PromptFileError(`${name}: expected a JSON array of prompts (strings or objects), got ${describe(value)}`);
  const picker = new FieldPicker(name, column);
  return value.map((entry, i) => ({ text: picker.pick(entry, `item ${i + 1}`), where: `item ${i + 1}` }));
}

function readCsv(name: string, text: string, column: string | undefined): Item[] {
  let rows: string[][];
  try {
    rows = parseCsv(text, { bom: true, skip_empty_lines: true, relax_quotes: false }) as string[][];
  } catch (error) {
    // csv-parse quotes the offending characters; say where instead.
    const { code, lines: line } = error as { code?: string; lines?: number };
    const reason = code ? code.replace(/^CSV_/, '').toLowerCase().replace(/_/g, ' ') : 'not valid CSV';
    throw new PromptFileError(`${name}: ${line ? `line ${line}: ` : ''}invalid CSV (${reason})`);
  }
  const header = rows[0];
  if (header === undefined) throw new PromptFileError(`no prompts in ${name}`);
  const chosen = chooseColumn(name, header, column);
  const index = header.indexOf(chosen);
  // Row r of the data is line r + 1 of the file when no field spans lines; say "row" to stay exact.
  return rows.slice(1).map((row, i) => ({ text: row[index] ?? '', where: `row ${i + 1}` }));
}

function chooseColumn(name: string, columns: readonly string[], column: string | undefined): string {
  if (column !== undefined) {
    if (!columns.includes(column)) throw new PromptFileError(`${name}: no column "${column}"; columns: ${columns.join(', ') || 'none'}`);
    return column;
  }
  const found = DEFAULT_PROMPT_COLUMNS.find((c) => columns.includes(c));
  if (found === undefined) {
    throw new PromptFileError(
      `${name}: none of the columns ${DEFAULT_PROMPT_COLUMNS.join(', ')}; columns: ${columns.join(', ') || 'none'}; name one with the column option`,
    );
  }
  return found;
}

/** hyparquet reads through `{ byteLength, slice }`; a ByteSource serves the ranges. */
export function asyncBufferOf(source: ByteSource): AsyncBuffer {
  return {
    byteLength: source.size,
    async slice(start: number, end?: number): Promise<ArrayBuffer> {
      const stop = Math.min(end ?? source.size, source.size);
      const bytes = await source.read(start, Math.max(0, stop - start));
      return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
    },
  };
}

async function readParquet(source: ByteSource, column: string | undefined): Promise<Item[]> {
  const name = source.name;
  const file = asyncBufferOf(source);
  let metadata;
  try {
    metadata = await parquetMetadataAsync(file);
  } catch (error) {
    throw new PromptFileError(`${name}: not a readable parquet file (${(error as Error).message})`);
  }
  const children = parquetSchema(metadata).children;
  const chosen = chooseColumn(
    name,
    children.map((c) => c.element.name),
    column,
  );
  const node = children.find((c) => c.element.name === chosen)!;
  if (node.children.length > 0) throw new PromptFileError(`${name}: column "${chosen}" is nested (a list or struct), not text`);

  let rows: Record<string, unknown>[];
  try {
    rows = await parquetReadObjects({ file, metadata, columns: [chosen] });
  } catch (error) {
    throw new PromptFileError(`${name}: cannot read column "${chosen}" (${(error as Error).message})`);
  }
  const decoder = new TextDecoder();
  return rows.map((row, i) => {
    const value = row[chosen];
    const where = `row ${i + 1}`;
    if (typeof value === 'string') return { text: value, where };
    if (value === null || value === undefined) return { text: '', where };
    if (value instanceof Uint8Array) return { text: decoder.decode(value), where };
    throw new PromptFileError(`${name}: column "${chosen}" is not text (${where} holds ${describe(typeof value === 'bigint' ? Number(value) : value)})`);
  });
}
