import type { ComputeBatch } from '../gpu/gpu.ts';
import { contextLength, KvCache } from '../model/kvCache.ts';
import type { LlamaModel } from '../model/model.ts';
import { HookRunner, type Hook } from '../model/taps.ts';
import type { SequenceStep } from '../model/forward.ts';

export interface PrefillOptions {
  /** Prompts per forward step (packed, no padding); default 32. */
  batchSize?: number;
  /** Hooks applied in every step; `write` hooks fill their buffers prompt after prompt. */
  hooks?: readonly Hook[];
  /**
   * Called with each step's batch and its logits ([prompts in the step, vocab], last token of each)
   * before the batch is submitted, to record more kernels on them. Logits are computed only when given.
   */
  onLogits?: (batch: ComputeBatch, logits: GPUBuffer, first: number, count: number) => void | Promise<void>;
  /** Called after each step has run on the GPU. */
  afterStep?: (first: number, count: number) => void | Promise<void>;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/**
 * Runs the prefill of many tokenised prompts, `batchSize` prompts packed into each forward step, with
 * the given hooks. Nothing is read back unless a callback does so.
 */
export async function prefillPrompts(model: LlamaModel, prompts: readonly (readonly number[])[], options: PrefillOptions = {}): Promise<void> {
  const { gpu, config } = model;
  const batchSize = Math.max(1, options.batchSize ?? 32);
  if (prompts.length === 0) return;
  for (const [i, p] of prompts.entries()) if (p.length === 0) throw new RangeError(`prompt ${i} has no tokens`);
  const cache = new KvCache(gpu, config, Math.min(batchSize, prompts.length), Math.max(...prompts.map((p) => p.length)));
  const hooks = new HookRunner(options.hooks ?? [], config.numLayers);
  try {
    for (let first = 0; first < prompts.length; first += batchSize) {
      if (options.signal?.aborted) throw options.signal.reason ?? new Error('aborted');
      const part = prompts.slice(first, first + batchSize);
      const sequences: SequenceStep[] = [];
      const tokens: number[] = [];
      for (const [slot, prompt] of part.entries()) {
        sequences.push({ slot, start: tokens.length, length: prompt.length, firstPosition: 0 });
        tokens.push(...prompt);
      }
      await model.forward.run({ tokens, sequences, logits: options.onLogits ? 'last' : 'none' }, cache, hooks, async (batch, logits) => {
        if (logits && options.onLogits) await options.onLogits(batch, logits, first, part.length);
      });
      await options.afterStep?.(first, part.length);
      options.onProgress?.(first + part.length, prompts.length);
    }
    await model.forward.verifyFinite();
  } finally {
    cache.dispose();
  }
}

/**
 * Each prompt as one user message in the model's chat template, with the generation prompt. A prompt
 * longer than the model's context (less `reserve` positions for new tokens, at most half of it) has
 * the end of its message cut to fit, with a warning through the model naming the `set`.
 */
export function chatTokens(model: LlamaModel, prompts: readonly string[], options: { reserve?: number; set?: string } = {}): number[][] {
  const context = contextLength(model.config);
  const limit = context - Math.min(options.reserve ?? 0, Math.floor(context / 2));
  const cut: number[] = [];
  const tokens = prompts.map((p, i) => {
    const { ids, truncatedFrom } = model.tokenizer.encodeChatWithin(p, limit);
    if (truncatedFrom !== undefined) cut.push(i);
    return ids;
  });
  if (cut.length > 0) {
    const shown = cut.slice(0, 5).map((i) => i + 1).join(', ') + (cut.length > 5 ? `, and ${cut.length - 5} more` : '');
    model.warn(`${cut.length} of ${prompts.length} ${options.set ? `${options.set} ` : ''}prompts cut to ${limit} tokens to fit the model's context of ${context} positions (prompt ${shown})`);
  }
  return tokens;
}

/**
 * Prompts chat-formatted and tokenised for one model, once per `reserve`, and kept: an evaluation
 * repeated on many versions of the model's weights (cuts tried by a search, before and after a cut)
 * formats and tokenises each prompt set only once.
 */
export class ChatPrompts {
  private readonly byReserve = new Map<number, readonly (readonly number[])[]>();

  /** `set` names the prompts in warnings ("harmful evaluation"). */
  constructor(
    readonly model: LlamaModel,
    readonly prompts: readonly string[],
    readonly set?: string,
  ) {}

  get length(): number {
    return this.prompts.length;
  }

  /** The token ids of every prompt, fitted into the context less `reserve` positions (see `chatTokens`). */
  tokens(reserve = 0): readonly (readonly number[])[] {
    let tokens = this.byReserve.get(reserve);
    if (!tokens) {
      tokens = chatTokens(this.model, this.prompts, { reserve, set: this.set });
      this.byReserve.set(reserve, tokens);
    }
    return tokens;
  }
}

/** Prompts given as text are formatted for the model; prepared ones must have been prepared for it. */
export function chatPromptsFor(model: LlamaModel, prompts: readonly string[] | ChatPrompts, set?: string): ChatPrompts {
  if (!(prompts instanceof ChatPrompts)) return new ChatPrompts(model, prompts, set);
  if (prompts.model !== model) throw new RangeError(`the ${prompts.set ? `${prompts.set} ` : ''}prompts were prepared for another model`);
  return prompts;
}
