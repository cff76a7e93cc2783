/**
 * The abliteration's settings, defined once: a valibot schema whose entries carry each setting's
 * name, help, kind, range and default. The CLI derives its flags and its TOML checking from it,
 * the page its settings form, the pipeline its defaults and the report its settings block.
 * Browser-safe: no Node imports.
 */
import * as v from 'valibot';
import type { StrengthProfile, LayerSelection } from './cut.ts';
import { DEFAULT_REFUSAL_MARKERS } from './refusal.ts';
import { DEFAULT_WINDOW, type SelectionMetric } from './select.ts';

/** What a setting's value is, which decides how its text is parsed and how the page shows it. */
export type SettingKind = 'integer' | 'number' | 'boolean' | 'choice' | 'text' | 'file' | 'window' | 'list';

/** The part of the work a setting belongs to; commands declare the groups they use. */
export type SettingGroup = 'prompts' | 'evaluation prompts' | 'validation prompts' | 'measure' | 'select' | 'cut' | 'evaluate' | 'steer' | 'sample';

/** What a user interface needs to offer a setting. */
// A type, not an interface: valibot's metadata takes a plain record.
export type SettingMeta = {
  /** The TOML key and the long flag's name. */
  key: string;
  /** A SettingGroup for the library's settings; an application may add its own. */
  group: string;
  kind: SettingKind;
  /** Short name for a form field. */
  label: string;
  /** One line saying what it does (the CLI adds the range and the default). */
  help: string;
  /** Name of the flag's value in `--help`, e.g. `n` in `--limit <n>`. */
  valueName?: string;
  /** Inclusive bounds of a number. */
  min?: number;
  max?: number;
  /** A sensible increment for a form's number input. */
  step?: number;
  choices?: readonly string[];
  /** An older name still accepted, with a deprecation message. */
  deprecatedName?: string;
  /** For a setting on by default: what turning it off (`--no-<key>`) does. */
  offHelp?: string;
  /** An environment variable that gives it (flags only). */
  env?: string;
};

/** A setting as a form renders it: its metadata and its default value (undefined when it has none). */
export interface SettingField extends SettingMeta {
  default: unknown;
}

/** Decimal notation only: no hex, binary, underscores, blanks, `Infinity` or `NaN`. */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** An error in a setting's value; its message names the setting as the user wrote it. */
export class SettingError extends Error {
  override name = 'SettingError';
}

/** "an integer ≥ 1", "a number in [-100, 100]": the range a numeric setting accepts. */
export function describeRange(meta: Pick<SettingMeta, 'kind' | 'min' | 'max'>): string {
  const what = meta.kind === 'integer' ? 'an integer' : 'a number';
  if (meta.min !== undefined && meta.max !== undefined) return `${what} in [${meta.min}, ${meta.max}]`;
  if (meta.min !== undefined) return `${what} ≥ ${meta.min}`;
  if (meta.max !== undefined) return `${what} ≤ ${meta.max}`;
  return what;
}

/**
 * Parses a number written in decimal notation; anything else, a non-finite value, a fraction where
 * an integer is expected or a value out of range is an error naming `name` and the range.
 */
export function parseDecimal(text: string, meta: Pick<SettingMeta, 'kind' | 'min' | 'max'>, name: string): number {
  const value = DECIMAL.test(text) ? Number(text) : NaN;
  if (!numberFits(value, meta)) throw new SettingError(`${name} must be ${describeRange(meta)}, got ${JSON.stringify(text)}`);
  return value;
}

function numberFits(value: number, meta: Pick<SettingMeta, 'kind' | 'min' | 'max'>): boolean {
  return (
    Number.isFinite(value) &&
    (meta.kind !== 'integer' || Number.isSafeInteger(value)) &&
    (meta.min === undefined || value >= meta.min) &&
    (meta.max === undefined || value <= meta.max)
  );
}

// --- Value syntaxes shared by flags and TOML -------------------------------------------------

/** "all", "3-7", "1,4,9", "above_median" or "top_k:4". */
export function parseLayerSelection(text: string): LayerSelection {
  if (text === 'all') return { kind: 'all' };
  if (text === 'above_median') return { kind: 'above_median' };
  const topK = /^top_k:(\d+)$/.exec(text);
  if (topK) return { kind: 'top_k', k: Number(topK[1]) };
  const range = /^(\d+)-(\d+)$/.exec(text);
  if (range) return { kind: 'range', from: Number(range[1]), to: Number(range[2]) };
  if (/^\d+(,\d+)*$/.test(text)) return { kind: 'list', layers: text.split(',').map(Number) };
  throw new SettingError(`must be all, FROM-TO, a list like 1,4,9, above_median or top_k:N; got ${JSON.stringify(text)}`);
}

export function formatLayerSelection(selection: LayerSelection): string {
  switch (selection.kind) {
    case 'all':
    case 'above_median':
      return selection.kind;
    case 'top_k':
      return `top_k:${selection.k}`;
    case 'range':
      return `${selection.from}-${selection.to}`;
    case 'list':
      return selection.layers.join(',');
  }
}

/** "constant" or "tent:PEAK,WIDTH[,MIN[,MAX]]" (numbers in decimal notation). */
export function parseStrengthProfile(text: string): StrengthProfile {
  if (text === 'constant') return { kind: 'constant' };
  const syntax = `must be constant or tent:PEAK,WIDTH[,MIN[,MAX]]; got ${JSON.stringify(text)}`;
  if (!text.startsWith('tent:')) throw new SettingError(syntax);
  const parts = text.slice('tent:'.length).split(',');
  if (parts.length < 2 || parts.length > 4 || parts.some((p) => !DECIMAL.test(p) || !Number.isFinite(Number(p)))) throw new SettingError(syntax);
  const [peak, width, min = 0, max = 1] = parts.map(Number) as [number, number, number?, number?];
  if (!(width > 0)) throw new SettingError(`tent width must be positive; got ${JSON.stringify(text)}`);
  return { kind: 'tent', peak, width, min, max };
}

export function formatStrengthProfile(profile: StrengthProfile): string {
  return profile.kind === 'constant' ? 'constant' : `tent:${profile.peak},${profile.width},${profile.min},${profile.max}`;
}

// --- The schema ------------------------------------------------------------------------------

/** What a setting's definition states; kind, range and choices come from the helper that defines it. */
export type SettingDefinition = Omit<SettingMeta, 'kind' | 'min' | 'max' | 'choices'>;

/** A number setting; `fallback` is its default. */
export function numericSetting<const D extends number | undefined = undefined>(kind: 'integer' | 'number', meta: SettingDefinition & { min?: number; max?: number }, fallback?: D) {
  const full: SettingMeta = { ...meta, kind, valueName: meta.valueName ?? (kind === 'integer' ? 'n' : 'x') };
  const value = v.pipe(
    v.number(`must be ${describeRange(full)}`),
    v.check((x) => numberFits(x, full), `must be ${describeRange(full)}`),
  );
  return v.pipe(v.optional(value, fallback as D), v.metadata(full));
}

export function booleanSetting(meta: SettingDefinition, fallback: boolean) {
  return v.pipe(v.optional(v.boolean('must be true or false'), fallback), v.metadata({ ...meta, kind: 'boolean' } as SettingMeta));
}

export function choiceSetting<const T extends readonly [string, ...string[]], const D extends T[number] | undefined = undefined>(meta: SettingDefinition, choices: T, fallback?: D) {
  const value = v.picklist(choices, `must be one of ${choices.join(', ')}`);
  return v.pipe(v.optional(value, fallback as D), v.metadata({ ...meta, kind: 'choice', choices, valueName: meta.valueName ?? 'name' } as SettingMeta));
}

export function fileSetting(meta: SettingDefinition) {
  return v.pipe(v.optional(v.pipe(v.string('must be a path'), v.minLength(1, 'must be a path'))), v.metadata({ ...meta, kind: 'file', valueName: meta.valueName ?? 'file' } as SettingMeta));
}

/** A text setting whose syntax `parse` checks (it throws a SettingError saying what is wrong). */
export function textSetting<const D extends string | undefined = undefined>(meta: SettingDefinition, fallback?: D, parse?: (text: string) => unknown) {
  const value = v.pipe(
    v.string('must be a string'),
    v.rawCheck(({ dataset, addIssue }) => {
      if (!dataset.typed || !parse) return;
      try {
        parse(dataset.value);
      } catch (error) {
        addIssue({ message: error instanceof Error ? error.message : String(error) });
      }
    }),
  );
  return v.pipe(v.optional(value, fallback as D), v.metadata({ ...meta, kind: 'text', valueName: meta.valueName ?? 'text' } as SettingMeta));
}

const windowMeta: SettingMeta = {
  key: 'window',
  group: 'select',
  kind: 'window',
  label: 'Depth window',
  help: 'depth window (fractions FROM,TO of the layers) to choose the point in',
  valueName: 'from,to',
};

/**
 * Every abliteration setting. Keys are the TOML keys and long flags; an entry's default is the
 * library's default (DEFAULT_SETTINGS is derived from it).
 */
export const SETTINGS_SCHEMA = v.strictObject({
  harmful: fileSetting({ key: 'harmful', group: 'prompts', label: 'Harmful prompts', help: 'harmful prompts to measure (.txt, .jsonl, .json, .csv, .parquet); default: the bundled train split' }),
  harmless: fileSetting({ key: 'harmless', group: 'prompts', label: 'Harmless prompts', help: 'harmless prompts to measure; default: the bundled train split' }),
  column: textSetting({ key: 'column', group: 'prompts', label: 'Prompt column', help: 'column or field holding the prompt in csv, jsonl, json and parquet files', valueName: 'name' }),
  limit: numericSetting('integer', { key: 'limit', group: 'prompts', label: 'Prompts per set (0 = all)', help: 'use at most n prompts of each file (0: all)', min: 0 }, 0),
  'eval-harmful': fileSetting({ key: 'eval-harmful', group: 'evaluation prompts', label: 'Harmful prompts to evaluate', help: 'held-out harmful prompts for the evaluation; default: the bundled test split' }),
  'eval-harmless': fileSetting({ key: 'eval-harmless', group: 'evaluation prompts', label: 'Harmless prompts to evaluate', help: 'held-out harmless prompts for the evaluation; default: the bundled test split' }),
  'eval-borderline': fileSetting({
    key: 'eval-borderline',
    group: 'evaluation prompts',
    label: 'Borderline prompts to evaluate',
    help: 'benign prompts in the words of harmful ones, whose refusal rate shows over-refusal; default: the bundled set',
  }),
  'plain-text': fileSetting({ key: 'plain-text', group: 'evaluation prompts', label: 'Plain text', help: 'plain text for perplexity; default: the bundled sample' }),
  'val-harmful': fileSetting({ key: 'val-harmful', group: 'validation prompts', label: 'Harmful validation prompts', help: 'harmful validation prompts for --select ablation; default: the bundled validation split' }),
  'val-harmless': fileSetting({ key: 'val-harmless', group: 'validation prompts', label: 'Harmless validation prompts', help: 'harmless validation prompts for --select ablation; default: the bundled validation split' }),
  'measure-prompts': numericSetting('integer', { key: 'measure-prompts', group: 'measure', label: 'Prompts measured', help: 'prompts of each kind measured, sampled from the sets (0: all)', min: 0 }, 256),
  'batch-size': numericSetting('integer', { key: 'batch-size', group: 'measure', label: 'Prompts per forward step', help: 'prompts per forward step', min: 1 }, 32),
  point: numericSetting('integer', { key: 'point', group: 'select', label: 'Direction point', help: 'take the direction at this residual point (0: embedding, i: output of decoder layer i − 1) instead of selecting', min: 0, deprecatedName: 'layer' }),
  select: choiceSetting({ key: 'select', group: 'select', label: 'Selection', help: 'choose the point by score, or by ablating the best candidates', valueName: 'method' }, ['score', 'ablation'], 'score'),
  window: v.pipe(
    v.optional(
      v.pipe(
        v.tuple([v.number(), v.number()], 'must be [FROM, TO]'),
        v.check(([from, to]) => from >= 0 && to <= 1 && from <= to, 'must be [FROM, TO] with 0 ≤ FROM ≤ TO ≤ 1'),
      ),
      [...DEFAULT_WINDOW] as [number, number],
    ),
    v.metadata(windowMeta),
  ),
  metric: choiceSetting({ key: 'metric', group: 'select', label: 'Metric', help: 'score that ranks the points' }, ['effect_size', 'gap', 'relative_gap'], 'effect_size'),
  candidates: numericSetting('integer', { key: 'candidates', group: 'select', label: 'Candidates', help: 'candidates tried by --select ablation', min: 1 }, 4),
  alpha: numericSetting('number', { key: 'alpha', group: 'cut', label: 'Cut strength α', help: 'cut strength: W ← W − α d̂ d̂ᵀ W', valueName: 'a', min: -100, max: 100, step: 0.05 }, 1),
  layers: textSetting({ key: 'layers', group: 'cut', label: 'Layers to cut', help: 'layers to cut: all, FROM-TO, 1,4,9, above_median, top_k:N', valueName: 'which' }, 'all', parseLayerSelection),
  'strength-profile': textSetting(
    { key: 'strength-profile', group: 'cut', label: 'Strength profile', help: "per-layer multipliers of α: constant, or tent:PEAK,WIDTH[,MIN[,MAX]] (MAX at layer PEAK, falling linearly to MIN at distance WIDTH)", valueName: 'shape', deprecatedName: 'kernel' },
    'constant',
    parseStrengthProfile,
  ),
  'preserve-norm': booleanSetting({ key: 'preserve-norm', group: 'cut', label: 'Preserve row norms', help: 'keep each cut row of W at its original norm' }, false),
  embedding: booleanSetting({ key: 'embedding', group: 'cut', label: 'also orthogonalize the embedding', help: 'also orthogonalize the embedding', offHelp: 'leave the embedding alone (cut only o_proj and down_proj)' }, true),
  'max-tokens': numericSetting('integer', { key: 'max-tokens', group: 'evaluate', label: 'New tokens per answer', help: 'new tokens per evaluation answer', min: 1 }, 64),
  markers: v.pipe(
    v.optional(v.pipe(v.array(v.pipe(v.string(), v.minLength(1)), 'must be a list of non-empty strings'), v.minLength(1, 'needs at least one marker')), [...DEFAULT_REFUSAL_MARKERS]),
    v.metadata({ key: 'markers', group: 'evaluate', kind: 'list', label: 'Refusal markers', help: 'refusal markers, separated by |', valueName: 'list' } as SettingMeta),
  ),
  mode: choiceSetting({ key: 'mode', group: 'steer', label: 'Steering', help: 'ablate (remove the direction) or add (push along it)', valueName: 'mode' }, ['ablate', 'add'], 'ablate'),
  scale: numericSetting('number', { key: 'scale', group: 'steer', label: 'Scale', help: 'for --mode add: h ← h + c · d̂', valueName: 'c', min: -1e6, max: 1e6 }, 4),
  threshold: numericSetting('number', { key: 'threshold', group: 'steer', label: 'Threshold', help: 'only where the projection h·d̂ exceeds t (conditional steering)', valueName: 't', min: -1e9, max: 1e9 }),
  temperature: numericSetting('number', { key: 'temperature', group: 'sample', label: 'Temperature', help: 'sampling temperature; 0 decodes greedily', valueName: 't', min: 0 }, 0),
  'top-k': numericSetting('integer', { key: 'top-k', group: 'sample', label: 'Top k', help: 'sample among the k most likely tokens (0: all)', valueName: 'k', min: 0 }, 0),
  'top-p': numericSetting('number', { key: 'top-p', group: 'sample', label: 'Top p', help: 'sample among the most likely tokens of total probability p', valueName: 'p', min: 0, max: 1 }, 1),
  seed: numericSetting('integer', { key: 'seed', group: 'sample', label: 'Seed', help: 'random seed for sampling', min: 0 }, 0),
});

export type SettingKey = keyof typeof SETTINGS_SCHEMA.entries;
/** Settings as a TOML file or the flags give them, every default filled in. */
export type SettingValues = v.InferOutput<typeof SETTINGS_SCHEMA>;

/** The schema's settings, in its order: what a form or a flag parser needs. */
export function settingFields(keys: readonly SettingKey[] = Object.keys(SETTINGS_SCHEMA.entries) as SettingKey[]): SettingField[] {
  return keys.map((key) => fieldOf(SETTINGS_SCHEMA.entries[key]));
}

/** The metadata and default of one entry of a settings schema (the CLI's own settings use it too). */
export function fieldOf(schema: v.GenericSchema): SettingField {
  const meta = v.getMetadata(schema as Parameters<typeof v.getMetadata>[0]) as unknown as SettingMeta;
  return { ...meta, default: v.getDefault(schema as Parameters<typeof v.getDefault>[0]) };
}

/** The keys of the settings in these groups, in the schema's order. */
export function settingsInGroups(...groups: SettingGroup[]): SettingKey[] {
  return settingFields()
    .filter((f) => (groups as readonly string[]).includes(f.group))
    .map((f) => f.key as SettingKey);
}

/** Every setting's default, as the schema gives it. */
export function defaultValues(): SettingValues {
  return v.getDefaults(SETTINGS_SCHEMA) as SettingValues;
}

/**
 * Parses a setting typed as text (a flag's value, a form field) into the value the schema checks:
 * numbers in decimal notation only, `FROM,TO` for a window, `a|b` for a list.
 * `name` is how messages call it (e.g. "--alpha").
 */
export function parseSettingText(field: SettingMeta, text: string, name: string, schema?: v.GenericSchema): unknown {
  switch (field.kind) {
    case 'integer':
    case 'number':
      return parseDecimal(text, field, name);
    case 'window': {
      const parts = text.split(',');
      const [from, to] = parts.map((p) => parseDecimal(p, { kind: 'number', min: 0, max: 1 }, `${name} (each of FROM,TO)`));
      if (parts.length !== 2 || !(from! <= to!)) throw new SettingError(`${name} must be FROM,TO with 0 ≤ FROM ≤ TO ≤ 1; got ${JSON.stringify(text)}`);
      return [from, to];
    }
    case 'list': {
      const items = text.split('|').filter(Boolean);
      if (items.length === 0) throw new SettingError(`${name} needs at least one marker`);
      return items;
    }
    case 'boolean':
      if (text === 'true' || text === 'false') return text === 'true';
      throw new SettingError(`${name} must be true or false, got ${JSON.stringify(text)}`);
    default:
      return checkSetting(field, text, name, schema);
  }
}

/** Checks a value against its entry of the schema; returns it, or throws a message naming `name`. */
export function checkSetting(field: SettingMeta, value: unknown, name: string, schema?: v.GenericSchema): unknown {
  const result = v.safeParse(schema ?? entryOf(field.key), value);
  if (result.success) return result.output;
  const shown = typeof value === 'string' ? JSON.stringify(value) : Array.isArray(value) ? JSON.stringify(value) : String(value);
  const message = result.issues[0].message;
  // Number messages state the range; the others already quote what they got.
  if (field.kind === 'integer' || field.kind === 'number' || field.kind === 'boolean' || field.kind === 'window' || message.endsWith('must be a string')) {
    throw new SettingError(`${name} ${message}, got ${shown}`);
  }
  throw new SettingError(`${name} ${message}`);
}

function entryOf(key: string): v.GenericSchema {
  const schema = (SETTINGS_SCHEMA.entries as Record<string, v.GenericSchema>)[key];
  if (!schema) throw new Error(`no setting ${key}`);
  return schema;
}

// --- The pipeline's settings -----------------------------------------------------------------

export interface AbliterationSettings {
  /** Force the direction's point (hidden_states index); otherwise chosen by `select`. */
  point?: number | undefined;
  select: 'score' | 'ablation';
  window: readonly [number, number];
  metric: SelectionMetric;
  /** Candidates tried by `select: 'ablation'`. */
  candidates: number;
  alpha: number;
  layers: LayerSelection;
  strengthProfile: StrengthProfile;
  preserveRowNorm: boolean;
  embedding: boolean;
  maxNewTokens: number;
  batchSize: number;
  markers: readonly string[];
  /**
   * Prompts of each kind measured, sampled evenly from the sets (0: all). The mean of a few hundred
   * last-token residuals already fixes the direction; Arditi et al. use 128 of each.
   */
  measurePrompts: number;
}

/** The pipeline's settings from checked setting values (defaults for those not given). */
export function abliterationSettings(given: Partial<SettingValues> = {}): AbliterationSettings {
  const values = { ...defaultValues(), ...Object.fromEntries(Object.entries(given).filter(([, value]) => value !== undefined && value !== null)) } as SettingValues;
  return {
    point: values.point,
    select: values.select,
    window: values.window,
    metric: values.metric,
    candidates: values.candidates,
    alpha: values.alpha,
    layers: parseLayerSelection(values.layers),
    strengthProfile: parseStrengthProfile(values['strength-profile']),
    preserveRowNorm: values['preserve-norm'],
    embedding: values.embedding,
    maxNewTokens: values['max-tokens'],
    batchSize: values['batch-size'],
    markers: values.markers,
    measurePrompts: values['measure-prompts'],
  };
}

export const DEFAULT_SETTINGS: AbliterationSettings = abliterationSettings();

/** The settings of a run as the report records them: the schema's keys and the values a TOML file would give. */
export function settingsRecord(settings: AbliterationSettings): Record<string, unknown> {
  const values: Record<string, unknown> = {
    'measure-prompts': settings.measurePrompts,
    'batch-size': settings.batchSize,
    point: settings.point ?? null,
    select: settings.select,
    window: [...settings.window],
    metric: settings.metric,
    candidates: settings.candidates,
    alpha: settings.alpha,
    layers: formatLayerSelection(settings.layers),
    'strength-profile': formatStrengthProfile(settings.strengthProfile),
    'preserve-norm': settings.preserveRowNorm,
    embedding: settings.embedding,
    'max-tokens': settings.maxNewTokens,
    markers: [...settings.markers],
  };
  // The schema's order; every key named above must be one of its settings.
  const keys = settingsInGroups('measure', 'select', 'cut', 'evaluate');
  return Object.fromEntries(keys.map((key) => [key, values[key]]));
}
