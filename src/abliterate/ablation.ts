import type { Gpu } from '../gpu/gpu.ts';
import type { ModelConfig } from '../model/config.ts';
import type { Hook } from '../model/taps.ts';

/**
 * Hooks that remove directions from every write into the residual stream at run time: the
 * embedding, each attention output and each MLP output (Arditi et al.'s directional ablation).
 * This is what cutting the embedding, `o_proj` and `down_proj` does to the weights; for tied
 * embeddings the cut also changes the output projection, which equals ablating the final norm's
 * output, so that point is included when the embeddings are tied. In post-normed blocks (Gemma) the
 * cut's writes point where these hooks' do, with a length changed by the norm (ARCHITECTURE.md,
 * "Post-normed blocks").
 */
export function ablationHooks(config: Pick<ModelConfig, 'tieWordEmbeddings'>, basis: GPUBuffer, directions = 1, alpha = 1, options: { embedding?: boolean } = {}): Hook[] {
  const action = { kind: 'project_out', basis, directions, alpha } as const;
  const embedding = options.embedding ?? true;
  const hooks: Hook[] = [
    { point: 'attn_out', positions: 'all', action },
    { point: 'mlp_out', positions: 'all', action },
  ];
  if (embedding) hooks.unshift({ point: 'embed', positions: 'all', action });
  if (embedding && config.tieWordEmbeddings) hooks.push({ point: 'final_norm', positions: 'all', action });
  return hooks;
}

/** Uploads unit directions as the rows of a basis buffer. */
export function uploadBasis(gpu: Gpu, directions: readonly Float32Array[]): GPUBuffer {
  const dim = directions[0]?.length ?? 0;
  const data = new Float32Array(directions.length * dim);
  directions.forEach((d, i) => data.set(d, i * dim));
  return gpu.upload(data, 'direction basis');
}
