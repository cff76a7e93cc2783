import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as v from 'valibot';
import { ADAPTER_CHOICES, type AdapterChoice, booleanSetting, type ByteSource, choiceSetting, fieldOf, FileMissingError, fileSetting, FileTooLargeError, formatSize, NodeFolder, NotRegularFileError, numericSetting, type PositionSelector, type PromptSets, readPrompts, readTextFile, SettingError, type SettingField, SETTINGS_SCHEMA, type SettingValues, TAP_POINTS, textSetting } from '../index.ts';
import { status, UsageError } from './common.ts';
import { OPTIMIZE_SCHEMA } from './optimizeOptions.ts';

/** The bundled prompt sets, written by this project (data/README.md). */
export const BUNDLED_DATA = resolve(dirname(fileURLToPath(import.meta.url)), '../../data');
export const BUNDLED: Record<'harmful' | 'harmless' | 'eval-harmful' | 'eval-harmless' | 'eval-borderline' | 'val-harmful' | 'val-harmless' | 'plain-text', string> = {
  harmful: `${BUNDLED_DATA}/harmful_train.txt`,
  harmless: `${BUNDLED_DATA}/harmless_train.txt`,
  'eval-harmful': `${BUNDLED_DATA}/harmful_test.txt`,
  'eval-harmless': `${BUNDLED_DATA}/harmless_test.txt`,
  'eval-borderline': `${BUNDLED_DATA}/borderline_benign.txt`,
  'val-harmful': `${BUNDLED_DATA}/harmful_val.txt`,
  'val-harmless': `${BUNDLED_DATA}/harmless_val.txt`,
  'plain-text': `${BUNDLED_DATA}/plain_text.txt`,
};

/** "last", "all", or a comma-separated list of integers (negative counts from the end). */
export function parsePositions(value: string): PositionSelector {
  if (value === 'last' || value === 'all') return value;
  const parts = value.split(',').map((p) => p.trim());
  if (parts.some((p) => !/^[+-]?\d+$/.test(p) || !Number.isSafeInteger(Number(p)))) {
    throw new SettingError(`must be last, all, or a comma-separated list of integers (negative counts from the end), got ${JSON.stringify(value)}`);
  }
  return parts.map(Number);
}

/** A comma-separated list of distinct point indices. */
export function parsePoints(value: string): number[] {
  const points = value.split(',').map((part) => part.trim());
  if (points.some((p) => !/^\d+$/.test(p) || !Number.isSafeInteger(Number(p)))) throw new SettingError(`must be point indices separated by commas (e.g. 3,4,5), got ${JSON.stringify(value)}`);
  const numbers = points.map(Number);
  if (new Set(numbers).size !== numbers.length) throw new SettingError(`lists a point twice: ${JSON.stringify(value)}`);
  return numbers;
}

/** The CLI's own settings: where to read and write, and what the commands other than the abliteration take. */
export const CLI_SCHEMA = v.strictObject({
  config: fileSetting({ key: 'config', group: 'cli', label: 'Config file', help: 'a TOML file whose keys are the long flags (flags given here win)' }),
  out: fileSetting({ key: 'out', group: 'cli', label: 'Output', help: 'where to write' }),
  force: booleanSetting({ key: 'force', group: 'cli', label: 'Replace', help: 'replace --out if it exists' }, false),
  json: booleanSetting({ key: 'json', group: 'cli', label: 'JSON', help: 'print JSON' }, false),
  adapter: choiceSetting(
    { key: 'adapter', group: 'cli', label: 'Adapter', help: 'WebGPU adapter: the best found, a hardware one, or a software Vulkan driver', env: 'ABLITERATE_ADAPTER' },
    ADAPTER_CHOICES as readonly [AdapterChoice, ...AdapterChoice[]],
    'auto',
  ),
  direction: fileSetting({ key: 'direction', group: 'cli', label: 'Directions file', help: 'directions file from abliterate measure or run' }),
  baseline: fileSetting({ key: 'baseline', group: 'cli', label: 'Baseline model', help: 'the original model, for the first-token KL', valueName: 'model-dir' }),
  points: textSetting(
    { key: 'points', group: 'cli', label: 'Points', help: "cut the subspace spanned by these points' directions (e.g. 3,4,5; orthonormalised in that order)", valueName: 'list' },
    undefined,
    parsePoints,
  ),
  prompt: textSetting({ key: 'prompt', group: 'cli', label: 'Prompt', help: 'the prompt' }),
  prompts: fileSetting({ key: 'prompts', group: 'cli', label: 'Prompts', help: 'prompts to probe, labelled by whether the model refuses them' }),
  'per-layer': booleanSetting({ key: 'per-layer', group: 'cli', label: 'Per layer', help: "project each point on its own direction, not the file's chosen one" }, false),
  chat: booleanSetting({ key: 'chat', group: 'cli', label: 'Chat', help: "format the prompt with the model's chat template" }, false),
  tap: choiceSetting({ key: 'tap', group: 'cli', label: 'Tap point', help: 'tap point', valueName: 'name', deprecatedName: 'point' }, TAP_POINTS, 'resid_post'),
  position: textSetting({ key: 'position', group: 'cli', label: 'Positions', help: 'last, all, or positions like 0,3,-1', valueName: 'which' }, 'last', parsePositions),
  'clip-quantile': numericSetting('number', { key: 'clip-quantile', group: 'cli', label: 'Clip quantile', help: "winsorize each prompt's residual at its own quantiles q and 1 − q before the means (damps huge coordinates)", valueName: 'q', min: 0.0001, max: 0.4999 }),
  sparsify: numericSetting('number', { key: 'sparsify', group: 'cli', label: 'Sparsify', help: "keep each direction's k largest |components| (an integer ≥ 1) or that fraction of them (in (0, 1)), renormalised", valueName: 'k', min: 0.0001 }),
  borderline: fileSetting({ key: 'borderline', group: 'cli', label: 'Borderline prompts', help: 'borderline-benign prompts (e.g. data/borderline_benign.txt): make the refusal direction orthogonal to their false-refusal direction (their mean less the harmless mean)' }),
  projected: booleanSetting({ key: 'projected', group: 'cli', label: 'Projected', help: 'take the direction orthogonal to the harmless mean ("projected abliteration")' }, false),
  target: choiceSetting({ key: 'target', group: 'cli', label: 'Target', help: 'cut the refusal-execution direction (last token), the harm-detection direction (instruction-final token), or the plane of both (a file from measure --position both)', valueName: 'which' }, ['red', 'hdd', 'both']),
});

export type CliKey = keyof typeof CLI_SCHEMA.entries;
/** Every value a command can be given, library settings and the CLI's own, defaults filled in. */
export type CommandValues = SettingValues & v.InferOutput<typeof CLI_SCHEMA>;

/** Every setting a command can name, library ones first, with the schema entry that checks it. */
export const ALL_SETTINGS: ReadonlyMap<string, { field: SettingField; schema: v.GenericSchema }> = new Map(
  [...Object.values(SETTINGS_SCHEMA.entries), ...Object.values(CLI_SCHEMA.entries), ...Object.values(OPTIMIZE_SCHEMA.entries)].map((schema) => {
    const field = fieldOf(schema as v.GenericSchema);
    return [field.key, { field, schema: schema as v.GenericSchema }] as const;
  }),
);

/** Largest TOML config read (a config is a few hundred bytes). */
export const MAX_CONFIG_BYTES = 2 ** 20;
/** Largest plain text read for perplexity (of which the first 4096 tokens are used). */
export const MAX_PLAIN_TEXT_BYTES = 16 * 2 ** 20;

/**
 * Reads a text file named on the command line: at most `maxBytes`, a regular file (not a FIFO or
 * `/dev/zero`), with messages that name it as given and never quote it.
 */
export async function readTextInput(file: string, what: string, maxBytes: number): Promise<string> {
  try {
    return await readTextFile(file, maxBytes, () => new UsageError(`the ${what} ${file} does not exist`));
  } catch (error) {
    if (error instanceof NotRegularFileError) throw new UsageError(`the ${what} ${file} is ${error.kind}, not a regular file`);
    if (error instanceof FileTooLargeError) throw new UsageError(`the ${what} ${file} is ${formatSize(error.size)}, more than the ${formatSize(maxBytes)} it may have`);
    if (error instanceof UsageError) throw error;
    throw new UsageError(`cannot read the ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

/** Reads a prompt file (txt, jsonl, json, csv, parquet), printing warnings to stderr. */
export async function loadPrompts(file: string, column?: string, limit?: number): Promise<string[]> {
  const full = resolve(file);
  const folder = new NodeFolder(dirname(full));
  const source = await folder.open(basename(full)).catch((error: unknown) => {
    if (error instanceof FileMissingError) throw new UsageError(`the prompt file ${full} does not exist`);
    if (error instanceof NotRegularFileError) throw new UsageError(`the prompt file ${full} is ${error.kind}, not a regular file`);
    throw error;
  });
  // Messages name the file as the user gave it, not just its base name.
  const named: ByteSource = { name: file, size: source.size, read: (offset, length) => source.read(offset, length) };
  const prompts = await readPrompts(named, { column, onWarning: (m) => status(`warning: ${m}`) });
  return limit ? prompts.slice(0, limit) : prompts;
}

export async function loadPromptSets(config: Partial<CommandValues>, needed: { plainText: boolean; validation: boolean }): Promise<PromptSets> {
  const file = (key: keyof typeof BUNDLED) => config[key] ?? BUNDLED[key];
  const { column, limit } = config;
  const sets: PromptSets = {
    harmful: await loadPrompts(file('harmful'), column, limit),
    harmless: await loadPrompts(file('harmless'), column, limit),
    evalHarmful: await loadPrompts(file('eval-harmful'), column, limit),
    evalHarmless: await loadPrompts(file('eval-harmless'), column, limit),
    evalBorderline: await loadPrompts(file('eval-borderline'), column, limit),
  };
  if (needed.validation) {
    sets.validationHarmful = await loadPrompts(file('val-harmful'), column, limit);
    sets.validationHarmless = await loadPrompts(file('val-harmless'), column, limit);
  }
  if (needed.plainText) sets.plainText = await readTextInput(file('plain-text'), 'plain text', MAX_PLAIN_TEXT_BYTES);
  return sets;
}
