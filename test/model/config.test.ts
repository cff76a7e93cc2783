import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlobFolder } from '../../src/io/byteSource.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { attentionScale, attentionWindow, loadModelConfig, ModelConfigError, parseModelConfig, ropeInverseFrequencies, type ModelConfig } from '../../src/model/config.ts';
import { contextLength } from '../../src/model/kvCache.ts';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'configs');
const fixture = (name: string): Record<string, unknown> => JSON.parse(readFileSync(join(FIXTURES, name), 'utf8'));

/** The smallest llama config: only the required fields. */
const minimal = (extra: Record<string, unknown> = {}) => ({
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  vocab_size: 100,
  ...extra,
});

function errorOf(json: unknown): string {
  try {
    parseModelConfig(json);
  } catch (error) {
    expect(error).toBeInstanceOf(ModelConfigError);
    return (error as Error).message;
  }
  throw new Error('expected the config to be rejected');
}

/** The published formula in float64, written out independently of the implementation. */
function llama3Float64(theta: number, dim: number, factor: number, low: number, high: number, context: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < dim / 2; i++) {
    const base = Math.pow(theta, -(2 * i) / dim);
    const wavelength = (2 * Math.PI) / base;
    if (wavelength < context / high) out.push(base);
    else if (wavelength > context / low) out.push(base / factor);
    else {
      const smooth = (context / wavelength - low) / (high - low);
      out.push((1 - smooth) * (base / factor) + smooth * base);
    }
  }
  return out;
}

function expectRelativelyClose(actual: ArrayLike<number>, expected: ArrayLike<number>, bound: number): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const error = Math.abs(actual[i]! - expected[i]!) / Math.abs(expected[i]!);
    if (!(error <= bound)) expect.fail(`element ${i}: ${actual[i]} vs ${expected[i]} (relative error ${error})`);
  }
}

describe('real configs', () => {
  it('Llama-3.2-1B-Instruct', async () => {
    const config = await loadModelConfig(folderWith(fixture('llama-3.2-1b-instruct.json')));
    expect(config).toEqual({
      architecture: 'llama',
      hiddenSize: 2048,
      intermediateSize: 8192,
      numLayers: 16,
      numHeads: 32,
      numKvHeads: 8,
      headDim: 64,
      vocabSize: 128256,
      rmsNormEps: 1e-5,
      ropeTheta: 500000,
      ropeScaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
      maxPositionEmbeddings: 131072,
      tieWordEmbeddings: true,
      attentionBias: false,
      oProjBias: false,
      mlpBias: false,
      bosTokenId: 128000,
      eosTokenIds: [128001, 128008, 128009],
      torchDtype: 'bfloat16',
      block: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'mlp', normPlusOne: false, sandwichNorms: false, activation: 'silu', scaledEmbedding: false },
    } satisfies ModelConfig);
  });

  it('Llama-3.1-8B-Instruct', () => {
    const config = parseModelConfig(fixture('llama-3.1-8b-instruct.json'));
    expect(config.headDim).toBe(128);
    expect(config.numKvHeads).toBe(8);
    expect(config.tieWordEmbeddings).toBe(false);
    expect(config.ropeScaling).toEqual({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  });

  it('Llama-2-7b', () => {
    const config = parseModelConfig(fixture('llama-2-7b-hf.json'));
    expect(config).toMatchObject({
      architecture: 'llama',
      hiddenSize: 4096,
      intermediateSize: 11008,
      numLayers: 32,
      numHeads: 32,
      numKvHeads: 32,
      headDim: 128,
      vocabSize: 32000,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeScaling: undefined,
      maxPositionEmbeddings: 4096,
      tieWordEmbeddings: false,
      attentionBias: false,
      bosTokenId: 1,
      eosTokenIds: [2],
      torchDtype: 'float16',
    });
    expect(config.slidingWindow).toBeUndefined();
  });

  it('Mistral-7B-v0.1', () => {
    const config = parseModelConfig(fixture('mistral-7b-v0.1.json'));
    expect(config).toMatchObject({
      architecture: 'mistral',
      hiddenSize: 4096,
      intermediateSize: 14336,
      numHeads: 32,
      numKvHeads: 8,
      headDim: 128,
      ropeTheta: 10000,
      maxPositionEmbeddings: 32768,
      slidingWindow: 4096,
      attentionBias: false,
      oProjBias: false,
      tieWordEmbeddings: false,
      eosTokenIds: [2],
    });
  });

  it('Qwen2.5-0.5B-Instruct: q/k/v biases, no o_proj bias, sliding window off', () => {
    const config = parseModelConfig(fixture('qwen2.5-0.5b-instruct.json'));
    expect(config).toMatchObject({
      architecture: 'qwen2',
      hiddenSize: 896,
      intermediateSize: 4864,
      numLayers: 24,
      numHeads: 14,
      numKvHeads: 2,
      headDim: 64,
      vocabSize: 151936,
      rmsNormEps: 1e-6,
      ropeTheta: 1000000,
      tieWordEmbeddings: true,
      attentionBias: true,
      oProjBias: false,
      mlpBias: false,
      bosTokenId: 151643,
      eosTokenIds: [151645],
    });
    expect(config.slidingWindow).toBeUndefined();
  });

  it('SmolLM2-135M-Instruct', () => {
    const config = parseModelConfig(fixture('smollm2-135m-instruct.json'));
    expect(config).toMatchObject({ hiddenSize: 576, numHeads: 9, numKvHeads: 3, headDim: 64, ropeTheta: 100000, tieWordEmbeddings: true, padTokenId: 2 });
  });

  it('GPT-2 is refused with the list of supported architectures', () => {
    const message = errorOf(fixture('gpt2.json'));
    expect(message).toMatch(/^config\.json: model_type "gpt2" \(GPT2LMHeadModel\) is not supported/);
    for (const name of ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM']) expect(message).toContain(name);
  });

  it('loads from a folder on disk', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'config-'));
    try {
      copyFileSync(join(FIXTURES, 'qwen2.5-0.5b-instruct.json'), join(dir, 'config.json'));
      expect((await loadModelConfig(new NodeFolder(dir))).architecture).toBe('qwen2');
      const missing = await loadModelConfig(new NodeFolder(join(dir, 'nothing-here'))).catch((e: Error) => e);
      expect(missing).toBeInstanceOf(ModelConfigError);
      expect((missing as Error).message).toMatch(/nothing-here\/config\.json is missing/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

function folderWith(json: unknown, text?: string): BlobFolder {
  return new BlobFolder('models/x', new Map([['config.json', new Blob([text ?? JSON.stringify(json)])]]));
}

describe('defaults as in transformers', () => {
  it('llama', () => {
    const config = parseModelConfig(minimal());
    expect(config).toEqual({
      architecture: 'llama',
      hiddenSize: 64,
      intermediateSize: 128,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 4,
      headDim: 16,
      vocabSize: 100,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      ropeScaling: undefined,
      maxPositionEmbeddings: 2048,
      tieWordEmbeddings: false,
      attentionBias: false,
      oProjBias: false,
      mlpBias: false,
      bosTokenId: 1,
      eosTokenIds: [2],
      block: { fusedQkv: false, qkNorm: false, fusedGateUp: false, mlpModule: 'mlp', normPlusOne: false, sandwichNorms: false, activation: 'silu', scaledEmbedding: false },
    } satisfies ModelConfig);
  });

  it('llama attention_bias puts biases on q, k, v and o; mlp_bias on the MLP', () => {
    const config = parseModelConfig(minimal({ attention_bias: true, mlp_bias: true }));
    expect([config.attentionBias, config.oProjBias, config.mlpBias]).toEqual([true, true, true]);
  });

  it('mistral: 8 kv heads, sliding window 4096, no biases', () => {
    const config = parseModelConfig(minimal({ model_type: 'mistral', num_attention_heads: 16, attention_bias: true }));
    expect(config).toMatchObject({ numKvHeads: 8, slidingWindow: 4096, maxPositionEmbeddings: 131072, attentionBias: false, bosTokenId: 1, eosTokenIds: [2] });
    expect(parseModelConfig(minimal({ model_type: 'mistral', num_key_value_heads: 2, sliding_window: null })).slidingWindow).toBeUndefined();
  });

  it('qwen2: q/k/v biases, no bos/eos, tie false, 32 kv heads, window only with use_sliding_window', () => {
    const config = parseModelConfig(minimal({ model_type: 'qwen2', num_attention_heads: 32, hidden_size: 256 }));
    expect(config).toMatchObject({ attentionBias: true, oProjBias: false, numKvHeads: 32, tieWordEmbeddings: false, eosTokenIds: [], maxPositionEmbeddings: 32768 });
    expect(config.bosTokenId).toBeUndefined();
    expect(config.slidingWindow).toBeUndefined();
    const windowed = parseModelConfig(minimal({ model_type: 'qwen2', num_key_value_heads: 2, use_sliding_window: true, sliding_window: 1024, max_window_layers: 1 }));
    expect(windowed).toMatchObject({ slidingWindow: 1024, slidingWindowFromLayer: 1 });
    expect([0, 1, 2].map((l) => attentionWindow(windowed, l))).toEqual([undefined, 1024, 1024]);
    expect(attentionWindow(config, 0)).toBeUndefined();
    expect(attentionWindow(parseModelConfig(minimal({ model_type: 'mistral', num_key_value_heads: 2, sliding_window: 10 })), 0)).toBe(10);
  });

  it('head_dim given explicitly need not divide hidden_size', () => {
    const config = parseModelConfig(minimal({ hidden_size: 60, num_attention_heads: 4, head_dim: 32 }));
    expect(config.headDim).toBe(32);
  });

  it('the architecture may come from architectures alone', () => {
    const { model_type: _drop, ...rest } = minimal({ architectures: ['Qwen2ForCausalLM'], num_key_value_heads: 2 });
    expect(parseModelConfig(rest).architecture).toBe('qwen2');
  });

  it('null means "default" for optional fields', () => {
    const config = parseModelConfig(minimal({ head_dim: null, num_key_value_heads: null, rope_scaling: null, eos_token_id: null, bos_token_id: null }));
    expect(config.headDim).toBe(16);
    expect(config.numKvHeads).toBe(4);
    expect(config.eosTokenIds).toEqual([]);
    expect(config.bosTokenId).toBeUndefined();
  });
});

describe('rope scaling forms', () => {
  it('legacy "type" key and rope_type "default"', () => {
    expect(parseModelConfig(minimal({ rope_scaling: { type: 'linear', factor: 2 } })).ropeScaling).toEqual({ type: 'linear', factor: 2 });
    expect(parseModelConfig(minimal({ rope_scaling: { rope_type: 'default' } })).ropeScaling).toBeUndefined();
  });

  it('transformers 5 rope_parameters', () => {
    const config = parseModelConfig(
      minimal({
        rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
      }),
    );
    expect(config.ropeTheta).toBe(500000);
    expect(config.ropeScaling?.type).toBe('llama3');
    const plain = parseModelConfig(minimal({ rope_parameters: { rope_type: 'default', rope_theta: 1e6 } }));
    expect([plain.ropeTheta, plain.ropeScaling]).toEqual([1e6, undefined]);
  });

  it('unsupported types are named', () => {
    expect(errorOf(minimal({ rope_scaling: { rope_type: 'yarn', factor: 4 } }))).toBe(
      'config.json: rope_scaling type "yarn" is not supported; supported: "llama3", "linear", "longrope" (or none)',
    );
    expect(errorOf(minimal({ rope_scaling: { type: 'dynamic', factor: 2 } }))).toContain('"dynamic" is not supported');
  });

  it('llama3 fields are checked', () => {
    expect(errorOf(minimal({ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4 } }))).toBe(
      'config.json: rope_scaling.original_max_position_embeddings must be a positive integer (got nothing)',
    );
    expect(
      errorOf(minimal({ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 4, original_max_position_embeddings: 8192 } })),
    ).toContain('high_freq_factor (4) must be greater than low_freq_factor (4)');
  });
});

describe('errors', () => {
  it('wrong-typed field names the field, the file and the value', () => {
    expect(errorOf(minimal({ hidden_size: 'abc' }))).toBe('config.json: hidden_size must be a positive integer (got "abc")');
    expect(errorOf(minimal({ rms_norm_eps: -1 }))).toBe('config.json: rms_norm_eps must be a positive number (got -1)');
    expect(errorOf(minimal({ tie_word_embeddings: 'yes' }))).toBe('config.json: tie_word_embeddings must be true or false (got "yes")');
    expect(errorOf(minimal({ num_attention_heads: 2.5 }))).toBe('config.json: num_attention_heads must be a positive integer (got 2.5)');
    expect(errorOf(minimal({ eos_token_id: [1, 'x'] }))).toContain('eos_token_id must be a token id or a list of token ids');
  });

  it('missing fields are all listed', () => {
    const { num_hidden_layers: _a, vocab_size: _b, ...rest } = minimal();
    expect(errorOf(rest)).toBe(
      'config.json: num_hidden_layers is missing (it must be a positive integer); vocab_size is missing (it must be a positive integer)',
    );
  });

  it('not an object', () => {
    expect(errorOf([1, 2])).toBe('config.json: the config must be a JSON object (got [1,2])');
    expect(errorOf(null)).toBe('config.json: the config must be a JSON object (got null)');
  });

  it('unsupported architectures list the supported ones', () => {
    for (const [modelType, architecture] of [
      ['gemma', 'GemmaForCausalLM'],
      ['qwen3_next', 'Qwen3NextForCausalLM'],
    ]) {
      const message = errorOf(minimal({ model_type: modelType, architectures: [architecture] }));
      expect(message).toContain(`"${modelType}"`);
      expect(message).toContain(
        'supported: LlamaForCausalLM (model_type "llama"), MistralForCausalLM (model_type "mistral"), Qwen2ForCausalLM (model_type "qwen2"), ' +
          'Qwen3ForCausalLM (model_type "qwen3"), Phi3ForCausalLM (model_type "phi3"), MixtralForCausalLM (model_type "mixtral"), ' +
          'Qwen2MoeForCausalLM (model_type "qwen2_moe"), Qwen3MoeForCausalLM (model_type "qwen3_moe"), Gemma2ForCausalLM (model_type "gemma2"), Gemma3ForCausalLM (model_type "gemma3_text")',
      );
    }
    expect(errorOf(minimal({ architectures: ['LlamaForSequenceClassification'] }))).toContain(
      'architecture LlamaForSequenceClassification is not supported',
    );
    const { model_type: _drop, ...anonymous } = minimal();
    expect(errorOf(anonymous)).toContain('neither model_type nor architectures');
  });

  it('inconsistent shapes', () => {
    expect(errorOf(minimal({ hidden_size: 66 }))).toBe(
      'config.json: hidden_size (66) is not divisible by num_attention_heads (4) and head_dim is not given',
    );
    expect(errorOf(minimal({ num_key_value_heads: 3 }))).toBe('config.json: num_attention_heads (4) is not divisible by num_key_value_heads (3)');
    expect(errorOf(minimal({ head_dim: 15 }))).toContain('head dimension (15) must be even');
  });

  it('activation must be silu', () => {
    expect(errorOf(minimal({ hidden_act: 'gelu' }))).toBe('config.json: hidden_act "gelu" is not supported; only "silu" is');
  });

  it('the source name is used', () => {
    expect(() => parseModelConfig(minimal({ vocab_size: 0 }), 'models/a/config.json')).toThrow(
      'models/a/config.json: vocab_size must be a positive integer (got 0)',
    );
  });

  it('missing file and invalid JSON name the file', async () => {
    const empty = new BlobFolder('models/empty', new Map());
    await expect(loadModelConfig(empty)).rejects.toThrow(/^models\/empty\/config\.json is missing/);
    await expect(loadModelConfig(folderWith(undefined, '{"hidden_size": 4,'))).rejects.toThrow(/^models\/x\/config\.json: invalid JSON/);
    await expect(loadModelConfig(folderWith(minimal({ hidden_size: 'abc' })))).rejects.toThrow(
      'models/x/config.json: hidden_size must be a positive integer (got "abc")',
    );
  });
});

describe('ropeInverseFrequencies', () => {
  it('no scaling: 1 / theta^(2i/d)', () => {
    const config = parseModelConfig(fixture('llama-2-7b-hf.json'));
    const inv = ropeInverseFrequencies(config);
    expect(inv.length).toBe(64);
    expectRelativelyClose(inv, Array.from({ length: 64 }, (_, i) => Math.pow(10000, -(2 * i) / 128)), 3e-7);
    expect(inv[0]).toBe(1);
  });

  it('linear scaling divides by the factor', () => {
    const config = parseModelConfig(minimal({ rope_scaling: { rope_type: 'linear', factor: 4 }, rope_theta: 20000 }));
    expectRelativelyClose(ropeInverseFrequencies(config), Array.from({ length: 8 }, (_, i) => Math.pow(20000, -(2 * i) / 16) / 4), 3e-7);
  });

  for (const name of ['llama-3.2-1b-instruct.json', 'llama-3.1-8b-instruct.json']) {
    it(`llama3 scaling matches the formula in float64 (${name})`, () => {
      const config = parseModelConfig(fixture(name));
      const scaling = config.ropeScaling!;
      if (scaling.type !== 'llama3') throw new Error('expected llama3 scaling');
      const expected = llama3Float64(config.ropeTheta, config.headDim, scaling.factor, scaling.lowFreqFactor, scaling.highFreqFactor, scaling.originalMaxPositionEmbeddings);
      expectRelativelyClose(ropeInverseFrequencies(config), expected, 1e-6);
    });
  }

  it('llama3 on Llama-3.2-1B: 15 frequencies kept, 3 smoothed, the rest divided by 32', () => {
    const config = parseModelConfig(fixture('llama-3.2-1b-instruct.json'));
    const scaled = ropeInverseFrequencies(config);
    const plain = ropeInverseFrequencies({ ...config, ropeScaling: undefined });
    for (let i = 0; i < 32; i++) {
      if (i < 15) expect(scaled[i]).toBe(plain[i]);
      else if (i < 18) {
        expect(scaled[i]!).toBeLessThan(plain[i]!);
        expect(scaled[i]!).toBeGreaterThan(plain[i]! / 32);
      } else expect(scaled[i]).toBeCloseTo(plain[i]! / 32, 12);
    }
  });

  it('every value is a float32', () => {
    const inv = ropeInverseFrequencies(parseModelConfig(fixture('llama-3.1-8b-instruct.json')));
    for (const x of inv) expect(Math.fround(x)).toBe(x);
  });
});

describe('families beyond Llama', () => {
  const base = { hidden_size: 64, intermediate_size: 128, num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 100 };

  it('qwen3: q/k norms, head_dim independent of hidden size (128 when absent), no biases unless attention_bias', () => {
    const config = parseModelConfig({ ...base, model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'] });
    expect(config.block).toMatchObject({ fusedQkv: false, qkNorm: true, fusedGateUp: false, mlpModule: 'mlp' });
    expect(config.headDim).toBe(128);
    expect([config.attentionBias, config.oProjBias, config.mlpBias]).toEqual([false, false, false]);
    expect(parseModelConfig({ ...base, model_type: 'qwen3', head_dim: 32, attention_bias: true })).toMatchObject({ headDim: 32, attentionBias: true, oProjBias: true });
  });

  it('phi3: fused q/k/v and gate/up; longrope with its attention factor, the context limited to the original one', () => {
    const config = parseModelConfig({ ...base, model_type: 'phi3', sliding_window: 2047, bos_token_id: 1, eos_token_id: 32000 });
    expect(config.block).toMatchObject({ fusedQkv: true, qkNorm: false, fusedGateUp: true, mlpModule: 'mlp' });
    expect(config.slidingWindow).toBe(2047);
    // Phi-3.5-mini's shape: 131072 / 4096 = 32, so the factor is √(1 + ln 32 / ln 4096).
    const short = Array.from({ length: 8 }, (_, i) => 1 + i / 10);
    const long = Array.from({ length: 8 }, (_, i) => 2 + i);
    for (const type of ['longrope', 'su']) {
      const phi = parseModelConfig({ ...base, model_type: 'phi3', head_dim: 16, max_position_embeddings: 131072, original_max_position_embeddings: 4096, rope_scaling: { type, short_factor: short, long_factor: long } });
      expect(phi.ropeScaling).toEqual({ type: 'longrope', shortFactor: short, longFactor: long, originalMaxPositionEmbeddings: 4096, attentionFactor: Math.sqrt(1 + Math.log(32) / Math.log(4096)) });
      expect(contextLength(phi)).toBe(4096);
      expect(attentionScale(phi)).toBeCloseTo((1 + Math.log(32) / Math.log(4096)) / 4, 12);
      const inv = ropeInverseFrequencies(phi);
      for (let i = 0; i < 8; i++) expect(inv[i]! / (1 / (short[i]! * Math.pow(10000, (2 * i) / 16)))).toBeCloseTo(1, 6);
    }
    expect(errorOf({ ...base, model_type: 'phi3', head_dim: 16, original_max_position_embeddings: 4096, rope_scaling: { type: 'longrope', short_factor: [1, 2], long_factor: long } })).toContain(
      'rope_scaling.short_factor must be a list of 8 positive numbers',
    );
    expect(errorOf({ ...base, model_type: 'phi3', head_dim: 16, rope_scaling: { type: 'longrope', short_factor: short, long_factor: long } })).toContain('needs original_max_position_embeddings');
  });

  it('gemma2: (1 + w) norms, sandwich norms, GELU-tanh, scaled embedding, alternating sliding layers, soft-capping 50 / 30 by default, tied', () => {
    const config = parseModelConfig({ ...base, model_type: 'gemma2', head_dim: 16 });
    expect(config.block).toMatchObject({ normPlusOne: true, sandwichNorms: true, activation: 'gelu_tanh', scaledEmbedding: true, qkNorm: false });
    expect(config).toMatchObject({ tieWordEmbeddings: true, slidingWindow: 4096, slidingLayers: [true, false, true, false], attnLogitSoftcap: 50, finalLogitSoftcap: 30, queryPreAttnScalar: 256, bosTokenId: 2, eosTokenIds: [1], padTokenId: 0 });
    expect([0, 1].map((l) => attentionWindow(config, l))).toEqual([4096, undefined]);
    expect(attentionScale(config)).toBe(1 / 16);
    const uncapped = parseModelConfig({ ...base, model_type: 'gemma2', attn_logit_softcapping: null, final_logit_softcapping: null });
    expect([uncapped.attnLogitSoftcap, uncapped.finalLogitSoftcap, uncapped.headDim]).toEqual([undefined, undefined, 256]);
    expect(errorOf({ ...base, model_type: 'gemma2', hidden_activation: 'relu' })).toContain('hidden_activation "relu" is not supported');
  });

  it('gemma3_text: q/k norms, every sliding_window_pattern-th layer global, layer_types, local RoPE base; a multimodal config is its text_config', () => {
    const config = parseModelConfig({ ...base, num_hidden_layers: 7, model_type: 'gemma3_text', sliding_window: 512 });
    expect(config.block).toMatchObject({ qkNorm: true, normPlusOne: true, sandwichNorms: true });
    expect(config).toMatchObject({ ropeTheta: 1_000_000, ropeLocalTheta: 10000, slidingWindow: 512, slidingLayers: [true, true, true, true, true, false, true] });
    expect(config.attnLogitSoftcap).toBeUndefined();
    const typed = parseModelConfig({ ...base, model_type: 'gemma3_text', layer_types: ['full_attention', 'sliding_attention', 'sliding_attention', 'full_attention'] });
    expect(typed.slidingLayers).toEqual([false, true, true, false]);
    expect(errorOf({ ...base, model_type: 'gemma3_text', layer_types: ['full_attention'] })).toContain('layer_types has 1 entries, but the model has 4 layers');
    const text = parseModelConfig({ model_type: 'gemma3', architectures: ['Gemma3ForConditionalGeneration'], text_config: { ...base, rope_local_base_freq: 500 } });
    expect(text).toMatchObject({ architecture: 'gemma3_text', ropeLocalTheta: 500 });
    // gemma-3-4b-it's config: the text_config holds only what differs from Gemma3TextConfig's defaults.
    const multimodal = parseModelConfig({
      model_type: 'gemma3',
      architectures: ['Gemma3ForConditionalGeneration'],
      torch_dtype: 'bfloat16',
      eos_token_id: [1, 106],
      text_config: { hidden_size: 2560, intermediate_size: 10240, model_type: 'gemma3_text', num_hidden_layers: 34, rope_scaling: { factor: 8.0, rope_type: 'linear' }, sliding_window: 1024 },
      vision_config: { hidden_size: 1152, model_type: 'siglip_vision_model' },
    });
    expect(multimodal).toMatchObject({ architecture: 'gemma3_text', vocabSize: 262_208, numHeads: 8, numKvHeads: 4, headDim: 256, torchDtype: 'bfloat16', eosTokenIds: [1, 106], ropeTheta: 1_000_000, slidingWindow: 1024 });
    expect(errorOf({ model_type: 'gemma3', vision_config: { hidden_size: 1152 } })).toContain('needs a text_config object');
  });

  it('mixtral: top-k of num_local_experts, renormalised; experts under block_sparse_moe', () => {
    const config = parseModelConfig({ ...base, model_type: 'mixtral', num_local_experts: 8, num_experts_per_tok: 2 });
    expect(config.block.mlpModule).toBe('block_sparse_moe');
    expect(config.moe).toEqual({
      numExperts: 8,
      topK: 2,
      normTopkProb: true,
      expertIntermediateSize: 128,
      sharedExpertIntermediateSize: 0,
      sparseLayers: [true, true, true, true],
      expertNaming: 'w1w2w3',
    });
    expect(errorOf({ ...base, model_type: 'mixtral', num_local_experts: 2, num_experts_per_tok: 3 })).toContain('num_experts_per_tok (3) exceeds num_local_experts (2)');
  });

  it('qwen2_moe: shared expert, norm_topk_prob false by default, q/k/v biases, dense layers by mlp_only_layers and decoder_sparse_step', () => {
    const config = parseModelConfig({
      ...base,
      model_type: 'qwen2_moe',
      num_experts: 60,
      num_experts_per_tok: 4,
      moe_intermediate_size: 32,
      shared_expert_intermediate_size: 96,
      mlp_only_layers: [0],
      decoder_sparse_step: 2,
    });
    expect(config.attentionBias).toBe(true);
    expect(config.moe).toMatchObject({ numExperts: 60, topK: 4, normTopkProb: false, expertIntermediateSize: 32, sharedExpertIntermediateSize: 96, sparseLayers: [false, true, false, true] });
    expect(errorOf({ ...base, model_type: 'qwen2_moe', mlp_only_layers: [7] })).toContain('mlp_only_layers names layer 7, but the model has 4 layers');
  });

  it('qwen3_moe: q/k norms, norm_topk_prob as written, no shared expert', () => {
    const config = parseModelConfig({ ...base, model_type: 'qwen3_moe', head_dim: 16, num_experts: 128, num_experts_per_tok: 8, moe_intermediate_size: 24, norm_topk_prob: true });
    expect(config.block.qkNorm).toBe(true);
    expect(config.moe).toMatchObject({ numExperts: 128, topK: 8, normTopkProb: true, expertIntermediateSize: 24, sharedExpertIntermediateSize: 0, expertNaming: 'gate_up_down' });
  });
});
