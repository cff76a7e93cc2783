import { recordArgmax } from '../kernels/argmax.ts';
import { recordSample } from '../kernels/sample.ts';
import { mulberry32 } from '../util/random.ts';
import { contextLength, KvCache } from './kvCache.ts';
import type { LlamaModel } from './model.ts';
import { HookRunner, type Hook } from './taps.ts';
import type { SequenceStep } from './forward.ts';

export interface SamplingOptions {
  /** 0 (the default) decodes greedily. */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1 = off). */
  topP?: number;
  /** Seed of the random numbers drawn for sampling. */
  seed?: number;
}

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  /** Defaults to the tokenizer's stop tokens. */
  stopTokenIds?: ReadonlySet<number>;
  /** Interventions (and taps) applied at every step. */
  hooks?: readonly Hook[];
  /** Sequences decoded together; defaults to 16. */
  batchSize?: number;
  /** Called after each batch of prompts, with the number of prompts done. */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface Generation {
  /** New tokens of each prompt, without the stop token. */
  tokens: number[][];
  /** Why each generation ended. */
  finish: ('stop' | 'length')[];
}

/**
 * Generates continuations of tokenised prompts: a packed prefill of a batch of prompts, then one
 * decode step per new token for all unfinished sequences of the batch, sampling on the GPU.
 */
export async function generate(model: LlamaModel, prompts: readonly (readonly number[])[], options: GenerateOptions): Promise<Generation> {
  const batchSize = options.batchSize ?? 16;
  const tokens: number[][] = [];
  const finish: Generation['finish'] = [];
  for (let start = 0; start < prompts.length; start += batchSize) {
    const part = await generateBatch(model, prompts.slice(start, start + batchSize), options);
    tokens.push(...part.tokens);
    finish.push(...part.finish);
    options.onProgress?.(Math.min(start + batchSize, prompts.length), prompts.length);
  }
  return { tokens, finish };
}

async function generateBatch(model: LlamaModel, prompts: readonly (readonly number[])[], options: GenerateOptions): Promise<Generation> {
  const { gpu, config } = model;
  const stop = options.stopTokenIds ?? model.tokenizer.stopTokenIds;
  const temperature = options.temperature ?? 0;
  const random = mulberry32(options.seed ?? 0);
  for (const p of prompts) if (p.length === 0) throw new RangeError('cannot generate from an empty prompt');
  // Generation stops at the end of the model's context.
  const context = contextLength(config);
  const longest = Math.max(...prompts.map((p) => p.length));
  if (longest > context) {
    throw new RangeError(`a prompt of ${longest} tokens is longer than this model's context of ${context} positions (max_position_embeddings); shorten it`);
  }
  const maxLen = Math.min(longest + options.maxNewTokens, context);
  const cache = new KvCache(gpu, config, prompts.length, maxLen);
  const hooks = new HookRunner(options.hooks ?? [], config.numLayers);
  const chosen = gpu.createBuffer(prompts.length * 4, 'sampled tokens');
  const uniforms = gpu.createBuffer(prompts.length * 4, 'sampling random numbers');
  const out: number[][] = prompts.map(() => []);
  const finish: Generation['finish'] = prompts.map(() => 'length');
  try {
    // Prefill: every prompt packed into one step, each in its own cache slot.
    let sequences: SequenceStep[] = [];
    let stepTokens: number[] = [];
    for (const [slot, prompt] of prompts.entries()) {
      sequences.push({ slot, start: stepTokens.length, length: prompt.length, firstPosition: 0 });
      stepTokens.push(...prompt);
    }
    for (let step = 0; step < options.maxNewTokens && sequences.length > 0; step++) {
      if (options.signal?.aborted) throw options.signal.reason ?? new Error('aborted');
      const rows = sequences.length;
      await model.forward.run({ tokens: stepTokens, sequences, logits: 'last' }, cache, hooks, (batch, logits) => {
        if (temperature > 0) {
          batch.write(uniforms, Float32Array.from({ length: rows }, () => random()));
          recordSample(batch, { logits: logits!, rows, cols: config.vocabSize, random: uniforms, out: chosen, temperature, topK: options.topK ?? 0, topP: options.topP ?? 1 });
        } else {
          recordArgmax(batch, { logits: logits!, rows, cols: config.vocabSize, out: chosen });
        }
      });
      const picked = await gpu.readU32(chosen, 0, rows);
      // NaN or ±Inf logits pick meaningless tokens: check after the prefill (which runs every
      // weight), whenever a pick is no token at all, and once the batch is done.
      if (step === 0 || picked.some((id) => id >= config.vocabSize)) await model.forward.verifyFinite();
      const next: SequenceStep[] = [];
      stepTokens = [];
      sequences.forEach((s, row) => {
        const id = picked[row]!;
        if (stop.has(id)) {
          finish[s.slot] = 'stop';
          return;
        }
        out[s.slot]!.push(id);
        const position = s.firstPosition + s.length;
        if (position >= maxLen) return; // the context is full
        next.push({ slot: s.slot, start: next.length, length: 1, firstPosition: position });
        stepTokens.push(id);
      });
      sequences = next;
    }
    await model.forward.verifyFinite();
  } finally {
    cache.dispose();
    gpu.destroyBuffer(chosen);
    gpu.destroyBuffer(uniforms);
  }
  return { tokens: out, finish };
}
