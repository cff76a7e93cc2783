/**
 * The search on the page: the trials as they finish, the front and the rule's choice by the
 * library's own functions (`paretoTrials`, `chooseTrial`), drawn as a scatter and a table.
 */
import { chooseTrial, paretoTrials, type OptimizeSettings, type TrialObjectives, type TrialRecord } from 'abliterate';
import { drawTrialScatter, type TrialDot } from './charts.ts';
import type { PageSettings, RunExtras } from './workbench.ts';

/** A search's trials and what they were measured with: a picked trial is evaluated with the same settings. */
export interface SearchState {
  optimize: OptimizeSettings;
  page: PageSettings;
  limit: number;
  extras: RunExtras;
  trials: TrialRecord[];
  /** The uncut model on the validation prompts (known once the first trial has finished). */
  original: TrialObjectives | undefined;
  /** Validation prompts of each kind. */
  harmful: number;
  harmless: number;
  /** The trial whose cut the results show. */
  shown: number | undefined;
}

/** The search's settings to evaluate one of its trials again: no new trial, that one exported. */
export function trialSettings(search: SearchState, trial: number): OptimizeSettings {
  return { ...search.optimize, trials: search.trials.length, startupTrials: Math.min(search.optimize.startupTrials, search.trials.length), previous: [...search.trials], trial };
}

function frontAndChoice(search: SearchState): { front: Set<number>; chosen: number | undefined } {
  if (!search.original || search.trials.length === 0) return { front: new Set(), chosen: undefined };
  return { front: new Set(paretoTrials(search.trials, search.original).map((t) => t.number)), chosen: chooseTrial(search.trials, search.original)?.number };
}

export function drawSearch(container: HTMLElement, search: SearchState, onPick: ((trial: number) => void) | undefined): void {
  const { front, chosen } = frontAndChoice(search);
  const dots: TrialDot[] = search.trials.map((t) => ({
    number: t.number,
    refusals: t.refusals,
    kl: t.kl,
    front: front.has(t.number),
    chosen: t.number === chosen,
    shown: t.number === search.shown,
    feasible: !search.original || t.harmless_refusals <= search.original.harmless_refusals,
  }));
  drawTrialScatter(container, dots, { originalRefusals: search.original?.refusals ?? NaN, harmful: search.harmful, onPick });
}

function cell(text: string, tag: 'td' | 'th' = 'td'): HTMLTableCellElement {
  const c = document.createElement(tag);
  c.textContent = text;
  return c;
}

/**
 * One row per trial (`tr[data-trial]`, with `data-front`, `data-chosen`, `data-shown`): its
 * refusals of both kinds, KL, direction point and scope, seconds, and a button that evaluates
 * and uses it (`onPick`; none while `onPick` is undefined, e.g. during a run).
 */
export function renderTrialTable(body: HTMLTableSectionElement, search: SearchState, onPick: ((trial: number) => void) | undefined): void {
  const { front, chosen } = frontAndChoice(search);
  body.replaceChildren(
    ...search.trials.map((t) => {
      const tr = document.createElement('tr');
      tr.dataset.trial = String(t.number);
      if (front.has(t.number)) tr.dataset.front = 'true';
      if (t.number === chosen) tr.dataset.chosen = 'true';
      if (t.number === search.shown) tr.dataset.shown = 'true';
      const marks = `${front.has(t.number) ? ' ★' : ''}${t.number === search.shown ? ' ●' : ''}`;
      const head = cell(`${t.number}${marks}`, 'th');
      head.scope = 'row';
      if (t.number === chosen) head.append(Object.assign(document.createElement('span'), { className: 'hint', textContent: "the rule's choice" }));
      const over = search.original && t.harmless_refusals > search.original.harmless_refusals;
      const harmless = cell(`${t.harmless_refusals}/${search.harmless}${over ? ' ↑' : ''}`);
      if (over) harmless.title = `more than the original model's ${search.original!.harmless_refusals}`;
      const use = document.createElement('td');
      if (onPick && t.number !== search.shown) {
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'use-trial';
        button.textContent = 'Use';
        button.setAttribute('aria-label', `Evaluate and use trial ${t.number}`);
        button.addEventListener('click', () => onPick(t.number));
        use.append(button);
      }
      tr.append(
        head,
        cell(`${t.refusals}/${search.harmful}`),
        harmless,
        cell(t.kl.toFixed(3)),
        cell(t.params.direction_index.toFixed(2)),
        cell(t.params.scope === 'global' ? 'global' : 'per layer'),
        cell(t.seconds.toFixed(1)),
        use,
      );
      return tr;
    }),
  );
}
