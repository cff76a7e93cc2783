/**
 * Directions files holding NaN, ±Inf, huge or zero vectors, or measured on a model of another
 * shape: refused on load by the library (a DirectionsFileError naming the file and the point) and
 * by every command that takes one (cut, steer, probe) with one line, before anything is written.
 */
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkDirection, DirectionsFileError, readDirections } from '../../src/abliterate/directionsFile.ts';
import { steeringHooks } from '../../src/abliterate/steer.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { Random } from '../helpers/random.ts';
import { testGpu } from '../helpers/gpu.ts';
import { toSafetensors } from '../reference/randomModel.ts';
import { expectCliError, outputTraces, runCli, snapshot, tempDir, writeModelDir, type ModelDir } from './helpers.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

const H = 64;
const POINTS = 3;

/** Random unit directions, one per point. */
function unitDirections(rng: Random, points = POINTS, hidden = H): Float32Array[] {
  return Array.from({ length: points }, () => {
    const v = rng.normals(hidden);
    const n = Math.hypot(...v);
    return Float32Array.from(v, (x) => x / n);
  });
}

/** The bytes of a directions file as `measure` writes it, with the given rows, chosen point and scores metadata. */
function directionsBytes(rows: Float32Array[], layer: number, scores = JSON.stringify(rows.map((_, p) => ({ layer: p, gap: 1, relativeGap: 0.1, cosine: 0.9, effectSize: 1 + p })))): Uint8Array {
  const all = new Float32Array(rows.length * rows[0]!.length);
  rows.forEach((r, i) => all.set(r, i * r.length));
  return toSafetensors([{ name: 'directions', dtype: 'F32', shape: [rows.length, rows[0]!.length], bytes: new Uint8Array(all.buffer) }], { format: 'abliterate-directions', layer: String(layer), scores });
}

function read(name: string, bytes: Uint8Array) {
  return readDirections({ name, size: bytes.length, read: async (offset, length) => bytes.slice(offset, offset + length) });
}

async function refused(name: string, bytes: Uint8Array): Promise<string> {
  const error = await read(name, bytes).then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(DirectionsFileError);
  return (error as Error).message;
}

describe('readDirections', () => {
  const suffix = ' (expected a directions file written by abliterate measure or run)';

  it('refuses NaN, ±Inf and huge values, naming the file, the point and the value', async () => {
    const rng = new Random();
    for (const [value, shown] of [[Number.NaN, 'NaN'], [Number.POSITIVE_INFINITY, 'Infinity'], [Number.NEGATIVE_INFINITY, '-Infinity']] as const) {
      const rows = unitDirections(rng);
      const at = rng.int(0, H - 1);
      rows[1]![at] = value;
      expect(await refused('d.safetensors', directionsBytes(rows, 2))).toBe(`d.safetensors: the direction of point 1 is unusable: value ${at} is ${shown}${suffix}`);
    }
    const huge = unitDirections(rng);
    huge[2]![5] = 1e30;
    expect(await refused('d.safetensors', directionsBytes(huge, 2))).toBe(`d.safetensors: the direction of point 2 (the chosen one) is unusable: its norm is 1.000e+30, not 1${suffix}`);
    const scaled = unitDirections(rng).map((r) => r.map((x) => x * 3));
    expect(await refused('d.safetensors', directionsBytes(scaled, 0))).toBe(`d.safetensors: the direction of point 0 (the chosen one) is unusable: its norm is 3.000, not 1${suffix}`);
  });

  it('refuses a zero chosen direction, and keeps zero directions at the other points (measure writes them where the means coincide)', async () => {
    const rng = new Random();
    const rows = unitDirections(rng);
    rows[0]!.fill(0);
    expect(await refused('d.safetensors', directionsBytes(rows, 0))).toBe(
      `d.safetensors: the direction of point 0 (the chosen one) is unusable: it is zero (the measurement found no difference at this point)${suffix}`,
    );
    const directions = await read('d.safetensors', directionsBytes(rows, 1));
    expect(directions.directions[0]!.every((v) => v === 0)).toBe(true);
    expect(directions.direction).toEqual(rows[1]);
  });

  it('renormalises directions within 1 % of unit norm (unit vectors stored at lower precision)', async () => {
    const rng = new Random();
    const rows = unitDirections(rng).map((r) => r.map((x) => x * 1.005));
    const directions = await read('d.safetensors', directionsBytes(rows, 1));
    for (const d of directions.directions) expect(Math.abs(Math.hypot(...d) - 1)).toBeLessThan(1e-6);
  });

  it('refuses scores that are not finite per-point numbers', async () => {
    const rng = new Random();
    const rows = unitDirections(rng);
    const message = `d.safetensors: metadata "scores" is not a list of ${POINTS} per-point scores${suffix}`;
    expect(await refused('d.safetensors', directionsBytes(rows, 1, '[{"layer":0,"effectSize":1e999},{"layer":1},{"layer":2}]'))).toBe(message);
    expect(await refused('d.safetensors', directionsBytes(rows, 1, '{"effectSize":1}'))).toBe(message);
    expect(await refused('d.safetensors', directionsBytes(rows, 1, '[1,2,3]'))).toBe(message);
    expect(await refused('d.safetensors', directionsBytes(rows, 1, '[{"layer":0}]'))).toBe(message);
    // null is how JSON writes the NaN scores of a zero direction.
    await expect(read('d.safetensors', directionsBytes(rows, 1, '[{"layer":0,"effectSize":null},{"layer":1},{"layer":2}]'))).resolves.toBeDefined();
  });
});

describe('directions given to the library', () => {

  it('steeringHooks and checkDirection refuse non-finite, non-unit, zero and wrongly sized directions', () => {
    const rng = new Random();
    const [good] = unitDirections(rng, 1);
    const config = { hiddenSize: H, numLayers: 2 } as Parameters<typeof steeringHooks>[1];
    const nan = good!.slice();
    nan[H - 1] = Number.NaN;
    expect(() => steeringHooks(gpu, config, nan, 1, { kind: 'add', scale: 4 })).toThrow(`the steering direction is not a unit vector of the model's hidden size: value ${H - 1} is NaN`);
    expect(() => steeringHooks(gpu, config, new Float32Array(H), 1, { kind: 'ablate', alpha: 1 })).toThrow(/it is zero/);
    expect(() => checkDirection(good!.map((x) => x * 1e20), H, 'd')).toThrow('d is not a unit vector of the model\'s hidden size: its norm is 1.000e+20, not 1');
    expect(() => checkDirection(good!.slice(1), H, 'd')).toThrow(`it has ${H - 1} values, but the model's hidden size is ${H}`);
    expect(() => checkDirection(new Float32Array(H), H, 'd', { allowZero: true })).not.toThrow();
    expect(() => checkDirection(good!, H, 'd')).not.toThrow();
    const { buffers } = steeringHooks(gpu, config, good!, 1, { kind: 'add', scale: 4 });
    for (const b of buffers) gpu.destroyBuffer(b);
  });
});

describe('the CLI', () => {
  let work: ReturnType<typeof tempDir>;
  let model: ModelDir;
  let before: Map<string, string>;
  let n = 0;
  beforeAll(() => {
    work = tempDir('directions');
    model = writeModelDir(join(work.path, 'model'));
    before = snapshot(model.dir);
  });
  afterAll(() => work?.remove());

  /** A directions file for the test model (hidden 64, 2 layers: 3 points). */
  function file(rows: Float32Array[], layer: number): string {
    const path = join(work.path, `directions-${++n}.safetensors`);
    writeFileSync(path, directionsBytes(rows, layer));
    return path;
  }

  const prompt = ['--prompt', 'hi', '--max-tokens', '2'];
  const probeSets = (dir: string) => {
    const prompts = join(dir, 'prompts.txt');
    writeFileSync(prompts, 'one\ntwo\n');
    return ['--harmful', prompts, '--harmless', prompts];
  };

  it.concurrent('cut, steer and probe refuse NaN, Inf and huge directions, naming the file and the point; nothing is written', async () => {
    const rng = new Random();
    const nan = unitDirections(rng);
    nan[2]![7] = Number.NaN;
    const nanFile = file(nan, 2);
    const out = join(work.path, 'cut-nan');
    expectCliError(await runCli(['cut', model.dir, '--direction', nanFile, '--out', out]), `${nanFile}: the direction of point 2 (the chosen one) is unusable: value 7 is NaN (expected a directions file written by abliterate measure or run)`);
    expect(outputTraces(work.path, 'cut-nan')).toEqual([]);
    const inf = unitDirections(rng);
    inf[0]![0] = Number.NEGATIVE_INFINITY;
    const infFile = file(inf, 1);
    expectCliError(await runCli(['steer', model.dir, '--direction', infFile, ...prompt]), `${infFile}: the direction of point 0 is unusable: value 0 is -Infinity (expected a directions file written by abliterate measure or run)`);
    const huge = unitDirections(rng);
    huge[1]![3] = 3e38;
    const hugeFile = file(huge, 1);
    expectCliError(await runCli(['probe', model.dir, '--direction', hugeFile, ...probeSets(work.path)]), new RegExp(`^${hugeFile}: the direction of point 1 \\(the chosen one\\) is unusable: its norm is 3\\.000e\\+38, not 1 `));
    expect(snapshot(model.dir)).toEqual(before);
  });

  it.concurrent('a zero direction chosen with --point, and directions of another model shape', async () => {
    const rng = new Random();
    const rows = unitDirections(rng);
    rows[0]!.fill(0);
    const zero = file(rows, 2);
    const out = join(work.path, 'cut-zero');
    expectCliError(await runCli(['cut', model.dir, '--direction', zero, '--point', '0', '--out', out]), `${zero}: the direction of point 0 is unusable: it is zero (the measurement found no difference at this point); choose another --point`);
    expect(outputTraces(work.path, 'cut-zero')).toEqual([]);
    expectCliError(await runCli(['steer', model.dir, '--direction', zero, '--point', '0', ...prompt]), /: the direction of point 0 is unusable: it is zero/);
    const fourPoints = file(unitDirections(rng, 4), 1);
    expectCliError(await runCli(['steer', model.dir, '--direction', fourPoints, ...prompt]), `${fourPoints}: the directions were measured at 4 points, but this model has 2 layers (3 points)`);
    const wide = file(unitDirections(rng, POINTS, 96), 1);
    expectCliError(await runCli(['probe', model.dir, '--direction', wide, ...probeSets(work.path)]), `${wide}: the directions have 96 values, but the model's hidden size is ${H}`);
    expect(snapshot(model.dir)).toEqual(before);
  });
});
