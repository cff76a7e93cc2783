import type { Workgroups } from './gpu.ts';

/** Workgroups covering `n` invocations of `size` threads, folded into 2D when over the 65535 limit. */
export function workgroups1D(n: number, size: number, maxPerDimension = 65535): Workgroups {
  const groups = Math.ceil(n / size);
  if (groups <= maxPerDimension) return [groups, 1];
  const y = Math.ceil(groups / maxPerDimension);
  return [Math.ceil(groups / y), y];
}
