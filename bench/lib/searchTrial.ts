import { readFileSync } from 'node:fs';
import { answerPromptSets, EvaluationPrompts, klOfLogits } from '../../src/abliterate/evaluate.ts';
import { measure } from '../../src/abliterate/measure.ts';
import { applyTrialCut, classicTrials, TrialEvaluator } from '../../src/abliterate/optimize/search.ts';
import { cutParameters, searchSpace } from '../../src/abliterate/optimize/space.ts';
import { chatTokens } from '../../src/abliterate/prefill.ts';
import { DEFAULT_REFUSAL_MARKERS } from '../../src/abliterate/refusal.ts';
import type { FileFolder } from '../../src/io/byteSource.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { LlamaModel } from '../../src/model/model.ts';
import type { Bench } from './runner.ts';
import { SHAPES, syntheticModelFolder } from './syntheticModel.ts';
import { renderTable } from './table.ts';

/** One search trial's work on one model, and where its time went. */
export interface TrialFigures {
  model: string;
  harmfulPrompts: number;
  harmlessPrompts: number;
  maxNewTokens: number;
  batchSize: number;
  /** Seconds of `TrialEvaluator.evaluate` (cut, answers and KL, undo): median of `reps`. */
  trialSeconds: number;
  reps: number;
  /** One more trial taken apart: seconds of each phase (each waited for on the GPU). */
  phases: { cut: number; answers: number; kl: number; undo: number };
  /** Forward steps (prefill and decode, packed) and rows of the answers in that trial. */
  steps: number;
  rows: number;
  refusals: number;
  harmlessRefusals: number;
}

interface TrialCase {
  /** What --trial-models names it by. */
  key: string;
  name: string;
  folder: () => FileFolder;
  harmful: number;
  harmless: number;
  maxNewTokens: number;
  batchSize: number;
  /** Training prompts of each kind the directions are measured from. */
  measurePrompts: number;
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json'];

function promptLines(path: string, count: number): string[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .slice(0, count);
}

/** A random-weight model of the shape with the bundled model's tokenizer (its ids are a subset of the vocabulary), so prompts go through the chat template. */
function randomFolder(shape: string): () => FileFolder {
  return () => {
    const extra = new Map<string, Uint8Array<ArrayBuffer>>();
    for (const f of TOKENIZER_FILES) extra.set(f, new Uint8Array(readFileSync(`models/tiny-chat/${f}`)));
    return syntheticModelFolder(SHAPES[shape]!, extra).folder;
  };
}

/** The cases: the bundled model with the search's real validation workload; random models with a few short answers. */
export function trialCases(options: { quick: boolean; models: readonly string[] }): TrialCase[] {
  const all: TrialCase[] = [
    { key: 'bundled', name: 'bundled tiny-chat', folder: () => new NodeFolder('models/tiny-chat'), harmful: 48, harmless: 48, maxNewTokens: 32, batchSize: 32, measurePrompts: 32 },
    { key: 'smollm2-135m', name: 'random smollm2-135m bf16', folder: randomFolder('smollm2-135m'), harmful: options.quick ? 4 : 8, harmless: options.quick ? 4 : 8, maxNewTokens: options.quick ? 8 : 16, batchSize: 16, measurePrompts: 4 },
    { key: 'llama-1b', name: 'random llama-1b bf16', folder: randomFolder('llama-1b'), harmful: 4, harmless: 4, maxNewTokens: 8, batchSize: 8, measurePrompts: 2 },
    // For dry runs of the case itself.
    { key: 'tiny', name: 'random tiny bf16', folder: randomFolder('tiny'), harmful: 4, harmless: 4, maxNewTokens: 8, batchSize: 8, measurePrompts: 2 },
  ];
  const unknown = options.models.filter((m) => !all.some((c) => c.key === m));
  if (unknown.length) throw new Error(`unknown --trial-models ${unknown.join(', ')}; choose from ${all.map((c) => c.key).join(', ')}`);
  return all.filter((c) => options.models.includes(c.key));
}

async function benchCase(bench: Bench, c: TrialCase): Promise<TrialFigures> {
  const { gpu } = bench;
  const log = (t: string) => process.stderr.write(`search trial ${c.name}: ${t}\n`);
  const model = await LlamaModel.load(gpu, c.folder());
  try {
    const harmful = promptLines('data/harmful_val.txt', c.harmful);
    const harmless = promptLines('data/harmless_val.txt', c.harmless);
    const L = model.config.numLayers;
    const train = (kind: string) => chatTokens(model, promptLines(`data/${kind}_train.txt`, c.measurePrompts));
    const measurement = await measure(model, train('harmful'), train('harmless'), { batchSize: c.batchSize });
    // The first trial of every search: the classic cut of the best-separated point.
    const params = cutParameters(classicTrials(L, measurement, searchSpace(L, { directionWindow: [0, 1] }))[0]!);
    const prompts = new EvaluationPrompts(model, { harmful, harmless }, 'validation');
    const options = { maxNewTokens: c.maxNewTokens, batchSize: c.batchSize, markers: DEFAULT_REFUSAL_MARKERS };
    const evaluator = await TrialEvaluator.create(model, measurement, prompts, options);
    try {
      await evaluator.evaluate(params); // warm-up: pipelines of every step shape
      const times: number[] = [];
      const reps = bench.options.quick ? 1 : 3;
      for (let i = 0; i < reps; i++) {
        const start = performance.now();
        await evaluator.evaluate(params);
        times.push((performance.now() - start) / 1000);
      }
      times.sort((a, b) => a - b);
      // One more, phase by phase, as TrialEvaluator.evaluate runs them.
      const logits = gpu.createBuffer(harmless.length * model.config.vocabSize * 4, 'bench trial logits');
      const baseline = gpu.createBuffer(harmless.length * model.config.vocabSize * 4, 'bench baseline logits');
      try {
        await answerPromptSets(model, prompts, { ...options, stopAtRefusal: true, harmlessLogits: baseline });
        let t = performance.now();
        const lap = async () => {
          await gpu.finish();
          const now = performance.now();
          const s = (now - t) / 1000;
          t = now;
          return s;
        };
        const cut = await applyTrialCut(model, measurement, params);
        const cutSeconds = await lap();
        // Count the forward steps the answers take: what the time is made of, whatever the load.
        const forward = model.forward;
        const run = forward.run.bind(forward);
        let steps = 0;
        let rows = 0;
        forward.run = (step, ...rest) => {
          steps++;
          rows += step.tokens.length;
          return run(step, ...rest);
        };
        let answers;
        try {
          answers = await answerPromptSets(model, prompts, { ...options, stopAtRefusal: true, harmlessLogits: logits });
        } finally {
          forward.run = run;
        }
        const answerSeconds = await lap();
        await klOfLogits(model, baseline, logits, harmless.length);
        const klSeconds = await lap();
        await cut.undo();
        const undoSeconds = await lap();
        log(`${times[times.length >> 1]!.toFixed(2)} s per trial`);
        return {
          model: c.name,
          harmfulPrompts: harmful.length,
          harmlessPrompts: harmless.length,
          maxNewTokens: c.maxNewTokens,
          batchSize: c.batchSize,
          trialSeconds: times[times.length >> 1]!,
          reps,
          phases: { cut: cutSeconds, answers: answerSeconds, kl: klSeconds, undo: undoSeconds },
          steps,
          rows,
          refusals: answers.harmful.refused,
          harmlessRefusals: answers.harmless.refused,
        };
      } finally {
        gpu.destroyBuffer(logits);
        gpu.destroyBuffer(baseline);
      }
    } finally {
      evaluator.dispose();
    }
  } finally {
    model.dispose();
  }
}

/** Times a search trial (cut, answers to the validation prompts, first-token KL, undo) on each model. */
export async function benchSearchTrials(bench: Bench, models: readonly string[]): Promise<TrialFigures[]> {
  const figures: TrialFigures[] = [];
  for (const c of trialCases({ quick: bench.options.quick, models })) {
    if (bench.wants('trial', c.name)) figures.push(await benchCase(bench, c));
  }
  return figures;
}

export function searchTrialText(adapter: string, figures: readonly TrialFigures[]): string {
  if (figures.length === 0) return '';
  const pct = (part: number, f: TrialFigures) => `${((100 * part) / (f.phases.cut + f.phases.answers + f.phases.kl + f.phases.undo)).toFixed(0)}%`;
  return (
    `search trial (adapter ${adapter}; TrialEvaluator.evaluate: the classic cut, greedy answers to the validation prompts in one queue, ` +
    `each stopped once decided, first-token KL from their prefill, undo by snapshot copy; phases, forward steps and rows from one more trial; ` +
    `a random model's verdicts mean nothing)\n` +
    renderTable(
      ['model', 'prompts H+B', 'tokens', 'batch', 'trial s', 'cut', 'answers', 'KL', 'undo', 'steps', 'rows', 'refused H/B'],
      figures.map((f) => [
        f.model,
        `${f.harmfulPrompts}+${f.harmlessPrompts}`,
        String(f.maxNewTokens),
        String(f.batchSize),
        f.trialSeconds.toFixed(2),
        `${f.phases.cut.toFixed(2)} (${pct(f.phases.cut, f)})`,
        `${f.phases.answers.toFixed(2)} (${pct(f.phases.answers, f)})`,
        `${f.phases.kl.toFixed(3)} (${pct(f.phases.kl, f)})`,
        `${f.phases.undo.toFixed(3)} (${pct(f.phases.undo, f)})`,
        String(f.steps),
        String(f.rows),
        `${f.refusals}/${f.harmlessRefusals}`,
      ]),
    )
  );
}
