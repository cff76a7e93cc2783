/**
 * cut --target red|hdd|both and --projected on a directions file holding both the refusal-execution
 * and the harm-detection directions: the written model is the library's cut of the same basis, bit
 * for bit; what the file cannot give is refused before anything is written.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyCut, orthonormalize, readMatrixBytes } from '../../src/abliterate/cut.ts';
import { readDirections, writeDirections } from '../../src/abliterate/directionsFile.ts';
import { projectedDirection } from '../../src/abliterate/hygiene.ts';
import type { Measurement } from '../../src/abliterate/measure.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { SafetensorsModel } from '../../src/io/safetensors.ts';
import { MemorySink } from '../../src/io/safetensorsWriter.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';
import { expectCliError, outputTraces, runCli, tempDir, writeDirectionsFile, writeModelDir, type ModelDir } from './helpers.ts';

const HIDDEN = 64;
const POINTS = 3;
let gpu: Gpu;
let work: ReturnType<typeof tempDir>;
let model: ModelDir;
let both: string;
let measurement: Measurement;

beforeAll(async () => {
  gpu = await testGpu();
  work = tempDir('cut-target');
  model = writeModelDir(join(work.path, 'model'));
  const rng = new Random(5);
  const vectors = () => Array.from({ length: POINTS }, () => Float32Array.from(rng.normals(HIDDEN)));
  const units = () => vectors().map((v) => v.map((x) => x / Math.hypot(...v)));
  const scores = Array.from({ length: POINTS }, (_, point) => ({ point, gap: 1, relativeGap: 0.1, cosine: 0.9, effectSize: 1 + point }));
  const projections = { harmful: [], harmless: [] };
  measurement = {
    hiddenSize: HIDDEN,
    points: POINTS,
    harmfulCount: 4,
    harmlessCount: 4,
    position: 'last',
    directions: units(),
    harmfulMeans: vectors(),
    harmlessMeans: vectors(),
    scores,
    projections,
    harmDetection: { position: 'instruction', directions: units(), harmfulMeans: vectors(), harmlessMeans: vectors(), scores, projections },
    instructionOffset: 5,
  };
  const sink = new MemorySink('directions');
  await writeDirections(sink, measurement, 2, {}, { harmDetectionPoint: 1 });
  both = join(work.path, 'both.safetensors');
  writeFileSync(both, await sink.bytes());
});
afterAll(() => {
  gpu?.dispose();
  work?.remove();
});

/** The tensors `out` holds are those the library's cut of `basis` gives, bit for bit. */
async function expectLibraryCut(out: string, tensors: string[], basis: Float32Array[]): Promise<void> {
  const loaded = await LlamaModel.load(gpu, new NodeFolder(model.dir));
  try {
    await applyCut(loaded, { basis, embedding: true, undo: 'none' });
    const written = await SafetensorsModel.open(new NodeFolder(out));
    expect(tensors).toHaveLength(1 + 2 * model.random.config.numLayers);
    for (const name of tensors) {
      const expected = await readMatrixBytes(gpu, loaded.matrices().get(name)!);
      expect(Buffer.compare(Buffer.from(await written.read(name)), Buffer.from(expected)), name).toBe(0);
    }
  } finally {
    loaded.dispose();
  }
}

describe('cut --target', () => {
  it('both: the plane of the refusal-execution direction at its point and the harm-detection direction at its own, orthonormalised', async () => {
    const out = join(work.path, 'out-both');
    const result = await runCli(['cut', model.dir, '--direction', both, '--target', 'both', '--out', out, '--json'], { timeoutMs: 120_000 });
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as { point: number; rank: number; target: string; tensors: string[] };
    expect(summary).toMatchObject({ point: 2, rank: 2, target: 'both' });
    await expectLibraryCut(out, summary.tensors, orthonormalize([measurement.directions[2]!, measurement.harmDetection!.directions[1]!]));
  });

  it('hdd --projected --point: the harm-detection direction of that point, orthogonal to its harmless mean', async () => {
    const out = join(work.path, 'out-hdd');
    const result = await runCli(['cut', model.dir, '--direction', both, '--target', 'hdd', '--projected', '--point', '2', '--out', out, '--json'], { timeoutMs: 120_000 });
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as { point: number; rank: number; target: string; projected: boolean; tensors: string[] };
    expect(summary).toMatchObject({ point: 2, rank: 1, target: 'hdd', projected: true });
    const hdd = measurement.harmDetection!;
    const projected = projectedDirection(hdd.directions[2]!, hdd.harmlessMeans[2]!);
    // It is no longer the plain direction, and is orthogonal to the mean.
    expect(Math.abs(projected.reduce((s, x, i) => s + x * hdd.harmlessMeans[2]![i]!, 0))).toBeLessThan(1e-5);
    expect(Math.abs(projected.reduce((s, x, i) => s + x * hdd.directions[2]![i]!, 0))).toBeLessThan(0.999);
    await expectLibraryCut(out, summary.tensors, [projected]);
  });

  it('red --top-k: the stored subspace of the refusal-execution direction, as without --target', async () => {
    const subspaceFile = join(work.path, 'subspace.safetensors');
    await writeDirectionsFile(subspaceFile, HIDDEN, POINTS, 3);
    const out = join(work.path, 'out-red-top-k');
    const result = await runCli(['cut', model.dir, '--direction', subspaceFile, '--target', 'red', '--point', '1', '--top-k', '2', '--out', out, '--json'], { timeoutMs: 120_000 });
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as { point: number; rank: number; target: string; tensors: string[] };
    expect(summary).toMatchObject({ point: 1, rank: 2, target: 'red' });
    const source = await new NodeFolder(work.path).open('subspace.safetensors');
    const { subspaces } = await readDirections({ name: 'subspace', size: source.size, read: (o, l) => source.read(o, l) });
    await expectLibraryCut(out, summary.tensors, subspaces![1]!.basis.slice(0, 2));
  });

  it('refuses a target the file does not hold, and --top-k with a harm-detection target, writing nothing', async () => {
    const lastOnly = join(work.path, 'last.safetensors');
    await writeDirectionsFile(lastOnly, HIDDEN, POINTS, 2);
    const cut = (file: string, ...args: string[]) => runCli(['cut', model.dir, '--direction', file, '--out', join(work.path, 'refused'), ...args]);
    expectCliError(await cut(lastOnly, '--target', 'hdd'), /holds no harm-detection direction; measure with --position both \(or instruction\) to cut --target hdd/);
    expectCliError(await cut(lastOnly, '--target', 'both', '--top-k', '2'), /--top-k cuts the stored subspace of the refusal-execution direction; it does not combine with --target hdd or both/);
    expect(outputTraces(work.path, 'refused')).toEqual([]);
  });
});
