import { dirname, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { parse as parseToml } from 'smol-toml';
import type * as v from 'valibot';
import { checkSetting, describeRange, fieldOf, parseSettingText, type SettingField } from '../index.ts';
import { UsageError } from './common.ts';
import { ALL_SETTINGS, MAX_CONFIG_BYTES, readTextInput, type CommandValues } from './settings.ts';

/** One option of a command: a setting of the schema, with what differs for this command. */
export interface CommandOption {
  key: string;
  /** This command's help, instead of the schema's. */
  help?: string;
  /** This command's name for the flag's value, e.g. `dir`. */
  valueName?: string;
  /** This command's default, instead of the schema's. */
  default?: unknown;
  /** The flag must be given (commander says so when it is missing). */
  required?: boolean;
  /** This command's own schema entry for the key, where the key means something else here than in the shared schema. */
  setting?: v.GenericSchema;
}

/** A command's settings: exactly the flags (and TOML keys) it accepts. */
export interface CommandSettings {
  name: string;
  options: readonly (string | CommandOption)[];
  /** Accepts `--config FILE`, a TOML file whose keys are the command's long flags. */
  config?: boolean;
}

interface Resolved {
  field: SettingField;
  schema: v.GenericSchema;
  option: CommandOption;
  fallback: unknown;
}

function resolveOptions(settings: CommandSettings): Resolved[] {
  return settings.options.map((entry) => {
    const option = typeof entry === 'string' ? { key: entry } : entry;
    const known = option.setting ? { field: fieldOf(option.setting), schema: option.setting } : ALL_SETTINGS.get(option.key);
    if (!known || known.field.key !== option.key) throw new Error(`the command ${settings.name} names an unknown setting ${option.key}`);
    return { field: known.field, schema: known.schema, option, fallback: 'default' in option ? option.default : known.field.default };
  });
}

function shown(value: unknown): string {
  return Array.isArray(value) ? value.join(',') : String(value);
}

/** The commander option of a setting: its flag, help with range and default, and strict parser. */
function commanderOption({ field, schema, option, fallback }: Resolved): Option {
  const help = option.help ?? field.help;
  if (field.kind === 'boolean') {
    // A setting that is on by default is turned off by --no-<key>.
    return fallback === true ? new Option(`--no-${field.key}`, option.help ?? field.offHelp ?? `do not ${help}`) : new Option(`--${field.key}`, help);
  }
  const range = field.kind === 'integer' || field.kind === 'number' ? `; ${describeRange(field)}` : '';
  const ownDefault = fallback !== undefined && field.kind !== 'list' && field.kind !== 'file' ? ` (default: ${shown(fallback)})` : '';
  const flag = new Option(`--${field.key} <${option.valueName ?? field.valueName ?? 'value'}>`, `${help}${range}${ownDefault}`);
  if (field.kind === 'choice') flag.choices(field.choices as string[]);
  else flag.argParser((text: string) => parseSettingText(field, text, `--${field.key}`, schema));
  if (field.env) flag.env(field.env);
  if (option.required) flag.makeOptionMandatory();
  return flag;
}

/** Adds a command's options, derived from the settings schema; `--help` shows each range and default. */
export function addSettingOptions(command: Command, settings: CommandSettings): Command {
  for (const resolved of resolveOptions(settings)) {
    command.addOption(commanderOption(resolved));
    const old = resolved.field.deprecatedName;
    if (old) {
      command.addOption(
        new Option(`--${old} <${resolved.field.valueName ?? 'value'}>`).hideHelp().argParser((text: string) => {
          deprecated(`--${old}`, `--${resolved.field.key}`);
          return parseSettingText(resolved.field, text, `--${old}`, ALL_SETTINGS.get(resolved.field.key)!.schema);
        }),
      );
    }
  }
  if (settings.config) command.addOption(new Option('--config <file>', 'a TOML file whose keys are these long flags (flags given here win)'));
  return command;
}

function deprecated(old: string, name: string): void {
  process.stderr.write(`abliterate: ${old} is deprecated; use ${name}\n`);
}

/** "max-tokens" → "maxTokens", as commander names option values. */
function attribute(field: SettingField, fallback: unknown): string {
  const flag = field.kind === 'boolean' && fallback === true ? `no-${field.key}` : field.key;
  return new Option(`--${flag}`).attributeName();
}

/**
 * The command's settings: its defaults, then the TOML file of `--config` (if it takes one), then
 * the flags given (or their environment variables). Only the command's own keys are present.
 */
export async function commandValues(command: Command, settings: CommandSettings): Promise<CommandValues> {
  const resolved = resolveOptions(settings);
  const options = command.opts<Record<string, unknown>>();
  const values: Record<string, unknown> = {};
  for (const { field, fallback } of resolved) if (fallback !== undefined) values[field.key] = fallback;
  if (settings.config && typeof options.config === 'string') Object.assign(values, await readConfig(options.config, settings));
  for (const { field, fallback } of resolved) {
    const given = (name: string) => {
      const source = command.getOptionValueSource(name);
      return source === 'cli' || source === 'env';
    };
    const name = attribute(field, fallback);
    const old = field.deprecatedName ? new Option(`--${field.deprecatedName}`).attributeName() : undefined;
    if (old && given(old)) {
      if (given(name)) throw new UsageError(`give --${field.key} or its old name --${field.deprecatedName}, not both`);
      values[field.key] = options[old];
    }
    if (given(name)) values[field.key] = options[name];
  }
  return values as CommandValues;
}

/** A TOML number's text must be decimal too: TOML also allows 0x10, 1_000, inf and nan. */
function checkNumberText(text: string, key: string, field: SettingField, file: string): void {
  const assignment = new RegExp(`^\\s*(?:${escape(key)}|"${escape(key)}"|'${escape(key)}')\\s*=\\s*([^#\\n]*)`, 'm').exec(text);
  if (!assignment) return;
  const raw = assignment[1]!.trim();
  const parts = field.kind === 'window' ? raw.replace(/^\[|\]$/g, '').split(',').map((p) => p.trim()).filter(Boolean) : [raw];
  const range = field.kind === 'window' ? { kind: 'number' as const, min: 0, max: 1 } : field;
  for (const part of parts) parseDecimalOrThrow(part, range, `${file}: ${key}`);
}

function parseDecimalOrThrow(text: string, range: Pick<SettingField, 'kind' | 'min' | 'max'>, name: string): void {
  parseSettingText({ key: name, group: 'cli', label: name, help: '', ...range }, text, name);
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');
}

/** Reads and checks a TOML config for a command; its paths are relative to the config file. */
export async function readConfig(file: string, settings: CommandSettings): Promise<Partial<CommandValues>> {
  const text = await readTextInput(file, 'config file', MAX_CONFIG_BYTES);
  let raw: Record<string, unknown>;
  try {
    raw = parseToml(text);
  } catch (error) {
    throw new UsageError(`${file}: invalid TOML: ${(error as Error).message.split('\n')[0]}`);
  }
  const resolved = resolveOptions(settings);
  const own = new Map(resolved.map((r) => [r.field.key, r.field]));
  const schemas = new Map(resolved.map((r) => [r.field.key, r.schema]));
  const byOldName = new Map([...own.values()].filter((f) => f.deprecatedName).map((f) => [f.deprecatedName!, f]));
  const values: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw)) {
    let field = own.get(key);
    if (!field && byOldName.has(key)) {
      field = byOldName.get(key)!;
      if (key in raw && field.key in raw) throw new UsageError(`${file}: give ${field.key} or its old name ${key}, not both`);
      deprecated(`the key ${key}`, field.key);
    }
    if (!field) {
      const where = ALL_SETTINGS.has(key) ? `the key "${key}" does not apply to abliterate ${settings.name}` : `unknown key "${key}"`;
      throw new UsageError(`${file}: ${where} (the keys are the long flags of abliterate ${settings.name}: ${[...own.keys()].join(', ')})`);
    }
    const name = `${file}: ${key}`;
    const numbers = typeof value === 'number' || (Array.isArray(value) && value.every((x) => typeof x === 'number'));
    if (numbers && (field.kind === 'integer' || field.kind === 'number' || field.kind === 'window')) checkNumberText(text, key, field, file);
    try {
      values[field.key] = checkSetting(field, value, name, schemas.get(field.key));
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
  }
  const base = dirname(resolve(file));
  for (const [key, value] of Object.entries(values)) {
    if (own.get(key)?.kind === 'file' && typeof value === 'string') values[key] = resolve(base, value);
  }
  return values as Partial<CommandValues>;
}
