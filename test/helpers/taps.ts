import type { Gpu } from '../../src/gpu/gpu.ts';
import { KvCache } from '../../src/model/kvCache.ts';
import type { LlamaModel } from '../../src/model/model.ts';
import { HookRunner, type Hook, type TapPoint } from '../../src/model/taps.ts';

/**
 * One prefill of `prompts` packed together, writing every point at every position ([layer][row][dim]
 * per point, one layer for `embed` and `final_norm`) and the last row's logits of each prompt.
 * `before` hooks (an ablation) run ahead of the writes, so the taps see what they changed.
 */
export async function tapEverything(gpu: Gpu, model: LlamaModel, prompts: number[][], before: Hook[] = []) {
  const { config } = model;
  const H = config.hiddenSize;
  const total = prompts.reduce((n, p) => n + p.length, 0);
  const points: TapPoint[] = ['embed', 'resid_pre', 'attn_out', 'resid_mid', 'mlp_out', 'resid_post', 'final_norm'];
  const buffers = new Map<TapPoint, GPUBuffer>();
  const hooks: Hook[] = points.map((point) => {
    const layers = point === 'embed' || point === 'final_norm' ? 1 : config.numLayers;
    const buffer = gpu.createBuffer(layers * total * H * 4, point);
    buffers.set(point, buffer);
    return { point, positions: 'all', action: { kind: 'write', buffer, rowsPerLayer: total } };
  });
  const runner = new HookRunner([...before, ...hooks], config.numLayers);
  const cache = new KvCache(gpu, config, prompts.length, Math.max(...prompts.map((p) => p.length)));
  let start = 0;
  const sequences = prompts.map((p, slot) => {
    const s = { slot, start, length: p.length, firstPosition: 0 };
    start += p.length;
    return s;
  });
  const batch = gpu.batch('taps');
  const logits = model.forward.recordStep(batch, { tokens: prompts.flat(), sequences, logits: 'last' }, cache, runner)!;
  await batch.submit();
  runner.endStep(gpu, sequences);
  const taps = new Map<TapPoint, Float32Array>();
  for (const [point, buffer] of buffers) {
    taps.set(point, await gpu.readF32(buffer));
    gpu.destroyBuffer(buffer);
  }
  const logitValues = await gpu.readF32(logits, 0, prompts.length * config.vocabSize);
  cache.dispose();
  return { taps, logits: logitValues, sequences };
}
