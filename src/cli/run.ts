import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { parse as parseToml } from 'smol-toml';
import { abliterationSettings, cutParameters, runAbliteration, type RunSettings as AbliterationSettings, type SearchCutParameters as CutParameters, settingFields, settingsInGroups, type Stage } from '../index.ts';
import { printJson, progressBar, status, UsageError, withModel, type Progress } from './common.ts';
import { reportOf, summaryTable, withOutputFolder, writeRunOutput } from './output.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { OPTIMIZE_KEYS, optimizeSettingsFrom, type OptimizeValues } from './optimizeOptions.ts';
import { frontTable, manifestToml, MANIFEST_FILE, modelIdentity, packageVersion, promptHashes, warnOnDamage } from './optimizeOutput.ts';
import { loadPromptSets, type CommandValues } from './settings.ts';
import { StudyFile } from './study.ts';

/** The whole abliteration takes every setting of its stages, and the search's. */
export const RUN_SETTINGS: CommandSettings = {
  name: 'run',
  config: true,
  options: [
    ...settingsInGroups('prompts', 'evaluation prompts', 'validation prompts', 'measure', 'select', 'cut', 'evaluate'),
    ...OPTIMIZE_KEYS.map((key) => (key === 'seed' ? { key, help: 'seed of the search', default: 1 } : key)),
    'optimize',
    { key: 'out', valueName: 'dir', help: 'write the abliterated model, the report and the direction here' },
    'force',
    { key: 'json', help: 'print the report as JSON' },
    'adapter',
  ],
};

/** Settings of the hand-tuned path: giving any of them turns the search off. */
const TUNING_KEYS = ['point', 'alpha', 'select', 'layers', 'strength-profile', 'window', 'metric', 'candidates'] as const;

/** The keys given on the command line or in the TOML config (not filled in by a default). */
export async function givenKeys(cmd: Command): Promise<Set<string>> {
  const given = new Set<string>();
  for (const option of cmd.options) {
    const source = cmd.getOptionValueSource(option.attributeName());
    if (source === 'cli' || source === 'env') given.add(option.long!.replace(/^--(no-)?/, ''));
  }
  const config = cmd.opts<{ config?: string }>().config;
  if (config) for (const key of Object.keys(parseToml(await readFile(config, 'utf8')))) given.add(key);
  // A setting given by its old name (--layer, kernel = ...) is given too.
  for (const field of settingFields()) if (field.deprecatedName && given.has(field.deprecatedName)) given.add(field.key);
  return given;
}

export function registerRun(program: Command): void {
  const command = addSettingOptions(
    program.command('run').description('the whole abliteration: measure, search for the cut (or select a point), evaluate, cut, evaluate again, export').argument('<model-dir>'),
    RUN_SETTINGS,
  );
  command.action(async (dir: string, _options: unknown, cmd: Command) => {
    const config = (await commandValues(cmd, RUN_SETTINGS)) as CommandValues & OptimizeValues;
    if (!config.out) throw new UsageError('--out is required (a new folder for the abliterated model)');
    const given = await givenKeys(cmd);
    const tuned = TUNING_KEYS.filter((k) => given.has(k));
    const search = config.optimize !== false && tuned.length === 0;
    if (!search && (given.has('study') || given.has('trial') || given.has('pin'))) {
      throw new UsageError(`--study, --trial and --pin belong to the search, which ${tuned.length ? `--${tuned[0]}` : '--no-optimize'} turns off`);
    }
    await abliterate(dir, config, given, { search, out: config.out });
  });
}

/** Pins that the cut's own flags imply when the search runs. */
function impliedPins(config: CommandValues, given: Set<string>): Partial<CutParameters> {
  const pins: Partial<CutParameters> = {};
  if (given.has('preserve-norm')) pins.preserve_norm = config['preserve-norm'];
  if (given.has('embedding')) pins.embedding = config.embedding;
  return pins;
}

/** The settings a study's trials depend on: a resumed study must match them. */
export async function studySettings(dir: string, config: CommandValues, settings: AbliterationSettings, adapter: string): Promise<Record<string, unknown>> {
  const optimize = settings.optimize!;
  const hashes = await promptHashes(config);
  return {
    model: await modelIdentity(dir),
    adapter,
    prompts: { harmful: hashes.harmful, harmless: hashes.harmless, 'val-harmful': hashes['val-harmful'], 'val-harmless': hashes['val-harmless'] },
    column: config.column ?? null,
    limit: config.limit ?? null,
    'measure-prompts': settings.measurePrompts,
    'batch-size': settings.batchSize,
    markers: settings.markers,
    'val-tokens': optimize.maxNewTokens,
    'direction-window': optimize.directionWindow,
    pinned: optimize.pinned,
    seed: optimize.seed,
    'startup-trials': optimize.startupTrials,
  };
}

/** `run` and `optimize --out`: the pipeline, with or without the search, exported with its report (and manifest). */
export async function abliterate(dir: string, config: CommandValues & OptimizeValues, given: Set<string>, options: { search: boolean; out: string }): Promise<void> {
  const settings: AbliterationSettings = abliterationSettings(config);
  if (options.search) settings.optimize = optimizeSettingsFrom(config, impliedPins(config, given));
  const sets = await loadPromptSets(config, { plainText: true, validation: settings.select === 'ablation' || options.search });
  const output = resolve(options.out);
  const version = await packageVersion();
  // The summary is printed once the output is in place under its final name.
  const { report, adapter, search } = await withOutputFolder(output, resolve(dir), config.force ?? false, (out) =>
    withModel(dir, { adapter: config.adapter }, async (model, gpu) => {
      let study: StudyFile | undefined;
      if (settings.optimize && config.study) {
        study = await StudyFile.open(resolve(config.study), await studySettings(dir, config, settings, gpu.adapter.name));
        if (study.previous.length) status(`resuming the study ${config.study}: ${study.previous.length} trials done`);
        settings.optimize.previous = study.previous;
      }
      try {
        let bar: Progress | undefined;
        const result = await runAbliteration(model, sets, settings, {
          onStage: (stage: Stage) => {
            bar?.stop();
            bar = progressBar(stage, stage === 'search' ? settings.optimize!.trials : 1);
          },
          onProgress: (_stage, done, total) => bar?.update(done, total),
          onTrial: async (trial, original) => {
            await study?.append(trial, original);
            bar?.update(trial.number + 1);
          },
        });
        bar?.stop();
        const parameters = cutParameters(result, settings, dir);
        // Paths as the user gave them: a report shared elsewhere shows no resolved local path.
        const report = reportOf(result, model, parameters, options.out, gpu.adapter.name, settings);
        const exportBar = progressBar('export', 1);
        await writeRunOutput(out, model, result, report, parameters, (done, total) => exportBar.update(done, total));
        exportBar.stop();
        if (result.search) {
          const manifest = await manifestToml(config, settings, result.search.exported.params, {
            version,
            adapter: gpu.adapter.name,
            sourceModel: resolve(dir),
            trial: result.search.exported.number,
            seed: settings.optimize!.seed,
          });
          await out.writeFile(MANIFEST_FILE, manifest);
        }
        return { report, adapter: gpu.adapter.name, search: result.search };
      } finally {
        await study?.close();
      }
    }),
  );
  if (config.json) printJson(report);
  else {
    status(`adapter ${adapter}; stages ${Object.entries(report.timings_s).map(([k, s]) => `${k} ${s.toFixed(1)}s`).join(', ')}`);
    if (search && search.trials.length) process.stdout.write(`${frontTable(search, { harmful: sets.validationHarmful!.length, harmless: sets.validationHarmless!.length })}\n\n`);
    process.stdout.write(`${summaryTable(report)}\n`);
  }
  warnOnDamage(report.kl, 'the harmless evaluation prompts');
}
