import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyCut, orthonormalize, readMatrixBytes } from '../../src/abliterate/cut.ts';
import { readDirections } from '../../src/abliterate/directionsFile.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { SafetensorsModel } from '../../src/io/safetensors.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { testGpu } from '../helpers/gpu.ts';
import { expectCliError, outputTraces, runCli, tempDir, writeDirectionsFile, writeModelDir, type ModelDir } from './helpers.ts';

let gpu: Gpu;
let work: ReturnType<typeof tempDir>;
let model: ModelDir;
let directions: string;
beforeAll(async () => {
  gpu = await testGpu();
  work = tempDir('cut-subspace');
  model = writeModelDir(join(work.path, 'model'));
  directions = join(work.path, 'directions.safetensors');
  await writeDirectionsFile(directions, 64, 3);
});
afterAll(() => {
  gpu?.dispose();
  work?.remove();
});

describe('cut --points: the subspace of several measured directions', () => {
  it('writes the model the library gives for the orthonormalised directions, bit for bit', async () => {
    const out = join(work.path, 'out');
    const result = await runCli(['cut', model.dir, '--direction', directions, '--points', '2,0,1', '--alpha', '0.9', '--out', out, '--json'], { timeoutMs: 120_000 });
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as { points: number[]; rank: number; tensors: string[] };
    expect(summary).toMatchObject({ points: [2, 0, 1], rank: 3 });
    expect(summary.tensors).toHaveLength(1 + 2 * model.random.config.numLayers);

    const folder = new NodeFolder(model.dir);
    const source = await new NodeFolder(work.path).open('directions.safetensors');
    const { directions: all } = await readDirections({ name: 'directions', size: source.size, read: (o, l) => source.read(o, l) });
    const loaded = await LlamaModel.load(gpu, folder);
    try {
      const basis = orthonormalize([all[2]!, all[0]!, all[1]!]);
      await applyCut(loaded, { basis, alpha: 0.9, embedding: true, undo: 'none' });
      const written = await SafetensorsModel.open(new NodeFolder(out));
      for (const name of summary.tensors) {
        const expected = await readMatrixBytes(gpu, loaded.matrices().get(name)!);
        expect(Buffer.compare(Buffer.from(await written.read(name)), Buffer.from(expected)), name).toBe(0);
      }
      expect(JSON.parse(written.metadata.get('model.safetensors')!.abliteration!)).toMatchObject({ points: [2, 0, 1], rank: 3, alpha: 0.9 });
    } finally {
      loaded.dispose();
    }
  });

  it('refuses a malformed or out-of-range list, a repeated point, and --point with --points, writing nothing', async () => {
    const cut = (...args: string[]) => runCli(['cut', model.dir, '--direction', directions, '--out', join(work.path, 'refused'), ...args]);
    expectCliError(await cut('--points', '1,x'), '--points must be point indices separated by commas (e.g. 3,4,5), got "1,x"');
    expectCliError(await cut('--points', '1,1'), '--points lists a point twice: "1,1"');
    expectCliError(await cut('--points', '0,3'), "--points: point 3 is outside the file's points 0..2");
    expectCliError(await cut('--points', '0,1', '--point', '2'), 'give --point or --points, not both');
    expect(outputTraces(work.path, 'refused')).toEqual([]);
  });
});

describe("cut --top-k: a point's stored subspace", () => {
  it('writes the model the library gives for the top K stored vectors, bit for bit, and refuses what it cannot cut', async () => {
    const subspaceFile = join(work.path, 'subspace.safetensors');
    await writeDirectionsFile(subspaceFile, 64, 3, 3);
    const out = join(work.path, 'out-top-k');
    const result = await runCli(['cut', model.dir, '--direction', subspaceFile, '--point', '1', '--top-k', '2', '--out', out, '--json'], { timeoutMs: 120_000 });
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as { point: number; rank: number; tensors: string[] };
    expect(summary).toMatchObject({ point: 1, rank: 2 });

    const source = await new NodeFolder(work.path).open('subspace.safetensors');
    const { subspaces } = await readDirections({ name: 'subspace', size: source.size, read: (o, l) => source.read(o, l) });
    const loaded = await LlamaModel.load(gpu, new NodeFolder(model.dir));
    try {
      await applyCut(loaded, { basis: subspaces![1]!.basis.slice(0, 2), embedding: true, undo: 'none' });
      const written = await SafetensorsModel.open(new NodeFolder(out));
      for (const name of summary.tensors) {
        const expected = await readMatrixBytes(gpu, loaded.matrices().get(name)!);
        expect(Buffer.compare(Buffer.from(await written.read(name)), Buffer.from(expected)), name).toBe(0);
      }
      expect(JSON.parse(written.metadata.get('model.safetensors')!.abliteration!)).toMatchObject({ point: 1, rank: 2 });
    } finally {
      loaded.dispose();
    }

    const cut = (file: string, ...args: string[]) => runCli(['cut', model.dir, '--direction', file, '--out', join(work.path, 'refused-top-k'), ...args]);
    expectCliError(await cut(directions, '--top-k', '2'), `${directions} holds no subspace; measure it with --mode subspace to use --top-k`);
    expectCliError(await cut(subspaceFile, '--top-k', '4'), '--top-k must be in 1..3 (the vectors stored for point 2), got 4');
    expectCliError(await cut(subspaceFile, '--top-k', '0'), '--top-k must be in 1..3 (the vectors stored for point 2), got 0');
    expectCliError(await cut(subspaceFile, '--top-k', '2', '--points', '0,1'), 'give --top-k or --points, not both');
    expect(outputTraces(work.path, 'refused-top-k')).toEqual([]);
  });
});
