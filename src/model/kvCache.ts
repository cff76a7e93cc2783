import type { Gpu } from '../gpu/gpu.ts';
import { GpuOutOfMemoryError, formatBytes } from '../gpu/errors.ts';
import type { ModelConfig } from './config.ts';

/**
 * The longest sequence (prompt and new tokens) the engine runs for this model: its context, and
 * within longrope's original context (beyond it transformers switches to the long factors, which
 * the engine does not). A sliding window does not shorten it: attention then reads only the
 * window's keys of the cache.
 */
export function contextLength(config: Pick<ModelConfig, 'maxPositionEmbeddings' | 'ropeScaling'>): number {
  const longrope = config.ropeScaling?.type === 'longrope' ? config.ropeScaling.originalMaxPositionEmbeddings : Infinity;
  return Math.min(config.maxPositionEmbeddings, longrope);
}

/**
 * Keys and values of every layer for `slots` sequences of up to `maxLen` positions, f32,
 * laid out [slot, position, kvHead, headDim] per layer.
 */
export class KvCache {
  readonly keys: GPUBuffer[] = [];
  readonly values: GPUBuffer[] = [];

  constructor(
    private readonly gpu: Gpu,
    config: ModelConfig,
    readonly slots: number,
    readonly maxLen: number,
  ) {
    if (maxLen > config.maxPositionEmbeddings) {
      throw new RangeError(
        `sequences of ${maxLen} positions exceed this model's context of ${config.maxPositionEmbeddings} positions (max_position_embeddings in config.json); use shorter prompts or fewer new tokens`,
      );
    }
    if (config.ropeScaling?.type === 'longrope' && maxLen > config.ropeScaling.originalMaxPositionEmbeddings) {
      throw new RangeError(
        `sequences of ${maxLen} positions exceed this model's original context of ${config.ropeScaling.originalMaxPositionEmbeddings} positions; longrope's long factors beyond it are not supported`,
      );
    }
    const bytes = slots * maxLen * config.numKvHeads * config.headDim * 4;
    if (bytes > gpu.limits.maxStorageBufferBindingSize) {
      throw new GpuOutOfMemoryError(
        `a KV cache of ${slots} sequences × ${maxLen} positions needs ${formatBytes(bytes)} per layer, more than one storage binding ` +
          `(${formatBytes(gpu.limits.maxStorageBufferBindingSize)}); use a smaller batch or fewer new tokens`,
      );
    }
    try {
      for (let l = 0; l < config.numLayers; l++) {
        this.keys.push(gpu.createBuffer(bytes, `k cache ${l}`));
        this.values.push(gpu.createBuffer(bytes, `v cache ${l}`));
      }
    } catch (error) {
      this.dispose();
      throw error;
    }
  }

  dispose(): void {
    for (const b of [...this.keys, ...this.values]) this.gpu.destroyBuffer(b);
    this.keys.length = 0;
    this.values.length = 0;
  }
}
