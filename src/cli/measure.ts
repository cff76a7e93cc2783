import type { Command } from 'commander';
import { abliterationSettings, chatTokens, choiceSetting, compareDirections, measure, type MeasurePosition, MemorySink, type PointScore, rankPoints, samplePrompts, settingsInGroups, writeDirections } from '../index.ts';
import { bar, printJson, UsageError, withModel } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';
import { withOutputFile } from './output.ts';
import { BUNDLED, loadPrompts } from './settings.ts';

/** `--mode` of measure (steer's `--mode` is another setting). */
const MEASURE_MODE = choiceSetting(
  { key: 'mode', group: 'measure', label: 'Measurement', help: 'mean: the difference of means per point; subspace: also the top-K right singular vectors of the paired harmful−harmless differences', valueName: 'mode' },
  ['mean', 'subspace'],
  'mean',
);

/** `--position` of measure (taps' `--position` lists token positions). */
const MEASURE_POSITION = choiceSetting(
  {
    key: 'position',
    group: 'measure',
    label: 'Token position',
    help: "where each prompt's residual is read: last (refusal execution), instruction (the last token of the user's message: harm detection), or both (the file then holds both, with their own scores and points)",
    valueName: 'where',
  },
  ['last', 'instruction', 'both'],
  'last',
);

/** Measuring chooses its point by score only (selection by ablation needs the whole run). */
export const MEASURE_SETTINGS: CommandSettings = {
  name: 'measure',
  config: true,
  options: [
    ...settingsInGroups('prompts', 'measure'),
    { key: 'mode', setting: MEASURE_MODE },
    { key: 'top-k', help: 'for --mode subspace: singular vectors kept per point', default: 4 },
    { key: 'position', setting: MEASURE_POSITION },
    'clip-quantile',
    'sparsify',
    'projected',
    'borderline',
    'point',
    'window',
    'metric',
    { key: 'out', help: 'directions file to write (.safetensors)', required: true },
    'force',
    { key: 'json', help: 'print the scores as JSON' },
    'adapter',
  ],
};

export function registerMeasure(program: Command): void {
  addSettingOptions(
    program.command('measure').description('measure the refusal direction at every point of the residual stream and choose one; writes a directions file').argument('<model-dir>'),
    MEASURE_SETTINGS,
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const config = await commandValues(command, MEASURE_SETTINGS);
    const settings = abliterationSettings(config);
    const subspace = (config.mode as string) === 'subspace';
    const topK = config['top-k'];
    if (subspace && topK < 1) throw new UsageError('--top-k must be at least 1 with --mode subspace');
    // The output is checked (and its temporary file created) before any work; the results are printed once it is in place.
    const position = config.position as unknown as MeasurePosition;
    const { point, hddPoint, measurement, output } = await withOutputFile(config.out!, dir, config.force, async (file) => {
      const harmful = samplePrompts(await loadPrompts(config.harmful ?? BUNDLED.harmful, config.column, config.limit), settings.measurePrompts);
      const harmless = samplePrompts(await loadPrompts(config.harmless ?? BUNDLED.harmless, config.column, config.limit), settings.measurePrompts);
      const borderline = config.borderline === undefined ? undefined : await loadPrompts(config.borderline, config.column, config.limit);
      return withModel(dir, { adapter: config.adapter }, async (model) => {
        const measurement = await bar('measure', (update) =>
          measure(model, chatTokens(model, harmful, { set: 'harmful' }), chatTokens(model, harmless, { set: 'harmless' }), {
            batchSize: settings.batchSize,
            onProgress: update,
            position,
            ...(subspace && { topK }),
            ...(config['clip-quantile'] !== undefined && { clipQuantile: config['clip-quantile'] }),
            ...(config.sparsify !== undefined && { sparsify: config.sparsify }),
            ...(config.projected && { projected: true }),
            ...(borderline && { borderline: chatTokens(model, borderline, { set: 'borderline' }) }),
          }),
        );
        const choose = (scores: PointScore[]) => settings.point ?? rankPoints({ points: measurement.points, scores }, { window: settings.window, metric: settings.metric })[0]!.point;
        const point = choose(measurement.scores);
        const hddPoint = measurement.harmDetection && choose(measurement.harmDetection.scores);
        const sink = new MemorySink('directions');
        // The model as the user named it: a relative path stays relative.
        await writeDirections(sink, measurement, point, { model: dir }, { ...(hddPoint !== undefined && { harmDetectionPoint: hddPoint }) });
        await file.write(await sink.bytes());
        return { point, hddPoint, measurement, output: file.path };
      });
    });
    const spectra = measurement.subspaces?.map(({ basis: _, ...spectrum }) => spectrum);
    const hdd = measurement.harmDetection;
    const comparison = hdd && compareDirections(measurement.directions, hdd.directions);
    if (config.json) {
      printJson({
        point,
        position: measurement.position ?? 'last',
        scores: measurement.scores,
        ...(spectra && { subspace: spectra }),
        ...(hdd && { hdd: { point: hddPoint, scores: hdd.scores }, comparison }),
        ...(measurement.instructionOffset !== undefined && { instruction_offset: measurement.instructionOffset }),
        ...(measurement.hygiene && { hygiene: measurement.hygiene }),
        output,
      });
    } else {
      const table = (title: string, scores: PointScore[], chosen: number) => {
        process.stdout.write(`${title}\n${'point'.padEnd(7)}${'gap'.padEnd(10)}${'rel.gap'.padEnd(10)}${'cosine'.padEnd(10)}effect size\n`);
        for (const s of scores) {
          process.stdout.write(`${String(s.point).padEnd(7)}${s.gap.toFixed(3).padEnd(10)}${s.relativeGap.toFixed(3).padEnd(10)}${s.cosine.toFixed(4).padEnd(10)}${s.effectSize.toFixed(2)}${s.point === chosen ? '  ← chosen' : ''}\n`);
        }
      };
      const where = (at: string) => (at === 'last' ? 'the last token' : "the instruction-final token (the last of the user's message)");
      table(hdd ? 'refusal-execution direction (RED), at the last token' : `at ${where(measurement.position ?? 'last')}`, measurement.scores, point);
      if (hdd && comparison) {
        table('\nharm-detection direction (HDD), at the instruction-final token', hdd.scores, hddPoint!);
        process.stdout.write(`\nHDD vs RED\n${'point'.padEnd(7)}${'cosine'.padEnd(10)}Grassmann distance\n`);
        for (const c of comparison) process.stdout.write(`${String(c.point).padEnd(7)}${c.cosine.toFixed(4).padEnd(10)}${c.grassmann.toFixed(4)}\n`);
      }
      if (spectra) {
        process.stdout.write(`\n${'point'.padEnd(7)}${'eff.rank'.padEnd(10)}${'silhouette'.padEnd(12)}explained variance of the top ${topK}\n`);
        for (const s of spectra) process.stdout.write(`${String(s.point).padEnd(7)}${s.effectiveRank.toFixed(2).padEnd(10)}${s.silhouette.toFixed(3).padEnd(12)}${s.explainedVariance.map((x) => x.toFixed(3)).join(' ')}\n`);
      }
      process.stdout.write(`directions written to ${output}\n`);
    }
  });
}
