import { mkdtemp, readFile, readdir, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobFolder, MemorySource, type ByteSource } from '../../src/io/byteSource.ts';
import { decodeToFloat32, encodeFromFloat32 } from '../../src/io/dtype.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { createOutputFolder, NodeFileSink } from '../../src/io/outputFolder.ts';
import { findDuplicateKey, SafetensorsError, SafetensorsFile, SafetensorsModel, STORED_DTYPE_BITS, type SafetensorsErrorKind, type StoredDtype } from '../../src/io/safetensors.ts';
import {
  buildIndex,
  layoutSafetensors,
  MemorySink,
  MemoryTarget,
  planShards,
  SafetensorsWriteError,
  shardsFromWeightMap,
  writeSafetensors,
  writeSafetensorsModel,
  type TensorToWrite,
} from '../../src/io/safetensorsWriter.ts';
import { Random } from '../helpers/random.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'abliterate-safetensors-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const encoder = new TextEncoder();

/** A file from a header text and data bytes; `declared` overrides the length prefix. */
function rawFile(header: string, data: Uint8Array | number = 0, declared?: bigint): Uint8Array {
  const json = encoder.encode(header);
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.byteLength + body.byteLength);
  new DataView(out.buffer).setBigUint64(0, declared ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  out.set(body, 8 + json.byteLength);
  return out;
}

function tensor(name: string, dtype: StoredDtype, shape: number[], bytes: Uint8Array): TensorToWrite {
  return { name, dtype, shape, bytes: async () => bytes };
}

async function serialize(tensors: TensorToWrite[], metadata?: Record<string, string>): Promise<Uint8Array> {
  const sink = new MemorySink('test.safetensors');
  await writeSafetensors(sink, tensors, metadata);
  return sink.bytes();
}

function f32Bytes(values: number[]): Uint8Array {
  return encodeFromFloat32(new Float32Array(values), 'F32');
}

async function openBytes(bytes: Uint8Array, name = 'broken.safetensors'): Promise<SafetensorsFile> {
  return SafetensorsFile.open(new MemorySource(bytes, name));
}

async function expectFault(bytes: Uint8Array, kind: SafetensorsErrorKind, pattern?: RegExp): Promise<SafetensorsError> {
  const error = await openBytes(bytes).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected a ${kind} error`).toBeInstanceOf(SafetensorsError);
  const st = error as SafetensorsError;
  expect(st.kind, st.message).toBe(kind);
  expect(st.file).toBe('broken.safetensors');
  expect(st.message).toMatch(/^broken\.safetensors: /);
  if (pattern) expect(st.message).toMatch(pattern);
  return st;
}

/** Records every read, to check the reader stays in range and streams. */
class RecordingSource implements ByteSource {
  readonly reads: [number, number][] = [];
  constructor(private readonly inner: ByteSource) {}
  get name() {
    return this.inner.name;
  }
  get size() {
    return this.inner.size;
  }
  read(offset: number, length: number) {
    this.reads.push([offset, length]);
    return this.inner.read(offset, length);
  }
}

describe('writer: the reference library’s bytes', () => {
  it('writes what safetensors.serialize writes (reference test vectors)', async () => {
    const data = f32Bytes([0, 1, 2, 3, 4, 5]);
    expect([...(await serialize([tensor('attn.0', 'F32', [1, 2, 3], data)]))]).toEqual([
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44,
      51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
      160, 64,
    ]);
    // Padding with spaces to a multiple of 8.
    expect([...(await serialize([tensor('attn0', 'F32', [1, 1, 2, 3], data)])).subarray(0, 8 + 72)].slice(-7)).toEqual([32, 32, 32, 32, 32, 32, 32]);
    expect([...(await serialize([]))]).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
    expect(new TextDecoder().decode((await serialize([], { framework: 'pt' })).subarray(8))).toBe('{"__metadata__":{"framework":"pt"}}     ');
  });

  it('orders tensors by dtype alignment, then by name, so each starts aligned', async () => {
    const bytes = await serialize([
      tensor('b', 'F16', [3], new Uint8Array(6)),
      tensor('a', 'BF16', [1], new Uint8Array(2)),
      tensor('z', 'F32', [1], new Uint8Array(4)),
      tensor('c', 'I64', [1], new Uint8Array(8)),
      tensor('y', 'F32', [2], new Uint8Array(8)),
      tensor('u', 'U8', [3], new Uint8Array(3)),
    ]);
    const file = await openBytes(bytes);
    expect([...file.allTensors.keys()]).toEqual(['c', 'y', 'z', 'a', 'b', 'u']);
    expect(file.dataOffset % 8).toBe(0);
    for (const info of file.allTensors.values()) expect(info.byteOffset % (STORED_DTYPE_BITS[info.dtype] / 8), info.name).toBe(0);
  });

  it('sorts names by code point like Rust, not by UTF-16 unit', () => {
    const layout = layoutSafetensors([
      { name: '\u{1F600}', dtype: 'F32', shape: [] },
      { name: '\uff01', dtype: 'F32', shape: [] },
      { name: 'a', dtype: 'F32', shape: [] },
    ]);
    expect(layout.tensors.map((t) => t.name)).toEqual(['a', '\uff01', '\u{1F600}']);
  });
});

describe('round trips', () => {
  const random = new Random();
  const shapes: number[][] = [[], [0], [1], [7], [3, 5], [2, 0, 4], [2, 3, 4], [1, 1, 1, 9]];

  function randomTensors(prefix: string): { tensors: TensorToWrite[]; values: Map<string, Float32Array> } {
    const tensors: TensorToWrite[] = [];
    const values = new Map<string, Float32Array>();
    let i = 0;
    for (const dtype of ['F32', 'F16', 'BF16'] as const) {
      for (const shape of shapes) {
        const name = `${prefix}.${dtype.toLowerCase()}.${i++}`;
        const count = shape.reduce((a, b) => a * b, 1);
        const exact = decodeToFloat32(encodeFromFloat32(Float32Array.from(random.normals(count)), dtype), dtype);
        values.set(name, exact);
        tensors.push(tensor(name, dtype, shape, encodeFromFloat32(exact, dtype)));
      }
    }
    return { tensors, values };
  }

  it('writes and reads back every dtype and shape (0-d and empty included), through real files', async () => {
    const { tensors, values } = randomTensors('model.layers.0');
    const out = await createOutputFolder(join(dir, 'single'));
    await writeSafetensors(await out.sink('model.safetensors'), tensors, { format: 'pt', note: 'é ✓' });
    await out.commit();
    const model = await SafetensorsModel.open(new NodeFolder(join(dir, 'single')));
    expect(model.sharded).toBe(false);
    expect(model.files).toEqual(['model.safetensors']);
    expect(model.metadata.get('model.safetensors')).toEqual({ format: 'pt', note: 'é ✓' });
    expect(model.tensors.size).toBe(tensors.length);
    for (const t of tensors) {
      const info = model.tensor(t.name);
      expect(info.dtype).toBe(t.dtype);
      expect(info.shape).toEqual(t.shape);
      expect(info.file).toBe('model.safetensors');
      expect([...decodeToFloat32(await model.read(t.name), info.dtype as 'F32')]).toEqual([...values.get(t.name)!]);
    }
  });

  it('writes and reads back a sharded model, with an index as transformers writes it', async () => {
    const { tensors, values } = randomTensors('w');
    const plan = planShards(tensors, 64);
    expect(plan.shards.length).toBeGreaterThan(2);
    expect(plan.shards[0]!.file).toBe(`model-00001-of-${String(plan.shards.length).padStart(5, '0')}.safetensors`);
    for (const shard of plan.shards) expect(shard.byteLength <= 64 || shard.tensors.length === 1).toBe(true);
    const path = join(dir, 'sharded');
    const out = await createOutputFolder(path);
    const written = await writeSafetensorsModel(out, tensors, { maxShardBytes: 64, metadata: { format: 'pt' } });
    await out.commit();
    expect(written.shards.map((s) => s.file)).toEqual(plan.shards.map((s) => s.file));
    const indexText = await readFile(join(path, 'model.safetensors.index.json'), 'utf8');
    const index = JSON.parse(indexText) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(index.metadata.total_size).toBe(plan.totalSize);
    expect(Object.keys(index.weight_map)).toEqual([...plan.weightMap.keys()].sort());
    expect(indexText).toMatch(/^\{\n {2}"metadata": \{\n {4}"total_size": \d+\n {2}\},\n {2}"weight_map": \{\n {4}"w\./);
    expect(indexText.endsWith('}\n')).toBe(true);

    const model = await SafetensorsModel.open(new NodeFolder(path));
    expect(model.sharded).toBe(true);
    expect(model.files).toEqual(plan.shards.map((s) => s.file));
    expect(model.indexMetadata).toEqual({ total_size: plan.totalSize });
    for (const t of tensors) {
      expect(model.tensor(t.name).file).toBe(plan.weightMap.get(t.name));
      expect([...decodeToFloat32(await model.read(t.name), t.dtype as 'F32')]).toEqual([...values.get(t.name)!]);
    }

    // Mirror the input's layout into a second model, in memory.
    const mirror = new MemoryTarget();
    const copied = tensors.map((t) => ({ ...t, bytes: () => model.read(t.name) }));
    const again = await writeSafetensorsModel(mirror, copied, { weightMap: model.weightMap });
    expect(new Map([...again.weightMap])).toEqual(new Map([...model.weightMap]));
    expect(mirror.files.get('model.safetensors.index.json')).toBeDefined();
    const reopened = await SafetensorsModel.open(new BlobFolder('mirror', mirror.blobs()));
    for (const t of tensors) expect([...(await reopened.read(t.name))]).toEqual([...(await model.read(t.name))]);
  });

  it('writes a single model.safetensors and no index when one shard suffices', async () => {
    const target = new MemoryTarget();
    const plan = await writeSafetensorsModel(target, [tensor('a', 'F32', [2], f32Bytes([1, 2]))]);
    expect(plan.shards.map((s) => s.file)).toEqual(['model.safetensors']);
    expect([...target.files.keys()]).toEqual(['model.safetensors']);
  });

  it('mirrors a layout and refuses a tensor the weight map does not place', () => {
    const ts = [tensor('a', 'F32', [1], new Uint8Array(4)), tensor('b', 'F32', [1], new Uint8Array(4))];
    const plan = shardsFromWeightMap(ts, { b: 'model-00001-of-00002.safetensors', a: 'model-00002-of-00002.safetensors', c: 'x' });
    expect(plan.shards.map((s) => [s.file, s.tensors])).toEqual([
      ['model-00001-of-00002.safetensors', ['b']],
      ['model-00002-of-00002.safetensors', ['a']],
    ]);
    expect(() => shardsFromWeightMap(ts, { a: 'x.safetensors' })).toThrow(SafetensorsWriteError);
    expect(buildIndex(plan, { total_parameters: 2 })).toContain('"total_parameters": 2,\n    "total_size": 8');
    expect(buildIndex({ weightMap: new Map([['é', 'f']]), totalSize: 0 })).toContain('"\\u00e9": "f"');
  });

  it('streams tensors given as chunks', async () => {
    const all = f32Bytes([1, 2, 3, 4, 5, 6]);
    const bytes = await serialize([
      {
        name: 'rows',
        dtype: 'F32',
        shape: [3, 2],
        bytes: async function* () {
          for (let r = 0; r < 3; r++) yield all.subarray(r * 8, r * 8 + 8);
        },
      },
    ]);
    expect([...decodeToFloat32(await (await openBytes(bytes)).read('rows'), 'F32')]).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

describe('writer checks', () => {
  it('refuses wrong byte counts and aborts the sink', async () => {
    const sink = new MemorySink('out.safetensors');
    const error = await writeSafetensors(sink, [tensor('w', 'BF16', [2, 3], new Uint8Array(10))]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SafetensorsWriteError);
    expect((error as Error).message).toBe('out.safetensors: tensor "w": got 10 bytes, expected 12 (shape [2, 3] of BF16)');
    expect(sink.size).toBe(0);
    const tooMany = writeSafetensors(new MemorySink(), [
      {
        name: 'w',
        dtype: 'F32',
        shape: [1],
        bytes: async function* () {
          yield new Uint8Array(4);
          yield new Uint8Array(1);
        },
      },
    ]);
    await expect(tooMany).rejects.toThrow(/got at least 5 bytes, expected 4/);
  });

  it('removes the partial file when writing to disk fails', async () => {
    const path = join(dir, 'partial.safetensors');
    const sink = await NodeFileSink.create(path);
    await expect(writeSafetensors(sink, [tensor('w', 'F32', [4], new Uint8Array(4))])).rejects.toThrow(SafetensorsWriteError);
    expect(await readdir(dir)).not.toContain('partial.safetensors');
  });

  it('refuses bad names, dtypes and shapes before writing anything', () => {
    const bad: [Parameters<typeof layoutSafetensors>[0], RegExp][] = [
      [[{ name: '', dtype: 'F32', shape: [] }], /non-empty/],
      [[{ name: '__metadata__', dtype: 'F32', shape: [] }], /reserved/],
      [
        [
          { name: 'a', dtype: 'F32', shape: [] },
          { name: 'a', dtype: 'F16', shape: [] },
        ],
        /twice/,
      ],
      [[{ name: 'a', dtype: 'F33' as StoredDtype, shape: [] }], /unknown dtype/],
      [[{ name: 'a', dtype: 'F32', shape: [-1] }], /non-negative/],
      [[{ name: 'a', dtype: 'F32', shape: [1.5] }], /non-negative/],
      [[{ name: 'a', dtype: 'F4', shape: [3] }], /whole number of bytes/],
      [[{ name: 'a', dtype: 'F32', shape: [2 ** 30, 2 ** 30] }], /too large/],
    ];
    for (const [tensors, pattern] of bad) expect(() => layoutSafetensors(tensors)).toThrow(pattern);
    expect(() => layoutSafetensors([], { a: 1 as unknown as string })).toThrow(/expected a string/);
  });
});

describe('reader: structural faults', () => {
  const ok = (extra = '') => `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}${extra}}`;

  it('accepts a well-formed file, padded header, leading whitespace', async () => {
    const file = await openBytes(rawFile(`  ${ok()}      `, 8));
    expect(file.tensor('w')).toEqual({ name: 'w', dtype: 'F32', shape: [2], file: 'broken.safetensors', byteOffset: 8 + 2 + ok().length + 6, byteLength: 8 });
  });

  it('file shorter than 8 bytes', async () => {
    await expectFault(new Uint8Array(5), 'too-short', /5 bytes, too short/);
    await expectFault(new Uint8Array(0), 'too-short');
  });

  it('header length beyond the file', async () => {
    await expectFault(rawFile(ok(), 8, 1000n), 'header-length', /^[^:]+: the header length in the first 8 bytes runs past the end of the file \(70 bytes\): the file is truncated, or not a safetensors file$/);
    await expectFault(rawFile('', 0, 1n), 'header-length');
  });

  it('header larger than 100 MB', async () => {
    await expectFault(rawFile(ok(), 8, 100_000_001n), 'header-too-large', /the header length in the first 8 bytes is larger than the 100000000-byte limit/);
    // The first 8 bytes are the file's content: never echoed, whatever they hold.
    for (const declared of [2n ** 64n - 1n, 0x3a78_3a74_6f6f_72n]) {
      const error = await expectFault(rawFile(ok(), 8, declared), 'header-too-large');
      expect(error.message).not.toContain(String(declared));
    }
  });

  it('header not UTF-8, not JSON, not an object', async () => {
    const bad = rawFile(ok());
    bad[9] = 0xff;
    await expectFault(bad, 'header-encoding', /not valid UTF-8/);
    await expectFault(rawFile('{"w":', 0), 'header-json', /header is not valid JSON/);
    await expectFault(rawFile(''), 'header-json');
    await expectFault(rawFile(`\ufeff${ok()}`, 8), 'header-json');
    await expectFault(rawFile('[1,2]'), 'header-not-object', /header is an array, expected a JSON object/);
    await expectFault(rawFile('null'), 'header-not-object');
    await expectFault(rawFile('"x"'), 'header-not-object', /the string "x"/);
    await expectFault(rawFile(`${'['.repeat(200_000)}${']'.repeat(200_000)}`), 'header-not-object');
  });

  it('duplicate names and keys', async () => {
    await expectFault(rawFile(ok(',"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'), 8), 'duplicate-key', /key "w" twice/);
    await expectFault(rawFile('{"w":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}', 8), 'duplicate-key', /key "dtype" twice in "w"/);
    await expectFault(rawFile(ok(',"\\u0077":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'), 8), 'duplicate-key');
    expect(findDuplicateKey('{"a":[{"b":1},{"b":2}],"c":{"a":1},"s":"\\"a\\"","t":"\\"a\\""}')).toBeUndefined();
  });

  it('malformed __metadata__', async () => {
    await expectFault(rawFile(ok(',"__metadata__":{"a":1}'), 8), 'metadata', /__metadata__ entry "a" is the number 1, expected a string/);
    await expectFault(rawFile(ok(',"__metadata__":["a"]'), 8), 'metadata');
    const file = await openBytes(rawFile(ok(',"__metadata__":{"__proto__":"x","k":"v"}'), 8));
    expect(Object.keys(file.metadata)).toEqual(['__proto__', 'k']);
    expect(Object.getPrototypeOf(file.metadata)).toBe(Object.prototype);
  });

  it('malformed tensor entries', async () => {
    const entry = (e: string) => rawFile(`{"w":${e}}`, 8);
    await expectFault(entry('[1]'), 'tensor-entry', /tensor "w": entry is an array/);
    await expectFault(entry('"F32"'), 'tensor-entry');
    await expectFault(entry('{"shape":[2],"data_offsets":[0,8]}'), 'tensor-entry', /tensor "w" has no dtype/);
    await expectFault(entry('{"dtype":32,"shape":[2],"data_offsets":[0,8]}'), 'tensor-entry', /dtype is the number 32/);
    await expectFault(entry('{"dtype":"F32","data_offsets":[0,8]}'), 'tensor-entry', /has no shape/);
    await expectFault(entry('{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}'), 'tensor-entry', /shape \[-2\] is not a list of non-negative integers/);
    await expectFault(entry('{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}'), 'tensor-entry');
    await expectFault(entry('{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}'), 'tensor-entry');
    await expectFault(entry('{"dtype":"F32","shape":2,"data_offsets":[0,8]}'), 'tensor-entry');
    await expectFault(entry('{"dtype":"F32","shape":[9007199254740993],"data_offsets":[0,8]}'), 'tensor-entry');
  });

  it('unknown and unsupported dtypes', async () => {
    const error = await expectFault(rawFile('{"w":{"dtype":"float16","shape":[2],"data_offsets":[0,4]}}', 4), 'unknown-dtype', /unsupported dtype "float16" in tensor "w" \(supported: F32, F16, BF16/);
    expect(error.tensor).toBe('w');
    // A dtype of the format that the engine does not compute with: listed, readable, refused by tensor().
    const file = await openBytes(rawFile('{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"w":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}}', 10));
    expect([...file.tensors.keys()]).toEqual(['w']);
    expect([...file.allTensors.keys()]).toEqual(['ids', 'w']);
    expect(() => file.tensor('ids')).toThrow(/^broken\.safetensors: unsupported dtype I64 in tensor "ids" \(supported: F32, F16, BF16\)$/);
    expect((await file.read('ids')).byteLength).toBe(8);
    await expect(openBytes(rawFile('{"m":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', 2))).rejects.toThrow(/F4 takes more bytes|span/);
    expect((await openBytes(rawFile('{"m":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}', 2))).allTensors.get('m')!.byteLength).toBe(2);
  });

  it('malformed data_offsets', async () => {
    const offsets = (o: string) => rawFile(`{"w":{"dtype":"F32","shape":[2],"data_offsets":${o}}}`, 8);
    await expectFault(rawFile('{"w":{"dtype":"F32","shape":[2]}}', 8), 'offsets', /has no data_offsets/);
    await expectFault(offsets('[0]'), 'offsets', /data_offsets \[0\] is not two non-negative integers/);
    await expectFault(offsets('[0,8,16]'), 'offsets');
    await expectFault(offsets('[-8,0]'), 'offsets');
    await expectFault(offsets('[0.5,8]'), 'offsets');
    await expectFault(offsets('["0",8]'), 'offsets');
    await expectFault(offsets('{"0":0,"1":8}'), 'offsets');
    await expectFault(offsets('[8,0]'), 'offsets', /data_offsets \[8, 0\] end before they begin/);
    await expectFault(offsets('[0,18446744073709551616]'), 'offsets');
  });

  it('offsets outside the data region', async () => {
    await expectFault(rawFile(ok(), 4), 'out-of-bounds', /tensor "w": data_offsets \[0, 8\] run past the end of the file \(the data region holds 4 bytes/);
    await expectFault(rawFile('{"w":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}}', 8), 'out-of-bounds');
  });

  it('byte length different from shape × dtype', async () => {
    await expectFault(rawFile('{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', 12), 'size-mismatch', /shape \[3\] of F32 takes 12 bytes, but data_offsets \[0, 8\] span 8/);
    await expectFault(rawFile('{"w":{"dtype":"BF16","shape":[],"data_offsets":[0,4]}}', 4), 'size-mismatch');
    await expectFault(rawFile('{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', 8), 'size-mismatch', /more bytes than any file holds/);
  });

  it('overlapping tensors', async () => {
    await expectFault(
      rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', 12),
      'overlap',
      /tensors "a" \[0, 8\) and "b" \[4, 12\) overlap/,
    );
    await expectFault(rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8), 'overlap');
    // Empty tensors overlap nothing.
    const file = await openBytes(rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}', 8));
    expect((await file.read('e')).byteLength).toBe(0);
  });

  it('tolerates holes between tensors and bytes after the last one', async () => {
    const data = new Uint8Array(40).map((_, i) => i);
    const file = await openBytes(rawFile('{"b":{"dtype":"F16","shape":[2],"data_offsets":[20,24]},"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}', data));
    expect([...file.allTensors.keys()]).toEqual(['a', 'b']);
    expect([...(await file.read('b'))]).toEqual([20, 21, 22, 23]);
    expect([...(await file.readRange('b', 2, 2))]).toEqual([22, 23]);
  });
});

describe('reading', () => {
  it('streams: two reads for the header, one per tensor, all inside the file', async () => {
    const bytes = await serialize([tensor('a', 'F32', [4], f32Bytes([1, 2, 3, 4])), tensor('b', 'F32', [2], f32Bytes([5, 6]))]);
    const source = new RecordingSource(new MemorySource(bytes, 'm.safetensors'));
    const file = await SafetensorsFile.open(source);
    expect(source.reads).toEqual([
      [0, 8],
      [8, file.headerLength],
    ]);
    await file.read('b');
    expect(source.reads[2]).toEqual([file.tensor('b').byteOffset, 8]);
    expect([...decodeToFloat32(await file.readRange('a', 4, 8), 'F32')]).toEqual([2, 3]);
    await expect(file.readRange('a', 12, 8)).rejects.toThrow(RangeError);
    await expect(file.readRange('a', -1, 1)).rejects.toThrow(/outside tensor "a"/);
    await expect(file.read('c')).rejects.toThrow(/m\.safetensors: tensor "c" is missing/);
  });

  it('turns failed and short reads into errors naming the tensor', async () => {
    const bytes = await serialize([tensor('w', 'F32', [2], f32Bytes([1, 2]))]);
    const inner = new MemorySource(bytes, 'm.safetensors');
    let mode: 'ok' | 'throw' | 'short' = 'ok';
    const flaky: ByteSource = {
      name: inner.name,
      size: inner.size,
      read: async (offset, length) => {
        if (mode === 'throw') throw new Error('disk on fire');
        if (mode === 'short') return (await inner.read(offset, length)).subarray(1);
        return inner.read(offset, length);
      },
    };
    const file = await SafetensorsFile.open(flaky);
    mode = 'throw';
    const thrown = (await file.read('w').catch((e: unknown) => e)) as SafetensorsError;
    expect(thrown).toBeInstanceOf(SafetensorsError);
    expect(thrown.kind).toBe('read');
    expect(thrown.tensor).toBe('w');
    expect(thrown.message).toMatch(/m\.safetensors: reading tensor "w" \(8 bytes at offset \d+\) failed: disk on fire/);
    mode = 'short';
    await expect(file.read('w')).rejects.toThrow(/returned 7 bytes/);
    await expect(SafetensorsFile.open(flaky)).rejects.toThrow(SafetensorsError);
  });

  it('reports a file truncated after it was opened', async () => {
    const path = join(dir, 'truncated');
    const out = await createOutputFolder(path);
    await writeSafetensors(await out.sink('model.safetensors'), [tensor('w', 'F32', [1024], new Uint8Array(4096))]);
    await out.commit();
    const model = await SafetensorsModel.open(new NodeFolder(path));
    await truncate(join(path, 'model.safetensors'), 100);
    const error = (await model.read('w').catch((e: unknown) => e)) as SafetensorsError;
    expect(error).toBeInstanceOf(SafetensorsError);
    expect(error.message).toContain(`${path}/model.safetensors: reading tensor "w"`);
  });
});

describe('model folders', () => {
  async function shardedFolder(name: string, index: unknown | string, shards: Record<string, Uint8Array>): Promise<NodeFolder> {
    const path = join(dir, name);
    const out = await createOutputFolder(path);
    if (index !== undefined) await out.writeFile('model.safetensors.index.json', typeof index === 'string' ? index : JSON.stringify(index));
    for (const [file, bytes] of Object.entries(shards)) await out.writeFile(file, bytes);
    await out.commit();
    return new NodeFolder(path);
  }

  async function modelFault(folder: NodeFolder, kind: SafetensorsErrorKind, pattern: RegExp): Promise<void> {
    const error = (await SafetensorsModel.open(folder).catch((e: unknown) => e)) as SafetensorsError;
    expect(error).toBeInstanceOf(SafetensorsError);
    expect(error.kind, error.message).toBe(kind);
    expect(error.message).toMatch(pattern);
  }

  let shardA: Uint8Array;
  let shardB: Uint8Array;
  beforeAll(async () => {
    shardA = await serialize([tensor('a', 'F32', [1], f32Bytes([1]))]);
    shardB = await serialize([tensor('b', 'F32', [1], f32Bytes([2]))]);
  });
  const goodIndex = { metadata: { total_size: 8 }, weight_map: { a: 'a.safetensors', b: 'b.safetensors' } };

  it('opens an index and its shards, each once', async () => {
    const folder = await shardedFolder('m-good', goodIndex, { 'a.safetensors': shardA, 'b.safetensors': shardB });
    const opened: string[] = [];
    const counting = Object.assign(Object.create(folder) as NodeFolder, {
      open: (file: string) => {
        opened.push(file);
        return folder.open(file);
      },
    });
    const model = await SafetensorsModel.open(counting);
    expect(opened.sort()).toEqual(['a.safetensors', 'b.safetensors']);
    expect([...model.tensors.keys()]).toEqual(['a', 'b']);
    expect(decodeToFloat32(await model.read('b'), 'F32')[0]).toBe(2);
    expect(() => model.tensor('c')).toThrow(SafetensorsError);
    expect(() => model.tensor('c')).toThrow(/tensor "c" is missing \(the model has 2 tensors\)/);
  });

  it('no weights at all', async () => {
    const folder = await shardedFolder('m-empty', undefined, { 'pytorch_model.bin': new Uint8Array(1) });
    await modelFault(folder, 'no-weights', /no model\.safetensors or model\.safetensors\.index\.json in the folder \(it has PyTorch \.bin weights/);
  });

  it('malformed index', async () => {
    const shards = { 'a.safetensors': shardA, 'b.safetensors': shardB };
    await modelFault(await shardedFolder('m-i1', '{"weight_map": {', shards), 'index', /model\.safetensors\.index\.json: is not valid JSON/);
    await modelFault(await shardedFolder('m-i2', { metadata: {} }, shards), 'index', /weight_map is missing, expected an object/);
    await modelFault(await shardedFolder('m-i3', { weight_map: { a: 3 } }, shards), 'index', /weight_map entry for tensor "a" is the number 3/);
    await modelFault(await shardedFolder('m-i4', { weight_map: { a: '../a.safetensors' } }, shards), 'index', /not a file inside the model folder/);
    await modelFault(await shardedFolder('m-i5', { weight_map: {} }, shards), 'index', /lists no tensors/);
    await modelFault(await shardedFolder('m-i6', '{"weight_map":{"a":"a.safetensors","a":"b.safetensors"}}', shards), 'index', /key "a" twice in "weight_map"/);
    await modelFault(await shardedFolder('m-i7', [1], shards), 'index', /is an array/);
  });

  it('index naming a missing shard, or a tensor its shard lacks', async () => {
    await modelFault(await shardedFolder('m-s1', goodIndex, { 'a.safetensors': shardA }), 'shard-missing', /shard b\.safetensors is missing from the folder \(it should hold "b"\)/);
    await modelFault(
      await shardedFolder('m-s2', { weight_map: { a: 'a.safetensors', b: 'a.safetensors' } }, { 'a.safetensors': shardA }),
      'shard-tensor-missing',
      /m-s2\/a\.safetensors: tensor "b" is listed in model\.safetensors\.index\.json but absent from this shard/,
    );
  });

  it('names the folder and shard of a corrupt shard', async () => {
    const folder = await shardedFolder('m-c', goodIndex, { 'a.safetensors': shardA, 'b.safetensors': shardB.subarray(0, 20) });
    const error = (await SafetensorsModel.open(folder).catch((e: unknown) => e)) as SafetensorsError;
    expect(error).toBeInstanceOf(SafetensorsError);
    expect(error.file).toBe('b.safetensors');
    expect(error.message).toMatch(/m-c\/b\.safetensors: the header length in the first 8 bytes runs past the end of the file/);
  });

  it('prefers model.safetensors over an index, as transformers does', async () => {
    const folder = await shardedFolder('m-both', goodIndex, { 'model.safetensors': shardA });
    const model = await SafetensorsModel.open(folder);
    expect(model.sharded).toBe(false);
    expect([...model.tensors.keys()]).toEqual(['a']);
  });
});
