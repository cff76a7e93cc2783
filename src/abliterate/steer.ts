import type { Gpu } from '../gpu/gpu.ts';
import type { ModelConfig } from '../model/config.ts';
import type { Hook } from '../model/taps.ts';
import { ablationHooks } from './ablation.ts';
import { checkDirection } from './directionsFile.ts';

export type Steering =
  /** Remove the direction from every write into the residual stream (α = 1: the same as the cut). */
  | { kind: 'ablate'; alpha: number; threshold?: number | undefined }
  /** Add scale · d̂ to the residual stream at the direction's point (entering decoder layer `point`), at every position. */
  | { kind: 'add'; scale: number; threshold?: number | undefined };

/**
 * Runtime steering hooks for a unit direction measured at `point` (hidden_states index): weights
 * stay untouched. A threshold makes either conditional on the projection h·d̂ exceeding it.
 */
export function steeringHooks(gpu: Gpu, config: ModelConfig, direction: Float32Array, point: number, steering: Steering): { hooks: Hook[]; buffers: GPUBuffer[] } {
  checkDirection(direction, config.hiddenSize, 'the steering direction');
  const d = gpu.upload(direction, 'steering direction');
  if (steering.kind === 'ablate') {
    const hooks = ablationHooks(config, d, 1, steering.alpha).map((h) =>
      h.action.kind === 'project_out' ? { ...h, action: { ...h.action, threshold: steering.threshold } } : h,
    );
    return { hooks, buffers: [d] };
  }
  const at: Pick<Hook, 'point' | 'layers'> = point < config.numLayers ? { point: 'resid_pre', layers: [point] } : { point: 'resid_post', layers: [config.numLayers - 1] };
  const condition = steering.threshold === undefined ? undefined : { direction: d, threshold: steering.threshold };
  return { hooks: [{ ...at, positions: 'all', action: { kind: 'add', vector: d, scale: steering.scale, condition } }], buffers: [d] };
}
