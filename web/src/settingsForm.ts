/**
 * The settings form, rendered from the library's settings schema: each field's label, help, kind,
 * range and default come from there, and its value is checked by the same strict parser as the
 * CLI's flags.
 */
import { OPTIMIZE_DEFAULTS, parseSettingText, searchSettingFields, settingFields, type OptimizeKey, type OptimizeValues, type SettingField, type SettingKey, type SettingValues } from 'abliterate';

/** The settings the page offers, in this order. */
const PAGE_SETTINGS: SettingKey[] = ['alpha', 'limit', 'max-tokens', 'batch-size', 'embedding'];

/** Smaller defaults than the CLI's: a browser tab runs a whole abliteration in a minute or two. */
const PAGE_DEFAULTS: Partial<SettingValues> = { limit: 32, 'max-tokens': 48 };

export function settingId(key: string, prefix = 'setting'): string {
  return `${prefix}-${key}`;
}

/**
 * The search's settings in its form (the search's own schema, and the seed, which the search shares
 * with sampling but starts at its own default, as `abliterate optimize` does).
 */
const SEARCH_SETTINGS: OptimizeKey[] = ['trials', 'startup-trials', 'val-tokens'];

function searchFields(): SettingField[] {
  const [seed] = settingFields(['seed']);
  return [...searchSettingFields(SEARCH_SETTINGS), { ...seed!, help: 'seed of the search', default: OPTIMIZE_DEFAULTS.seed }];
}

function field(setting: SettingField, prefix = 'setting'): HTMLElement[] {
  const id = settingId(setting.key, prefix);
  const fallback = prefix === 'setting' ? ((PAGE_DEFAULTS as Record<string, unknown>)[setting.key] ?? setting.default) : setting.default;
  const input = document.createElement('input');
  input.id = id;
  input.title = setting.help;
  if (setting.kind === 'boolean') {
    input.type = 'checkbox';
    input.checked = fallback === true;
    const label = document.createElement('label');
    label.className = 'checkbox';
    label.htmlFor = id;
    label.append(input, ` ${setting.label}`);
    return [label];
  }
  const label = document.createElement('label');
  label.htmlFor = id;
  label.textContent = setting.label;
  input.type = setting.kind === 'integer' || setting.kind === 'number' ? 'number' : 'text';
  if (input.type === 'number') {
    input.step = String(setting.step ?? (setting.kind === 'integer' ? 1 : 'any'));
    if (setting.min !== undefined) input.min = String(setting.min);
    if (setting.max !== undefined) input.max = String(setting.max);
  }
  if (fallback !== undefined) input.value = String(fallback);
  input.required = true;
  return [label, input];
}

/** Adds the schema's fields to the form, after what it already holds (the direction layer). */
export function renderSettingsForm(form: HTMLFormElement): void {
  form.append(...settingFields(PAGE_SETTINGS).flatMap((setting) => field(setting)));
}

/** Adds the search's fields (trials, random trials, tokens per validation answer, seed) to its form. */
export function renderSearchForm(form: HTMLFormElement): void {
  form.append(...searchFields().flatMap((setting) => field(setting, 'search')));
}

/** The form's values, checked; an invalid one gets the focus and its message names its label. */
export function readSettingsForm(form: HTMLFormElement): Partial<SettingValues> {
  return readFields(form, settingFields(PAGE_SETTINGS), 'setting') as Partial<SettingValues>;
}

/** The search form's values, checked as the CLI checks its flags. */
export function readSearchForm(form: HTMLFormElement): OptimizeValues {
  return readFields(form, searchFields(), 'search') as OptimizeValues;
}

function readFields(form: HTMLFormElement, fields: readonly SettingField[], prefix: string): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const setting of fields) {
    const input = form.querySelector<HTMLInputElement>(`#${settingId(setting.key, prefix)}`);
    if (!input) throw new Error(`the settings form has no field ${setting.key}`);
    if (setting.kind === 'boolean') {
      values[setting.key] = input.checked;
      continue;
    }
    try {
      values[setting.key] = parseSettingText(setting, input.value, setting.label);
    } catch (error) {
      input.focus();
      throw error;
    }
  }
  return values;
}
