import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { generate } from '../../src/model/generate.ts';
import type { LlamaModel } from '../../src/model/model.ts';
import type { TapPoint } from '../../src/model/taps.ts';
import { ReferenceLlama } from '../reference/llama.ts';
import type { RandomModel, RandomModelOptions } from '../reference/randomModel.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { tapEverything } from '../helpers/taps.ts';
import { relativeError } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

/** The engine's bound against the float64 reference on the same weights (f32 arithmetic throughout). */
const BOUND = 1e-4;

const VARIANTS: [string, RandomModelOptions][] = [
  ['llama, GQA 4:1, untied, f32', { numHeads: 8, numKvHeads: 2, tieWordEmbeddings: false, dtype: 'F32' }],
  ['llama, GQA 2:1, tied, bf16', { numHeads: 4, numKvHeads: 2, tieWordEmbeddings: true, dtype: 'BF16' }],
  ['llama 3, llama3 rope scaling, bf16', { ropeScaling: 'llama3', ropeTheta: 500000, dtype: 'BF16' }],
  ['llama, attention and MLP biases, f16', { attentionBias: true, mlpBias: true, dtype: 'F16' }],
  ['qwen2, q/k/v biases, f32', { architecture: 'qwen2', numHeads: 4, numKvHeads: 1, dtype: 'F32' }],
  ['mistral, MHA, head_dim ≠ hidden/heads, bf16', { architecture: 'mistral', numHeads: 4, numKvHeads: 4, headDim: 24, dtype: 'BF16' }],
  ['mistral, sliding window 6 exercised (prompts of 11 and 23 tokens), GQA 2:1, bf16', { architecture: 'mistral', numHeads: 4, numKvHeads: 2, slidingWindow: 6, dtype: 'BF16' }],
  ['qwen2, sliding window 5 from layer 1 (use_sliding_window), f32', { architecture: 'qwen2', numHeads: 4, numKvHeads: 2, slidingWindow: 5, slidingWindowFromLayer: 1, dtype: 'F32' }],
  [
    'gemma2, tied, soft-capping active (scores 1, logits 5), window 4 on even layers, bf16',
    { architecture: 'gemma2', tieWordEmbeddings: true, attnLogitSoftcap: 1, finalLogitSoftcap: 5, slidingWindow: 4, queryPreAttnScalar: 12, numLayers: 3, dtype: 'BF16' },
  ],
  ['gemma2, default caps 50 and 30, untied, f32', { architecture: 'gemma2', numHeads: 4, numKvHeads: 1, dtype: 'F32' }],
  [
    'gemma3, q/k norms, local RoPE base 100 vs global 1e6, window 5 (pattern 3), tied, bf16',
    { architecture: 'gemma3_text', tieWordEmbeddings: true, ropeTheta: 1_000_000, ropeLocalTheta: 100, slidingWindow: 5, slidingWindowPattern: 3, numLayers: 3, dtype: 'BF16' },
  ],
  ['gemma3, head_dim 16 ≠ hidden/heads, f16', { architecture: 'gemma3_text', tieWordEmbeddings: true, headDim: 16, slidingWindow: 3, slidingWindowPattern: 2, dtype: 'F16' }],
  ['qwen3, q/k norms, head_dim ≠ hidden/heads, untied, bf16', { architecture: 'qwen3', numHeads: 4, numKvHeads: 2, headDim: 32, dtype: 'BF16' }],
  ['qwen3, q/k norms, tied, f32', { architecture: 'qwen3', tieWordEmbeddings: true, dtype: 'F32' }],
  ['phi3, fused qkv_proj and gate_up_proj, f32', { architecture: 'phi3', numHeads: 4, numKvHeads: 2, dtype: 'F32' }],
  ['phi3, longrope (short factors, attention factor), bf16', { architecture: 'phi3', ropeScaling: 'longrope', dtype: 'BF16' }],
  ['mixtral, top-2 of 4 experts, bf16', { architecture: 'mixtral', numExperts: 4, topK: 2, expertIntermediateSize: 48, dtype: 'BF16' }],
  [
    'qwen2-moe, shared expert, softmax before top-k (no renormalisation), a dense layer, f32',
    { architecture: 'qwen2_moe', numExperts: 4, topK: 2, expertIntermediateSize: 48, sharedExpertIntermediateSize: 96, mlpOnlyLayers: [1], dtype: 'F32' },
  ],
  ['qwen3-moe, norm_topk_prob, top-3 of 8, f16', { architecture: 'qwen3_moe', numExperts: 8, topK: 3, expertIntermediateSize: 40, dtype: 'F16' }],
  ['qwen3-moe, fused expert tensors, tied, bf16', { architecture: 'qwen3_moe', numExperts: 4, topK: 2, expertIntermediateSize: 40, fusedExperts: true, tieWordEmbeddings: true, dtype: 'BF16' }],
];

/** One variant of each family for the greedy-generation comparison. */
const GREEDY_VARIANTS = [...VARIANTS.slice(0, 3), ...VARIANTS.filter(([name]) => /^(mistral, sliding|gemma2, tied|gemma3, q\/k|qwen3, q\/k norms, tied|phi3|mixtral|qwen2-moe|qwen3-moe, norm)/.test(name))];

async function loadRandom(options: RandomModelOptions): Promise<{ random: RandomModel; model: LlamaModel; reference: ReferenceLlama }> {
  const { random, model } = await loadRandomModel(gpu, options);
  return { random, model, reference: new ReferenceLlama(random.config, random.weights) };
}

describe('forward pass against the float64 reference', () => {
  it.each(VARIANTS)('%s: every tap of every layer and the logits', async (_, options) => {
    const { random, model, reference } = await loadRandom(options);
    try {
      const rng = new Random(random.seed);
      const prompts = [11, 4, 1, 23].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const { taps, logits, sequences } = await tapEverything(gpu, model, prompts);
      const H = random.config.hiddenSize;
      const V = random.config.vocabSize;
      const total = prompts.reduce((n, p) => n + p.length, 0);
      const errors: Record<string, number> = {};
      for (const [i, prompt] of prompts.entries()) {
        const ref = reference.forward(prompt);
        const rows = (point: TapPoint, layer: number) => {
          const base = (layer * total + sequences[i]!.start) * H;
          return taps.get(point)!.subarray(base, base + prompt.length * H);
        };
        const check = (what: string, got: ArrayLike<number>, expected: ArrayLike<number>) => {
          const error = relativeError(got, expected);
          errors[what] = Math.max(errors[what] ?? 0, error);
          expect(error, `${what} of prompt ${i} (seed ${random.seed})`).toBeLessThan(BOUND);
        };
        check('embed', rows('embed', 0), ref.embed);
        for (let l = 0; l < random.config.numLayers; l++) {
          const layer = ref.layers[l]!;
          check('resid_pre', rows('resid_pre', l), layer.residPre);
          check('attn_out', rows('attn_out', l), layer.attnOut);
          check('resid_mid', rows('resid_mid', l), layer.residMid);
          check('mlp_out', rows('mlp_out', l), layer.mlpOut);
          check('resid_post', rows('resid_post', l), layer.residPost);
        }
        check('final_norm', rows('final_norm', 0), ref.finalNorm);
        check('logits', logits.subarray(i * V, (i + 1) * V), ref.logits.subarray((prompt.length - 1) * V, prompt.length * V));
      }
      console.log(`${_}: max relative errors ${JSON.stringify(Object.fromEntries(Object.entries(errors).map(([k, v]) => [k, Number(v.toExponential(2))])))}`);
    } finally {
      model.dispose();
    }
  });

  it.each(GREEDY_VARIANTS)('%s: greedy generation of 32 tokens matches token for token', async (_, options) => {
    const { random, model, reference } = await loadRandom(options);
    try {
      const rng = new Random(random.seed);
      const prompts = [5, 9].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const result = await generate(model, prompts, { maxNewTokens: 32, stopTokenIds: new Set() });
      for (const [i, prompt] of prompts.entries()) {
        const expected = reference.greedy(prompt, 32);
        const got = result.tokens[i]!;
        const first = got.findIndex((t, j) => t !== expected[j]);
        if (first >= 0) {
          // Only a near-tie in the reference's logits may send f32 and f64 different ways.
          const ref = reference.forward([...prompt, ...expected.slice(0, first)]);
          const V = random.config.vocabSize;
          const last = Array.from(ref.logits.subarray(ref.logits.length - V)).sort((a, b) => b - a);
          expect(last[0]! - last[1]!, `generations differ at token ${first} without a near-tie (seed ${random.seed})`).toBeLessThan(1e-4);
        } else {
          expect(got).toEqual(expected);
        }
      }
    } finally {
      model.dispose();
    }
  });

  it('a batch of prompts gives the same results as each prompt alone', async () => {
    const { random, model } = await loadRandom(VARIANTS[1]![1]);
    try {
      const rng = new Random(random.seed);
      const prompts = [7, 1, 15, 3].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const together = await tapEverything(gpu, model, prompts);
      const V = random.config.vocabSize;
      const H = random.config.hiddenSize;
      for (const [i, prompt] of prompts.entries()) {
        const alone = await tapEverything(gpu, model, [prompt]);
        expect(relativeError(alone.logits, together.logits.subarray(i * V, (i + 1) * V))).toBeLessThan(1e-6);
        const total = prompts.reduce((n, p) => n + p.length, 0);
        const last = random.config.numLayers - 1;
        const base = (last * total + together.sequences[i]!.start) * H;
        const rows = together.taps.get('resid_post')!.subarray(base, base + prompt.length * H);
        const aloneRows = alone.taps.get('resid_post')!.subarray(last * prompt.length * H, (last + 1) * prompt.length * H);
        expect(relativeError(aloneRows, rows)).toBeLessThan(1e-6);
      }
      // Sampled generation in a batch also matches generation alone (same seed, same per-row draws).
      const greedyTogether = await generate(model, prompts, { maxNewTokens: 8, stopTokenIds: new Set() });
      for (const [i, prompt] of prompts.entries()) {
        const alone = await generate(model, [prompt], { maxNewTokens: 8, stopTokenIds: new Set() });
        expect(alone.tokens[0]).toEqual(greedyTogether.tokens[i]);
      }
    } finally {
      model.dispose();
    }
  });
});
