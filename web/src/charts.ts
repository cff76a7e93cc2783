/**
 * The two charts of the results, drawn with Observable Plot: separation scores per residual-stream
 * point with the chosen point marked, and overlaid histograms of harmful vs harmless projections on the direction.
 * Both are SVG as wide as their container and carry an ARIA label for screen readers.
 */
import * as Plot from '@observablehq/plot';

/** The stylesheet's --harmful and --harmless: Plot's colour scale needs the values themselves. */
const SET_COLORS = { harmful: '#d0453b', harmless: '#2f6fd1' } as const;
type PromptSet = keyof typeof SET_COLORS;

/** As wide as the container (so text keeps its size on a phone), 640 px when not laid out. */
function chartSize(container: HTMLElement): { width: number; height: number } {
  const width = Math.max(300, Math.round(container.clientWidth || 640));
  return { width, height: width < 480 ? 240 : 280 };
}

export interface ScorePoint {
  /** The residual-stream point (0 = embedding, i = output of decoder layer i − 1). */
  point: number;
  value: number;
}

/**
 * Bars of one score per residual-stream point (0 = embedding), the selection window shaded and
 * the chosen point highlighted and labelled. Each bar is a `rect.bar` with `data-layer` (the point),
 * the chosen one also `.chosen`.
 */
export function drawScoreChart(container: HTMLElement, points: readonly ScorePoint[], options: { chosen: number; window?: readonly [number, number]; metricName: string }): void {
  const { width, height } = chartSize(container);
  const indices = points.map((p) => p.point);
  // Label every point when there is room (about 22 px each), else every few; always the chosen one.
  const every = Math.ceil((points.length * 22) / (width - 70));
  const ticks = indices.filter((point, i) => i % every === 0 || point === options.chosen);
  const window = options.window ? [options.window] : [];
  const chart = Plot.plot({
    width,
    height,
    marginLeft: 56,
    marginTop: 28,
    marginBottom: 44,
    ariaLabel: `${options.metricName} per point of the residual stream; the direction was taken at point ${options.chosen}`,
    x: {
      domain: [Math.min(...indices) - 0.5, Math.max(...indices) + 0.5],
      ticks,
      tickFormat: 'd',
      label: width < 480 ? 'point (0 = embedding)' : 'point (0 = embedding, i = output of decoder layer i − 1)',
      labelAnchor: 'center',
      labelArrow: 'none',
    },
    y: { label: options.metricName, grid: true, nice: true, labelArrow: 'none' },
    marks: [
      Plot.rect(window, { x1: (w: readonly [number, number]) => w[0] - 0.5, x2: (w: readonly [number, number]) => w[1] + 0.5, className: 'window' }),
      Plot.text(window, { x: (w: readonly [number, number]) => w[0] - 0.5, frameAnchor: 'top', text: () => 'selection window', textAnchor: 'start', dx: 4, dy: -10, className: 'window-label' }),
      Plot.ruleY([0]),
      Plot.rectY(points, {
        x1: (p: ScorePoint) => p.point - 0.35,
        x2: (p: ScorePoint) => p.point + 0.35,
        y: 'value',
        title: (p: ScorePoint) => `point ${p.point}: ${p.value.toPrecision(4)}`,
        render: (index, scales, values, dimensions, context, next) => {
          const group = next!(index, scales, values, dimensions, context)!;
          group.querySelectorAll('rect').forEach((rect, i) => {
            const point = points[index[i]!]!.point;
            rect.classList.add('bar');
            if (point === options.chosen) rect.classList.add('chosen');
            rect.dataset.layer = String(point);
          });
          return group;
        },
      }),
      Plot.text(
        points.filter((p) => p.point === options.chosen),
        { x: 'point', y: (p: ScorePoint) => Math.max(p.value, 0), text: (p: ScorePoint) => `▼ point ${p.point}`, dy: -8, className: 'marker' },
      ),
    ],
  });
  container.replaceChildren(chart);
}

/**
 * At least `target` round values in [lo, hi] (at most about twice as many): the largest step of
 * 1, 2, 2.5 or 5 × 10^k that fits `target` steps, so a narrow chart keeps a readable axis.
 */
export function axisTicks(lo: number, hi: number, target: number): number[] {
  const raw = (hi - lo) / target;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [5, 2.5, 2, 1].map((f) => f * magnitude).find((s) => s <= raw) ?? magnitude;
  const ticks: number[] = [];
  for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

function mean(values: readonly number[]): number {
  return values.reduce((sum, v) => sum + v, 0) / values.length;
}

/**
 * Overlaid histograms of two sets of projections on shared bins, with each set's mean as a dashed
 * line; the bars of a set are in a `g.harmful` / `g.harmless` group.
 */
export function drawHistogram(container: HTMLElement, harmful: ArrayLike<number>, harmless: ArrayLike<number>, options: { point: number }): void {
  const { width, height } = chartSize(container);
  const sets = { harmful: Array.from(harmful).filter(Number.isFinite), harmless: Array.from(harmless).filter(Number.isFinite) };
  const all = [...sets.harmful, ...sets.harmless];
  container.replaceChildren();
  if (all.length === 0) return;
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (lo === hi) {
    lo -= 0.5;
    hi += 0.5;
  }
  const bins = Math.min(40, Math.max(10, Math.round(Math.sqrt(all.length) * 2)));
  const thresholds = Array.from({ length: bins + 1 }, (_, i) => lo + ((hi - lo) * i) / bins);
  const rows = (set: PromptSet) => sets[set].map((value) => ({ value, set }));
  const series = (set: PromptSet) =>
    Plot.rectY(rows(set), Plot.binX<Plot.RectYOptions>({ y: 'count', title: (bin: unknown[]) => `${set}: ${bin.length} prompt${bin.length === 1 ? '' : 's'}` }, { x: 'value', fill: 'set', fillOpacity: 0.6, thresholds, domain: [lo, hi], inset: 0.5, className: set }));
  const means = (Object.keys(sets) as PromptSet[]).filter((set) => sets[set].length > 0).map((set) => ({ value: mean(sets[set]), set }));
  const chart = Plot.plot({
    width,
    height,
    marginLeft: 56,
    // Room for the last tick label at the right edge.
    marginRight: 24,
    marginTop: 16,
    marginBottom: 44,
    ariaLabel: `Histogram of the projections of ${sets.harmful.length} harmful and ${sets.harmless.length} harmless prompts on the refusal direction at point ${options.point}`,
    x: { label: `projection on the refusal direction at point ${options.point}`, labelAnchor: 'center', labelArrow: 'none', ticks: axisTicks(lo, hi, Math.max(3, Math.floor(width / 160))) },
    y: { label: 'prompts', grid: true, nice: true, labelArrow: 'none' },
    color: { domain: Object.keys(SET_COLORS), range: Object.values(SET_COLORS), legend: true, tickFormat: (set: PromptSet) => `${set} (${sets[set].length})` },
    marks: [
      series('harmful'),
      series('harmless'),
      Plot.ruleY([0]),
      Plot.ruleX(means, { x: 'value', stroke: 'set', strokeDasharray: '4 3', strokeWidth: 1.5, className: 'mean' }),
    ],
  });
  container.replaceChildren(chart);
}
