import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import {
  abliterationSettings,
  DEFAULT_SETTINGS,
  defaultValues,
  fieldOf,
  parseDecimal,
  SETTINGS_SCHEMA,
  settingFields,
  settingsRecord,
  type AbliterationSettings,
} from '../../src/abliterate/settings.ts';
import type { AbliterationResult } from '../../src/abliterate/pipeline.ts';
import { cutParameters, reportOf } from '../../src/abliterate/report.ts';
import type { LlamaModel } from '../../src/model/model.ts';
import { CUT_SETTINGS, registerCut } from '../../src/cli/cut.ts';
import { EVAL_SETTINGS, registerEval } from '../../src/cli/eval.ts';
import { GENERATE_SETTINGS, registerGenerate } from '../../src/cli/generate.ts';
import { INSPECT_SETTINGS, registerInspect } from '../../src/cli/inspect.ts';
import { MEASURE_SETTINGS, registerMeasure } from '../../src/cli/measure.ts';
import { addSettingOptions, commandValues, readConfig, type CommandSettings } from '../../src/cli/options.ts';
import { OPTIMIZE_SETTINGS, registerOptimize } from '../../src/cli/optimize.ts';
import { PROBE_SETTINGS, registerProbe } from '../../src/cli/probe.ts';
import { givenKeys, RUN_SETTINGS, registerRun } from '../../src/cli/run.ts';
import { ALL_SETTINGS } from '../../src/cli/settings.ts';
import { registerSteer, STEER_SETTINGS } from '../../src/cli/steer.ts';
import { registerTaps, TAPS_SETTINGS } from '../../src/cli/taps.ts';

const COMMANDS: [CommandSettings, (program: Command) => void][] = [
  [INSPECT_SETTINGS, registerInspect],
  [RUN_SETTINGS, registerRun],
  [OPTIMIZE_SETTINGS, registerOptimize],
  [MEASURE_SETTINGS, registerMeasure],
  [CUT_SETTINGS, registerCut],
  [EVAL_SETTINGS, registerEval],
  [PROBE_SETTINGS, registerProbe],
  [STEER_SETTINGS, registerSteer],
  [GENERATE_SETTINGS, registerGenerate],
  [TAPS_SETTINGS, registerTaps],
];

function program(): Command {
  const root = new Command('abliterate').exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
  for (const [, register] of COMMANDS) register(root);
  for (const command of root.commands) command.exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
  return root;
}

/** A command with only the settings' options (no action), parsed from `args`. */
async function valuesOf(settings: CommandSettings, args: string[]): Promise<Record<string, unknown>> {
  const command = addSettingOptions(new Command(settings.name).exitOverride().configureOutput({ writeErr: () => {} }), settings);
  command.parse(args, { from: 'user' });
  return commandValues(command, settings);
}

function keyOf(entry: string | { key: string }): string {
  return typeof entry === 'string' ? entry : entry.key;
}

const dir = mkdtempSync(join(tmpdir(), 'abliterate-settings-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

function toml(text: string): string {
  const file = join(dir, `config-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(file, text);
  return file;
}

describe('flags derived from the schema', () => {
  it('every command has exactly the flags of its settings, named as the schema names them', () => {
    const root = program();
    for (const [settings] of COMMANDS) {
      const command = root.commands.find((c) => c.name() === settings.name)!;
      const visible = command.options.filter((o) => !o.hidden && o.long !== '--config').map((o) => o.long!.replace(/^--(no-)?/, ''));
      expect(visible, settings.name).toEqual(settings.options.map(keyOf));
      expect(command.options.some((o) => o.long === '--config'), settings.name).toBe(settings.config === true);
      for (const option of command.options) {
        const key = option.long!.replace(/^--(no-)?/, '');
        if (option.hidden) continue;
        if (key === 'config') continue;
        const field = ALL_SETTINGS.get(key)!.field;
        // Numbers say their range in --help.
        if (field.kind === 'integer' || field.kind === 'number') expect(option.description, `${settings.name} --${key}`).toMatch(/an? (integer|number) (≥|≤|in \[)/);
      }
    }
  });

  it("each flag's default is the schema's, unless the command states its own", async () => {
    for (const [settings] of COMMANDS) {
      const values = await valuesOf(settings, settings.options.filter((o) => typeof o !== 'string' && o.required).flatMap((o) => [`--${keyOf(o)}`, 'x']));
      for (const entry of settings.options) {
        const key = keyOf(entry);
        const own = typeof entry !== 'string' && entry.setting ? fieldOf(entry.setting) : ALL_SETTINGS.get(key)!.field;
        const expected = typeof entry !== 'string' && 'default' in entry ? entry.default : own.default;
        if (typeof entry !== 'string' && entry.required) continue;
        expect(values[key], `${settings.name} --${key}`).toEqual(expected);
      }
      expect(Object.keys(values).every((key) => settings.options.some((o) => keyOf(o) === key)), settings.name).toBe(true);
    }
  });

  it('the pipeline defaults are the schema defaults', () => {
    expect(DEFAULT_SETTINGS).toEqual(abliterationSettings(defaultValues()));
    const defaults = defaultValues();
    expect(DEFAULT_SETTINGS.alpha).toBe(defaults.alpha);
    expect(DEFAULT_SETTINGS.maxNewTokens).toBe(defaults['max-tokens']);
    expect(DEFAULT_SETTINGS.measurePrompts).toBe(defaults['measure-prompts']);
    expect(DEFAULT_SETTINGS.batchSize).toBe(defaults['batch-size']);
    expect(DEFAULT_SETTINGS.window).toEqual(defaults.window);
  });

  it('a flag a command does not use is rejected (cut --metric)', () => {
    const error = (() => {
      try {
        program().parse(['cut', 'model', '--direction', 'd', '--out', 'o', '--metric', 'gap'], { from: 'user' });
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(CommanderError);
    expect((error as CommanderError).code).toBe('commander.unknownOption');
    expect((error as CommanderError).message).toContain("'--metric'");
  });

  it('flags given override the defaults', async () => {
    const values = await valuesOf(RUN_SETTINGS, ['--alpha', '-1.5e-1', '--limit', '+3', '--window', '0.1,.9', '--no-embedding', '--markers', 'no|never', '--layers', '2-4']);
    expect(values).toMatchObject({ alpha: -0.15, limit: 3, window: [0.1, 0.9], embedding: false, markers: ['no', 'never'], layers: '2-4' });
    expect(abliterationSettings(values)).toMatchObject({ alpha: -0.15, embedding: false, layers: { kind: 'range', from: 2, to: 4 } });
  });
});

describe('strict numbers', () => {
  const notNumbers = ['', '0x10', '0b1', '1e400', '-1e400', 'NaN', 'Infinity', '-Infinity', ' 1', '1 ', '1_000', '1,5', '--1', '1e', '.', 'one'];

  it.each(notNumbers)('--alpha %j is an error naming the flag and the range', async (text) => {
    await expect(valuesOf(RUN_SETTINGS, ['--alpha', text])).rejects.toThrow(`--alpha must be a number in [-100, 100], got ${JSON.stringify(text)}`);
  });

  it.each([...notNumbers, '1.5', '2.0e-1', '-1'])('--limit %j is an error (an integer ≥ 0)', async (text) => {
    await expect(valuesOf(RUN_SETTINGS, ['--limit', text])).rejects.toThrow(`--limit must be an integer ≥ 0, got ${JSON.stringify(text)}`);
  });

  it('out of range, negative where not allowed, fractions where integers are expected', async () => {
    await expect(valuesOf(RUN_SETTINGS, ['--alpha', '100.5'])).rejects.toThrow('--alpha must be a number in [-100, 100], got "100.5"');
    await expect(valuesOf(RUN_SETTINGS, ['--batch-size', '0'])).rejects.toThrow('--batch-size must be an integer ≥ 1, got "0"');
    await expect(valuesOf(RUN_SETTINGS, ['--max-tokens', '-4'])).rejects.toThrow('--max-tokens must be an integer ≥ 1, got "-4"');
    await expect(valuesOf(RUN_SETTINGS, ['--point', '2.5'])).rejects.toThrow('--point must be an integer ≥ 0, got "2.5"');
    await expect(valuesOf(RUN_SETTINGS, ['--layer', '2.5'])).rejects.toThrow('--layer must be an integer ≥ 0, got "2.5"');
    await expect(valuesOf(RUN_SETTINGS, ['--window', '0.2,0x1'])).rejects.toThrow('got "0x1"');
    await expect(valuesOf(RUN_SETTINGS, ['--window', '0.8,0.2'])).rejects.toThrow('--window must be FROM,TO with 0 ≤ FROM ≤ TO ≤ 1; got "0.8,0.2"');
    await expect(valuesOf(GENERATE_SETTINGS, ['--prompt', 'p', '--top-p', '1.01'])).rejects.toThrow('--top-p must be a number in [0, 1], got "1.01"');
    await expect(valuesOf(GENERATE_SETTINGS, ['--prompt', 'p', '--seed', '1e30'])).rejects.toThrow('--seed must be an integer ≥ 0, got "1e30"');
    await expect(valuesOf(RUN_SETTINGS, ['--strength-profile', 'tent:0x3,2'])).rejects.toThrow('--strength-profile must be constant or tent:PEAK,WIDTH[,MIN[,MAX]]; got "tent:0x3,2"');
    await expect(valuesOf(TAPS_SETTINGS, ['--prompt', 'p', '--position', '1,0x2'])).rejects.toThrow('--position must be last, all, or a comma-separated list of integers');
  });

  it('decimal notation is accepted: signs, exponents, leading and trailing points', () => {
    const range = { kind: 'number' as const, min: -1e9, max: 1e9 };
    for (const [text, value] of [['1', 1], ['+2', 2], ['-3.5', -3.5], ['.25', 0.25], ['4.', 4], ['1e3', 1000], ['-2.5E-2', -0.025]] as const) {
      expect(parseDecimal(text, range, 'x')).toBe(value);
    }
  });
});

describe('TOML config', () => {
  it.each([
    ['alpha = 0x10', 'alpha must be a number in [-100, 100], got "0x10"'],
    ['alpha = 1_0', 'alpha must be a number in [-100, 100], got "1_0"'],
    ['alpha = inf', 'alpha must be a number in [-100, 100], got "inf"'],
    ['alpha = nan', 'alpha must be a number in [-100, 100], got "nan"'],
    ['alpha = 1e400', 'alpha must be a number in [-100, 100], got "1e400"'],
    ['alpha = "1"', 'alpha must be a number in [-100, 100], got "1"'],
    ['alpha = ""', 'alpha must be a number in [-100, 100], got ""'],
    ['limit = 1.5', 'limit must be an integer ≥ 0, got "1.5"'],
    ['limit = -1', 'limit must be an integer ≥ 0, got "-1"'],
    ['batch-size = 0', 'batch-size must be an integer ≥ 1, got "0"'],
    ['window = [0.2, 0x1]', 'window must be a number in [0, 1], got "0x1"'],
    ['window = [0.9, 0.2]', 'window must be [FROM, TO] with 0 ≤ FROM ≤ TO ≤ 1, got [0.9,0.2]'],
    ['layers = "1-x"', 'layers must be all, FROM-TO, a list like 1,4,9, above_median or top_k:N; got "1-x"'],
    ['embedding = "no"', 'embedding must be true or false, got "no"'],
  ])('%s is an error naming the key', async (text, message) => {
    const file = toml(`${text}\n`);
    await expect(readConfig(file, RUN_SETTINGS)).rejects.toThrow(`${file}: ${message}`);
  });

  it('an unknown key, and a key the command does not use, are errors naming the key', async () => {
    const unknown = toml('alpha = 1\nbogus = 2\n');
    await expect(readConfig(unknown, RUN_SETTINGS)).rejects.toThrow(`${unknown}: unknown key "bogus"`);
    const irrelevant = toml('select = "ablation"\n');
    await expect(readConfig(irrelevant, MEASURE_SETTINGS)).rejects.toThrow(`${irrelevant}: the key "select" does not apply to abliterate measure`);
  });

  it('decimal values are read, paths are relative to the file, and flags win over the file', async () => {
    const file = toml('alpha = -1.25e0\nlimit = 3\nwindow = [0.1, 0.9]\nharmful = "prompts.txt"\nmax-tokens = 16\n');
    expect(await readConfig(file, RUN_SETTINGS)).toEqual({ alpha: -1.25, limit: 3, window: [0.1, 0.9], harmful: join(dir, 'prompts.txt'), 'max-tokens': 16 });
    const values = await valuesOf(RUN_SETTINGS, ['--config', file, '--limit', '5']);
    expect(values).toMatchObject({ alpha: -1.25, limit: 5, 'max-tokens': 16, 'batch-size': 32 });
  });
});

describe('--strength-profile (formerly --kernel)', () => {
  it('the old flag still works, with a deprecation message on stderr', async () => {
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const values = await valuesOf(CUT_SETTINGS, ['--direction', 'd', '--out', 'o', '--kernel', 'tent:3,2']);
    expect(values['strength-profile']).toBe('tent:3,2');
    expect(abliterationSettings(values).strengthProfile).toEqual({ kind: 'tent', peak: 3, width: 2, min: 0, max: 1 });
    expect(stderr).toHaveBeenCalledWith('abliterate: --kernel is deprecated; use --strength-profile\n');
  });

  it('the old TOML key too; giving both names is an error', async () => {
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    expect(await readConfig(toml('kernel = "tent:2,1.5,0.25"\n'), RUN_SETTINGS)).toEqual({ 'strength-profile': 'tent:2,1.5,0.25' });
    expect(stderr).toHaveBeenCalledWith('abliterate: the key kernel is deprecated; use strength-profile\n');
    await expect(readConfig(toml('kernel = "constant"\nstrength-profile = "constant"\n'), RUN_SETTINGS)).rejects.toThrow('give strength-profile or its old name kernel, not both');
    await expect(valuesOf(RUN_SETTINGS, ['--kernel', 'constant', '--strength-profile', 'constant'])).rejects.toThrow('give --strength-profile or its old name --kernel, not both');
  });

  it('--help names the new flag only', () => {
    const help = program().commands.find((c) => c.name() === 'cut')!.helpInformation();
    expect(help).toContain('--strength-profile <shape>');
    expect(help).not.toContain('--kernel');
  });
});

describe('--point (formerly --layer): the residual point to take the direction at', () => {
  it('the old flag and TOML key still work, with a deprecation message; --help names the new flag only', async () => {
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    expect((await valuesOf(CUT_SETTINGS, ['--direction', 'd', '--out', 'o', '--layer', '4'])).point).toBe(4);
    expect(stderr).toHaveBeenCalledWith('abliterate: --layer is deprecated; use --point\n');
    expect(abliterationSettings(await valuesOf(RUN_SETTINGS, ['--layer', '3'])).point).toBe(3);
    expect(await readConfig(toml('layer = 5\n'), RUN_SETTINGS)).toEqual({ point: 5 });
    expect(stderr).toHaveBeenCalledWith('abliterate: the key layer is deprecated; use point\n');
    await expect(valuesOf(CUT_SETTINGS, ['--direction', 'd', '--out', 'o', '--layer', '1', '--point', '1'])).rejects.toThrow('give --point or its old name --layer, not both');
    for (const name of ['cut', 'steer', 'measure', 'run']) {
      const help = program().commands.find((c) => c.name() === name)!.helpInformation();
      expect(help, name).toContain('--point <n>');
      expect(help, name).not.toContain('--layer ');
    }
  });

  it('given by its old name, it still turns the search off', async () => {
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const command = addSettingOptions(new Command('run').exitOverride().configureOutput({ writeErr: () => {} }), RUN_SETTINGS);
    command.parse(['--layer', '2'], { from: 'user' });
    expect(await givenKeys(command)).toContain('point');
    const viaToml = addSettingOptions(new Command('run').exitOverride().configureOutput({ writeErr: () => {} }), RUN_SETTINGS);
    viaToml.parse(['--config', toml('kernel = "tent:2,1"\n')], { from: 'user' });
    expect(await givenKeys(viaToml)).toContain('strength-profile');
  });
});

describe('the page form and the report', () => {
  it('every setting has what a form needs: a label, help, a kind and its range or choices', () => {
    for (const field of settingFields()) {
      expect(field.label.length, field.key).toBeGreaterThan(0);
      expect(field.help.length, field.key).toBeGreaterThan(0);
      if (field.kind === 'choice') expect(field.choices!.length, field.key).toBeGreaterThan(1);
      if (field.kind === 'integer') expect(field.min, field.key).toBeDefined();
    }
    expect(settingFields().map((f) => f.key)).toEqual(Object.keys(SETTINGS_SCHEMA.entries));
  });

  it("the report's settings block reads back as the same settings", () => {
    const settings: AbliterationSettings = {
      ...DEFAULT_SETTINGS,
      point: 3,
      select: 'ablation',
      window: [0.1, 0.7],
      alpha: 1.25,
      layers: { kind: 'list', layers: [1, 4, 9] },
      strengthProfile: { kind: 'tent', peak: 3, width: 2.5, min: 0.25, max: 1 },
      embedding: false,
      markers: ['no'],
    };
    const record = settingsRecord(settings);
    expect(Object.keys(record)).toEqual(['measure-prompts', 'batch-size', 'point', 'select', 'window', 'metric', 'candidates', 'alpha', 'layers', 'strength-profile', 'preserve-norm', 'embedding', 'max-tokens', 'markers']);
    expect(abliterationSettings(record as never)).toEqual(settings);
    expect(settingsRecord(DEFAULT_SETTINGS).point).toBeNull();
  });

  it('the report carries the settings block', () => {
    const settings: AbliterationSettings = { ...DEFAULT_SETTINGS, alpha: 0.75, strengthProfile: { kind: 'tent', peak: 2, width: 3, min: 0, max: 1 } };
    const evaluation = { harmful_refusal_rate: 0, harmless_refusal_rate: 0, kl: 0, perplexity: null, harmful_answers: [], harmless_answers: [] };
    const result = { point: 2, selection: { method: 'score' }, scores: [], strengths: [], before: evaluation, after: evaluation, kl: 0, timings: {} } as unknown as AbliterationResult;
    const report = reportOf(result, { folder: { name: 'model' } } as unknown as LlamaModel, cutParameters(result, settings, 'model'), null, 'adapter', settings);
    expect(report.settings).toEqual(settingsRecord(settings));
    expect(report.settings).toMatchObject({ alpha: 0.75, 'strength-profile': 'tent:2,3,0,1' });
  });
});
