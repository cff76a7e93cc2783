/**
 * The search's settings (group "search"), defined once for the CLI's flags and TOML keys of
 * `optimize` and `run` and for the page's search form. Browser-safe: no Node imports.
 */
import * as v from 'valibot';
import { DEFAULT_DIRECTION_WINDOW, parsePin, PARAMETER_NAMES, type CutParameters } from './optimize/space.ts';
import type { OptimizeSettings } from './optimize/search.ts';
import { booleanSetting, fieldOf, fileSetting, numericSetting, SettingError, type SettingField, type SettingMeta } from './settings.ts';

/** Defaults of the search, sized so that the bundled model's search takes a few minutes on a software adapter. */
export const OPTIMIZE_DEFAULTS = {
  trials: 40,
  startupTrials: 12,
  seed: 1,
  /** Tokens per validation answer: enough for the bundled model's refusals, which open its answers. */
  valTokens: 32,
} as const;

function checkPins(items: readonly string[]): void {
  for (const item of items) {
    try {
      parsePin(item);
    } catch (error) {
      throw new SettingError((error as Error).message);
    }
  }
}

/** The search's settings (group "search"): flags of `optimize` and `run`, keys of their TOML config. */
export const OPTIMIZE_SCHEMA = v.strictObject({
  trials: numericSetting('integer', { key: 'trials', group: 'search', label: 'Trials', help: 'trials of the search, counting those of a resumed study', min: 1 }, OPTIMIZE_DEFAULTS.trials),
  'startup-trials': numericSetting('integer', { key: 'startup-trials', group: 'search', label: 'Random trials', help: 'random trials before the sampler models the results', min: 1 }, OPTIMIZE_DEFAULTS.startupTrials),
  timeout: numericSetting('number', { key: 'timeout', group: 'search', label: 'Timeout (s)', help: 'start no new trial after this many seconds of search', valueName: 'seconds', min: 0 }),
  study: fileSetting({ key: 'study', group: 'search', label: 'Study file', help: 'append each finished trial to this JSON Lines file; an existing one is resumed' }),
  trial: numericSetting('integer', { key: 'trial', group: 'search', label: 'Exported trial', help: 'export this trial of the study instead of the chosen one', min: 0 }),
  pin: v.pipe(
    v.optional(
      v.pipe(
        v.array(v.string(), 'must be a list of NAME=VALUE'),
        v.rawCheck(({ dataset, addIssue }) => {
          if (!dataset.typed) return;
          try {
            checkPins(dataset.value);
          } catch (error) {
            addIssue({ message: (error as Error).message });
          }
        }),
      ),
    ),
    v.metadata({
      key: 'pin',
      group: 'search',
      kind: 'list',
      label: 'Pinned parameters',
      help: `hold cut parameters instead of searching them: NAME=VALUE separated by | (${PARAMETER_NAMES.join(', ')})`,
      valueName: 'list',
    } as SettingMeta),
  ),
  'direction-window': v.pipe(
    v.optional(
      v.pipe(
        v.tuple([v.number(), v.number()], 'must be [FROM, TO]'),
        v.check(([from, to]) => from >= 0 && to <= 1 && from <= to, 'must be [FROM, TO] with 0 ≤ FROM ≤ TO ≤ 1'),
      ),
      [...DEFAULT_DIRECTION_WINDOW] as [number, number],
    ),
    v.metadata({ key: 'direction-window', group: 'search', kind: 'window', label: 'Direction window', help: 'depth window (fractions) the direction index ranges over; 0,1 for the whole depth', valueName: 'from,to' } as SettingMeta),
  ),
  'val-tokens': numericSetting('integer', { key: 'val-tokens', group: 'search', label: 'Tokens per validation answer', help: 'new tokens per validation answer in a trial', min: 1 }, OPTIMIZE_DEFAULTS.valTokens),
  optimize: booleanSetting({ key: 'optimize', group: 'search', label: 'Search the cut', help: 'search the cut', offHelp: 'skip the search: choose the point and cut as --point, --select, --alpha, --layers and --strength-profile say' } as SettingMeta, true),
});

export const OPTIMIZE_KEYS = ['trials', 'startup-trials', 'timeout', 'seed', 'study', 'trial', 'pin', 'direction-window', 'val-tokens'] as const;

export type OptimizeKey = keyof typeof OPTIMIZE_SCHEMA.entries;

/** The search's settings as a form renders them (metadata and default), in the order asked for. */
export function searchSettingFields(keys: readonly OptimizeKey[]): SettingField[] {
  return keys.map((key) => fieldOf(OPTIMIZE_SCHEMA.entries[key]));
}

export interface OptimizeValues {
  trials?: number;
  'startup-trials'?: number;
  timeout?: number;
  seed?: number;
  study?: string;
  trial?: number;
  pin?: string[];
  'direction-window'?: [number, number];
  'val-tokens'?: number;
  optimize?: boolean;
}

/** The pins of a config: `--pin "name=value|name=value"` or a TOML list of "name=value". */
export function pinsFrom(pin: readonly string[] | undefined): Partial<CutParameters> {
  let pinned: Partial<CutParameters> = {};
  for (const text of pin ?? []) pinned = { ...pinned, ...parsePin(text) };
  return pinned;
}

/** The search's settings; `implied` adds pins that other flags imply (e.g. --no-embedding). */
export function optimizeSettingsFrom(values: OptimizeValues, implied: Partial<CutParameters> = {}): OptimizeSettings {
  const trials = values.trials ?? OPTIMIZE_DEFAULTS.trials;
  return {
    trials,
    startupTrials: Math.min(values['startup-trials'] ?? OPTIMIZE_DEFAULTS.startupTrials, trials),
    seed: values.seed ?? OPTIMIZE_DEFAULTS.seed,
    timeoutSeconds: values.timeout,
    directionWindow: values['direction-window'] ?? DEFAULT_DIRECTION_WINDOW,
    pinned: { ...implied, ...pinsFrom(values.pin) },
    maxNewTokens: values['val-tokens'] ?? OPTIMIZE_DEFAULTS.valTokens,
    trial: values.trial,
  };
}
