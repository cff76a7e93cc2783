/**
 * The weight cut of post-normed blocks (Gemma 2 and 3), where the stream receives n(o) = g ⊙ o / rms(o)
 * of each writer's output o, g = 1 + w: `postNormedProjection`'s algebra, and on random-weight models
 * that every residual point is orthogonal to the cut subspace afterwards, that the cut equals the
 * float64 reference with the same projection applied to the writers' outputs at run time, that each
 * write points where run-time ablation's does, and that the exported model is the cut one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { ablationHooks, uploadBasis } from '../../src/abliterate/ablation.ts';
import { applyCut, orthonormalize, postNormedProjection } from '../../src/abliterate/cut.ts';
import { exportModel } from '../../src/abliterate/export.ts';
import { MemoryTarget } from '../../src/io/safetensorsWriter.ts';
import { LlamaModel } from '../../src/model/model.ts';
import type { TapPoint } from '../../src/model/taps.ts';
import { ReferenceLlama, type ReferenceEdit } from '../reference/llama.ts';
import { randomModel, type RandomModel, type RandomModelOptions } from '../reference/randomModel.ts';
import { relativeError } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
import { exportedFolder, loadRandomModel } from '../helpers/models.ts';
import { Random } from '../helpers/random.ts';
import { tapEverything } from '../helpers/taps.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

const dot = (a: ArrayLike<number>, b: ArrayLike<number>, offset = 0) => {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i]! * b[offset + i]!;
  return sum;
};

function randomBasis(rng: Random, rank: number, hidden: number): Float32Array[] {
  return orthonormalize(Array.from({ length: rank }, () => Float32Array.from(rng.normals(hidden))));
}

/** x ← x − L (Rᵀ x) for each row of x [T, H], the vectors given as rows (float64). */
function project(x: Float64Array, left: readonly ArrayLike<number>[], right: readonly ArrayLike<number>[], H: number): void {
  for (let t = 0; t < x.length / H; t++) {
    const row = x.subarray(t * H, (t + 1) * H);
    const c = right.map((r) => dot(r, row));
    left.forEach((l, k) => {
      for (let i = 0; i < H; i++) row[i] = row[i]! - l[i]! * c[k]!;
    });
  }
}

/** The writers' norm scales g = 1 + w of layer l, from the stored weights. */
function scales(random: RandomModel, l: number): { attention: Float64Array; mlp: Float64Array } {
  const g = (name: string) => random.weights.get(`model.layers.${l}.${name}.weight`).map((w) => 1 + w);
  return { attention: g('post_attention_layernorm'), mlp: g('post_feedforward_layernorm') };
}

/**
 * Run-time edits of the reference: B ablated from the embedding (and from the final norm's output
 * when the embedding is the output projection too), and each writer's raw output projected by
 * `writer(g)` (left and right vectors) before its post-norm.
 */
function writerEdits(random: RandomModel, basis: readonly Float32Array[], writer: (g: Float64Array) => { left: ArrayLike<number>[]; right: ArrayLike<number>[] }): ReferenceEdit {
  const H = random.config.hiddenSize;
  const perLayer = Array.from({ length: random.config.numLayers }, (_, l) => {
    const g = scales(random, l);
    return { attention: writer(g.attention), mlp: writer(g.mlp) };
  });
  return (point, layer, x) => {
    if (point === 'embed' || (point === 'final_norm' && random.config.tieWordEmbeddings)) project(x, basis, basis, H);
    if (point === 'attn_proj') project(x, perLayer[layer!]!.attention.left, perLayer[layer!]!.attention.right, H);
    if (point === 'mlp_proj') project(x, perLayer[layer!]!.mlp.left, perLayer[layer!]!.mlp.right, H);
  };
}

/** The oblique projector written out here from the derivation: L = G⁻¹B, R = G B (no axis of g is zero in these models). */
const oblique = (basis: readonly Float32Array[]) => (g: Float64Array) => ({
  left: basis.map((b) => Float64Array.from(b, (x, i) => x / g[i]!)),
  right: basis.map((b) => Float64Array.from(b, (x, i) => x * g[i]!)),
});

/** Run-time ablation of B from every write the stream receives (after the post-norms), as `ablationHooks` does. */
function fullAblation(random: RandomModel, basis: readonly Float32Array[]): ReferenceEdit {
  const H = random.config.hiddenSize;
  return (point, _, x) => {
    if (point === 'embed' || point === 'attn_out' || point === 'mlp_out' || (point === 'final_norm' && random.config.tieWordEmbeddings)) project(x, basis, basis, H);
  };
}

/** Per row of x [T, H]: cosine with the same row of y. */
function rowCosines(x: ArrayLike<number>, y: ArrayLike<number>, H: number): number[] {
  const out: number[] = [];
  for (let t = 0; t < x.length / H; t++) {
    let xy = 0;
    let xx = 0;
    let yy = 0;
    for (let i = t * H; i < (t + 1) * H; i++) {
      xy += x[i]! * y[i]!;
      xx += x[i]! ** 2;
      yy += y[i]! ** 2;
    }
    out.push(xy / Math.sqrt(xx * yy));
  }
  return out;
}

describe('postNormedProjection', () => {
  it.each([1, 3])('rank %i: RᵀL = I, and g ⊙ P o is (I − BBᵀ)(g ⊙ o), orthogonal to B, for random o', (rank) => {
    const rng = new Random();
    const H = 48;
    const basis = randomBasis(rng, rank, H);
    const g = rng.uniforms(H, 0.3, 2.5);
    const { left, right } = postNormedProjection(basis, g);
    const vec = (m: Float32Array, k: number) => m.subarray(k * H, (k + 1) * H);
    for (let a = 0; a < rank; a++) for (let b = 0; b < rank; b++) expect(Math.abs(dot(vec(right, a), vec(left, b)) - (a === b ? 1 : 0)), `seed ${rng.seed}`).toBeLessThan(1e-6);
    for (let trial = 0; trial < 5; trial++) {
      const o = Float64Array.from(rng.normals(H));
      const po = Float64Array.from(o);
      project(
        po,
        basis.map((_, k) => vec(left, k)),
        basis.map((_, k) => vec(right, k)),
        H,
      );
      const written = po.map((x, i) => x * g[i]!);
      const ablated = o.map((x, i) => x * g[i]!);
      project(ablated, basis, basis, H);
      expect(relativeError(written, ablated), `seed ${rng.seed}`).toBeLessThan(1e-6);
      for (const b of basis) expect(Math.abs(dot(b, written)) / Math.hypot(...written)).toBeLessThan(1e-6);
    }
  });

  it('an axis the norm scales to zero is left alone, and the write is still orthogonal to B', () => {
    const rng = new Random();
    const H = 32;
    const basis = randomBasis(rng, 2, H);
    const g = rng.uniforms(H, 0.5, 1.5);
    g[3] = 0;
    g[17] = 0;
    const { left, right } = postNormedProjection(basis, g);
    expect(left[3]).toBe(0);
    expect(left[H + 17]).toBe(0);
    const o = Float64Array.from(rng.normals(H));
    project(o, [left.subarray(0, H), left.subarray(H)], [right.subarray(0, H), right.subarray(H)], H);
    const written = o.map((x, i) => x * g[i]!);
    for (const b of basis) expect(Math.abs(dot(b, written)) / Math.hypot(...written), `seed ${rng.seed}`).toBeLessThan(1e-6);
  });

  it('refuses a scale that is zero everywhere, or directions only on axes it zeroes', () => {
    const basis = [Float32Array.from({ length: 8 }, (_, i) => (i === 2 ? 1 : 0))];
    expect(() => postNormedProjection(basis, new Float64Array(8))).toThrow(/zero everywhere/);
    const g = Float64Array.from({ length: 8 }, (_, i) => (i === 2 ? 0 : 1));
    expect(() => postNormedProjection(basis, g)).toThrow(/axes the norm scales to zero/);
    expect(() => postNormedProjection(basis, Float64Array.from({ length: 8 }, () => NaN))).toThrow(/NaN/);
  });

  it("float64 reference: the oblique cut's writes point where ablation's do; the orthogonal cut of g ⊙ d̂ turns them", () => {
    const random = randomModel({ architecture: 'gemma3_text', hiddenSize: 64, intermediateSize: 128, numLayers: 3, vocabSize: 120, tieWordEmbeddings: true, dtype: 'F32' });
    const rng = new Random(random.seed);
    const basis = randomBasis(rng, 1, 64);
    const reference = new ReferenceLlama(random.config, random.weights);
    const prompt = Array.from({ length: 9 }, () => rng.int(0, 119));
    const ablated = reference.forward(prompt, fullAblation(random, basis));
    const obliqueCut = reference.forward(prompt, writerEdits(random, basis, oblique(basis)));
    // The alternative: the orthogonal projection on û = g ⊙ d̂ / ‖g ⊙ d̂‖, also exact on d̂'s component.
    const orthogonal = (g: Float64Array) => {
      const u = Float64Array.from(basis[0]!, (x, i) => x * g[i]!);
      const norm = Math.hypot(...u);
      const unit = u.map((x) => x / norm);
      return { left: [unit], right: [unit] };
    };
    const orthogonalCut = reference.forward(prompt, writerEdits(random, basis, orthogonal));
    const H = 64;
    const obliqueCosines = rowCosines(obliqueCut.layers[0]!.attnOut, ablated.layers[0]!.attnOut, H);
    const orthogonalCosines = rowCosines(orthogonalCut.layers[0]!.attnOut, ablated.layers[0]!.attnOut, H);
    expect(Math.min(...obliqueCosines), `seed ${random.seed}`).toBeGreaterThan(1 - 1e-12);
    expect(Math.min(...orthogonalCosines)).toBeLessThan(1 - 1e-9);
    for (const run of [obliqueCut, orthogonalCut]) {
      for (const layer of run.layers) for (let t = 0; t < prompt.length; t++) {
        const row = layer.residPost.subarray(t * H, (t + 1) * H);
        // The basis vector is unit only to f32 rounding, so the projection leaves ~1e-8 of it.
        expect(Math.abs(dot(basis[0]!, row)) / Math.hypot(...row)).toBeLessThan(1e-7);
      }
    }
    console.log(
      `gemma3 float64, logits against full run-time ablation: oblique cut ${relativeError(obliqueCut.logits, ablated.logits).toExponential(2)}, orthogonal cut of g ⊙ d̂ ${relativeError(orthogonalCut.logits, ablated.logits).toExponential(2)}; layer-0 attention write cosine with ablation's: oblique ≥ ${Math.min(...obliqueCosines).toFixed(12)}, orthogonal ≥ ${Math.min(...orthogonalCosines).toFixed(6)}`,
    );
  });
});

const VARIANTS: [string, RandomModelOptions, number][] = [
  ['gemma2, tied, soft-capping, window 4, f32, rank 1', { architecture: 'gemma2', tieWordEmbeddings: true, slidingWindow: 4, dtype: 'F32' }, 1],
  ['gemma3, q/k norms, window 5 (pattern 2), untied, f32, rank 2', { architecture: 'gemma3_text', tieWordEmbeddings: false, slidingWindow: 5, slidingWindowPattern: 2, dtype: 'F32' }, 2],
  ['gemma3, tied, bf16, rank 1', { architecture: 'gemma3_text', tieWordEmbeddings: true, slidingWindow: 5, slidingWindowPattern: 2, dtype: 'BF16' }, 1],
  ['gemma2, untied, bf16, rank 2', { architecture: 'gemma2', tieWordEmbeddings: false, dtype: 'BF16' }, 2],
];

/** The residual points and writes whose rows must be orthogonal to the basis after the cut. */
const STREAM_POINTS: TapPoint[] = ['embed', 'resid_pre', 'attn_out', 'resid_mid', 'mlp_out', 'resid_post'];

/** max over rows of the stream points of max_k |b_k · x| / ‖x‖. */
function worstProjection(taps: Map<TapPoint, Float32Array>, basis: readonly Float32Array[], H: number): number {
  let worst = 0;
  for (const point of STREAM_POINTS) {
    const values = taps.get(point)!;
    for (let row = 0; row < values.length / H; row++) {
      const x = values.subarray(row * H, (row + 1) * H);
      const norm = Math.hypot(...x);
      for (const b of basis) worst = Math.max(worst, Math.abs(dot(b, x)) / norm);
    }
  }
  return worst;
}


describe('the weight cut of Gemma models', () => {
  it.each(VARIANTS)('%s: every residual point ⟂ B, equal to the writers ablated by the projection at run time, writes parallel to ablation, export round trip', async (name, options, rank) => {
    const { random, model } = await loadRandomModel(gpu, { hiddenSize: 64, intermediateSize: 128, numLayers: 3, vocabSize: 200, ...options });
    const f32 = options.dtype === 'F32';
    try {
      const H = random.config.hiddenSize;
      const V = random.config.vocabSize;
      const rng = new Random(random.seed);
      const prompts = [9, 4, 13].map((n) => Array.from({ length: n }, () => rng.int(0, V - 1)));
      const basis = randomBasis(rng, rank, H);
      const before = await tapEverything(gpu, model, prompts);
      const basisBuffer = uploadBasis(gpu, basis);
      const ablated = await tapEverything(gpu, model, prompts, ablationHooks(model.config, basisBuffer, rank));
      gpu.destroyBuffer(basisBuffer);

      const cut = await applyCut(model, { basis, embedding: true });
      expect(cut.tensors).toHaveLength(1 + 2 * random.config.numLayers);
      const after = await tapEverything(gpu, model, prompts);
      const total = prompts.reduce((n, p) => n + p.length, 0);

      // 1. Orthogonality of every point of the stream, which it had not before.
      const orthogonality = worstProjection(after.taps, basis, H);
      expect(worstProjection(before.taps, basis, H)).toBeGreaterThan(0.05);
      expect(orthogonality, `seed ${random.seed}`).toBeLessThan(f32 ? 2e-6 : 2e-3);

      // 2. Equal, by construction, to the float64 reference with the writers' outputs projected at run time.
      const reference = new ReferenceLlama(random.config, random.weights);
      const edit = writerEdits(random, basis, oblique(basis));
      let referenceError = 0;
      for (const [i, prompt] of prompts.entries()) {
        const ref = reference.forward(prompt, edit);
        const rows = (point: TapPoint, layer: number) => {
          const base = (layer * total + after.sequences[i]!.start) * H;
          return after.taps.get(point)!.subarray(base, base + prompt.length * H);
        };
        const errors = [relativeError(rows('embed', 0), ref.embed), relativeError(after.logits.subarray(i * V, (i + 1) * V), ref.logits.subarray((prompt.length - 1) * V))];
        ref.layers.forEach((layer, l) => {
          errors.push(relativeError(rows('attn_out', l), layer.attnOut), relativeError(rows('mlp_out', l), layer.mlpOut), relativeError(rows('resid_post', l), layer.residPost));
        });
        referenceError = Math.max(referenceError, ...errors);
      }
      // bf16: the cut weights are rounded to bf16 once; the reference projects exactly.
      expect(referenceError, `seed ${random.seed}`).toBeLessThan(f32 ? 1e-4 : 5e-2);

      // 3. Against full run-time ablation: the first write sees the same input, and points the same way.
      const attention0 = (taps: Map<TapPoint, Float32Array>) => taps.get('attn_out')!.subarray(0, total * H);
      const cosines = rowCosines(attention0(after.taps), attention0(ablated.taps), H);
      if (f32) expect(Math.min(...cosines), `seed ${random.seed}`).toBeGreaterThan(1 - 1e-6);
      const ratios = [...cosines.keys()].map((t) => Math.hypot(...attention0(after.taps).subarray(t * H, (t + 1) * H)) / Math.hypot(...attention0(ablated.taps).subarray(t * H, (t + 1) * H)));
      console.log(
        `${name}: max |Bᵀx|/‖x‖ over the stream ${orthogonality.toExponential(2)} (before the cut ${worstProjection(before.taps, basis, H).toFixed(3)}); against the reference with the writers projected ${referenceError.toExponential(2)}; ` +
          `layer-0 attention write against full ablation: cosine ≥ ${Math.min(...cosines).toFixed(7)}, length ratio ${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)}; logits against full ablation ${relativeError(after.logits, ablated.logits).toExponential(2)}, against the original ${relativeError(after.logits, before.logits).toExponential(2)}`,
      );
      cut.release();

      // 4. The exported model is the cut one.
      const reloaded = await LlamaModel.load(gpu, await exportedFolder(model));
      try {
        const again = await tapEverything(gpu, reloaded, prompts);
        expect(again.logits).toEqual(after.logits);
        expect(worstProjection(again.taps, basis, H)).toBe(orthogonality);
      } finally {
        reloaded.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it('gemma3, bf16: a streamed cut writes what the resident cut writes; the inverse undo restores the weights within rounding', async () => {
    const options: RandomModelOptions = { architecture: 'gemma3_text', hiddenSize: 64, intermediateSize: 128, numLayers: 2, vocabSize: 200, dtype: 'BF16' };
    const { random, folder } = await loadRandomModel(gpu, options).then(({ random, model, folder }) => {
      model.dispose();
      return { random, folder };
    });
    const rng = new Random(random.seed);
    const basis = randomBasis(rng, 2, 64);
    const files = async (residency: 'resident' | 'streamed') => {
      const model = await LlamaModel.load(gpu, folder, { residency });
      try {
        await applyCut(model, { basis, embedding: true, alpha: 0.8 });
        const target = new MemoryTarget();
        await exportModel(model, target, { parameters: {} });
        return new Uint8Array(await target.blobs().get('model.safetensors')!.arrayBuffer());
      } finally {
        model.dispose();
      }
    };
    expect(Buffer.compare(Buffer.from(await files('resident')), Buffer.from(await files('streamed')))).toBe(0);

    const model = await LlamaModel.load(gpu, folder);
    try {
      const prompts = [[5, 9, 30, 2, 77]];
      const original = await tapEverything(gpu, model, prompts);
      const cut = await applyCut(model, { basis, embedding: true, undo: 'inverse' });
      const changed = await tapEverything(gpu, model, prompts);
      await cut.undo();
      const restored = await tapEverything(gpu, model, prompts);
      expect(relativeError(changed.logits, original.logits)).toBeGreaterThan(1e-3);
      // A bf16 weight moved by the cut and back may land one rounding step away.
      expect(relativeError(restored.logits, original.logits), `seed ${random.seed}`).toBeLessThan(2e-2);
    } finally {
      model.dispose();
    }
  });
});
