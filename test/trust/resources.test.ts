/**
 * Resources over repeated work: loading and disposing a model, a long generation, and creating
 * and disposing the Gpu itself leave GPU buffers and bytes exactly at their baseline and host
 * memory flat. Host memory is measured in a child process run with --expose-gc
 * (fixtures/memory.ts), after warm-up rounds, with garbage collected before each reading.
 *
 * Margins. Resident memory after warm-up still moves by allocator and driver effects (a thread's
 * malloc arena appearing is a one-off step of up to ~25 MB; the software driver swings by ±10 MB
 * between generations), so the checks on it are the median growth per round, which a step does
 * not move and a leak does, and totals with room for those effects. What JavaScript holds (heap
 * and array buffers) settles to within a few hundred KB and is checked tightly. The leaks this
 * suite found were a model's upload staging per load (8.5 MB a round: median 8.5) and a device
 * per Gpu (2 MB a round: median 2.1); the margins catch them several times over.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { generate } from '../../src/model/generate.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { testGpu } from '../helpers/gpu.ts';
import { mib, MiB, ROOT, tempDir, writeModelDir, type ModelDir } from './helpers.ts';

const CYCLES = 20;
const GPU_CYCLES = 10;
const TOKENS = 220;

interface Memory {
  rss: number;
  js: number;
}

interface Figures {
  gpuBaseline: { buffers: number; bytes: number };
  perCycle: { buffers: number; bytes: number }[];
  cycleMemory: Memory[];
  generated: number;
  steps: { buffers: number; bytes: number }[];
  generationMemory: Memory[];
  afterGeneration: { buffers: number; bytes: number };
  gpuFigures: { buffers: number; bytes: number }[];
  gpuMemory: Memory[];
}

let work: ReturnType<typeof tempDir>;
let model: ModelDir;
let figures: Figures;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[sorted.length >> 1]!;
}

/** Growth from the first reading to the last and to the highest, and the median growth per round. */
function growth(series: number[]): { total: number; highest: number; perRound: number } {
  return { total: series.at(-1)! - series[0]!, highest: Math.max(...series) - series[0]!, perRound: median(series.slice(1).map((v, i) => v - series[i]!)) };
}

function show(series: Memory[]): string {
  return `resident ${series.map((m) => (m.rss / MiB).toFixed(1)).join(' ')} MiB; JavaScript ${series.map((m) => (m.js / MiB).toFixed(2)).join(' ')} MiB`;
}

beforeAll(async () => {
  work = tempDir('resources');
  // 8.5 MiB of bf16 weights: a copy leaked per round would stand out.
  model = writeModelDir(join(work.path, 'model'), { hiddenSize: 256, intermediateSize: 1024, numLayers: 4, numHeads: 4, fast: true });
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--expose-gc', '--import', 'tsx', join(ROOT, 'test/trust/fixtures/memory.ts'), model.dir, String(CYCLES), String(GPU_CYCLES), String(TOKENS)],
    { cwd: ROOT, maxBuffer: 16 * MiB, timeout: 110_000 },
  );
  figures = JSON.parse(stdout) as Figures;
}, 120_000);
afterAll(() => work?.remove());

describe('loading and disposing a model 20 times', () => {
  it('GPU buffers and bytes return to the baseline after every dispose', () => {
    expect(figures.perCycle).toHaveLength(CYCLES);
    for (const c of figures.perCycle) expect(c).toEqual(figures.gpuBaseline);
  });

  it('host memory stays flat', () => {
    const g = growth(figures.cycleMemory.map((m) => m.rss));
    const js = growth(figures.cycleMemory.map((m) => m.js));
    console.log(`load/dispose × ${CYCLES}: ${show(figures.cycleMemory)}; resident +${mib(g.total)}, median ${mib(g.perRound)} a round`);
    expect(g.perRound).toBeLessThan(0.25 * MiB);
    expect(g.total).toBeLessThan(40 * MiB);
    expect(js.highest).toBeLessThan(MiB);
  });
});

describe(`a generation of ${TOKENS} tokens`, () => {
  it('uses the same GPU buffers and bytes at every decode step, and frees them all at the end', () => {
    expect(figures.generated).toBe(TOKENS);
    expect(figures.steps).toHaveLength(TOKENS);
    // Step 0 is the prefill; the decode steps reuse what the first one allocated.
    const decode = figures.steps.slice(1);
    expect(new Set(decode.map((s) => `${s.buffers}/${s.bytes}`)).size).toBe(1);
    expect(figures.afterGeneration).toEqual(figures.gpuBaseline);
  });

  it('host memory stays flat across generations', () => {
    const g = growth(figures.generationMemory.map((m) => m.rss));
    const js = growth(figures.generationMemory.map((m) => m.js));
    console.log(`4 more generations of ${TOKENS} tokens: ${show(figures.generationMemory)}`);
    // 880 tokens: JavaScript keeping 1 KB a token would show as 0.9 MB. Resident memory swings by
    // ±10 MB here from one generation to the next (the software driver's pools), so its bound is
    // loose: 36 KB a token.
    expect(js.highest).toBeLessThan(0.75 * MiB);
    expect(g.highest).toBeLessThan(32 * MiB);
  });
});

describe(`creating and disposing the Gpu ${GPU_CYCLES} times`, () => {
  it('each device runs a model after a garbage collection, and frees everything', () => {
    expect(figures.gpuFigures).toHaveLength(GPU_CYCLES);
    for (const f of figures.gpuFigures) expect(f).toEqual({ buffers: 0, bytes: 0 });
  });

  it('host memory stays flat', () => {
    const g = growth(figures.gpuMemory.map((m) => m.rss));
    const js = growth(figures.gpuMemory.map((m) => m.js));
    console.log(`Gpu create/dispose × ${GPU_CYCLES}: ${show(figures.gpuMemory)}; resident +${mib(g.total)}, median ${mib(g.perRound)} a round`);
    expect(g.perRound).toBeLessThan(0.75 * MiB);
    expect(g.total).toBeLessThan(20 * MiB);
    expect(js.highest).toBeLessThan(MiB);
  });
});

describe('in this process', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await testGpu();
  });
  afterAll(() => gpu?.dispose());

  it('a model loaded and disposed 20 times, with and without running it, leaves no buffer', async () => {
    const baseline = { buffers: gpu.bufferCount, bytes: gpu.allocatedBytes };
    for (let i = 0; i < 20; i++) {
      const loaded = await LlamaModel.load(gpu, new NodeFolder(model.dir));
      expect(gpu.bufferCount).toBeGreaterThan(baseline.buffers);
      if (i % 4 === 0) await generate(loaded, [[1, 2, 3]], { maxNewTokens: 3, stopTokenIds: new Set() });
      loaded.dispose();
      loaded.dispose(); // twice is harmless
      expect({ buffers: gpu.bufferCount, bytes: gpu.allocatedBytes }).toEqual(baseline);
    }
  });
});
