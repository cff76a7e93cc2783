import type { PointScore, Measurement } from './measure.ts';

export type SelectionMetric = 'effect_size' | 'gap' | 'relative_gap';

export interface ScoreSelectionOptions {
  /** Fractions of depth [from, to] to choose in (inclusive); default [0.2, 0.8]. */
  window?: readonly [number, number];
  metric?: SelectionMetric;
}

export const DEFAULT_WINDOW: readonly [number, number] = [0.2, 0.8];

function value(score: PointScore, metric: SelectionMetric): number {
  return metric === 'gap' ? score.gap : metric === 'relative_gap' ? score.relativeGap : score.effectSize;
}

/** The measured points inside a depth window, best first by the metric; never the embedding (point 0). */
export function rankPoints(measurement: Pick<Measurement, 'points' | 'scores'>, options: ScoreSelectionOptions = {}): PointScore[] {
  const [from, to] = options.window ?? DEFAULT_WINDOW;
  const metric = options.metric ?? 'effect_size';
  const last = measurement.points - 1;
  const inside = measurement.scores.filter((s) => s.point >= Math.round(from * last) && s.point <= Math.round(to * last) && s.point > 0);
  const candidates = inside.length ? inside : measurement.scores.filter((s) => s.point > 0);
  return [...candidates].sort((a, b) => value(b, metric) - value(a, metric));
}

/**
 * The default choice: the best-separated point within a window of middle-to-upper depth. The
 * window keeps out the first layers (token identity, directions that do not generalise) and the
 * last ones (too close to the output to steer the decision); the effect size is scale-free, so it
 * does not favour deep layers merely for their larger activations, as the raw gap does.
 */
export function selectPoint(measurement: Pick<Measurement, 'points' | 'scores'>, options: ScoreSelectionOptions = {}): PointScore {
  const best = rankPoints(measurement, options)[0];
  if (!best) throw new RangeError('no point after a decoder layer to choose from');
  return best;
}
