import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseModelConfig, ropeInverseFrequencies, type ModelConfig } from '../../src/model/config.ts';
import { Random } from '../helpers/random.ts';
import { applyRope, argmax, ReferenceLlama, referenceInverseFrequencies } from './llama.ts';
import {
  fromBfloat16Bits,
  fromFloat16Bits,
  MapWeights,
  randomModel,
  toBfloat16Bits,
  toFloat16Bits,
  toSafetensors,
  type RandomModelOptions,
} from './randomModel.ts';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

function randomTokens(random: Random, n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => random.int(0, vocab - 1));
}

function build(options: RandomModelOptions = {}) {
  const model = randomModel(options);
  return { ...model, reference: new ReferenceLlama(model.config, model.weights) };
}

describe('a hand-computed one-layer model', () => {
  // H = 2, one head of dimension 2 (inv_freq = [1], so the angle is the position), M = 1, V = 3, tied.
  const eps = 1e-5;
  const config = parseModelConfig({
    model_type: 'llama',
    hidden_size: 2,
    intermediate_size: 1,
    num_hidden_layers: 1,
    num_attention_heads: 1,
    vocab_size: 3,
    rms_norm_eps: eps,
    tie_word_embeddings: true,
  });
  const weights = new MapWeights(
    new Map(
      Object.entries({
        'model.embed_tokens.weight': [1, 0, 0, 2, 3, 4],
        'model.layers.0.input_layernorm.weight': [1, 1],
        'model.layers.0.self_attn.q_proj.weight': [1, 0, 0, 1],
        'model.layers.0.self_attn.k_proj.weight': [0, 1, 1, 0],
        'model.layers.0.self_attn.v_proj.weight': [1, 1, 0, 1],
        'model.layers.0.self_attn.o_proj.weight': [1, 0, 0, -1],
        'model.layers.0.post_attention_layernorm.weight': [2, 0.5],
        'model.layers.0.mlp.gate_proj.weight': [1, 1],
        'model.layers.0.mlp.up_proj.weight': [2, -1],
        'model.layers.0.mlp.down_proj.weight': [1, 0.5],
        'model.norm.weight': [1, -1],
      }).map(([name, values]) => [name, Float64Array.from(values)]),
    ),
  );

  type V2 = [number, number];
  const norm = ([x, y]: V2, [w0, w1]: V2): V2 => {
    const r = Math.sqrt((x * x + y * y) / 2 + eps);
    return [(x / r) * w0, (y / r) * w1];
  };
  const rotate = ([x, y]: V2, angle: number): V2 => [x * Math.cos(angle) - y * Math.sin(angle), y * Math.cos(angle) + x * Math.sin(angle)];
  const dot = (a: V2, b: V2) => a[0] * b[0] + a[1] * b[1];
  const silu = (x: number) => x / (1 + Math.exp(-x));

  it('matches the equations written out for tokens [0, 1]', () => {
    // position 0, token 0: x = (1, 0)
    const x0: V2 = [1, 0];
    const a0 = norm(x0, [1, 1]);
    const q0: V2 = [a0[0], a0[1]]; // identity
    const k0: V2 = [a0[1], a0[0]]; // swap
    const v0: V2 = [a0[0] + a0[1], a0[1]];
    // position 1, token 1: x = (0, 2)
    const x1: V2 = [0, 2];
    const a1 = norm(x1, [1, 1]);
    const q1 = rotate([a1[0], a1[1]], 1);
    const k1 = rotate([a1[1], a1[0]], 1);
    const v1: V2 = [a1[0] + a1[1], a1[1]];
    void q0;

    // attention: position 0 sees itself only; position 1 sees both
    const attn0 = v0;
    const s0 = dot(q1, k0) / Math.SQRT2;
    const s1 = dot(q1, k1) / Math.SQRT2;
    const p0 = Math.exp(s0) / (Math.exp(s0) + Math.exp(s1));
    const p1 = 1 - p0;
    const attn1: V2 = [p0 * v0[0] + p1 * v1[0], p0 * v0[1] + p1 * v1[1]];

    const expected = [x0, x1].map((x, t) => {
      const attn = t === 0 ? attn0 : attn1;
      const attnOut: V2 = [attn[0], -attn[1]];
      const mid: V2 = [x[0] + attnOut[0], x[1] + attnOut[1]];
      const y = norm(mid, [2, 0.5]);
      const h = silu(y[0] + y[1]) * (2 * y[0] - y[1]);
      const mlpOut: V2 = [h, 0.5 * h];
      const post: V2 = [mid[0] + mlpOut[0], mid[1] + mlpOut[1]];
      const final = norm(post, [1, -1]);
      const logits = [dot(final, [1, 0]), dot(final, [0, 2]), dot(final, [3, 4])];
      return { attnOut, mid, mlpOut, post, final, logits };
    });

    const out = new ReferenceLlama(config, weights).forward([0, 1]);
    const flat = (key: 'attnOut' | 'mid' | 'mlpOut' | 'post' | 'final' | 'logits') => expected.flatMap((e) => e[key]);
    expect(maxAbsDiff(out.embed, [1, 0, 0, 2])).toBe(0);
    expect(maxAbsDiff(out.layers[0]!.residPre, [1, 0, 0, 2])).toBe(0);
    expect(maxAbsDiff(out.layers[0]!.attnOut, flat('attnOut'))).toBeLessThan(1e-14);
    expect(maxAbsDiff(out.layers[0]!.residMid, flat('mid'))).toBeLessThan(1e-14);
    expect(maxAbsDiff(out.layers[0]!.mlpOut, flat('mlpOut'))).toBeLessThan(1e-14);
    expect(maxAbsDiff(out.layers[0]!.residPost, flat('post'))).toBeLessThan(1e-14);
    expect(maxAbsDiff(out.finalNorm, flat('final'))).toBeLessThan(1e-14);
    expect(maxAbsDiff(out.logits, flat('logits'))).toBeLessThan(1e-13);
  });
});

describe('structure', () => {
  it('causality: logits at t do not depend on later tokens', () => {
    const { reference, config, seed } = build({ numLayers: 3 });
    const random = new Random(seed + 1);
    const tokens = randomTokens(random, 8, config.vocabSize);
    const full = reference.forward(tokens).logits;
    const V = config.vocabSize;
    for (const t of [0, 3, 6]) {
      const changed = [...tokens.slice(0, t + 1), ...randomTokens(random, 7 - t, V)];
      const other = reference.forward(changed).logits;
      expect(maxAbsDiff(full.subarray(0, (t + 1) * V), other.subarray(0, (t + 1) * V)), `seed ${seed}`).toBeLessThan(1e-12);
      const prefix = reference.forward(tokens.slice(0, t + 1)).logits;
      expect(maxAbsDiff(full.subarray(t * V, (t + 1) * V), prefix.subarray(t * V)), `seed ${seed}`).toBeLessThan(1e-12);
    }
  });

  it('GQA equals multi-head attention with the kv heads repeated', () => {
    for (const [heads, kvHeads] of [
      [4, 2],
      [4, 1],
      [6, 3],
    ] as const) {
      const gqa = randomModel({ numHeads: heads, numKvHeads: kvHeads, hiddenSize: 24, architecture: 'qwen2' });
      const d = gqa.config.headDim;
      const H = gqa.config.hiddenSize;
      const mha = new MapWeights(new Map(gqa.weights.map));
      for (let l = 0; l < gqa.config.numLayers; l++) {
        for (const name of ['k_proj.weight', 'v_proj.weight', 'k_proj.bias', 'v_proj.bias']) {
          const key = `model.layers.${l}.self_attn.${name}`;
          const src = gqa.weights.get(key);
          const width = name.endsWith('weight') ? H : 1;
          const out = new Float64Array(heads * d * width);
          for (let h = 0; h < heads; h++) {
            const g = Math.floor(h / (heads / kvHeads));
            out.set(src.subarray(g * d * width, (g + 1) * d * width), h * d * width);
          }
          mha.set(key, out);
        }
      }
      const mhaConfig: ModelConfig = { ...gqa.config, numKvHeads: heads };
      const tokens = randomTokens(new Random(gqa.seed), 6, gqa.config.vocabSize);
      const a = new ReferenceLlama(gqa.config, gqa.weights).forward(tokens).logits;
      const b = new ReferenceLlama(mhaConfig, mha).forward(tokens).logits;
      expect(maxAbsDiff(a, b), `seed ${gqa.seed}`).toBeLessThan(1e-12);
    }
  });

  it('RoPE makes q·k depend only on the distance between positions', () => {
    const random = new Random();
    const d = 16;
    const inv = referenceInverseFrequencies({ headDim: d, ropeTheta: 10000, ropeScaling: undefined });
    const q = random.normals(d);
    const k = random.normals(d);
    const score = (m: number, n: number) => {
      const qr = Float64Array.from(q);
      const kr = Float64Array.from(k);
      applyRope(qr, 1, d, [m], inv);
      applyRope(kr, 1, d, [n], inv);
      return qr.reduce((sum, x, i) => sum + x * kr[i]!, 0);
    };
    expect(score(7, 3)).toBeCloseTo(score(107, 103), 10);
    expect(score(0, 0)).toBeCloseTo(q.reduce((sum, x, i) => sum + x * k[i]!, 0), 12);
    expect(Math.abs(score(5, 0) - score(0, 0))).toBeGreaterThan(1e-6);
  });

  it('zero biases give the bias-free model; real biases change it', () => {
    const qwen = randomModel({ architecture: 'qwen2' });
    const tokens = randomTokens(new Random(qwen.seed), 5, qwen.config.vocabSize);
    const withBias = new ReferenceLlama(qwen.config, qwen.weights).forward(tokens).logits;
    const zeroed = new MapWeights(new Map(qwen.weights.map));
    for (const [name, values] of qwen.weights.map) if (name.endsWith('.bias')) zeroed.set(name, new Float64Array(values.length));
    const noBias = new ReferenceLlama({ ...qwen.config, architecture: 'llama', attentionBias: false }, zeroed).forward(tokens).logits;
    const zeroBias = new ReferenceLlama(qwen.config, zeroed).forward(tokens).logits;
    expect(maxAbsDiff(noBias, zeroBias)).toBeLessThan(1e-13);
    expect(maxAbsDiff(withBias, zeroBias)).toBeGreaterThan(1e-3);
  });

  it('llama attention_bias and mlp_bias are all used', () => {
    const { config, weights, seed } = randomModel({ attentionBias: true, mlpBias: true, numLayers: 1 });
    expect(config.oProjBias).toBe(true);
    const tokens = randomTokens(new Random(seed), 4, config.vocabSize);
    const base = new ReferenceLlama(config, weights).forward(tokens).logits;
    for (const bias of ['self_attn.q_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']) {
      const edited = new MapWeights(new Map(weights.map));
      const name = `model.layers.0.${bias}.bias`;
      edited.set(name, new Float64Array(weights.get(name).length));
      expect(maxAbsDiff(new ReferenceLlama(config, edited).forward(tokens).logits, base), bias).toBeGreaterThan(1e-6);
    }
  });

  it('tied embeddings: no lm_head, logits = finalNorm · embedᵀ', () => {
    const { config, weights, tensors, reference } = build({ tieWordEmbeddings: true });
    expect(tensors.some((t) => t.name === 'lm_head.weight')).toBe(false);
    const out = reference.forward([3, 1, 4]);
    const H = config.hiddenSize;
    const embed = weights.get('model.embed_tokens.weight');
    for (const v of [0, 5, config.vocabSize - 1]) {
      let sum = 0;
      for (let j = 0; j < H; j++) sum += out.finalNorm[2 * H + j]! * embed[v * H + j]!;
      expect(out.logits[2 * config.vocabSize + v]).toBeCloseTo(sum, 12);
    }
  });

  it('activations stay O(1) over the layers', () => {
    const { reference, config, seed } = build({ numLayers: 6, hiddenSize: 64, numHeads: 8, numKvHeads: 2, ropeScaling: 'llama3' });
    const out = reference.forward(randomTokens(new Random(seed), 12, config.vocabSize));
    const rms = (x: Float64Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);
    for (const layer of out.layers) {
      expect(rms(layer.residPost), `seed ${seed}`).toBeGreaterThan(0.3);
      expect(rms(layer.residPost), `seed ${seed}`).toBeLessThan(6);
    }
    expect(out.logits.every(Number.isFinite)).toBe(true);
    expect(rms(out.logits)).toBeGreaterThan(0.1);
    expect(rms(out.logits)).toBeLessThan(10);
  });

  it('greedy follows the argmax of the last logits and stops on a stop id', () => {
    const { reference, config, seed } = build();
    const prompt = randomTokens(new Random(seed), 3, config.vocabSize);
    const generated = reference.greedy(prompt, 5);
    expect(generated).toHaveLength(5);
    const sequence = [...prompt];
    for (const token of generated) {
      const logits = reference.forward(sequence).logits;
      expect(token).toBe(argmax(logits.subarray((sequence.length - 1) * config.vocabSize)));
      sequence.push(token);
    }
    expect(reference.greedy(prompt, 5, new Set([generated[0]!]))).toEqual([generated[0]]);
  });

  it('refuses missing tensors and tokens outside the vocabulary', () => {
    const { config, weights } = randomModel();
    const partial = new MapWeights(new Map(weights.map));
    partial.map.delete('model.layers.1.mlp.up_proj.weight');
    expect(() => new ReferenceLlama(config, partial)).toThrow('missing tensor model.layers.1.mlp.up_proj.weight');
    expect(() => new ReferenceLlama(config, weights).forward([config.vocabSize])).toThrow('outside the vocabulary');
  });
});

describe('RoPE inverse frequencies: reference (float64) vs src (float32)', () => {
  const fixtures = join(import.meta.dirname, '..', 'fixtures', 'configs');
  const configs: [string, ModelConfig][] = [
    'llama-3.2-1b-instruct.json',
    'llama-3.1-8b-instruct.json',
    'llama-2-7b-hf.json',
    'qwen2.5-0.5b-instruct.json',
    'smollm2-135m-instruct.json',
    'mistral-7b-v0.1.json',
  ].map((name) => [name, parseModelConfig(JSON.parse(readFileSync(join(fixtures, name), 'utf8')))]);
  configs.push(['random llama3', randomModel({ ropeScaling: 'llama3', hiddenSize: 64, numHeads: 2 }).config]);
  configs.push(['random linear', randomModel({ ropeScaling: 'linear' }).config]);

  for (const [name, config] of configs) {
    it(name, () => {
      const reference = referenceInverseFrequencies(config);
      const engine = ropeInverseFrequencies(config);
      expect(engine.length).toBe(reference.length);
      for (let i = 0; i < reference.length; i++) {
        expect(Math.abs(engine[i]! - reference[i]!) / reference[i]!, `${name} [${i}]`).toBeLessThan(1e-6);
      }
    });
  }

  it('the random llama3 model exercises all three regimes', () => {
    const config = randomModel({ ropeScaling: 'llama3', hiddenSize: 64, numHeads: 2 }).config;
    const scaled = referenceInverseFrequencies(config);
    const plain = referenceInverseFrequencies({ ...config, ropeScaling: undefined });
    const ratios = Array.from(scaled, (x, i) => plain[i]! / x);
    expect(ratios.some((r) => r === 1)).toBe(true);
    expect(ratios.some((r) => Math.abs(r - 32) < 1e-9)).toBe(true);
    expect(ratios.some((r) => r > 1.001 && r < 31.999)).toBe(true);
  });
});

describe('random models', () => {
  it('are deterministic for a seed', () => {
    const a = randomModel({ seed: 42, dtype: 'BF16' });
    const b = randomModel({ seed: 42, dtype: 'BF16' });
    expect(a.tensors.map((t) => t.bytes)).toEqual(b.tensors.map((t) => t.bytes));
    expect(a.seed).toBe(42);
  });

  it('shapes and names follow Hugging Face', () => {
    const { tensors, config } = randomModel({ architecture: 'qwen2', numHeads: 4, numKvHeads: 1, hiddenSize: 32, headDim: 16 });
    const shape = (name: string) => tensors.find((t) => t.name === name)?.shape;
    expect(config.headDim).toBe(16);
    expect(shape('model.embed_tokens.weight')).toEqual([64, 32]);
    expect(shape('model.layers.0.self_attn.q_proj.weight')).toEqual([64, 32]);
    expect(shape('model.layers.0.self_attn.k_proj.weight')).toEqual([16, 32]);
    expect(shape('model.layers.0.self_attn.k_proj.bias')).toEqual([16]);
    expect(shape('model.layers.0.self_attn.o_proj.weight')).toEqual([32, 64]);
    expect(shape('model.layers.0.self_attn.o_proj.bias')).toBeUndefined();
    expect(shape('model.layers.1.mlp.down_proj.weight')).toEqual([32, 64]);
    expect(shape('lm_head.weight')).toEqual([64, 32]);
  });

  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    it(`${dtype} bytes decode to exactly the reference's values`, () => {
      const { tensors, weights } = randomModel({ dtype });
      for (const t of tensors) {
        const view = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
        const values = weights.get(t.name);
        expect(t.bytes.byteLength).toBe(values.length * (dtype === 'F32' ? 4 : 2));
        for (let i = 0; i < values.length; i++) {
          const decoded =
            dtype === 'F32'
              ? view.getFloat32(4 * i, true)
              : dtype === 'BF16'
                ? new Float32Array(new Uint32Array([view.getUint16(2 * i, true) << 16]).buffer)[0]!
                : fromFloat16Bits(view.getUint16(2 * i, true));
          if (decoded !== values[i]) expect.fail(`${t.name}[${i}]: ${decoded} != ${values[i]}`);
        }
      }
    });
  }

  it('bf16 rounds to nearest, ties to even', () => {
    expect(toBfloat16Bits(1)).toBe(0x3f80);
    expect(toBfloat16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie, even below
    expect(toBfloat16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie, even above
    expect(toBfloat16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81); // above the tie
    expect(toBfloat16Bits(-2)).toBe(0xc000);
    expect(toBfloat16Bits(3.4e38)).toBe(0x7f80); // rounds up to infinity
    expect(Number.isNaN(fromBfloat16Bits(toBfloat16Bits(NaN)))).toBe(true);
  });

  it('f16 rounds to nearest, ties to even, with subnormals and overflow', () => {
    expect(toFloat16Bits(1)).toBe(0x3c00);
    expect(toFloat16Bits(1 + 2 ** -11)).toBe(0x3c00);
    expect(toFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(toFloat16Bits(65504)).toBe(0x7bff);
    expect(toFloat16Bits(65519)).toBe(0x7bff);
    expect(toFloat16Bits(65520)).toBe(0x7c00);
    expect(toFloat16Bits(2 ** -24)).toBe(0x0001);
    expect(toFloat16Bits(2 ** -25)).toBe(0x0000);
    expect(toFloat16Bits(3 * 2 ** -25)).toBe(0x0002);
    expect(toFloat16Bits(2 ** -14)).toBe(0x0400);
    expect(toFloat16Bits(-0.5)).toBe(0xb800);
    // every half decodes and encodes back to itself
    for (let bits = 0; bits < 0x7c00; bits++) {
      if (toFloat16Bits(fromFloat16Bits(bits)) !== bits) expect.fail(`0x${bits.toString(16)}`);
      if (toFloat16Bits(-fromFloat16Bits(bits)) !== (bits | 0x8000)) expect.fail(`-0x${bits.toString(16)}`);
    }
    // a value between two halves goes to the nearer one
    const random = new Random();
    for (let n = 0; n < 2000; n++) {
      const x = (random.next() * 2 - 1) * 2 ** random.int(-26, 15);
      const h = fromFloat16Bits(toFloat16Bits(x));
      const bits = toFloat16Bits(Math.abs(x));
      const neighbours = [bits - 1, bits + 1].filter((b) => b >= 0 && b < 0x7c00).map(fromFloat16Bits);
      for (const other of neighbours) expect(Math.abs(Math.abs(x) - Math.abs(h))).toBeLessThanOrEqual(Math.abs(Math.abs(x) - other));
    }
  });

  it('safetensors bytes: aligned header, offsets, data', () => {
    const { tensors } = randomModel({ dtype: 'BF16', numLayers: 1 });
    const file = toSafetensors(tensors);
    const view = new DataView(file.buffer);
    const headerLength = Number(view.getBigUint64(0, true));
    expect(headerLength % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + headerLength))) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    expect(Object.keys(header)).toHaveLength(tensors.length + 1);
    let end = 0;
    for (const t of tensors) {
      const entry = header[t.name]!;
      expect(entry.dtype).toBe('BF16');
      expect(entry.shape).toEqual(t.shape);
      expect(entry.data_offsets[0]).toBe(end);
      end = entry.data_offsets[1];
      expect(file.subarray(8 + headerLength + entry.data_offsets[0], 8 + headerLength + end)).toEqual(t.bytes);
    }
    expect(8 + headerLength + end).toBe(file.length);
  });
});
