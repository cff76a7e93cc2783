import type { LlamaModel } from '../model/model.ts';
import { collectLastTokenResiduals, project, releaseActivations, type MeasureOptions } from './measure.ts';
import { checkDirection } from './directionsFile.ts';
import { auroc } from './stats.ts';

export interface ProbeResult {
  /** [point][prompt]: the last-token residual at each point projected on that point's direction. */
  projections: Float32Array[];
  /** Per point, the AUROC of the projection as a predictor of the labels (when labels are given). */
  auroc: number[] | undefined;
}

/**
 * Projects each prompt's last-token residual, at every point of the residual stream, onto a
 * direction (one per point, or the same for all), on the GPU. With labels (true = refused, or
 * harmful), reports how well the projection separates them at each point (AUROC).
 */
export async function probe(
  model: LlamaModel,
  prompts: readonly (readonly number[])[],
  directions: readonly Float32Array[],
  labels?: readonly boolean[],
  options: MeasureOptions = {},
): Promise<ProbeResult> {
  const points = model.config.numLayers + 1;
  const perPoint = directions.length === 1 ? Array.from({ length: points }, () => directions[0]!) : [...directions];
  if (perPoint.length !== points) throw new RangeError(`probing needs one direction, or one per point (${points}); got ${directions.length}`);
  // Per point, a zero direction (no difference measured there) projects everything to 0.
  for (const [p, d] of directions.entries()) checkDirection(d, model.config.hiddenSize, `the direction of point ${p}`, { allowZero: directions.length > 1 });
  if (labels && labels.length !== prompts.length) throw new RangeError(`${labels.length} labels for ${prompts.length} prompts`);
  const activations = await collectLastTokenResiduals(model, prompts, options);
  try {
    const projections = await project(model.gpu, activations, perPoint, model.config.hiddenSize);
    return { projections, auroc: labels ? projections.map((p) => auroc(p, labels)) : undefined };
  } finally {
    releaseActivations(model.gpu, activations);
  }
}
