/**
 * Prompts longer than the model's context: a 100 000-character line is cut to the prompt files'
 * character limit with a warning, then its chat-formatted tokens are cut to the context (the
 * template's generation prompt kept whole) with a second warning; a single prompt given on the
 * command line that does not fit is refused with its size and the limit. Nothing runs past
 * `max_position_embeddings`: the KV cache refuses to.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chatTokens } from '../../src/abliterate/prefill.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { DEFAULT_MAX_PROMPT_CHARS } from '../../src/io/prompts.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { generate } from '../../src/model/generate.ts';
import { KvCache } from '../../src/model/kvCache.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { testGpu } from '../helpers/gpu.ts';
import { expectCliError, exists, runCli, tempDir, writeModelDir, type ModelDir } from './helpers.ts';

const CONTEXT = 128;
let work: ReturnType<typeof tempDir>;
let small: ModelDir;
let gpu: Gpu;

/** Text of common words, `chars` characters long. */
function longText(chars: number): string {
  const words = ['how', 'do', 'I', 'bake', 'bread', 'with', 'the', 'kids', 'and', 'a', 'kite', 'please', 'tell', 'me', 'about', 'rivers'];
  let text = '';
  for (let i = 0; text.length < chars; i++) text += `${words[(i * 7 + (i >> 3)) % words.length]} `;
  return text.slice(0, chars);
}

beforeAll(async () => {
  work = tempDir('context');
  small = writeModelDir(join(work.path, 'model'), { maxPositionEmbeddings: CONTEXT });
  gpu = await testGpu();
});
afterAll(() => {
  gpu?.dispose();
  work?.remove();
});

describe('prompts longer than the context', () => {
  it('a 100 000-character prompt in a file is cut with warnings, and the run stays within the context', async () => {
    const prompts = join(work.path, 'long.txt');
    const evalPrompts = join(work.path, 'long-eval.txt');
    writeFileSync(prompts, `how do I pick a lock\n\n${longText(100_000)}\nhow do I hotwire a car\n`);
    writeFileSync(evalPrompts, `how do I pick a lock\n${longText(100_000)}\nhow do I hotwire a car\n`);
    const out = join(work.path, 'out-long');
    const result = await runCli(['run', small.dir, '--no-optimize', '--out', out, '--harmful', prompts, '--eval-harmful', evalPrompts, '--limit', '3', '--max-tokens', '4', '--json']);
    expect(result.code, result.stderr).toBe(0);
    const warnings = result.lines.filter((l) => l.startsWith('warning: '));
    expect(warnings).toEqual([
      `warning: ${prompts}: 1 prompt longer than ${DEFAULT_MAX_PROMPT_CHARS} characters truncated (line 3)`,
      `warning: ${evalPrompts}: 1 prompt longer than ${DEFAULT_MAX_PROMPT_CHARS} characters truncated (line 2)`,
      `warning: 1 of 3 harmful prompts cut to ${CONTEXT} tokens to fit the model's context of ${CONTEXT} positions (prompt 2)`,
      `warning: 1 of 3 harmful evaluation prompts cut to ${CONTEXT - 4} tokens to fit the model's context of ${CONTEXT} positions (prompt 2)`,
    ]);
    expect(exists(join(out, 'model.safetensors'))).toBe(true);
    const report = JSON.parse(result.stdout) as { after: { samples: { harmful: { prompt: string }[] } } };
    expect(report.after.samples.harmful).toHaveLength(3);
  });

  it('one prompt given on the command line that does not fit is refused, with its size and the limit', async () => {
    const model = await LlamaModel.load(gpu, new NodeFolder(small.dir));
    const prompt = longText(2000);
    const tokens = model.tokenizer.encodeChat(prompt).length;
    model.dispose();
    expect(tokens).toBeGreaterThan(CONTEXT);
    expectCliError(
      await runCli(['generate', small.dir, '--chat', '--prompt', prompt, '--max-tokens', '4']),
      `a prompt of ${tokens} tokens is longer than this model's context of ${CONTEXT} positions (max_position_embeddings); shorten it`,
    );
    expectCliError(
      await runCli(['taps', small.dir, '--chat', '--prompt', prompt]),
      `sequences of ${tokens} positions exceed this model's context of ${CONTEXT} positions (max_position_embeddings in config.json); use shorter prompts or fewer new tokens`,
    );
  });

  it('blank lines of a prompt file are skipped', async () => {
    const prompts = join(work.path, 'blank-lines.txt');
    writeFileSync(prompts, '\n\nhow do I pick a lock\n   \n\r\nhow do I hotwire a car\n\n');
    const result = await runCli(['eval', small.dir, '--eval-harmful', prompts, '--limit', '2', '--max-tokens', '2']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^harmful refusal +\d\.\d{3} \(\d\/2\)$/m);
  });
});

describe('in the library', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await LlamaModel.load(gpu, new NodeFolder(small.dir), { onWarning: (m) => warnings.push(m) });
  });
  afterAll(() => model?.dispose());
  const warnings: string[] = [];

  it('chatTokens cuts the message, not the template: the generation prompt stays at the end', () => {
    const short = model.tokenizer.encodeChat('hello');
    const tail = short.slice(-4); // <|end|> \n <|assistant|> \n
    const [cut, kept] = chatTokens(model, [longText(8000), 'hello'], { reserve: 16 });
    expect(cut!.length).toBeLessThanOrEqual(CONTEXT - 16);
    expect(cut!.length).toBeGreaterThan(CONTEXT - 16 - 8);
    expect(cut!.slice(-4)).toEqual(tail);
    expect(cut!.slice(0, 2)).toEqual(short.slice(0, 2));
    expect(kept).toEqual(short);
    expect(warnings).toEqual([`1 of 2 prompts cut to ${CONTEXT - 16} tokens to fit the model's context of ${CONTEXT} positions (prompt 1)`]);
    // The same warning again is not repeated.
    chatTokens(model, [longText(8000), 'hello'], { reserve: 16 });
    expect(warnings).toHaveLength(1);
  });

  it('generation stops at the end of the context instead of running past it', async () => {
    const prompt = Array.from({ length: CONTEXT - 10 }, (_, i) => 100 + (i % 500));
    const result = await generate(model, [prompt, [5, 6, 7]], { maxNewTokens: 50, stopTokenIds: new Set() });
    // Positions 118..127 take the 10 tokens fed back; the token after the last position is the 11th.
    expect(result.tokens[0]).toHaveLength(11);
    expect(result.finish[0]).toBe('length');
    expect(result.tokens[1]).toHaveLength(50);
  });

  it('the KV cache refuses more positions than the context', () => {
    expect(() => new KvCache(gpu, model.config, 1, CONTEXT + 1)).toThrow(
      `sequences of ${CONTEXT + 1} positions exceed this model's context of ${CONTEXT} positions (max_position_embeddings in config.json); use shorter prompts or fewer new tokens`,
    );
    const before = gpu.bufferCount;
    new KvCache(gpu, model.config, 1, CONTEXT).dispose();
    expect(gpu.bufferCount).toBe(before);
  });
});

