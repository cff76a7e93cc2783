import { recordCrossEntropy, recordKlDivergence } from '../kernels/losses.ts';
import { generate } from '../model/generate.ts';
import { KvCache } from '../model/kvCache.ts';
import type { LlamaModel } from '../model/model.ts';
import { HookRunner, type Hook } from '../model/taps.ts';
import { ChatPrompts, chatPromptsFor, prefillPrompts } from './prefill.ts';
import { DEFAULT_REFUSAL_MARKERS, isRefusal, refusalDecided } from './refusal.ts';

export interface Answer {
  prompt: string;
  answer: string;
  refused: boolean;
}

export interface RefusalEvaluation {
  rate: number;
  refused: number;
  total: number;
  answers: Answer[];
}

export interface EvaluationRunOptions {
  /** Runtime interventions (e.g. directional ablation) applied while evaluating. */
  hooks?: readonly Hook[];
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
  /** What the prompts are ("harmful evaluation"), for warnings; prepared prompts carry their own name. */
  set?: string;
}

/** Prompts as text (formatted and tokenised on each call) or prepared once for the model (`ChatPrompts`). */
export type Prompts = readonly string[] | ChatPrompts;

/** Greedy answers to each prompt (chat template, generation prompt on), judged by the refusal markers. */
export async function evaluateRefusals(
  model: LlamaModel,
  prompts: Prompts,
  options: EvaluationRunOptions & { maxNewTokens?: number; markers?: readonly string[] } = {},
): Promise<RefusalEvaluation> {
  const maxNewTokens = options.maxNewTokens ?? 64;
  const chat = chatPromptsFor(model, prompts, options.set);
  const result = await generate(model, chat.tokens(maxNewTokens), {
    maxNewTokens,
    hooks: options.hooks,
    batchSize: options.batchSize,
    onProgress: options.onProgress,
    signal: options.signal,
  });
  const answers = chat.prompts.map((prompt, i) => {
    const answer = model.tokenizer.decode(result.tokens[i]!, { skipSpecialTokens: true });
    return { prompt, answer, refused: isRefusal(answer, options.markers ?? DEFAULT_REFUSAL_MARKERS) };
  });
  const refused = answers.filter((a) => a.refused).length;
  return { rate: answers.length ? refused / answers.length : NaN, refused, total: answers.length, answers };
}

/**
 * The next-token logits after each chat-formatted prompt, kept on the GPU ([prompts, vocab]) as the
 * baseline of a KL comparison. The caller destroys the buffer.
 */
export async function firstTokenLogits(model: LlamaModel, prompts: Prompts, options: EvaluationRunOptions = {}): Promise<GPUBuffer> {
  const { gpu, config } = model;
  const chat = chatPromptsFor(model, prompts, options.set);
  const rowBytes = config.vocabSize * 4;
  const out = gpu.createBuffer(chat.length * rowBytes, 'baseline logits');
  try {
    await prefillPrompts(model, chat.tokens(), {
      ...options,
      onLogits: (batch, logits, first, count) => void batch.copy(logits, 0, out, first * rowBytes, count * rowBytes),
    });
  } catch (error) {
    gpu.destroyBuffer(out);
    throw error;
  }
  return out;
}

/** KL(baseline ‖ current) of the next-token distributions after each prompt, computed on the GPU. */
export async function firstTokenKl(
  model: LlamaModel,
  baseline: GPUBuffer,
  prompts: Prompts,
  options: EvaluationRunOptions = {},
): Promise<{ mean: number; max: number; perPrompt: Float32Array }> {
  const { gpu, config } = model;
  const chat = chatPromptsFor(model, prompts, options.set);
  const rowBytes = config.vocabSize * 4;
  const stepRows = Math.min(options.batchSize ?? 32, chat.length);
  const kl = gpu.createBuffer(chat.length * 4, 'kl per prompt');
  // One step's rows of the baseline, copied out so that every binding starts at offset 0.
  const baselineRows = gpu.createBuffer(stepRows * rowBytes, 'baseline rows');
  const stepKl = gpu.createBuffer(stepRows * 4, 'kl of a step');
  try {
    await prefillPrompts(model, chat.tokens(), {
      ...options,
      batchSize: stepRows,
      onLogits: (batch, logits, first, count) => {
        batch.copy(baseline, first * rowBytes, baselineRows, 0, count * rowBytes);
        recordKlDivergence(batch, { logitsP: baselineRows, logitsQ: logits, kl: stepKl, rows: count, vocab: config.vocabSize });
        batch.copy(stepKl, 0, kl, first * 4, count * 4);
      },
    });
    return klSummary(await gpu.readF32(kl));
  } finally {
    for (const b of [kl, baselineRows, stepKl]) gpu.destroyBuffer(b);
  }
}

function klSummary(perPrompt: Float32Array): { mean: number; max: number; perPrompt: Float32Array } {
  let sum = 0;
  let max = 0;
  for (const v of perPrompt) {
    sum += v;
    max = Math.max(max, v);
  }
  return { mean: perPrompt.length ? sum / perPrompt.length : NaN, max, perPrompt };
}

/** KL(p ‖ q) of each of `rows` next-token distributions given as two [rows, vocab] logits buffers, on the GPU. */
export async function klOfLogits(model: LlamaModel, p: GPUBuffer, q: GPUBuffer, rows: number): Promise<{ mean: number; max: number; perPrompt: Float32Array }> {
  const { gpu, config } = model;
  const kl = gpu.createBuffer(Math.max(1, rows) * 4, 'kl per prompt');
  try {
    const batch = gpu.batch('first-token KL');
    recordKlDivergence(batch, { logitsP: p, logitsQ: q, kl, rows, vocab: config.vocabSize });
    await batch.submit();
    return klSummary(rows ? await gpu.readF32(kl, 0, rows) : new Float32Array(0));
  } finally {
    gpu.destroyBuffer(kl);
  }
}

export interface SetAnswersOptions {
  maxNewTokens: number;
  batchSize?: number;
  markers?: readonly string[];
  hooks?: readonly Hook[];
  signal?: AbortSignal;
  /**
   * End an answer as soon as it holds a refusal marker (`refusalDecided`): its verdict cannot change
   * any more, so the counts are those of the full answers, while the answers themselves are cut short.
   */
  stopAtRefusal?: boolean;
  /** f32 [harmless prompts, vocab]: receives the next-token logits after each harmless prompt, taken from the prefill its answer starts with. */
  harmlessLogits?: GPUBuffer;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Greedy answers to the harmful and the harmless prompts of an evaluation in one generation (one
 * queue, so the slots a finished answer frees go to the next prompt of either set), judged by the
 * refusal markers; optionally the harmless prompts' first-token logits from the same prefill.
 */
export async function answerPromptSets(model: LlamaModel, prompts: EvaluationPrompts, options: SetAnswersOptions): Promise<{ harmful: RefusalEvaluation; harmless: RefusalEvaluation }> {
  const { maxNewTokens } = options;
  const markers = options.markers ?? DEFAULT_REFUSAL_MARKERS;
  const harmful = prompts.harmful.tokens(maxNewTokens);
  const harmless = prompts.harmless.tokens(maxNewTokens);
  const first = harmful.length;
  const { harmlessLogits } = options;
  const rowBytes = model.config.vocabSize * 4;
  const decode = (ids: readonly number[]) => model.tokenizer.decode(ids, { skipSpecialTokens: true });
  const result = await generate(model, [...harmful, ...harmless], {
    maxNewTokens,
    hooks: options.hooks,
    batchSize: options.batchSize,
    signal: options.signal,
    onProgress: options.onProgress,
    stopWhen: options.stopAtRefusal ? (_, tokens) => refusalDecided(decode(tokens), markers) : undefined,
    onPromptLogits: harmlessLogits
      ? (batch, logits, rows) => {
          for (const { row, index } of rows) if (index >= first) batch.copy(logits, row * rowBytes, harmlessLogits, (index - first) * rowBytes, rowBytes);
        }
      : undefined,
  });
  const judge = (set: ChatPrompts, offset: number): RefusalEvaluation => {
    const answers = set.prompts.map((prompt, i) => {
      const answer = decode(result.tokens[offset + i]!);
      return { prompt, answer, refused: isRefusal(answer, markers) };
    });
    const refused = answers.filter((a) => a.refused).length;
    return { rate: answers.length ? refused / answers.length : NaN, refused, total: answers.length, answers };
  };
  return { harmful: judge(prompts.harmful, 0), harmless: judge(prompts.harmless, first) };
}

/** Plain text as the token ids perplexity reads (with the tokenizer's special tokens). */
export function plainTextTokens(model: LlamaModel, text: string): number[] {
  return model.tokenizer.encode(text, { addSpecialTokens: true });
}

/**
 * Perplexity of plain text (no chat template), given as text or as its `plainTextTokens`: the text
 * is cut into windows, each run with logits at every position, and the next-token negative
 * log-likelihoods are summed on the GPU.
 */
export async function perplexity(
  model: LlamaModel,
  text: string | readonly number[],
  options: {
    hooks?: readonly Hook[];
    window?: number;
    maxTokens?: number;
    /** Checked before each window: a cancelled run stops within one window's forward pass. */
    signal?: AbortSignal;
    /** Windows done of all windows. */
    onProgress?: (done: number, total: number) => void;
  } = {},
): Promise<{ perplexity: number; tokens: number }> {
  const { gpu, config } = model;
  const ids = (typeof text === 'string' ? plainTextTokens(model, text) : text).slice(0, options.maxTokens ?? 4096);
  // Logits of a window are [window, vocab] f32: keep them within 64 MiB.
  const fit = Math.floor((64 * 2 ** 20) / (config.vocabSize * 4));
  const window = Math.max(2, Math.min(options.window ?? 256, fit, config.maxPositionEmbeddings));
  const hooks = new HookRunner(options.hooks ?? [], config.numLayers);
  let totalNll = 0;
  let counted = 0;
  const windows = Math.max(1, Math.ceil((ids.length - 1) / (window - 1)));
  let done = 0;
  for (let start = 0; start + 1 < ids.length; start += window - 1) {
    options.signal?.throwIfAborted();
    const tokens = ids.slice(start, start + window);
    const T = tokens.length;
    const cache = new KvCache(gpu, config, 1, T);
    const targets = gpu.upload(Uint32Array.from(tokens.slice(1)), 'targets');
    const nll = gpu.createBuffer((T - 1) * 4, 'nll');
    try {
      const sequences = [{ slot: 0, start: 0, length: T, firstPosition: 0 }];
      await model.forward.run({ tokens, sequences, logits: 'all' }, cache, hooks, (batch, logits) =>
        recordCrossEntropy(batch, { logits: logits!, targets, nll, rows: T - 1, vocab: config.vocabSize }),
      );
      for (const v of await gpu.readF32(nll)) totalNll += v;
      counted += T - 1;
    } finally {
      cache.dispose();
      gpu.destroyBuffer(targets);
      gpu.destroyBuffer(nll);
    }
    options.onProgress?.(++done, windows);
    if (start + window >= ids.length) break;
  }
  await model.forward.verifyFinite();
  if (counted === 0) throw new RangeError('the perplexity text is too short: it needs at least two tokens');
  return { perplexity: Math.exp(totalNll / counted), tokens: counted };
}

/** The prompt sets of an evaluation, formatted and tokenised once for a model and reused by every `evaluateModel`. */
export class EvaluationPrompts {
  readonly harmful: ChatPrompts;
  readonly harmless: ChatPrompts;
  /** Benign prompts in the words of harmful ones (over-refusal); skipped when absent. */
  readonly borderline: ChatPrompts | undefined;
  /** Token ids of the perplexity text; perplexity is skipped without one. */
  readonly plainText: readonly number[] | undefined;

  /** `kind` names the sets in warnings ("evaluation": "harmful evaluation prompts cut to …"). */
  constructor(
    model: LlamaModel,
    sets: { harmful: readonly string[]; harmless: readonly string[]; borderline?: readonly string[] | undefined; plainText?: string | undefined },
    kind = 'evaluation',
  ) {
    this.harmful = new ChatPrompts(model, sets.harmful, `harmful ${kind}`);
    this.harmless = new ChatPrompts(model, sets.harmless, `harmless ${kind}`);
    this.borderline = sets.borderline?.length ? new ChatPrompts(model, sets.borderline, `borderline ${kind}`) : undefined;
    this.plainText = sets.plainText === undefined ? undefined : plainTextTokens(model, sets.plainText);
  }

  /** The next-token logits of the model as it is now on the harmless prompts: the baseline of `evaluateModel`'s KL. The caller destroys the buffer. */
  baseline(options: Omit<EvaluationRunOptions, 'set'> = {}): Promise<GPUBuffer> {
    return firstTokenLogits(this.harmless.model, this.harmless, options);
  }
}

/** A model's figures on an evaluation's prompts (snake_case: they go into the report as they are). */
export interface ModelEvaluation {
  harmful_refusal_rate: number;
  harmless_refusal_rate: number;
  /** Refusal rate on the borderline-benign prompts (null without them). */
  borderline_refusal_rate: number | null;
  /** Mean first-token KL(baseline ‖ this) over the harmless prompts; 0 without a baseline. */
  kl: number;
  perplexity: number | null;
  harmful_answers: Answer[];
  harmless_answers: Answer[];
  borderline_answers: Answer[];
}

export interface ModelEvaluationOptions {
  /** Logits from `EvaluationPrompts.baseline`, taken on the original model; without them KL is 0. */
  baseline?: GPUBuffer | undefined;
  /** Runtime interventions (e.g. directional ablation) applied while evaluating. */
  hooks?: readonly Hook[];
  batchSize?: number;
  maxNewTokens?: number;
  markers?: readonly string[];
  /** Compute the perplexity of the prompts' plain text (when they have one); default true. */
  perplexity?: boolean;
  /** Progress over the answers generated (harmful, then harmless prompts). */
  onProgress?: (done: number, total: number) => void;
  /** Progress of each sub-step in its own units (answers, prompts, perplexity windows). */
  onStep?: (step: EvaluationStep, done: number, total: number) => void;
  signal?: AbortSignal;
}

/** The sub-steps of `evaluateModel`, in order. */
export type EvaluationStep = 'harmful refusals' | 'harmless refusals' | 'borderline refusals' | 'first-token KL' | 'perplexity';

/**
 * Evaluates the model as it is now (weights, plus any hooks) on prepared prompts: greedy answers to
 * the harmful and the harmless prompts judged by the refusal markers, the first-token KL against a
 * baseline on the harmless prompts, and the perplexity of the plain text.
 */
export async function evaluateModel(model: LlamaModel, prompts: EvaluationPrompts, options: ModelEvaluationOptions = {}): Promise<ModelEvaluation> {
  const { baseline, hooks, batchSize, maxNewTokens, markers, signal } = options;
  const total = prompts.harmful.length + prompts.harmless.length;
  const run = { hooks, batchSize, maxNewTokens, markers, signal };
  const step = (name: EvaluationStep, total: number) => {
    options.onStep?.(name, 0, total);
    return (done: number, of: number) => options.onStep?.(name, done, of);
  };
  const harmfulStep = step('harmful refusals', prompts.harmful.length);
  const harmful = await evaluateRefusals(model, prompts.harmful, {
    ...run,
    onProgress: (done) => {
      harmfulStep(done, prompts.harmful.length);
      options.onProgress?.(done, total);
    },
  });
  const harmlessStep = step('harmless refusals', prompts.harmless.length);
  const harmless = await evaluateRefusals(model, prompts.harmless, {
    ...run,
    onProgress: (done) => {
      harmlessStep(done, prompts.harmless.length);
      options.onProgress?.(prompts.harmful.length + done, total);
    },
  });
  const borderline = prompts.borderline
    ? await evaluateRefusals(model, prompts.borderline, { ...run, onProgress: step('borderline refusals', prompts.borderline.length) })
    : undefined;
  const kl = baseline ? (await firstTokenKl(model, baseline, prompts.harmless, { hooks, batchSize, signal, onProgress: step('first-token KL', prompts.harmless.length) })).mean : 0;
  const ppl =
    prompts.plainText && options.perplexity !== false
      ? (await perplexity(model, prompts.plainText, { hooks, signal, onProgress: step('perplexity', 1) })).perplexity
      : null;
  return {
    harmful_refusal_rate: harmful.rate,
    harmless_refusal_rate: harmless.rate,
    borderline_refusal_rate: borderline?.rate ?? null,
    kl,
    perplexity: ppl,
    harmful_answers: harmful.answers,
    harmless_answers: harmless.answers,
    borderline_answers: borderline?.answers ?? [],
  };
}
