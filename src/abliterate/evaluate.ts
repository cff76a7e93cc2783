import { recordCrossEntropy, recordKlDivergence } from '../kernels/losses.ts';
import { generate } from '../model/generate.ts';
import { KvCache } from '../model/kvCache.ts';
import type { LlamaModel } from '../model/model.ts';
import { HookRunner, type Hook } from '../model/taps.ts';
import { chatTokens, prefillPrompts } from './prefill.ts';
import { DEFAULT_REFUSAL_MARKERS, isRefusal } from './refusal.ts';

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
  /** What the prompts are ("harmful evaluation"), for warnings. */
  set?: string;
}

/** Greedy answers to each prompt (chat template, generation prompt on), judged by the refusal markers. */
export async function evaluateRefusals(
  model: LlamaModel,
  prompts: readonly string[],
  options: EvaluationRunOptions & { maxNewTokens?: number; markers?: readonly string[] } = {},
): Promise<RefusalEvaluation> {
  const maxNewTokens = options.maxNewTokens ?? 64;
  const result = await generate(model, chatTokens(model, prompts, { reserve: maxNewTokens, set: options.set }), {
    maxNewTokens,
    hooks: options.hooks,
    batchSize: options.batchSize,
    onProgress: options.onProgress,
    signal: options.signal,
  });
  const answers = prompts.map((prompt, i) => {
    const answer = model.tokenizer.decode(result.tokens[i]!, { skipSpecialTokens: true });
    return { prompt, answer, refused: isRefusal(answer, options.markers ?? DEFAULT_REFUSAL_MARKERS) };
  });
  const refused = answers.filter((a) => a.refused).length;
  return { rate: prompts.length ? refused / prompts.length : NaN, refused, total: prompts.length, answers };
}

/**
 * The next-token logits after each chat-formatted prompt, kept on the GPU ([prompts, vocab]) as the
 * baseline of a KL comparison. The caller destroys the buffer.
 */
export async function firstTokenLogits(model: LlamaModel, prompts: readonly string[], options: EvaluationRunOptions = {}): Promise<GPUBuffer> {
  const { gpu, config } = model;
  const rowBytes = config.vocabSize * 4;
  const out = gpu.createBuffer(prompts.length * rowBytes, 'baseline logits');
  try {
    await prefillPrompts(model, chatTokens(model, prompts, { set: options.set }), {
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
  prompts: readonly string[],
  options: EvaluationRunOptions = {},
): Promise<{ mean: number; max: number; perPrompt: Float32Array }> {
  const { gpu, config } = model;
  const rowBytes = config.vocabSize * 4;
  const stepRows = Math.min(options.batchSize ?? 32, prompts.length);
  const kl = gpu.createBuffer(prompts.length * 4, 'kl per prompt');
  // One step's rows of the baseline, copied out so that every binding starts at offset 0.
  const baselineRows = gpu.createBuffer(stepRows * rowBytes, 'baseline rows');
  const stepKl = gpu.createBuffer(stepRows * 4, 'kl of a step');
  try {
    await prefillPrompts(model, chatTokens(model, prompts, { set: options.set }), {
      ...options,
      batchSize: stepRows,
      onLogits: (batch, logits, first, count) => {
        batch.copy(baseline, first * rowBytes, baselineRows, 0, count * rowBytes);
        recordKlDivergence(batch, { logitsP: baselineRows, logitsQ: logits, kl: stepKl, rows: count, vocab: config.vocabSize });
        batch.copy(stepKl, 0, kl, first * 4, count * 4);
      },
    });
    const perPrompt = await gpu.readF32(kl);
    let sum = 0;
    let max = 0;
    for (const v of perPrompt) {
      sum += v;
      max = Math.max(max, v);
    }
    return { mean: perPrompt.length ? sum / perPrompt.length : NaN, max, perPrompt };
  } finally {
    for (const b of [kl, baselineRows, stepKl]) gpu.destroyBuffer(b);
  }
}

/**
 * Perplexity of plain text (no chat template): the text is cut into windows, each run with logits
 * at every position, and the next-token negative log-likelihoods are summed on the GPU.
 */
export async function perplexity(model: LlamaModel, text: string, options: { hooks?: readonly Hook[]; window?: number; maxTokens?: number } = {}): Promise<{ perplexity: number; tokens: number }> {
  const { gpu, config } = model;
  const ids = model.tokenizer.encode(text, { addSpecialTokens: true }).slice(0, options.maxTokens ?? 4096);
  // Logits of a window are [window, vocab] f32: keep them within 64 MiB.
  const fit = Math.floor((64 * 2 ** 20) / (config.vocabSize * 4));
  const window = Math.max(2, Math.min(options.window ?? 256, fit, config.maxPositionEmbeddings));
  const hooks = new HookRunner(options.hooks ?? [], config.numLayers);
  let totalNll = 0;
  let counted = 0;
  for (let start = 0; start + 1 < ids.length; start += window - 1) {
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
    if (start + window >= ids.length) break;
  }
  if (counted === 0) throw new RangeError('the perplexity text is too short: it needs at least two tokens');
  return { perplexity: Math.exp(totalNll / counted), tokens: counted };
}
