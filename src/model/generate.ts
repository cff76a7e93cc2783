import type { ComputeBatch } from '../gpu/gpu.ts';
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
  /** Seed of the random numbers drawn for sampling; each prompt draws from its own stream of it. */
  seed?: number;
}

/** A prompt's row in the logits of the step that prefilled it. */
export interface PromptRow {
  /** Row of the step's logits ([sequences of the step, vocab]). */
  row: number;
  /** Index of the prompt in the `generate` call. */
  index: number;
}

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  /** Defaults to the tokenizer's stop tokens. */
  stopTokenIds?: ReadonlySet<number>;
  /** Interventions (and taps) applied at every step. */
  hooks?: readonly Hook[];
  /** Sequences decoded together (KV-cache slots); defaults to 16. */
  batchSize?: number;
  /**
   * Default true: a finished sequence leaves the batch at once and the next waiting prompt takes its
   * KV-cache slot in the next step (its prefill packed with the others' decode rows), so every step
   * runs on as many live sequences as there are slots. false: batches of `batchSize` prompts one
   * after another, every sequence's row decoded until the whole batch has finished (what a padded
   * batch does; the reference compaction is tested against).
   */
  compact?: boolean;
  /**
   * Called with each sequence's new tokens after every step that added one; true ends the sequence
   * there (finish 'decided'), e.g. once its answer is known to be a refusal.
   */
  stopWhen?: (index: number, tokens: readonly number[]) => boolean;
  /**
   * Called with the batch and the logits of every step that prefilled prompts, before the next
   * token is chosen, with the rows holding those prompts' next-token logits: to record more kernels
   * on them (a copy, a KL) without a second prefill.
   */
  onPromptLogits?: (batch: ComputeBatch, logits: GPUBuffer, rows: readonly PromptRow[]) => void;
  /** Called whenever prompts have finished, with the number finished. */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface Generation {
  /** New tokens of each prompt, without the stop token. */
  tokens: number[][];
  /** Why each generation ended: a stop token, the token budget or the context, or `stopWhen`. */
  finish: ('stop' | 'length' | 'decided')[];
}

/** A sequence holding a KV-cache slot. */
interface Live {
  index: number;
  slot: number;
  /** Tokens this step feeds: the whole prompt in its first step, then the last token chosen. */
  feed: readonly number[];
  /** Cache position of feed[0]. */
  position: number;
  /** Finished, but still decoded because its batch is not (compact: false). */
  finished: boolean;
}

/**
 * Generates continuations of tokenised prompts, sampling on the GPU. Up to `batchSize` sequences
 * run together, each in a KV-cache slot; every step packs the prefill of newly admitted prompts and
 * one decode row per running sequence into one forward pass. Greedy results do not depend on the
 * batch size or on `compact` beyond f32 rounding.
 */
export async function generate(model: LlamaModel, prompts: readonly (readonly number[])[], options: GenerateOptions): Promise<Generation> {
  const { gpu, config } = model;
  const stop = options.stopTokenIds ?? model.tokenizer.stopTokenIds;
  const temperature = options.temperature ?? 0;
  const compact = options.compact ?? true;
  const tokens: number[][] = prompts.map(() => []);
  const finish: Generation['finish'] = prompts.map(() => 'length');
  if (prompts.length === 0 || options.maxNewTokens <= 0) return { tokens, finish };
  for (const p of prompts) if (p.length === 0) throw new RangeError('cannot generate from an empty prompt');
  // Generation stops at the end of the model's context.
  const context = contextLength(config);
  const longest = Math.max(...prompts.map((p) => p.length));
  if (longest > context) {
    throw new RangeError(`a prompt of ${longest} tokens is longer than this model's context of ${context} positions (max_position_embeddings); shorten it`);
  }
  const slots = Math.max(1, Math.min(options.batchSize ?? 16, prompts.length));
  const maxLen = Math.min(longest + options.maxNewTokens, context);
  const cache = new KvCache(gpu, config, slots, maxLen);
  const hooks = new HookRunner(options.hooks ?? [], config.numLayers);
  const chosen = gpu.createBuffer(slots * 4, 'sampled tokens');
  const uniforms = gpu.createBuffer(slots * 4, 'sampling random numbers');
  // One stream per prompt: a sampled answer does not depend on what it was batched with.
  const seed = options.seed ?? 0;
  const random = temperature > 0 ? prompts.map((_, i) => mulberry32((seed ^ Math.imul(i, 0x9e3779b9)) >>> 0)) : [];
  const free = Array.from({ length: slots }, (_, s) => s);
  let live: Live[] = [];
  let waiting = 0;
  let done = 0;
  try {
    for (let step = 0; live.length > 0 || waiting < prompts.length; step++) {
      if (options.signal?.aborted) throw options.signal.reason ?? new Error('aborted');
      // Admit waiting prompts into free slots: at every step when compacting, else a batch at a time.
      if (compact || live.length === 0) {
        while (free.length > 0 && waiting < prompts.length) {
          const index = waiting++;
          live.push({ index, slot: free.shift()!, feed: prompts[index]!, position: 0, finished: false });
        }
      }
      const sequences: SequenceStep[] = [];
      const stepTokens: number[] = [];
      const admitted: PromptRow[] = [];
      for (const [row, s] of live.entries()) {
        sequences.push({ slot: s.slot, start: stepTokens.length, length: s.feed.length, firstPosition: s.position });
        for (const t of s.feed) stepTokens.push(t);
        if (s.position === 0) admitted.push({ row, index: s.index });
      }
      const rows = live.length;
      await model.forward.run({ tokens: stepTokens, sequences, logits: 'last' }, cache, hooks, (batch, logits) => {
        if (admitted.length > 0) options.onPromptLogits?.(batch, logits!, admitted);
        if (temperature > 0) {
          batch.write(uniforms, Float32Array.from(live, (s) => random[s.index]!()));
          recordSample(batch, { logits: logits!, rows, cols: config.vocabSize, random: uniforms, out: chosen, temperature, topK: options.topK ?? 0, topP: options.topP ?? 1 });
        } else {
          recordArgmax(batch, { logits: logits!, rows, cols: config.vocabSize, out: chosen });
        }
      });
      const picked = await gpu.readU32(chosen, 0, rows);
      // NaN or ±Inf logits pick meaningless tokens: check after the first prefill (which runs every
      // weight), whenever a pick is no token at all, and once everything is done.
      if (step === 0 || picked.some((id) => id >= config.vocabSize)) await model.forward.verifyFinite();
      let finishedNow = 0;
      const next: Live[] = [];
      live.forEach((s, row) => {
        const id = picked[row]!;
        const position = s.position + s.feed.length;
        if (!s.finished) {
          const out = tokens[s.index]!;
          if (stop.has(id)) {
            finish[s.index] = 'stop';
            s.finished = true;
          } else {
            out.push(id);
            if (out.length >= options.maxNewTokens || position >= maxLen) s.finished = true;
            else if (options.stopWhen?.(s.index, out)) {
              finish[s.index] = 'decided';
              s.finished = true;
            }
          }
          if (s.finished) finishedNow++;
        }
        // A finished sequence keeps its row only while its batch runs (not compacting) and the cache has room.
        if (!s.finished || (!compact && position < maxLen)) next.push({ ...s, feed: [id], position });
        else free.push(s.slot);
      });
      live = !compact && next.every((s) => s.finished) ? [] : next;
      if (live.length === 0) free.splice(0, free.length, ...Array.from({ length: slots }, (_, slot) => slot));
      else free.sort((a, b) => a - b);
      if (finishedNow > 0) {
        done += finishedNow;
        options.onProgress?.(done, prompts.length);
      }
    }
    await model.forward.verifyFinite();
  } finally {
    cache.dispose();
    gpu.destroyBuffer(chosen);
    gpu.destroyBuffer(uniforms);
  }
  return { tokens, finish };
}
