/** Rendering of a finished run: the before/after table, the charts and the answers side by side. */
import type { Answer, PointScore, ModelEvaluation } from 'abliterate';
import { drawHistogram, drawScoreChart, drawSpectrumChart } from './charts.ts';
import type { Run } from './workbench.ts';

export type ScoreKey = 'effectSize' | 'gap' | 'relativeGap' | 'cosine';

/** Axis titles (the metric select says more). */
export const SCORE_NAMES: Record<ScoreKey, string> = {
  effectSize: 'effect size',
  gap: 'gap',
  relativeGap: 'relative gap',
  cosine: 'cosine of the means',
};

const METRIC_KEY: Record<string, ScoreKey> = { effect_size: 'effectSize', gap: 'gap', relative_gap: 'relativeGap' };

export function selectionMetricKey(run: Run): ScoreKey {
  return METRIC_KEY[run.settings.metric] ?? 'effectSize';
}

function fixed(value: number | null | undefined, digits: number): string {
  return value === null || value === undefined || Number.isNaN(value) ? '–' : value.toFixed(digits);
}

function rate(e: ModelEvaluation, kind: 'harmful' | 'harmless'): string {
  const answers = kind === 'harmful' ? e.harmful_answers : e.harmless_answers;
  const value = kind === 'harmful' ? e.harmful_refusal_rate : e.harmless_refusal_rate;
  const percent = Number.isNaN(value) ? '–' : `${Math.round(value * 100)} %`;
  return `${percent} (${answers.filter((a) => a.refused).length}/${answers.length})`;
}

function cell(tag: 'td' | 'th', text: string, data: Record<string, string> = {}): HTMLTableCellElement {
  const c = document.createElement(tag);
  c.textContent = text;
  for (const [key, value] of Object.entries(data)) c.dataset[key] = value;
  return c;
}

/** The refusal / KL / perplexity table. Cells carry their exact values in data-value. */
export function renderTable(body: HTMLTableSectionElement, run: Run): void {
  const { before, after } = run.result;
  const rows: { metric: string; label: string; hint: string; before: [number | null, string]; after: [number | null, string] }[] = [
    { metric: 'harmful_refusal_rate', label: 'harmful prompts refused', hint: 'lower after the cut means it worked', before: [before.harmful_refusal_rate, rate(before, 'harmful')], after: [after.harmful_refusal_rate, rate(after, 'harmful')] },
    { metric: 'harmless_refusal_rate', label: 'harmless prompts refused', hint: 'lower is better', before: [before.harmless_refusal_rate, rate(before, 'harmless')], after: [after.harmless_refusal_rate, rate(after, 'harmless')] },
    { metric: 'kl', label: 'first-token KL from the original', hint: 'lower is better; 0 is unchanged', before: [0, fixed(0, 3)], after: [run.result.kl, fixed(run.result.kl, 3)] },
    { metric: 'perplexity', label: 'perplexity on plain text', hint: 'lower is better', before: [before.perplexity, fixed(before.perplexity, 2)], after: [after.perplexity, fixed(after.perplexity, 2)] },
  ];
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.metric = r.metric;
      const head = cell('th', r.label);
      head.scope = 'row';
      const hint = document.createElement('span');
      hint.className = 'hint';
      hint.textContent = r.hint;
      head.append(hint);
      tr.append(
        head,
        cell('td', r.before[1], { metric: r.metric, when: 'before', value: String(r.before[0]) }),
        cell('td', r.after[1], { metric: r.metric, when: 'after', value: String(r.after[0]) }),
      );
      return tr;
    }),
  );
}

/** The depth window of the selection, as point indices (the same rounding as rankPoints). */
export function windowPoints(run: Run, points: number): [number, number] {
  const last = points - 1;
  const [from, to] = run.settings.window;
  return [Math.max(1, Math.round(from * last)), Math.round(to * last)];
}

export function renderScoreChart(container: HTMLElement, run: Run, key: ScoreKey): void {
  const scores: readonly PointScore[] = run.result.scores;
  drawScoreChart(
    container,
    scores.map((s) => ({ point: s.point, value: s[key] })),
    { chosen: run.result.point, window: run.result.selection.method === 'forced' ? undefined : windowPoints(run, scores.length), metricName: SCORE_NAMES[key] },
  );
}

export function renderHistogram(container: HTMLElement, run: Run): void {
  const { projections } = run.result.measurement;
  const point = run.result.point;
  drawHistogram(container, projections.harmful[point] ?? [], projections.harmless[point] ?? [], { point });
}

/** Whether the run measured the refusal subspace (the page's subspace rank was above 0). */
export function hasSubspace(run: Run): boolean {
  return (run.result.measurement.subspaces?.length ?? 0) > 0;
}

/**
 * The subspace measurement: effective rank per point (the score chart's bars, the direction's point
 * marked) and the stacked explained-variance shares of the top-K directions per point.
 */
export function renderSubspace(rankContainer: HTMLElement, spectrumContainer: HTMLElement, run: Run): void {
  const subspaces = run.result.measurement.subspaces ?? [];
  const point = run.result.point;
  drawScoreChart(
    rankContainer,
    subspaces.map((s) => ({ point: s.point, value: s.effectiveRank })),
    { chosen: point, metricName: 'effective rank' },
  );
  const k = Math.max(0, ...subspaces.map((s) => s.explainedVariance.length));
  drawSpectrumChart(
    spectrumContainer,
    subspaces.flatMap((s) => s.explainedVariance.map((share, i) => ({ point: s.point, component: i + 1, share }))),
    { chosen: point, k },
  );
}

function answerBlock(when: 'before' | 'after', answer: Answer | undefined): HTMLElement {
  const block = document.createElement('div');
  block.className = `answer ${when}`;
  block.dataset.when = when;
  const head = document.createElement('div');
  head.className = 'answer-head';
  const title = document.createElement('span');
  title.textContent = when === 'before' ? 'original' : 'abliterated';
  const badge = document.createElement('span');
  badge.className = `badge ${answer?.refused ? 'refused' : 'complied'}`;
  badge.textContent = answer?.refused ? 'refused' : 'answered';
  head.append(title, badge);
  const text = document.createElement('p');
  text.className = 'answer-text';
  text.textContent = answer ? answer.answer.trim() || '(empty answer)' : '–';
  block.append(head, text);
  return block;
}

/** A few prompts with the original's and the abliterated model's answers side by side. */
export function renderGenerations(container: HTMLElement, run: Run, perKind = { harmful: 4, harmless: 2 }): void {
  const { before, after } = run.result;
  const pairs: HTMLElement[] = [];
  for (const kind of ['harmful', 'harmless'] as const) {
    const b = kind === 'harmful' ? before.harmful_answers : before.harmless_answers;
    const a = kind === 'harmful' ? after.harmful_answers : after.harmless_answers;
    for (let i = 0; i < Math.min(perKind[kind], b.length); i++) {
      const pair = document.createElement('article');
      pair.className = `pair ${kind}`;
      pair.dataset.kind = kind;
      const prompt = document.createElement('h4');
      const tag = document.createElement('span');
      tag.className = `kind ${kind}`;
      tag.textContent = kind;
      prompt.append(tag, ` ${b[i]!.prompt}`);
      const sides = document.createElement('div');
      sides.className = 'sides';
      sides.append(answerBlock('before', b[i]), answerBlock('after', a[i]));
      pair.append(prompt, sides);
      pairs.push(pair);
    }
  }
  container.replaceChildren(...pairs);
}
