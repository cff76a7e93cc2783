/**
 * Property-based tests: valid files, randomly damaged, must either open and read cleanly (every
 * tensor inside the file, sizes consistent, no overlaps) or fail with a SafetensorsError — never
 * another error, never a hang, never a read outside the file.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlobFolder, MemorySource, type ByteSource } from '../../src/io/byteSource.ts';
import { SafetensorsError, SafetensorsFile, SafetensorsModel, STORED_DTYPE_BITS, type StoredDtype } from '../../src/io/safetensors.ts';
import { MemorySink, MemoryTarget, writeSafetensors, writeSafetensorsModel, type TensorToWrite } from '../../src/io/safetensorsWriter.ts';

const RUNS = 1000;
const PER_RUN_MS = 2000;

/** Records every read and flags any outside the file. */
class GuardedSource implements ByteSource {
  readonly outside: string[] = [];
  constructor(private readonly inner: ByteSource) {}
  get name() {
    return this.inner.name;
  }
  get size() {
    return this.inner.size;
  }
  read(offset: number, length: number) {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.inner.size) {
      this.outside.push(`read(${offset}, ${length}) of a ${this.inner.size}-byte file`);
    }
    return this.inner.read(offset, length);
  }
}

/** A folder whose files are guarded sources. */
class GuardedFolder extends BlobFolder {
  readonly sources: GuardedSource[] = [];
  override async open(file: string): Promise<ByteSource> {
    const source = new GuardedSource(await super.open(file));
    this.sources.push(source);
    return source;
  }
}

interface Spec {
  name: string;
  dtype: StoredDtype;
  shape: number[];
}

const nameArb = fc.oneof(
  fc.constantFrom('w', 'a', 'b', 'model.embed_tokens.weight', 'model.layers.0.mlp.down_proj.weight', 'é', '0', '__proto__'),
  fc.string({ minLength: 1, maxLength: 6 }),
);
const specArb: fc.Arbitrary<Spec> = fc.record({
  name: nameArb.filter((n) => n !== '__metadata__'),
  dtype: fc.constantFrom<StoredDtype>('F32', 'F16', 'BF16', 'I64', 'U8', 'BOOL', 'F64'),
  shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }),
});
const specsArb = fc.uniqueArray(specArb, { selector: (s) => s.name, maxLength: 5 });
const metadataArb = fc.option(fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }), { nil: undefined });

function fill(length: number, seed: number): Uint8Array {
  return new Uint8Array(length).map((_, i) => (i * 31 + seed * 7 + 1) & 0xff);
}

function toWrite(specs: Spec[]): TensorToWrite[] {
  return specs.map((s, k) => {
    const count = s.shape.reduce((a, b) => a * b, 1);
    return { ...s, bytes: async () => fill((count * STORED_DTYPE_BITS[s.dtype]) / 8, k) };
  });
}

async function build(specs: Spec[], metadata?: Record<string, string>): Promise<Uint8Array> {
  const sink = new MemorySink();
  await writeSafetensors(sink, toWrite(specs), metadata);
  return sink.bytes();
}

// ---------------------------------------------------------------------------------------------
// Mutations

const jsonish = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.integer({ min: -3, max: 300 }),
  fc.constantFrom(2 ** 53, 2 ** 64, -0, 1.5, 1e300),
  fc.array(fc.integer({ min: -2, max: 200 }), { maxLength: 3 }),
  fc.constantFrom('F32', 'F16', 'BF16', 'I64', 'U8', 'F4', 'float32', ''),
);

type Mutation =
  | { kind: 'flip'; at: number; bit: number; anywhere: boolean }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'append'; bytes: Uint8Array }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'length'; value: bigint; relative: boolean }
  | { kind: 'field'; tensor: number; field: 'dtype' | 'shape' | 'data_offsets' | 'entry'; value: unknown; remove: boolean }
  | { kind: 'offsets'; tensor: number; begin: number; end: number }
  | { kind: 'shift'; tensor: number; delta: number }
  | { kind: 'alias'; tensor: number; other: number }
  | { kind: 'duplicate'; tensor: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }), anywhere: fc.boolean() }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(...'{}[]",:-.0123456789 e\\'.split('').map((c) => c.charCodeAt(0)))) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('length' as const), value: fc.oneof(fc.bigInt({ min: -16n, max: 16n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })), relative: fc.boolean() }),
  fc.record({ kind: fc.constant('field' as const), tensor: fc.nat(), field: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const, 'entry' as const), value: jsonish, remove: fc.boolean() }),
  fc.record({ kind: fc.constant('offsets' as const), tensor: fc.nat(), begin: fc.integer({ min: -2, max: 400 }), end: fc.integer({ min: -2, max: 400 }) }),
  // Keeps the length, so the result passes the size checks and tests the overlap and bounds checks.
  fc.record({ kind: fc.constant('shift' as const), tensor: fc.nat(), delta: fc.integer({ min: -24, max: 24 }) }),
  fc.record({ kind: fc.constant('alias' as const), tensor: fc.nat(), other: fc.nat() }),
  fc.record({ kind: fc.constant('duplicate' as const), tensor: fc.nat() }),
);

function headerOf(bytes: Uint8Array): { n: number; text: string } | undefined {
  if (bytes.byteLength < 8) return undefined;
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  if (8 + n > bytes.byteLength) return undefined;
  try {
    return { n, text: new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n)) };
  } catch {
    return undefined;
  }
}

/** Replaces the header by `text`, with a correct length, keeping the data. */
function withHeader(bytes: Uint8Array, n: number, text: string): Uint8Array {
  const json = new TextEncoder().encode(text);
  const data = bytes.subarray(8 + n);
  const out = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  out.set(data, 8 + json.byteLength);
  return out;
}

function mutate(bytes: Uint8Array, m: Mutation): Uint8Array {
  const size = bytes.byteLength;
  const header = headerOf(bytes);
  const headerEnd = header ? 8 + header.n : Math.min(size, 8);
  switch (m.kind) {
    case 'flip': {
      if (size === 0) return bytes;
      const out = bytes.slice();
      const at = m.at % (m.anywhere ? size : Math.max(1, headerEnd));
      out[at]! ^= 1 << m.bit;
      return out;
    }
    case 'set': {
      if (size === 0) return bytes;
      const out = bytes.slice();
      out[m.at % Math.max(1, headerEnd)] = m.value;
      return out;
    }
    case 'truncate':
      return bytes.slice(0, m.at % (size + 1));
    case 'append': {
      const out = new Uint8Array(size + m.bytes.byteLength);
      out.set(bytes);
      out.set(m.bytes, size);
      return out;
    }
    case 'insert': {
      const at = m.at % (size + 1);
      const out = new Uint8Array(size + m.bytes.byteLength);
      out.set(bytes.subarray(0, at));
      out.set(m.bytes, at);
      out.set(bytes.subarray(at), at + m.bytes.byteLength);
      return out;
    }
    case 'length': {
      if (size < 8) return bytes;
      const out = bytes.slice();
      const view = new DataView(out.buffer);
      const value = m.relative ? view.getBigUint64(0, true) + m.value : m.value;
      view.setBigUint64(0, BigInt.asUintN(64, value), true);
      return out;
    }
    default: {
      if (!header) return bytes;
      let parsed: Record<string, Record<string, unknown>>;
      try {
        parsed = JSON.parse(header.text) as Record<string, Record<string, unknown>>;
      } catch {
        return bytes;
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return bytes;
      const names = Object.keys(parsed).filter((k) => k !== '__metadata__');
      if (names.length === 0) return bytes;
      const name = names[m.tensor % names.length]!;
      if (m.kind === 'duplicate') {
        // Append a second entry under the same name (as text: JSON objects cannot hold it).
        const entry = JSON.stringify(parsed[name]);
        const text = header.text.trimEnd();
        return withHeader(bytes, header.n, `${text.slice(0, -1)},${JSON.stringify(name)}:${entry}}`);
      }
      const entry = parsed[name];
      const isEntry = (e: unknown): e is Record<string, unknown> => typeof e === 'object' && e !== null && !Array.isArray(e);
      if (m.kind === 'shift') {
        const offsets = isEntry(entry) ? entry['data_offsets'] : undefined;
        if (isEntry(entry) && Array.isArray(offsets) && offsets.length === 2) entry['data_offsets'] = offsets.map((o) => (o as number) + m.delta);
      } else if (m.kind === 'alias') {
        const other = parsed[names[m.other % names.length]!];
        if (isEntry(entry) && isEntry(other)) Object.assign(entry, { dtype: other['dtype'], shape: other['shape'], data_offsets: other['data_offsets'] });
      } else if (m.kind === 'offsets') {
        if (typeof entry === 'object' && entry !== null && !Array.isArray(entry)) entry['data_offsets'] = [m.begin, m.end];
      } else if (m.field === 'entry') {
        if (m.remove) delete parsed[name];
        else parsed[name] = m.value as Record<string, unknown>;
      } else if (typeof entry === 'object' && entry !== null && !Array.isArray(entry)) {
        if (m.remove) delete entry[m.field];
        else entry[m.field] = m.value;
      }
      return withHeader(bytes, header.n, JSON.stringify(parsed));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The property

/** Opens and reads everything; returns what happened, failing on any forbidden outcome. */
async function openAndReadAll(bytes: Uint8Array): Promise<'ok' | SafetensorsError> {
  const source = new GuardedSource(new MemorySource(bytes, 'fuzz.safetensors'));
  let outcome: 'ok' | SafetensorsError = 'ok';
  try {
    const file = await SafetensorsFile.open(source);
    const infos = [...file.allTensors.values()];
    for (const info of infos) {
      if (info.byteOffset < file.dataOffset || info.byteOffset + info.byteLength > bytes.byteLength) throw new Error(`tensor ${info.name} outside the data region`);
      const count = info.shape.reduce((a, b) => a * b, 1);
      if (count * STORED_DTYPE_BITS[info.dtype] !== info.byteLength * 8) throw new Error(`tensor ${info.name}: size does not match its shape`);
    }
    const nonEmpty = infos.filter((i) => i.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset);
    for (let i = 1; i < nonEmpty.length; i++) {
      if (nonEmpty[i]!.byteOffset < nonEmpty[i - 1]!.byteOffset + nonEmpty[i - 1]!.byteLength) throw new Error('overlapping tensors accepted');
    }
    for (const info of infos) {
      const data = await file.read(info.name);
      if (data.byteLength !== info.byteLength) throw new Error(`read ${data.byteLength} bytes of ${info.name}, expected ${info.byteLength}`);
      if (info.byteLength > 0) {
        const half = Math.floor(info.byteLength / 2);
        const part = await file.readRange(info.name, half, info.byteLength - half);
        expect([...part]).toEqual([...data.subarray(half)]);
      }
      if (file.tensors.has(info.name)) file.tensor(info.name);
      else expect(() => file.tensor(info.name)).toThrow(SafetensorsError);
    }
  } catch (error) {
    if (!(error instanceof SafetensorsError)) throw error;
    expect(error.file).toBe('fuzz.safetensors');
    expect(error.message.startsWith('fuzz.safetensors: ')).toBe(true);
    outcome = error;
  }
  expect(source.outside).toEqual([]);
  return outcome;
}

describe('safetensors under random damage', () => {
  it('reads back what was written, bit for bit', async () => {
    await fc.assert(
      fc.asyncProperty(specsArb, metadataArb, async (specs, metadata) => {
        const bytes = await build(specs, metadata);
        const file = await SafetensorsFile.open(new MemorySource(bytes, 'ok.safetensors'));
        expect(file.allTensors.size).toBe(specs.length);
        expect({ ...file.metadata }).toEqual(metadata ?? {});
        const written = toWrite(specs);
        for (const t of written) {
          const info = file.allTensors.get(t.name)!;
          expect(info.dtype).toBe(t.dtype);
          expect(info.shape).toEqual(t.shape);
          expect([...(await file.read(t.name))]).toEqual([...(await (t.bytes() as Promise<Uint8Array>))]);
        }
      }),
      { numRuns: 100, plugins: [fc.timeout(PER_RUN_MS)] },
    );
  });

  it('opens damaged files cleanly or throws a SafetensorsError, reading only inside the file', async () => {
    let failures = 0;
    await fc.assert(
      fc.asyncProperty(specsArb, metadataArb, fc.array(mutationArb, { minLength: 1, maxLength: 3 }), async (specs, metadata, mutations) => {
        let bytes = await build(specs, metadata);
        for (const m of mutations) bytes = mutate(bytes, m);
        if ((await openAndReadAll(bytes)) !== 'ok') failures++;
      }),
      { numRuns: RUNS, plugins: [fc.timeout(PER_RUN_MS)] },
    );
    // The mutations must actually break files most of the time, or this test proves little.
    expect(failures).toBeGreaterThan(RUNS / 3);
  });

  it('survives random bytes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 64 }), fc.nat(80), async (tail, n) => {
        const bytes = new Uint8Array(8 + tail.byteLength);
        new DataView(bytes.buffer).setBigUint64(0, BigInt(n), true);
        bytes.set(tail, 8);
        await openAndReadAll(bytes);
        await openAndReadAll(tail);
      }),
      { numRuns: 500, plugins: [fc.timeout(PER_RUN_MS)] },
    );
  });

  it('opens damaged indexes cleanly or throws a SafetensorsError', async () => {
    const specs: Spec[] = [
      { name: 'a', dtype: 'F32', shape: [2] },
      { name: 'b', dtype: 'BF16', shape: [3] },
      { name: 'c', dtype: 'F16', shape: [1, 2] },
      { name: 'd', dtype: 'I64', shape: [] },
    ];
    const target = new MemoryTarget();
    await writeSafetensorsModel(target, toWrite(specs), { maxShardBytes: 8 });
    const files = target.blobs();
    const indexText = await files.get('model.safetensors.index.json')!.text();
    const shardNames = [...files.keys()].filter((f) => f.endsWith('.safetensors'));

    type IndexMutation = { kind: 'text'; mutation: Mutation } | { kind: 'entry'; tensor: string; file: string | unknown; remove: boolean } | { kind: 'replace'; value: unknown };
    const indexMutationArb: fc.Arbitrary<IndexMutation> = fc.oneof(
      fc.record({ kind: fc.constant('text' as const), mutation: mutationArb.filter((m) => ['flip', 'set', 'truncate', 'insert', 'append'].includes(m.kind)) }),
      fc.record({
        kind: fc.constant('entry' as const),
        tensor: fc.constantFrom('a', 'b', 'c', 'd', 'e', '__proto__'),
        file: fc.oneof(fc.constantFrom(...shardNames, 'missing.safetensors', '../a', '/etc/passwd', 'model.safetensors.index.json', ''), jsonish),
        remove: fc.boolean(),
      }),
      fc.record({ kind: fc.constant('replace' as const), value: jsonish }),
    );

    await fc.assert(
      fc.asyncProperty(fc.array(indexMutationArb, { minLength: 1, maxLength: 3 }), async (mutations) => {
        let text = indexText;
        for (const m of mutations) {
          if (m.kind === 'text') {
            // Byte-level damage with the text mutations, treating the index as a header-less blob.
            const bytes = mutate(new TextEncoder().encode(text), m.mutation.kind === 'flip' ? { ...m.mutation, anywhere: true } : m.mutation);
            text = new TextDecoder().decode(bytes);
          } else {
            let parsed: { weight_map?: Record<string, unknown> } | unknown;
            try {
              parsed = JSON.parse(text);
            } catch {
              continue;
            }
            if (m.kind === 'replace') {
              parsed = typeof parsed === 'object' && parsed !== null ? { ...parsed, weight_map: m.value } : m.value;
            } else if (typeof parsed === 'object' && parsed !== null && 'weight_map' in parsed && typeof parsed.weight_map === 'object' && parsed.weight_map !== null) {
              const map = parsed.weight_map as Record<string, unknown>;
              if (m.remove) delete map[m.tensor];
              else Object.defineProperty(map, m.tensor, { value: m.file, enumerable: true, configurable: true, writable: true });
            }
            text = JSON.stringify(parsed) ?? '';
          }
        }
        const all = new Map(files);
        all.set('model.safetensors.index.json', new Blob([text]));
        const folder = new GuardedFolder('fuzz-model', all);
        try {
          const model = await SafetensorsModel.open(folder);
          for (const name of model.allTensors.keys()) await model.read(name);
          expect(new Set(model.shards.keys()).size).toBe(folder.sources.length);
        } catch (error) {
          if (!(error instanceof SafetensorsError)) throw error;
          expect(error.message).toMatch(/^fuzz-model/);
        }
        for (const source of folder.sources) expect(source.outside).toEqual([]);
      }),
      { numRuns: 500, plugins: [fc.timeout(PER_RUN_MS)] },
    );
  });
});
