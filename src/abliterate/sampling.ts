import { mulberry32 } from '../util/random.ts';

/**
 * A seeded sample of n items, kept in their original order (all of them when n is 0 or not smaller
 * than the set). The same items, seed and n always give the same sample.
 */
export function samplePrompts<T>(items: readonly T[], n: number, seed = 1): T[] {
  if (n <= 0 || n >= items.length) return [...items];
  const random = mulberry32(seed);
  const keys = items.map((_, i) => [random(), i] as const).sort((a, b) => a[0] - b[0]);
  return keys
    .slice(0, n)
    .map(([, i]) => i)
    .sort((a, b) => a - b)
    .map((i) => items[i]!);
}
