import { resolve } from 'node:path';
import type { Command } from 'commander';
import { abliterationSettings, chatTokens, EvaluationPrompts, measure, optimizeCut, type RunSettings as AbliterationSettings, samplePrompts, searchReport, settingsInGroups } from '../index.ts';
import { printJson, progressBar, status, UsageError, withModel, type Progress } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { OPTIMIZE_KEYS, optimizeSettingsFrom, type OptimizeValues } from './optimizeOptions.ts';
import { frontTable, warnOnDamage } from './optimizeOutput.ts';
import { abliterate, givenKeys, studySettings } from './run.ts';
import { loadPromptSets, type CommandValues } from './settings.ts';
import { StudyFile } from './study.ts';

/** The search takes run's prompt and evaluation settings, the cut's switches it can pin, and its own. */
export const OPTIMIZE_SETTINGS: CommandSettings = {
  name: 'optimize',
  config: true,
  options: [
    ...settingsInGroups('prompts', 'evaluation prompts', 'validation prompts', 'measure', 'evaluate'),
    'preserve-norm',
    'embedding',
    ...OPTIMIZE_KEYS.map((key) => (key === 'seed' ? { key, help: 'seed of the search', default: 1 } : key)),
    { key: 'out', valueName: 'dir', help: "also evaluate and export the chosen trial's cut here, as run does" },
    'force',
    { key: 'json', help: 'print the search (or, with --out, the report) as JSON' },
    'adapter',
  ],
};

export function registerOptimize(program: Command): void {
  const command = addSettingOptions(
    program
      .command('optimize')
      .description("search the cut's parameters for the fewest refusals at the least KL and print the Pareto front; with --out, export the chosen (or --trial) cut")
      .argument('<model-dir>'),
    OPTIMIZE_SETTINGS,
  );
  command.action(async (dir: string, _options: unknown, cmd: Command) => {
    const config = (await commandValues(cmd, OPTIMIZE_SETTINGS)) as CommandValues & OptimizeValues;
    const given = await givenKeys(cmd);
    if (config.out) return abliterate(dir, config, given, { search: true, out: config.out });
    await searchOnly(dir, config, given);
  });
}

/** Measures, searches and prints the front; the model is not changed or written. */
async function searchOnly(dir: string, config: CommandValues & OptimizeValues, given: Set<string>): Promise<void> {
  const settings: AbliterationSettings = abliterationSettings(config);
  const implied = {
    ...(given.has('preserve-norm') ? { preserve_norm: config['preserve-norm'] } : {}),
    ...(given.has('embedding') ? { embedding: config.embedding } : {}),
  };
  settings.optimize = optimizeSettingsFrom(config, implied);
  const optimize = settings.optimize;
  const sets = await loadPromptSets(config, { plainText: false, validation: true });
  if (!sets.validationHarmful || !sets.validationHarmless) throw new UsageError('the search needs validation prompts (--val-harmful, --val-harmless)');
  const result = await withModel(dir, { adapter: config.adapter }, async (model, gpu) => {
    let study: StudyFile | undefined;
    if (config.study) {
      study = await StudyFile.open(resolve(config.study), await studySettings(dir, config, settings, gpu.adapter.name));
      if (study.previous.length) status(`resuming the study ${config.study}: ${study.previous.length} trials done`);
      optimize.previous = study.previous;
    }
    try {
      let bar: Progress = progressBar('measure', 1);
      const measurement = await measure(
        model,
        chatTokens(model, samplePrompts(sets.harmful, settings.measurePrompts), { set: 'harmful' }),
        chatTokens(model, samplePrompts(sets.harmless, settings.measurePrompts), { set: 'harmless' }),
        { batchSize: settings.batchSize, onProgress: (done, total) => bar.update(done, total) },
      );
      bar.stop();
      bar = progressBar('search', optimize.trials);
      const validation = new EvaluationPrompts(model, { harmful: sets.validationHarmful!, harmless: sets.validationHarmless! }, 'validation');
      const search = await optimizeCut(model, measurement, validation, optimize, {
        batchSize: settings.batchSize,
        markers: settings.markers,
        onTrial: async (trial, original) => {
          await study?.append(trial, original);
          bar.update(trial.number + 1);
        },
      });
      bar.stop();
      return { search, adapter: gpu.adapter.name };
    } finally {
      await study?.close();
    }
  });
  const { search } = result;
  if (config.json) printJson({ adapter: result.adapter, search: searchReport(search) });
  else if (search.trials.length) process.stdout.write(`${frontTable(search, { harmful: sets.validationHarmful.length, harmless: sets.validationHarmless.length })}\n`);
  const exported = search.trials.find((t) => t.number === search.exported.number);
  if (exported) warnOnDamage(exported.kl, 'the harmless validation prompts');
}
