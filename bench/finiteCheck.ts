/**
 * What the non-finite checks of the forward pass cost: decode and prefill speed of a model with the
 * checks on and off, alternating runs so that both see the same machine load.
 * `npx tsx bench/finiteCheck.ts [model-dir] [--rounds N]` (default models/tiny-chat, 5 rounds).
 */
import { resolve } from 'node:path';
import { createNodeGpu } from '../src/gpu/node.ts';
import { NodeFolder } from '../src/io/nodeFolder.ts';
import { generate } from '../src/model/generate.ts';
import { LlamaModel } from '../src/model/model.ts';
import { prefillPrompts } from '../src/abliterate/prefill.ts';

const args = process.argv.slice(2);
const roundsAt = args.indexOf('--rounds');
const rounds = roundsAt >= 0 ? Number(args[roundsAt + 1]) : 5;
const dir = resolve(args.find((a, i) => !a.startsWith('--') && args[i - 1] !== '--rounds') ?? 'models/tiny-chat');

const gpu = await createNodeGpu();
const model = await LlamaModel.load(gpu, new NodeFolder(dir));
const newTokens = 64;
const prompt = model.tokenizer.encodeChat('Tell me about the weather in the mountains.');
const prefill = Array.from({ length: 32 }, (_, i) => model.tokenizer.encodeChat(`Question number ${i}: how do plants grow?`));
const noStop = new Set<number>();

async function decodeRate(): Promise<number> {
  const start = performance.now();
  await generate(model, [prompt], { maxNewTokens: newTokens, stopTokenIds: noStop });
  return newTokens / ((performance.now() - start) / 1000);
}

async function prefillRate(): Promise<number> {
  const tokens = prefill.reduce((n, p) => n + p.length, 0);
  const start = performance.now();
  await prefillPrompts(model, prefill, { batchSize: 32 });
  return tokens / ((performance.now() - start) / 1000);
}

const results: Record<'on' | 'off', { decode: number[]; prefill: number[] }> = { on: { decode: [], prefill: [] }, off: { decode: [], prefill: [] } };
await decodeRate(); // compiles the kernels
for (let r = 0; r < rounds; r++) {
  for (const mode of r % 2 === 0 ? (['on', 'off'] as const) : (['off', 'on'] as const)) {
    model.forward.checkFinite = mode === 'on';
    results[mode].decode.push(await decodeRate());
    results[mode].prefill.push(await prefillRate());
  }
}
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
console.log(`adapter ${gpu.adapter.name}; ${dir}; ${rounds} rounds, medians`);
for (const kind of ['decode', 'prefill'] as const) {
  const on = median(results.on[kind]);
  const off = median(results.off[kind]);
  console.log(`${kind.padEnd(8)} checks on ${on.toFixed(1)} tokens/s, off ${off.toFixed(1)} tokens/s (${(((off - on) / off) * 100).toFixed(1)} % slower)`);
}
model.dispose();
gpu.dispose();
