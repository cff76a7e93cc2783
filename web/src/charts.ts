/**
 * The two charts of the results, drawn as SVG (no chart library): per-layer separation scores with
 * the chosen layer marked, and a histogram of harmful vs harmless projections on the direction.
 * Both scale with their container (viewBox) and carry a text description for screen readers.
 */
const SVG = 'http://www.w3.org/2000/svg';

type Attributes = Record<string, string | number>;

function el<K extends keyof SVGElementTagNameMap>(name: K, attributes: Attributes = {}, text?: string): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** About `count` round tick values covering [min, max]. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [0];
  if (min === max) return [min];
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return ticks;
}

function formatTick(value: number): string {
  const abs = Math.abs(value);
  if (abs === 0) return '0';
  if (abs >= 1000 || abs < 0.01) return value.toExponential(1);
  return String(Number(value.toPrecision(3)));
}

interface Frame {
  svg: SVGSVGElement;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

/** An SVG as wide as its container (so text keeps its size on a phone), 640 units when not laid out. */
function frame(container: HTMLElement, label: string): Frame {
  container.replaceChildren();
  const width = Math.max(300, Math.round(container.clientWidth || 640));
  const height = width < 480 ? 240 : 280;
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label, preserveAspectRatio: 'xMidYMid meet' });
  svg.append(el('title', {}, label));
  container.append(svg);
  return { svg, left: 56, right: width - 12, top: 28, bottom: height - 44 };
}

function yAxis(f: Frame, min: number, max: number, title: string): (v: number) => number {
  const y = (v: number) => f.bottom - ((v - min) / (max - min || 1)) * (f.bottom - f.top);
  const axis = el('g', { class: 'axis' });
  for (const t of niceTicks(min, max)) {
    axis.append(el('line', { x1: f.left, x2: f.right, y1: y(t), y2: y(t), class: 'grid' }));
    axis.append(el('text', { x: f.left - 6, y: y(t) + 4, 'text-anchor': 'end' }, formatTick(t)));
  }
  axis.append(el('text', { x: 14, y: (f.top + f.bottom) / 2, transform: `rotate(-90 14 ${(f.top + f.bottom) / 2})`, 'text-anchor': 'middle', class: 'axis-title' }, title));
  f.svg.append(axis);
  return y;
}

export interface ScorePoint {
  layer: number;
  value: number;
}

/**
 * Bars of one score per residual-stream point (0 = embedding), the selection window shaded and
 * the chosen point highlighted and labelled.
 */
export function drawScoreChart(container: HTMLElement, points: readonly ScorePoint[], options: { chosen: number; window?: readonly [number, number]; metricName: string }): void {
  const label = `${options.metricName} per layer; the direction was taken at layer ${options.chosen}`;
  const f = frame(container, label);
  const values = points.map((p) => p.value);
  const min = Math.min(0, ...values);
  const max = Math.max(...values, min + 1e-9);
  const y = yAxis(f, min, max * 1.08, options.metricName);
  const band = (f.right - f.left) / Math.max(points.length, 1);
  const x = (i: number) => f.left + i * band;
  if (options.window) {
    const [from, to] = options.window;
    const i0 = points.findIndex((p) => p.layer >= from);
    const i1 = points.findLastIndex((p) => p.layer <= to);
    if (i0 >= 0 && i1 >= i0) {
      f.svg.append(el('rect', { x: x(i0), y: f.top, width: (i1 - i0 + 1) * band, height: f.bottom - f.top, class: 'window' }));
      f.svg.append(el('text', { x: x(i0) + 4, y: f.top - 8, class: 'window-label' }, 'selection window'));
    }
  }
  // Label every point when there is room (about 22 px each), else every few.
  const every = Math.ceil((points.length * 22) / (f.right - f.left));
  points.forEach((p, i) => {
    const chosen = p.layer === options.chosen;
    const top = y(Math.max(p.value, 0));
    const bar = el('rect', {
      x: x(i) + band * 0.15,
      y: top,
      width: band * 0.7,
      height: Math.max(Math.abs(y(p.value) - y(0)), 0.5),
      class: chosen ? 'bar chosen' : 'bar',
      'data-layer': p.layer,
    });
    bar.append(el('title', {}, `layer ${p.layer}: ${p.value.toPrecision(4)}`));
    f.svg.append(bar);
    if (i % every === 0 || chosen) f.svg.append(el('text', { x: x(i) + band / 2, y: f.bottom + 16, 'text-anchor': 'middle', class: chosen ? 'tick chosen' : 'tick' }, String(p.layer)));
    if (chosen) f.svg.append(el('text', { x: x(i) + band / 2, y: Math.max(top - 6, f.top + 10), 'text-anchor': 'middle', class: 'marker' }, `▼ layer ${p.layer}`));
  });
  f.svg.append(el('text', { x: (f.left + f.right) / 2, y: f.bottom + 36, 'text-anchor': 'middle', class: 'axis-title' }, f.right - f.left < 420 ? 'layer (0 = embedding)' : 'layer (0 = embedding, i = output of decoder layer i − 1)'));
}

function mean(values: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]!;
  return values.length ? sum / values.length : NaN;
}

/** Overlaid histograms of two sets of projections, with each set's mean as a dashed line. */
export function drawHistogram(container: HTMLElement, harmful: ArrayLike<number>, harmless: ArrayLike<number>, options: { layer: number }): void {
  const label = `Histogram of the projections of ${harmful.length} harmful and ${harmless.length} harmless prompts on the refusal direction at layer ${options.layer}`;
  const f = frame(container, label);
  const all = [...Array.from(harmful), ...Array.from(harmless)].filter(Number.isFinite);
  if (all.length === 0) return;
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (lo === hi) {
    lo -= 0.5;
    hi += 0.5;
  }
  const bins = Math.min(40, Math.max(10, Math.round(Math.sqrt(all.length) * 2)));
  const width = (hi - lo) / bins;
  const count = (values: ArrayLike<number>) => {
    const c = new Array<number>(bins).fill(0);
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      if (Number.isFinite(v)) c[Math.min(bins - 1, Math.floor((v - lo) / width))]!++;
    }
    return c;
  };
  const series = [
    { name: 'harmful', counts: count(harmful), values: harmful, cls: 'harmful' },
    { name: 'harmless', counts: count(harmless), values: harmless, cls: 'harmless' },
  ];
  const top = Math.max(...series.flatMap((s) => s.counts), 1);
  const y = yAxis(f, 0, top * 1.1, 'prompts');
  const x = (v: number) => f.left + ((v - lo) / (hi - lo)) * (f.right - f.left);
  for (const s of series) {
    const g = el('g', { class: `series ${s.cls}` });
    s.counts.forEach((c, b) => {
      if (c === 0) return;
      const rect = el('rect', { x: x(lo + b * width) + 0.5, y: y(c), width: Math.max(x(lo + width) - x(lo) - 1, 0.5), height: y(0) - y(c) });
      rect.append(el('title', {}, `${s.name}: ${c} prompt${c === 1 ? '' : 's'} in [${formatTick(lo + b * width)}, ${formatTick(lo + (b + 1) * width)})`));
      g.append(rect);
    });
    const m = mean(s.values);
    if (Number.isFinite(m)) g.append(el('line', { x1: x(m), x2: x(m), y1: f.top, y2: f.bottom, class: 'mean' }));
    f.svg.append(g);
  }
  const axis = el('g', { class: 'axis' });
  for (const t of niceTicks(lo, hi, 6)) axis.append(el('text', { x: x(t), y: f.bottom + 16, 'text-anchor': 'middle' }, formatTick(t)));
  axis.append(el('text', { x: (f.left + f.right) / 2, y: f.bottom + 36, 'text-anchor': 'middle', class: 'axis-title' }, `projection on the refusal direction at layer ${options.layer}`));
  f.svg.append(axis);
  const legend = el('g', { class: 'legend' });
  series.forEach((s, i) => {
    const lx = f.right - 190 + i * 95;
    legend.append(el('rect', { x: lx, y: f.top - 20, width: 12, height: 12, class: `swatch ${s.cls}` }));
    legend.append(el('text', { x: lx + 16, y: f.top - 10 }, `${s.name} (${s.values.length})`));
  });
  f.svg.append(legend);
}
