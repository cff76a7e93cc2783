import { resolve } from 'node:path';
import type { Command } from 'commander';
import { runAbliteration, type Stage } from '../abliterate/pipeline.ts';
import { abliterationSettings, settingsInGroups } from '../abliterate/settings.ts';
import { printJson, progressBar, status, UsageError, withModel, type Progress } from './common.ts';
import { cutParameters } from '../abliterate/report.ts';
import { reportOf, summaryTable, withOutputFolder, writeRunOutput } from './output.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { loadPromptSets } from './settings.ts';

/** The whole abliteration takes every setting of its stages. */
export const RUN_SETTINGS: CommandSettings = {
  name: 'run',
  config: true,
  options: [
    ...settingsInGroups('prompts', 'evaluation prompts', 'validation prompts', 'measure', 'select', 'cut', 'evaluate'),
    { key: 'out', valueName: 'dir', help: 'write the abliterated model, the report and the direction here' },
    'force',
    { key: 'json', help: 'print the report as JSON' },
    'adapter',
  ],
};

export function registerRun(program: Command): void {
  const command = addSettingOptions(
    program.command('run').description('the whole abliteration: measure, select, evaluate, cut, evaluate again, export').argument('<model-dir>'),
    RUN_SETTINGS,
  );
  command.action(async (dir: string, _options: unknown, cmd: Command) => {
    const config = await commandValues(cmd, RUN_SETTINGS);
    if (!config.out) throw new UsageError('--out is required (a new folder for the abliterated model)');
    const settings = abliterationSettings(config);
    const sets = await loadPromptSets(config, { plainText: true, validation: settings.select === 'ablation' });
    const output = resolve(config.out);
    // The summary is printed once the output is in place under its final name.
    const { report, adapter } = await withOutputFolder(output, resolve(dir), config.force, (out) => withModel(dir, { adapter: config.adapter }, async (model, gpu) => {
      let bar: Progress | undefined;
      const result = await runAbliteration(model, sets, settings, {
        onStage: (stage: Stage) => {
          bar?.stop();
          bar = progressBar(stage, 1);
        },
        onProgress: (_stage, done, total) => bar?.update(done, total),
      });
      bar?.stop();
      const parameters = cutParameters(result, settings, dir);
      // Paths as the user gave them: a report shared elsewhere shows no resolved local path.
      const report = reportOf(result, model, parameters, config.out!, gpu.adapter.name, settings);
      const exportBar = progressBar('export', 1);
      await writeRunOutput(out, model, result, report, parameters, (done, total) => exportBar.update(done, total));
      exportBar.stop();
      return { report, adapter: gpu.adapter.name };
    }));
    if (config.json) printJson(report);
    else {
      status(`adapter ${adapter}; stages ${Object.entries(report.timings_s).map(([k, s]) => `${k} ${s.toFixed(1)}s`).join(', ')}`);
      process.stdout.write(`${summaryTable(report)}\n`);
    }
  });
}
