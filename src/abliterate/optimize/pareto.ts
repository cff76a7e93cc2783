/**
 * Pareto dominance, non-dominated sorting and the two-objective hypervolume. Every objective is
 * minimised.
 */

/** Whether `a` is at least as good as `b` in every objective and better in one. */
export function dominates(a: readonly number[], b: readonly number[]): boolean {
  let better = false;
  for (let i = 0; i < a.length; i++) {
    if (a[i]! > b[i]!) return false;
    if (a[i]! < b[i]!) better = true;
  }
  return better;
}

/** The non-domination rank of each point: 0 for the Pareto front, 1 for the front once 0 is removed, … */
export function nondominatedRanks(points: readonly (readonly number[])[]): number[] {
  const n = points.length;
  const dominatedBy = new Array<number>(n).fill(0);
  const dominating: number[][] = points.map(() => []);
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      if (dominates(points[i]!, points[j]!)) {
        dominating[i]!.push(j);
        dominatedBy[j]!++;
      } else if (dominates(points[j]!, points[i]!)) {
        dominating[j]!.push(i);
        dominatedBy[i]!++;
      }
    }
  }
  const ranks = new Array<number>(n).fill(-1);
  let front = points.map((_, i) => i).filter((i) => dominatedBy[i] === 0);
  for (let rank = 0; front.length; rank++) {
    const next: number[] = [];
    for (const i of front) {
      ranks[i] = rank;
      for (const j of dominating[i]!) if (--dominatedBy[j]! === 0) next.push(j);
    }
    front = next;
  }
  return ranks;
}

/** Indices of the points on the Pareto front (rank 0), in their original order. */
export function paretoFront(points: readonly (readonly number[])[]): number[] {
  const ranks = nondominatedRanks(points);
  return ranks.flatMap((r, i) => (r === 0 ? [i] : []));
}

/** The area dominated by two-objective points and bounded by `reference` (points beyond it add nothing). */
export function hypervolume2d(points: readonly (readonly number[])[], reference: readonly [number, number]): number {
  const inside = points.filter((p) => p[0]! < reference[0] && p[1]! < reference[1]).sort((a, b) => a[0]! - b[0]! || a[1]! - b[1]!);
  let area = 0;
  let ceiling = reference[1];
  for (const p of inside) {
    if (p[1]! >= ceiling) continue;
    area += (reference[0] - p[0]!) * (ceiling - p[1]!);
    ceiling = p[1]!;
  }
  return area;
}
