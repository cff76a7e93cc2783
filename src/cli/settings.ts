import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseToml } from 'smol-toml';
import * as v from 'valibot';
import { DEFAULT_SETTINGS, type AbliterationSettings, type PromptSets } from '../abliterate/pipeline.ts';
import type { LayerKernel, LayerSelection } from '../abliterate/cut.ts';
import { FileMissingError, FileTooLargeError, formatSize, NotRegularFileError, type ByteSource } from '../io/byteSource.ts';
import { NodeFolder, readTextFile } from '../io/nodeFolder.ts';
import { readPrompts } from '../io/prompts.ts';
import { status, UsageError } from './common.ts';

/** The bundled prompt sets, written by this project (data/README.md). */
export const BUNDLED_DATA = resolve(dirname(fileURLToPath(import.meta.url)), '../../data');
export const BUNDLED: Record<'harmful' | 'harmless' | 'eval-harmful' | 'eval-harmless' | 'val-harmful' | 'val-harmless' | 'plain-text', string> = {
  harmful: `${BUNDLED_DATA}/harmful_train.txt`,
  harmless: `${BUNDLED_DATA}/harmless_train.txt`,
  'eval-harmful': `${BUNDLED_DATA}/harmful_test.txt`,
  'eval-harmless': `${BUNDLED_DATA}/harmless_test.txt`,
  'val-harmful': `${BUNDLED_DATA}/harmful_val.txt`,
  'val-harmless': `${BUNDLED_DATA}/harmless_val.txt`,
  'plain-text': `${BUNDLED_DATA}/plain_text.txt`,
};

const positiveInt = v.pipe(v.number(), v.integer(), v.minValue(1));
const path = v.pipe(v.string(), v.minLength(1));

/** Keys of a run's TOML config: exactly the long flags of `abliterate run`. */
const RunFileSchema = v.strictObject({
  harmful: v.optional(path),
  harmless: v.optional(path),
  'eval-harmful': v.optional(path),
  'eval-harmless': v.optional(path),
  'val-harmful': v.optional(path),
  'val-harmless': v.optional(path),
  'plain-text': v.optional(path),
  column: v.optional(v.string()),
  limit: v.optional(positiveInt),
  'measure-prompts': v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))),
  layer: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))),
  select: v.optional(v.picklist(['score', 'ablation'])),
  window: v.optional(v.pipe(v.tuple([v.number(), v.number()]), v.check(([a, b]) => a >= 0 && b <= 1 && a <= b, 'must be [from, to] with 0 ≤ from ≤ to ≤ 1'))),
  metric: v.optional(v.picklist(['effect_size', 'gap', 'relative_gap'])),
  candidates: v.optional(positiveInt),
  alpha: v.optional(v.pipe(v.number(), v.finite())),
  layers: v.optional(v.string()),
  kernel: v.optional(v.string()),
  'preserve-norm': v.optional(v.boolean()),
  embedding: v.optional(v.boolean()),
  'max-tokens': v.optional(positiveInt),
  'batch-size': v.optional(positiveInt),
  markers: v.optional(v.array(v.pipe(v.string(), v.minLength(1)))),
  out: v.optional(path),
  force: v.optional(v.boolean()),
  json: v.optional(v.boolean()),
  adapter: v.optional(v.picklist(['auto', 'hardware', 'lavapipe', 'swiftshader'])),
});
export type RunFileConfig = v.InferOutput<typeof RunFileSchema>;

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

/** Reads and validates a TOML config; paths in it are relative to the config file. */
export async function readRunConfig(file: string): Promise<RunFileConfig> {
  const text = await readTextInput(file, 'config file', MAX_CONFIG_BYTES);
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (error) {
    throw new UsageError(`${file}: invalid TOML: ${(error as Error).message.split('\n')[0]}`);
  }
  const result = v.safeParse(RunFileSchema, raw);
  if (!result.success) {
    const issue = result.issues[0];
    const key = issue.path?.map((p) => String(p.key)).join('.') ?? '';
    const message = issue.type === 'strict_object' ? `unknown key "${key}" (the keys are the long flags of abliterate run, e.g. eval-harmful, max-tokens)` : `${key}: ${issue.message}`;
    throw new UsageError(`${file}: ${message}`);
  }
  const config = result.output;
  const base = dirname(resolve(file));
  for (const key of ['harmful', 'harmless', 'eval-harmful', 'eval-harmless', 'val-harmful', 'val-harmless', 'plain-text', 'out'] as const) {
    const value = config[key];
    if (value !== undefined) config[key] = resolve(base, value);
  }
  return config;
}

/** "all", "3-7", "1,4,9", "above_median" or "top_k:4". */
export function parseLayerSelection(text: string): LayerSelection {
  if (text === 'all') return { kind: 'all' };
  if (text === 'above_median') return { kind: 'above_median' };
  const topK = /^top_k:(\d+)$/.exec(text);
  if (topK) return { kind: 'top_k', k: Number(topK[1]) };
  const range = /^(\d+)-(\d+)$/.exec(text);
  if (range) return { kind: 'range', from: Number(range[1]), to: Number(range[2]) };
  if (/^\d+(,\d+)*$/.test(text)) return { kind: 'list', layers: text.split(',').map(Number) };
  throw new UsageError(`--layers must be all, FROM-TO, a list like 1,4,9, above_median or top_k:N; got "${text}"`);
}

/** "constant" or "tent:PEAK,WIDTH[,MIN[,MAX]]". */
export function parseKernel(text: string): LayerKernel {
  if (text === 'constant') return { kind: 'constant' };
  const tent = /^tent:([\d.]+),([\d.]+)(?:,([\d.]+))?(?:,([\d.]+))?$/.exec(text);
  if (tent) {
    const [peak, width, min = 0, max = 1] = tent.slice(1).map((x) => (x === undefined ? undefined : Number(x))) as number[];
    if (!(width! > 0)) throw new UsageError('--kernel tent width must be positive');
    return { kind: 'tent', peak: peak!, width: width!, min, max };
  }
  throw new UsageError(`--kernel must be constant or tent:PEAK,WIDTH[,MIN[,MAX]]; got "${text}"`);
}

export function parseWindow(text: string): [number, number] {
  const parts = text.split(',').map(Number);
  if (parts.length !== 2 || parts.some((x) => !(x >= 0 && x <= 1)) || parts[0]! > parts[1]!) throw new UsageError(`--window must be FROM,TO with 0 ≤ FROM ≤ TO ≤ 1; got "${text}"`);
  return [parts[0]!, parts[1]!];
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

export async function loadPromptSets(config: RunFileConfig, needed: { plainText: boolean; validation: boolean }): Promise<PromptSets> {
  const file = (key: keyof typeof BUNDLED) => config[key] ?? BUNDLED[key];
  const { column, limit } = config;
  const sets: PromptSets = {
    harmful: await loadPrompts(file('harmful'), column, limit),
    harmless: await loadPrompts(file('harmless'), column, limit),
    evalHarmful: await loadPrompts(file('eval-harmful'), column, limit),
    evalHarmless: await loadPrompts(file('eval-harmless'), column, limit),
  };
  if (needed.validation) {
    sets.validationHarmful = await loadPrompts(file('val-harmful'), column, limit);
    sets.validationHarmless = await loadPrompts(file('val-harmless'), column, limit);
  }
  if (needed.plainText) sets.plainText = await readTextInput(file('plain-text'), 'plain text', MAX_PLAIN_TEXT_BYTES);
  return sets;
}

export function settingsFrom(config: RunFileConfig): AbliterationSettings {
  return {
    ...DEFAULT_SETTINGS,
    layer: config.layer,
    select: config.select ?? DEFAULT_SETTINGS.select,
    window: config.window ?? DEFAULT_SETTINGS.window,
    metric: config.metric ?? DEFAULT_SETTINGS.metric,
    candidates: config.candidates ?? DEFAULT_SETTINGS.candidates,
    alpha: config.alpha ?? DEFAULT_SETTINGS.alpha,
    layers: config.layers ? parseLayerSelection(config.layers) : DEFAULT_SETTINGS.layers,
    kernel: config.kernel ? parseKernel(config.kernel) : DEFAULT_SETTINGS.kernel,
    preserveRowNorm: config['preserve-norm'] ?? DEFAULT_SETTINGS.preserveRowNorm,
    embedding: config.embedding ?? DEFAULT_SETTINGS.embedding,
    maxNewTokens: config['max-tokens'] ?? DEFAULT_SETTINGS.maxNewTokens,
    batchSize: config['batch-size'] ?? DEFAULT_SETTINGS.batchSize,
    markers: config.markers ?? DEFAULT_SETTINGS.markers,
    measurePrompts: config['measure-prompts'] ?? DEFAULT_SETTINGS.measurePrompts,
  };
}
