import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { ablationHooks, uploadBasis } from '../../src/abliterate/ablation.ts';
import { applyCut, cutBasis, layerStrengths, orthonormalize, type CutUndo } from '../../src/abliterate/cut.ts';
import { KvCache } from '../../src/model/kvCache.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { residualWriters, type LlamaWeights, type StreamedWeights } from '../../src/model/weights.ts';
import { HookRunner, type Hook } from '../../src/model/taps.ts';
import { relativeError } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

async function lastLogits(model: LlamaModel, prompts: number[][], hooks: Hook[] = []): Promise<Float32Array> {
  const cache = new KvCache(model.gpu, model.config, prompts.length, Math.max(...prompts.map((p) => p.length)));
  let start = 0;
  const sequences = prompts.map((p, slot) => {
    const s = { slot, start, length: p.length, firstPosition: 0 };
    start += p.length;
    return s;
  });
  const batch = model.gpu.batch('logits');
  const runner = new HookRunner(hooks, model.config.numLayers);
  const logits = model.forward.recordStep(batch, { tokens: prompts.flat(), sequences, logits: 'last' }, cache, runner)!;
  await batch.submit();
  runner.endStep(model.gpu, sequences);
  const out = await model.gpu.readF32(logits, 0, prompts.length * model.config.vocabSize);
  cache.dispose();
  return out;
}

/** Every matrix's stored bytes: chunk by chunk on the GPU, or through the overlay of streamed weights. */
async function allWeights(model: LlamaModel): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  if (model.residency === 'streamed') {
    const source = (model.weights as StreamedWeights).source;
    for (const name of model.tensors.tensors.keys()) out.set(name, (await source.read(name)).slice());
    return out;
  }
  for (const [name, matrix] of model.matrices()) {
    for (const [i, chunk] of matrix.chunks.entries()) out.set(`${name}#${i}`, new Uint8Array(await model.gpu.read(chunk.buffer)));
  }
  return out;
}

function differing(a: Map<string, Uint8Array>, b: Map<string, Uint8Array>): string[] {
  return [...a.keys()].filter((k) => !equalBytes(a.get(k)!, b.get(k)!));
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** K orthonormal f32 vectors of length n. */
function randomBasis(rng: Random, rank: number, n: number): Float32Array[] {
  return orthonormalize(Array.from({ length: rank }, () => Float32Array.from(rng.normals(n))));
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i]! * b[i]!;
  return sum;
}

describe('cut', () => {
  it.each([
    ['untied', false],
    ['tied', true],
  ])('cutting a basis from the embedding, o_proj and down_proj with α = 1 equals ablating it at run time (%s embeddings; K = 1, 2, 3, 5)', async (_, tied) => {
    for (const rank of [1, 2, 3, 5]) {
      const { random, model } = await loadRandomModel(gpu, { dtype: 'F32', tieWordEmbeddings: tied });
      try {
        const rng = new Random(random.seed);
        const prompts = [9, 4, 13].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
        const basis = randomBasis(rng, rank, random.config.hiddenSize);
        const original = await lastLogits(model, prompts);
        const basisBuffer = uploadBasis(gpu, basis);
        const ablated = await lastLogits(model, prompts, ablationHooks(model.config, basisBuffer, rank));
        gpu.destroyBuffer(basisBuffer);
        const cut = rank === 1 ? await applyCut(model, { direction: basis[0]!, embedding: true }) : await applyCut(model, { basis, embedding: true });
        expect(cut.rank).toBe(rank);
        const afterCut = await lastLogits(model, prompts);
        const error = relativeError(afterCut, ablated);
        console.log(`${_} K=${rank}: cut vs runtime ablation relative error ${error.toExponential(2)}; change from the original ${relativeError(ablated, original).toExponential(2)}`);
        expect(error, `seed ${random.seed}`).toBeLessThan(1e-4);
        // The intervention really changed the model.
        expect(relativeError(ablated, original)).toBeGreaterThan(1e-3);
        cut.release();
      } finally {
        model.dispose();
      }
    }
  });

  it('a cut removes the subspace from what each cut matrix writes, by each layer weight', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed);
      const basis = randomBasis(rng, 3, random.config.hiddenSize);
      const weights = [1, 0, 0.5];
      const cut = await applyCut(model, { basis, strengths: weights });
      for (const [l, layer] of (model.weights as LlamaWeights).layers.entries()) {
        const w = new Float32Array(await gpu.read(layer.o.chunks[0]!.buffer));
        const original = random.weights.get(`model.layers.${l}.self_attn.o_proj.weight`);
        const cols = layer.o.cols;
        for (const d of basis) {
          // bᵀW after the cut is (1 − α_l) times bᵀW before, for each basis vector b.
          const dw = Array.from({ length: cols }, (_, j) => d.reduce((s, x, i) => s + x * w[i * cols + j]!, 0));
          const dw0 = Array.from({ length: cols }, (_, j) => d.reduce((s, x, i) => s + x * original[i * cols + j]!, 0));
          expect(relativeError(dw, dw0.map((v) => v * (1 - weights[l]!))), `layer ${l}`).toBeLessThan(1e-4);
        }
      }
      expect(cut.tensors).toHaveLength(4);
      cut.release();
    } finally {
      model.dispose();
    }
  });

  it('o_proj and down_proj take their own per-layer strengths', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed);
      const [direction] = randomBasis(rng, 1, random.config.hiddenSize) as [Float32Array];
      const strengths = { o_proj: [1, 0, 0.5], down_proj: [0, 1.25, 0.3] };
      const cut = await applyCut(model, { direction, attentionStrengths: strengths.o_proj, mlpStrengths: strengths.down_proj });
      for (const [l, layer] of (model.weights as LlamaWeights).layers.entries()) {
        for (const [matrix, name, tensor] of [
          [layer.o, 'o_proj', `model.layers.${l}.self_attn.o_proj.weight`],
          [residualWriters(layer).mlp[0]!, 'down_proj', `model.layers.${l}.mlp.down_proj.weight`],
        ] as const) {
          const w = new Float32Array(await gpu.read(matrix.chunks[0]!.buffer));
          const original = random.weights.get(tensor);
          const cols = matrix.cols;
          const dw = Array.from({ length: cols }, (_, j) => direction.reduce((s, d, i) => s + d * w[i * cols + j]!, 0));
          const dw0 = Array.from({ length: cols }, (_, j) => direction.reduce((s, d, i) => s + d * original[i * cols + j]!, 0));
          const expected = dw0.map((v) => v * (1 - strengths[name][l]!));
          expect(relativeError(dw, expected), `${name} of layer ${l}`).toBeLessThan(1e-4);
        }
      }
      expect(cut.tensors).toHaveLength(4);
      await cut.undo();
    } finally {
      model.dispose();
    }
  });
});

describe('undo', () => {
  /**
   * 50 random cuts (rank, α, layer weights, embedding, norm preservation), each undone: every weight
   * comes back bit for bit and no tensor stays marked modified, except those an earlier cut (kept
   * throughout) had changed.
   */
  async function cycles(model: LlamaModel, rng: Random, undo: CutUndo, expectedMode: string) {
    const { hiddenSize, numLayers } = model.config;
    const kept = await applyCut(model, { basis: randomBasis(rng, 1, hiddenSize), strengths: Array.from({ length: numLayers }, (_, l) => (l === 1 ? 1 : 0)), undo: 'none' });
    const keptTensors = new Set(kept.tensors);
    expect([...model.modifiedTensors].sort()).toEqual([...keptTensors].sort());
    const before = await allWeights(model);
    let changedSomething = 0;
    for (let cycle = 0; cycle < 50; cycle++) {
      const rank = rng.int(1, 5);
      const spec = {
        basis: randomBasis(rng, rank, hiddenSize),
        alpha: 0.25 + 1.5 * rng.next(),
        strengths: Array.from({ length: numLayers }, () => [0, 0.5, 1][rng.int(0, 2)]!),
        embedding: rng.next() < 0.5,
        preserveRowNorm: rng.next() < 0.3,
        undo,
      };
      const cut = await applyCut(model, spec);
      const what = `cycle ${cycle} K=${rank} seed ${rng.seed}`;
      expect(cut.undoMode, what).toBe(expectedMode);
      expect(cut.exactUndo).toBe(true);
      for (const name of cut.tensors) expect(model.modifiedTensors.has(name), what).toBe(true);
      if (cut.tensors.length) {
        const during = await allWeights(model);
        if (differing(before, during).length) changedSomething++;
      }
      await cut.undo();
      expect(differing(before, await allWeights(model)), what).toEqual([]);
      expect([...model.modifiedTensors].sort(), what).toEqual([...keptTensors].sort());
      // A second undo does nothing.
      await cut.undo();
    }
    expect(changedSomething).toBeGreaterThan(25);
  }

  it('is exact across 50 random cut/undo cycles from GPU snapshots (resident, BF16 and F32)', async () => {
    for (const dtype of ['BF16', 'F32'] as const) {
      const { random, model } = await loadRandomModel(gpu, { dtype });
      try {
        await cycles(model, new Random(random.seed), 'snapshot', 'snapshot');
      } finally {
        model.dispose();
      }
    }
  });

  it('is exact across 50 random cut/undo cycles from host copies (resident, F16)', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F16' });
    try {
      await cycles(model, new Random(random.seed), 'host', 'host');
    } finally {
      model.dispose();
    }
  });

  it('is exact across 50 random cut/undo cycles of streamed weights (the overlay)', async () => {
    const { random, model: resident, folder } = await loadRandomModel(gpu, { dtype: 'BF16' });
    resident.dispose();
    const model = await LlamaModel.load(gpu, folder, { residency: 'streamed' });
    try {
      expect(model.residency).toBe('streamed');
      await cycles(model, new Random(random.seed), 'auto', 'overlay');
    } finally {
      model.dispose();
    }
  });

  it("'auto' keeps GPU copies while they fit in the memory budget, else host copies", async () => {
    const allocated = gpu.allocatedBytes;
    const { random, model, folder } = await loadRandomModel(gpu, { dtype: 'BF16' });
    const modelBytes = gpu.allocatedBytes - allocated;
    const rng = new Random(random.seed);
    try {
      const cut = await applyCut(model, { basis: randomBasis(rng, 2, random.config.hiddenSize), embedding: true });
      expect(cut.undoMode).toBe('snapshot');
      await cut.undo();
    } finally {
      model.dispose();
    }
    // Room for the model and 64 KiB more: not for a second copy of the embedding, o_proj and down_proj.
    const small = await testGpu({ memoryBudget: modelBytes + 64 * 1024 });
    try {
      const model = await LlamaModel.load(small, folder, { residency: 'resident' });
      const before = await allWeights(model);
      const cut = await applyCut(model, { basis: randomBasis(rng, 2, random.config.hiddenSize), embedding: true, preserveRowNorm: true });
      expect(cut.undoMode).toBe('host');
      expect(differing(before, await allWeights(model)).length).toBeGreaterThan(0);
      await cut.undo();
      expect(differing(before, await allWeights(model))).toEqual([]);
      expect(model.modifiedTensors.size).toBe(0);
      await expect(applyCut(model, { basis: randomBasis(rng, 1, random.config.hiddenSize), embedding: true, undo: 'snapshot' })).rejects.toThrow(/budget/);
      expect(differing(before, await allWeights(model))).toEqual([]);
      model.dispose();
    } finally {
      small.dispose();
    }
  });

  it("'inverse' is declared approximate: within rounding, refused for norm-preserving cuts; 'none' cannot be undone", async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed);
      const before = await allWeights(model);
      const basis = randomBasis(rng, 3, random.config.hiddenSize);
      await expect(applyCut(model, { basis, embedding: true, preserveRowNorm: true, undo: 'inverse' })).rejects.toThrow(/norm-preserving cut cannot be undone by the inverse update/);
      const inverse = await applyCut(model, { basis, embedding: true, alpha: 0.8, undo: 'inverse' });
      expect(inverse.undoMode).toBe('inverse');
      expect(inverse.exactUndo).toBe(false);
      await inverse.undo();
      expect(model.modifiedTensors.size).toBe(0);
      for (const [key, bytes] of await allWeights(model)) {
        const was = new Float32Array(before.get(key)!.buffer);
        expect(relativeError(new Float32Array(bytes.buffer), was), key).toBeLessThan(1e-6);
      }
      const none = await applyCut(model, { basis, undo: 'none' });
      expect(none.exactUndo).toBe(false);
      await expect(none.undo()).rejects.toThrow(/cannot be undone/);
      const released = await applyCut(model, { basis });
      released.release();
      await expect(released.undo()).rejects.toThrow(/released/);
    } finally {
      model.dispose();
    }
  });
});

describe('basis checks', () => {
  it('refuses empty, oversized, wrongly sized, non-finite, non-unit and non-orthogonal bases, and changes nothing', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'BF16' });
    try {
      const rng = new Random(random.seed);
      const h = random.config.hiddenSize;
      const before = await allWeights(model);
      const [a, b] = randomBasis(rng, 2, h) as [Float32Array, Float32Array];
      const nan = a.slice();
      nan[7] = Number.NaN;
      const cases: [string, Float32Array[], RegExp][] = [
        ['empty', [], /at least one direction/],
        ['wrong size', [a.subarray(1)], /direction 0 has 63 values; the model's hidden size is 64/],
        ['non-finite', [b, nan], /direction 1 holds NaN at index 7/],
        ['not unit', [a.map((x) => 1.01 * x)], /direction 0 has norm 1\.01000, not 1/],
        ['not orthogonal', [a, Float32Array.from(a, (x, i) => (x + b[i]!) / Math.SQRT2)], /directions 0 and 1 are not orthogonal \(cosine 0\.707\)/],
      ];
      for (const [what, basis, message] of cases) await expect(applyCut(model, { basis, embedding: true }), what).rejects.toThrow(message);
      expect(() => cutBasis(Array.from({ length: h + 1 }, () => a), h)).toThrow(/65 directions cannot be orthonormal in the hidden size of 64/);
      await expect(applyCut(model, { basis: [a], alpha: Number.POSITIVE_INFINITY })).rejects.toThrow(/alpha must be a finite number/);
      await expect(applyCut(model, { basis: [a], strengths: [1, Number.NaN, 1] })).rejects.toThrow(/layer 1 is NaN/);
      expect(differing(before, await allWeights(model))).toEqual([]);
      expect(model.modifiedTensors.size).toBe(0);
    } finally {
      model.dispose();
    }
  });

  it('orthonormalises on request (Gram–Schmidt in order), and refuses a direction in the span of the others', async () => {
    const rng = new Random();
    const h = 48;
    const raw = Array.from({ length: 4 }, () => Float32Array.from(rng.normals(h)));
    const q = cutBasis(raw, h, { orthonormalize: true });
    for (let i = 0; i < q.length; i++) {
      expect(Math.abs(dot(q[i]!, q[i]!) - 1)).toBeLessThan(1e-6);
      for (let j = 0; j < i; j++) expect(Math.abs(dot(q[i]!, q[j]!))).toBeLessThan(1e-6);
    }
    // The first vector keeps its direction; each span is kept.
    expect(dot(q[0]!, raw[0]!) / Math.sqrt(dot(raw[0]!, raw[0]!))).toBeCloseTo(1, 6);
    const inSpan = Float32Array.from(raw[0]!, (x, i) => 2 * x - 0.5 * raw[2]![i]!);
    expect(() => cutBasis([raw[0]!, raw[2]!, inSpan], h, { orthonormalize: true })).toThrow(/direction 2 lies in the span of the directions before it/);
    expect(() => cutBasis([raw[0]!, new Float32Array(h)], h, { orthonormalize: true })).toThrow(/direction 1 is zero/);
    expect(() => cutBasis([raw[0]!], h)).toThrow(/not 1/);

    // A cut with orthonormalize equals the cut of the orthonormalised basis, bit for bit.
    const { random, model } = await loadRandomModel(gpu, { dtype: 'BF16' });
    try {
      const vectors = Array.from({ length: 3 }, () => Float32Array.from(rng.normals(random.config.hiddenSize)));
      const first = await applyCut(model, { basis: vectors, orthonormalize: true, embedding: true });
      const once = await allWeights(model);
      await first.undo();
      const second = await applyCut(model, { basis: orthonormalize(vectors), embedding: true });
      expect(differing(once, await allWeights(model))).toEqual([]);
      await second.undo();
    } finally {
      model.dispose();
    }
  });
});

describe('layer weights', () => {
  it('selects layers by range, list, median and top-k, and shapes them with a tent', () => {
    expect(layerStrengths(5, { kind: 'all' })).toEqual([1, 1, 1, 1, 1]);
    expect(layerStrengths(5, { kind: 'range', from: 1, to: 3 })).toEqual([0, 1, 1, 1, 0]);
    expect(layerStrengths(5, { kind: 'list', layers: [0, 4] })).toEqual([1, 0, 0, 0, 1]);
    const scores = [0.1, 0.9, 0.5, 0.7, 0.2];
    expect(layerStrengths(5, { kind: 'above_median' }, { kind: 'constant' }, scores)).toEqual([0, 1, 0, 1, 0]);
    expect(layerStrengths(5, { kind: 'top_k', k: 2 }, { kind: 'constant' }, scores)).toEqual([0, 1, 0, 1, 0]);
    expect(layerStrengths(5, { kind: 'all' }, { kind: 'tent', peak: 2, width: 2, min: 0.2, max: 1 })).toEqual([0.2, 0.6, 1, 0.6, 0.2]);
    expect(() => layerStrengths(5, { kind: 'range', from: 3, to: 9 })).toThrow(/outside/);
    expect(() => layerStrengths(5, { kind: 'top_k', k: 2 })).toThrow(/score/);
  });
});
