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

/** One trial of the search as the scatter shows it. */
export interface TrialDot {
  number: number;
  /** Harmful validation prompts still refused. */
  refusals: number;
  kl: number;
  /** On the Pareto front of refusals against KL. */
  front: boolean;
  /** The trial the search's rule chooses. */
  chosen: boolean;
  /** The trial whose cut the results show. */
  shown: boolean;
  /** Refuses no more harmless prompts than the original (the others are drawn hollow). */
  feasible: boolean;
}

/**
 * The search's trials: harmful refusals against first-token KL, one `circle.trial` per trial with
 * `data-trial` (and `.front`, `.chosen`, `.shown`, `.infeasible`), the front joined as a staircase,
 * the original model as a diamond at KL 0. A click on a trial calls `onPick` with its number.
 */
export function drawTrialScatter(container: HTMLElement, dots: readonly TrialDot[], options: { originalRefusals: number; harmful: number; onPick?: (trial: number) => void }): void {
  const { width, height } = chartSize(container);
  const front = dots.filter((d) => d.front).sort((a, b) => a.kl - b.kl || b.refusals - a.refusals);
  const original = Number.isFinite(options.originalRefusals) ? [{ kl: 0, refusals: options.originalRefusals }] : [];
  const klMax = Math.max(0, ...dots.map((d) => d.kl));
  const chart = Plot.plot({
    width,
    height,
    marginLeft: 56,
    marginRight: 28,
    marginTop: 20,
    marginBottom: 44,
    ariaLabel: `${dots.length} trial${dots.length === 1 ? '' : 's'} of the search: harmful validation prompts refused against first-token KL; ${front.length} on the Pareto front`,
    x: { label: 'first-token KL from the original (lower is better)', labelAnchor: 'center', labelArrow: 'none', domain: [0, klMax > 0 ? klMax * 1.08 : 1], ticks: axisTicks(0, klMax > 0 ? klMax * 1.08 : 1, Math.max(3, Math.floor(width / 140))) },
    y: { label: `harmful refused (of ${options.harmful})`, grid: true, labelArrow: 'none', domain: [0, Math.max(1, options.harmful)] },
    marks: [
      Plot.line(front, { x: 'kl', y: 'refusals', curve: 'step-after', className: 'front-line' }),
      Plot.dot(original, { x: 'kl', y: 'refusals', symbol: 'diamond', r: 6, className: 'original', title: (d: { refusals: number }) => `the original model: ${d.refusals} refused` }),
      Plot.dot(dots, {
        x: 'kl',
        y: 'refusals',
        r: 5,
        title: (d: TrialDot) => `trial ${d.number}: ${d.refusals} of ${options.harmful} refused, KL ${d.kl.toFixed(3)}${d.front ? ', on the front' : ''}${d.chosen ? ", the rule's choice" : ''}${d.feasible ? '' : ', refuses more harmless prompts than the original'}`,
        render: (index, scales, values, dimensions, context, next) => {
          const group = next!(index, scales, values, dimensions, context)!;
          group.querySelectorAll('circle').forEach((circle, i) => {
            const dot = dots[index[i]!]!;
            circle.classList.add('trial');
            for (const [name, on] of [['front', dot.front], ['chosen', dot.chosen], ['shown', dot.shown], ['infeasible', !dot.feasible]] as const) if (on) circle.classList.add(name);
            circle.dataset.trial = String(dot.number);
            if (options.onPick) circle.addEventListener('click', () => options.onPick!(dot.number));
          });
          return group;
        },
      }),
      Plot.text(
        dots.filter((d) => d.chosen),
        { x: 'kl', y: 'refusals', text: (d: TrialDot) => `chosen: ${d.number}`, dy: -12, className: 'marker' },
      ),
    ],
  });
  container.replaceChildren(chart);
}

/** One component's share of the variance at one point. */
export interface SpectrumShare {
  point: number;
  /** 1 for the strongest direction. */
  component: number;
  share: number;
}

/**
 * The explained-variance spectrum per point: for each residual-stream point, the shares of the
 * top-K directions stacked (the strongest at the bottom); each `rect.share` carries `data-point`
 * and `data-component`.
 */
export function drawSpectrumChart(container: HTMLElement, shares: readonly SpectrumShare[], options: { chosen: number; k: number }): void {
  const { width, height } = chartSize(container);
  const points = [...new Set(shares.map((s) => s.point))];
  const every = Math.ceil((points.length * 22) / (width - 70));
  const chart = Plot.plot({
    width,
    height,
    marginLeft: 56,
    marginTop: 16,
    marginBottom: 44,
    ariaLabel: `Explained variance of the top ${options.k} directions of the harmful − harmless differences at each point of the residual stream`,
    x: { label: 'point (0 = embedding)', labelAnchor: 'center', labelArrow: 'none', tickFormat: 'd', ticks: points.filter((p, i) => i % every === 0 || p === options.chosen), domain: [Math.min(...points) - 0.5, Math.max(...points) + 0.5] },
    y: { label: 'share of the variance', grid: true, domain: [0, 1], labelArrow: 'none', tickFormat: '%' },
    color: { type: 'ordinal', domain: Array.from({ length: options.k }, (_, i) => i + 1), scheme: 'blues', reverse: true, legend: true, tickFormat: (c: number) => `direction ${c}` },
    marks: [
      Plot.rectY(
        shares,
        Plot.stackY({
          x1: (s: SpectrumShare) => s.point - 0.35,
          x2: (s: SpectrumShare) => s.point + 0.35,
          y: 'share',
          fill: 'component',
          order: 'component',
          title: (s: SpectrumShare) => `point ${s.point}, direction ${s.component}: ${(100 * s.share).toFixed(1)} %`,
          render: ((index, scales, values, dimensions, context, next) => {
            const group = next!(index, scales, values, dimensions, context)!;
            group.querySelectorAll('rect').forEach((rect, i) => {
              const s = shares[index[i]!]!;
              rect.classList.add('share');
              rect.dataset.point = String(s.point);
              rect.dataset.component = String(s.component);
            });
            return group;
          }) satisfies Plot.RenderFunction,
        }),
      ),
      Plot.ruleY([0]),
    ],
  });
  container.replaceChildren(chart);
}
