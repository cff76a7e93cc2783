import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { EvaluationPrompts, answerPromptSets, firstTokenLogits } from '../../src/abliterate/evaluate.ts';
import { generate, type Generation } from '../../src/model/generate.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { loadRandomModel } from '../helpers/models.ts';
import { relativeError } from '../helpers/compare.ts';
import { testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

function lines(path: string, count: number): string[] {
  return readFileSync(path, 'utf8').split('\n').filter((l) => l.trim()).slice(0, count);
}

/** Stop tokens that end some generations early and not others: tokens the full generations produce at different steps. */
function someStops(full: Generation): Set<number> {
  const stops = new Set<number>();
  for (const [i, t] of full.tokens.entries()) if (i % 2 === 0 && t.length > 2 + i) stops.add(t[2 + i]!);
  return stops;
}

describe('batched generation', () => {
  it('compaction and refilled slots give the same tokens as static batches (random model, stop tokens, 9 prompts in 3 slots)', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'BF16', numHeads: 4, numKvHeads: 2 });
    try {
      const rng = new Random(random.seed);
      const prompts = [5, 1, 12, 3, 8, 2, 7, 4, 10].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const unstopped = await generate(model, prompts, { maxNewTokens: 12, stopTokenIds: new Set(), batchSize: 3, compact: false });
      const stopTokenIds = someStops(unstopped);
      expect(stopTokenIds.size).toBeGreaterThan(0);
      const options = { maxNewTokens: 12, stopTokenIds, batchSize: 3 };
      const reference = await generate(model, prompts, { ...options, compact: false });
      const compacted = await generate(model, prompts, options);
      expect(compacted.tokens).toEqual(reference.tokens);
      expect(compacted.finish).toEqual(reference.finish);
      // Some sequences stopped early, others ran to the budget: rows did leave the batch.
      expect(reference.finish).toContain('stop');
      expect(reference.finish).toContain('length');
      // Every prompt alone gives the same tokens too.
      for (const [i, prompt] of prompts.entries()) {
        const alone = await generate(model, [prompt], options);
        expect(alone.tokens[0], `prompt ${i}`).toEqual(reference.tokens[i]);
      }
    } finally {
      model.dispose();
    }
  });

  it('stopWhen ends a sequence where asked, and the others go on as before', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'F32' });
    try {
      const rng = new Random(random.seed + 1);
      const prompts = [4, 9, 2, 6, 3].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const options = { maxNewTokens: 10, stopTokenIds: new Set<number>(), batchSize: 2 };
      const full = await generate(model, prompts, options);
      const at = [3, 10, 1, 6, 20];
      const seen: number[][] = prompts.map(() => []);
      const cut = await generate(model, prompts, {
        ...options,
        stopWhen: (index, tokens) => {
          seen[index]!.push(tokens.length);
          return tokens.length >= at[index]!;
        },
      });
      for (const [i] of prompts.entries()) {
        const n = Math.min(at[i]!, 10);
        expect(cut.tokens[i]).toEqual(full.tokens[i]!.slice(0, n));
        expect(cut.finish[i]).toBe(at[i]! <= 9 ? 'decided' : 'length');
        // Asked after every token, until the budget (the last token ends the sequence first).
        expect(seen[i]).toEqual(Array.from({ length: Math.min(at[i]!, 9) }, (_, k) => k + 1));
      }
    } finally {
      model.dispose();
    }
  });

  it('the prompts\' next-token logits from the generation\'s prefill equal those of a separate prefill', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'BF16' });
    try {
      const rng = new Random(random.seed + 2);
      const prompts = [6, 2, 11, 5, 8, 3, 7].map((n) => Array.from({ length: n }, () => rng.int(0, random.config.vocabSize - 1)));
      const V = random.config.vocabSize;
      const captured = gpu.createBuffer(prompts.length * V * 4, 'captured');
      gpu.write(captured, new Float32Array(prompts.length * V).fill(Number.NaN));
      const calls: number[][] = [];
      await generate(model, prompts, {
        maxNewTokens: 4,
        stopTokenIds: new Set(),
        batchSize: 3,
        onPromptLogits: (batch, logits, rows) => {
          calls.push(rows.map((r) => r.index));
          for (const { row, index } of rows) batch.copy(logits, row * V * 4, captured, index * V * 4, V * 4);
        },
      });
      // Three in the first step, then one each time a slot frees.
      expect(calls.flat().sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6]);
      expect(calls[0]).toEqual([0, 1, 2]);
      const got = await gpu.readF32(captured);
      for (const [i, prompt] of prompts.entries()) {
        const alone = await generate(model, [prompt], {
          maxNewTokens: 1,
          stopTokenIds: new Set(),
          onPromptLogits: (batch, logits) => void batch.copy(logits, 0, captured, 0, V * 4),
        });
        expect(alone.tokens[0]).toHaveLength(1);
        const expected = await gpu.readF32(captured, 0, V);
        expect(relativeError(expected, got.subarray(i * V, (i + 1) * V)), `prompt ${i}`).toBeLessThan(1e-6);
      }
      gpu.destroyBuffer(captured);
    } finally {
      model.dispose();
    }
  });
});

describe('search-trial answers on the bundled model', () => {
  it('stopping at a decided refusal keeps every verdict; compaction keeps every token; the KL logits are the prefill\'s', async () => {
    const model = await LlamaModel.load(gpu, new NodeFolder('models/tiny-chat'));
    try {
      const prompts = new EvaluationPrompts(model, { harmful: lines('data/harmful_val.txt', 8), harmless: lines('data/harmless_val.txt', 8) });
      const V = model.config.vocabSize;
      const logits = gpu.createBuffer(8 * V * 4, 'first-token logits');
      const options = { maxNewTokens: 32, batchSize: 5 };
      const full = await answerPromptSets(model, prompts, options);
      const early = await answerPromptSets(model, prompts, { ...options, stopAtRefusal: true, harmlessLogits: logits });
      for (const set of ['harmful', 'harmless'] as const) {
        expect(early[set].answers.map((a) => a.refused)).toEqual(full[set].answers.map((a) => a.refused));
        for (const [i, a] of early[set].answers.entries()) expect(full[set].answers[i]!.answer.startsWith(a.answer)).toBe(true);
      }
      // The bundled model refuses harmful prompts and answers harmless ones: both kinds of verdict occur.
      expect(full.harmful.refused).toBeGreaterThan(0);
      expect(full.harmless.refused).toBeLessThan(8);
      const shorter = early.harmful.answers.filter((a, i) => a.answer.length < full.harmful.answers[i]!.answer.length).length;
      expect(shorter).toBeGreaterThan(0);
      // Static batches (every row kept to the end of its batch) give the same answers as compaction.
      const tokens = [...prompts.harmful.tokens(32), ...prompts.harmless.tokens(32)];
      const reference = await generate(model, tokens, { maxNewTokens: 32, batchSize: 5, compact: false });
      expect([...full.harmful.answers, ...full.harmless.answers].map((a) => a.answer)).toEqual(reference.tokens.map((t) => model.tokenizer!.decode(t, { skipSpecialTokens: true })));
      expect(reference.finish).toContain('stop');
      // The harmless prompts' first-token logits match a separate prefill of the same tokens.
      const separate = await firstTokenLogits(model, prompts.harmless.prompts, { batchSize: 4 });
      const a = await gpu.readF32(logits);
      const b = await gpu.readF32(separate);
      expect(relativeError(b, a)).toBeLessThan(1e-5);
      gpu.destroyBuffer(logits);
      gpu.destroyBuffer(separate);
    } finally {
      model.dispose();
    }
  }, 600_000);
});
