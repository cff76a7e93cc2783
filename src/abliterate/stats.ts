/** Small float64 vector and statistics helpers for the per-layer scores. */

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

export function norm(a: ArrayLike<number>): number {
  return Math.sqrt(dot(a, a));
}

export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const d = norm(a) * norm(b);
  return d === 0 ? 0 : dot(a, b) / d;
}

export function mean(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i]!;
  return values.length ? s / values.length : NaN;
}

/** Sample variance (n − 1). */
export function variance(values: ArrayLike<number>): number {
  if (values.length < 2) return 0;
  const m = mean(values);
  let s = 0;
  for (let i = 0; i < values.length; i++) s += (values[i]! - m) ** 2;
  return s / (values.length - 1);
}

/** Cohen's d: difference of means over the pooled standard deviation. */
export function effectSize(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const pooled = Math.sqrt(((a.length - 1) * variance(a) + (b.length - 1) * variance(b)) / Math.max(1, a.length + b.length - 2));
  const gap = mean(a) - mean(b);
  return pooled === 0 ? (gap === 0 ? 0 : Math.sign(gap) * Infinity) : gap / pooled;
}

/**
 * Area under the ROC curve of `scores` as a predictor of `labels` (true = positive): the probability
 * that a random positive scores above a random negative, ties counting half.
 */
export function auroc(scores: ArrayLike<number>, labels: ArrayLike<boolean>): number {
  const order = Array.from({ length: scores.length }, (_, i) => i).sort((i, j) => scores[i]! - scores[j]!);
  let positives = 0;
  let negatives = 0;
  let rankSum = 0;
  // Midranks for ties.
  for (let start = 0; start < order.length; ) {
    let end = start;
    while (end + 1 < order.length && scores[order[end + 1]!] === scores[order[start]!]) end++;
    const midrank = (start + end) / 2 + 1;
    for (let k = start; k <= end; k++) {
      if (labels[order[k]!]) {
        positives++;
        rankSum += midrank;
      } else negatives++;
    }
    start = end + 1;
  }
  if (positives === 0 || negatives === 0) return NaN;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}
