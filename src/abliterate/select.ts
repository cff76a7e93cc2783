import type { LayerScore, Measurement } from './measure.ts';

export type SelectionMetric = 'effect_size' | 'gap' | 'relative_gap';

export interface ScoreSelectionOptions {
  /** Fractions of depth [from, to] to choose in (inclusive); default [0.2, 0.8]. */
  window?: readonly [number, number];
  metric?: SelectionMetric;
}

export const DEFAULT_WINDOW: readonly [number, number] = [0.2, 0.8];

function value(score: LayerScore, metric: SelectionMetric): number {
  return metric === 'gap' ? score.gap : metric === 'relative_gap' ? score.relativeGap : score.effectSize;
}

/** The measured points inside a depth window, best first by the metric. */
export function rankLayers(measurement: Measurement, options: ScoreSelectionOptions = {}): LayerScore[] {
  const [from, to] = options.window ?? DEFAULT_WINDOW;
  const metric = options.metric ?? 'effect_size';
  const last = measurement.points - 1;
  const inside = measurement.scores.filter((s) => s.layer >= Math.round(from * last) && s.layer <= Math.round(to * last) && s.layer > 0);
  const candidates = inside.length ? inside : measurement.scores.filter((s) => s.layer > 0);
  return [...candidates].sort((a, b) => value(b, metric) - value(a, metric));
}

/**
 * The default choice: the best-separated point within a window of middle-to-upper depth. The
 * window keeps out the first layers (token identity, directions that do not generalise) and the
 * last ones (too close to the output to steer the decision); the effect size is scale-free, so it
 * does not favour deep layers merely for their larger activations, as the raw gap does.
 */
export function selectLayer(measurement: Measurement, options: ScoreSelectionOptions = {}): LayerScore {
  const best = rankLayers(measurement, options)[0];
  if (!best) throw new RangeError('no layer to choose from');
  return best;
}
