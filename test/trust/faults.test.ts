/**
 * Faults during a run: an interrupt, the GPU device lost (in the library and in the CLI), GPU
 * memory running out under a budget, an output folder that cannot be created. Each gives one clear
 * line (or a typed error in the library), leaves nothing under the output name, and leaves the
 * input folder as it was. All on the real adapter: the device is really destroyed, the budget is
 * the engine's own accounting.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GpuDeviceLostError, GpuOutOfMemoryError } from '../../src/gpu/errors.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { createNodeGpu, parseMemoryBudget } from '../../src/gpu/node.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { generate } from '../../src/model/generate.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { exists, expectCliError, outputTraces, ROOT, runCli, snapshot, tempDir, writeDirectionsFile, writeModelDir, type ModelDir } from './helpers.ts';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const LOST = /^the GPU device was lost \(destroyed: .+\); restart the run$/;

let work: ReturnType<typeof tempDir>;
let model: ModelDir;
let input: Map<string, string>;

beforeAll(() => {
  work = tempDir('faults');
  model = writeModelDir(join(work.path, 'model'));
  input = snapshot(model.dir);
});
afterAll(() => work?.remove());

describe('interrupts', () => {
  it('SIGINT in the middle of a run: exit 130, one line, nothing written, input untouched', async () => {
    const out = join(work.path, 'interrupted');
    let timer: NodeJS.Timeout | undefined;
    const result = await runCli(['run', model.dir, '--no-optimize', '--out', out, '--limit', '16', '--max-tokens', '64'], {
      onSpawn: (child) => {
        // Once the adapter is open the model loads and the run starts; it takes several seconds.
        child.stderr!.on('data', (text: Buffer) => {
          if (timer === undefined && text.toString().includes('adapter: ')) timer = setTimeout(() => child.kill('SIGINT'), 1500);
        });
      },
    });
    clearTimeout(timer);
    expect(result.code, result.stderr).toBe(130);
    expect(result.lines.filter((l) => l.startsWith('abliterate: '))).toEqual([`abliterate: interrupted (SIGINT); nothing was written to ${out}`]);
    expect(outputTraces(work.path, 'interrupted')).toEqual([]);
    expect(snapshot(model.dir)).toEqual(input);
  });

  it('an output path under a file: one line, nothing written', async () => {
    const file = join(work.path, 'a-file');
    writeFileSync(file, 'not a folder\n');
    const out = join(file, 'out');
    expectCliError(await runCli(['run', model.dir, '--no-optimize', '--out', out, '--limit', '2']), `cannot create the output folder ${out}: ${file} is a file, not a folder`);
    expect(snapshot(model.dir)).toEqual(input);
  });
});

describe('an output parent that is not writable', () => {
  // Root writes anywhere: as root, run the CLI as nobody (with a home of its own); otherwise as ourselves.
  const root = process.getuid?.() === 0;
  let asUser: { uid?: number; gid?: number; env?: Record<string, string> } = {};
  let shared: string;
  let sharedModel: ModelDir;
  beforeAll(() => {
    // Folders the other user can read (mkdtemp makes them private).
    shared = join(work.path, 'shared');
    mkdirSync(shared, { mode: 0o755 });
    chmodSync(work.path, 0o755);
    if (root) {
      const home = join(shared, 'home');
      mkdirSync(home, { mode: 0o777 });
      chmodSync(home, 0o777);
      asUser = { uid: 65534, gid: 65534, env: { HOME: home } };
    }
    sharedModel = writeModelDir(join(shared, 'model'));
    // The CLI bundles the shaders at start; do it here, so that the other user has nothing to write.
    execFileSync(process.execPath, [join(ROOT, 'scripts/embed-shaders.js')], { cwd: ROOT });
  });

  it('read-only from the start: one line, nothing written', async () => {
    const parent = join(shared, 'read-only');
    mkdirSync(parent, { mode: 0o555 });
    const out = join(parent, 'out');
    const line = expectCliError(await runCli(['run', sharedModel.dir, '--no-optimize', '--out', out, '--limit', '2'], asUser), new RegExp(`^cannot create the output folder ${out}: EACCES: permission denied, mkdir `));
    expect(line).not.toContain('could not be removed');
    expect(outputTraces(parent, 'out')).toEqual([]);
  });

  it('made read-only during the export: the final rename fails, one line says so, nothing under the final name, input untouched', async () => {
    const parent = join(shared, 'closing');
    mkdirSync(parent, { mode: 0o777 });
    chmodSync(parent, 0o777);
    const out = join(parent, 'out');
    const before = snapshot(sharedModel.dir);
    let timer: NodeJS.Timeout | undefined;
    const directions = join(shared, 'directions.safetensors');
    await writeDirectionsFile(directions, sharedModel.random.config.hiddenSize, sharedModel.random.config.numLayers + 1);
    const result = await runCli(['cut', sharedModel.dir, '--direction', directions, '--out', out], {
      ...asUser,
      onSpawn: () => {
        // As soon as the export writes into the temporary folder, take write access to the parent away.
        timer = setInterval(() => {
          const temp = readdirSync(parent).find((e) => e.startsWith('.out.tmp-'));
          if (temp && readdirSync(join(parent, temp)).length > 0) {
            chmodSync(parent, 0o555);
            clearInterval(timer);
          }
        }, 1);
      },
    });
    clearInterval(timer);
    const line = expectCliError(result, new RegExp(`^cannot rename the finished output to ${out}: EACCES: permission denied, rename '${parent}/\\.out\\.tmp-[\\w-]+' -> '${out}'; `));
    expect(exists(out)).toBe(false);
    // The parent no longer lets the temporary folder go: the message names it for the user to delete.
    const traces = outputTraces(parent, 'out');
    expect(traces).toHaveLength(1);
    expect(line.endsWith(`; the partial output could not be removed: delete ${join(parent, traces[0]!)}`)).toBe(true);
    expect(snapshot(sharedModel.dir)).toEqual(before);
    chmodSync(parent, 0o777);
  });
});

describe('GPU device loss', () => {
  it('between two steps: the next operation throws GpuDeviceLostError with a readable message', async () => {
    const gpu = await createNodeGpu();
    try {
      const { model: random } = await loadRandomModel(gpu, { seed: 3 });
      const first = await generate(random, [[1, 5, 9]], { maxNewTokens: 3, stopTokenIds: new Set() });
      expect(first.tokens[0]).toHaveLength(3);
      gpu.device.destroy();
      const error = await generate(random, [[1, 5, 9]], { maxNewTokens: 3, stopTokenIds: new Set() }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(GpuDeviceLostError);
      expect((error as Error).message).toMatch(LOST);
      // Every later call says the same, and releasing everything still works.
      expect(() => gpu.createBuffer(16, 'after the loss')).toThrow(GpuDeviceLostError);
      random.dispose();
    } finally {
      gpu.dispose();
    }
  });

  it('in the middle of a generation: it stops with GpuDeviceLostError, not silent zeros', async () => {
    const gpu = await createNodeGpu();
    try {
      const { model: random } = await loadRandomModel(gpu, { seed: 4 });
      let steps = 0;
      // generate() reads `aborted` once per step: destroy the device at the sixth step.
      const probe = {
        get aborted() {
          if (++steps === 6) gpu.device.destroy();
          return false;
        },
      } as AbortSignal;
      const error = await generate(random, [[1, 5, 9], [2, 4]], { maxNewTokens: 40, stopTokenIds: new Set(), signal: probe }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(steps).toBeGreaterThanOrEqual(6);
      expect(steps).toBeLessThan(40);
      expect(error).toBeInstanceOf(GpuDeviceLostError);
      expect((error as Error).message).toMatch(LOST);
      random.dispose();
    } finally {
      gpu.dispose();
    }
  });

  it('during a CLI run: one line, nothing written, input untouched', async () => {
    const out = join(work.path, 'lost');
    const result = await runCli(['run', model.dir, '--no-optimize', '--out', out, '--limit', '4', '--max-tokens', '8'], {
      nodeArgs: ['--import', join(FIXTURES, 'loseDevice.mjs')],
      env: { TRUST_LOSE_DEVICE_AFTER: '6' },
    });
    // The preload announces the loss on stderr; the rest is the CLI's.
    const cli = { ...result, lines: result.lines.filter((l) => !l.startsWith('trust: ')) };
    expectCliError(cli, LOST);
    expect(outputTraces(work.path, 'lost')).toEqual([]);
    expect(snapshot(model.dir)).toEqual(input);
  });
});

describe('GPU memory budget', () => {
  it('ABLITERATE_MEMORY_BUDGET takes bytes or KiB/MiB/GiB, and says what it wants otherwise', () => {
    expect(parseMemoryBudget('1048576')).toBe(2 ** 20);
    expect(parseMemoryBudget('512MiB')).toBe(512 * 2 ** 20);
    expect(parseMemoryBudget('1.5 GiB')).toBe(1.5 * 2 ** 30);
    expect(parseMemoryBudget('64k')).toBe(64 * 2 ** 10);
    expect(parseMemoryBudget(undefined)).toBeUndefined();
    for (const bad of ['lots', '-5', '0', '12 parsecs']) {
      expect(() => parseMemoryBudget(bad)).toThrow(`ABLITERATE_MEMORY_BUDGET must be a positive number of bytes, optionally with a KiB, MiB or GiB suffix (e.g. 512MiB); got "${bad}"`);
    }
  });

  it('too small for the weights even one layer at a time: one line with the need and the budget', async () => {
    const out = join(work.path, 'oom-weights');
    const result = await runCli(['run', model.dir, '--no-optimize', '--out', out, '--limit', '2', '--max-tokens', '2'], { env: { ABLITERATE_MEMORY_BUDGET: '100KiB' } });
    expectCliError(
      result,
      `${model.dir}: even streamed one layer at a time, the weights need 128.0 KiB of GPU memory at once, more than the budget of 100.0 KiB; give it a larger memory budget (ABLITERATE_MEMORY_BUDGET=100KiB)`,
    );
    expect(outputTraces(work.path, 'oom-weights')).toEqual([]);
  });

  it('enough for the weights but not for the work: one line naming the buffer, the need, the use and what to try', async () => {
    const out = join(work.path, 'oom-work');
    const result = await runCli(['run', model.dir, '--no-optimize', '--out', out, '--limit', '2', '--max-tokens', '2'], { env: { ABLITERATE_MEMORY_BUDGET: '600KiB' } });
    expectCliError(
      result,
      /^[\w .]+: needs \d+(\.\d)? KiB more GPU memory, but \d+(\.\d)? KiB of the 600\.0 KiB budget is in use; try a smaller batch, fewer prompts at once, or a larger memory budget \(ABLITERATE_MEMORY_BUDGET=600KiB\)$/,
    );
    expect(outputTraces(work.path, 'oom-work')).toEqual([]);
    expect(snapshot(model.dir)).toEqual(input);
  });

  it('in the library: a failed load or generation leaves no GPU buffer behind', async () => {
    let gpu: Gpu = await createNodeGpu({ memoryBudget: 300 * 2 ** 10 });
    try {
      const baseline = { count: gpu.bufferCount, bytes: gpu.allocatedBytes };
      const load = await LlamaModel.load(gpu, new NodeFolder(model.dir), { residency: 'resident' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(load).toBeInstanceOf(GpuOutOfMemoryError);
      expect((load as Error).message).toMatch(/needs [\d.]+ KiB more GPU memory, but [\d.]+ KiB of the 300\.0 KiB budget is in use/);
      expect({ count: gpu.bufferCount, bytes: gpu.allocatedBytes }).toEqual(baseline);
    } finally {
      gpu.dispose();
    }
    gpu = await createNodeGpu({ memoryBudget: 2 ** 20 });
    try {
      const loaded = await LlamaModel.load(gpu, new NodeFolder(model.dir));
      const baseline = { count: gpu.bufferCount, bytes: gpu.allocatedBytes };
      // A batch whose KV cache does not fit the rest of the budget.
      const prompts = Array.from({ length: 64 }, () => Array.from({ length: 60 }, (_, i) => 10 + i));
      const error = await generate(loaded, prompts, { maxNewTokens: 60, batchSize: 64, stopTokenIds: new Set() }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(GpuOutOfMemoryError);
      expect({ count: gpu.bufferCount, bytes: gpu.allocatedBytes }).toEqual(baseline);
      // And the model still works within the budget.
      const ok = await generate(loaded, [[1, 2, 3]], { maxNewTokens: 4, stopTokenIds: new Set() });
      expect(ok.tokens[0]).toHaveLength(4);
      loaded.dispose();
    } finally {
      gpu.dispose();
    }
  });
});
