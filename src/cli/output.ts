import { type AbliterationReport, type AbliterationResult, createOutputFile, createOutputFolder, type CutParameters, DIRECTIONS_FILE, type ExportFiles, exportModel, type LlamaModel, type OutputFile, type OutputFolder, OutputWriteError, REPORT_FILE, reportOf, writeDirections } from '../index.ts';
import { status } from './common.ts';

// The report is built by browser-safe code that the page shares.
export { DIRECTIONS_FILE, REPORT_FILE, reportOf };

/** An output written under a temporary name and renamed into place at the end. */
interface Output {
  readonly path: string;
  readonly tempPath: string;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

/**
 * Runs `work` with a new output folder, checked (not the input, not existing unless forced) before
 * any work starts; everything is written under a temporary name and renamed at the end, and removed
 * if anything fails or the process is interrupted.
 */
export async function withOutputFolder<T>(outPath: string, inputPath: string, force: boolean, work: (out: OutputFolder) => Promise<T>): Promise<T> {
  return withOutput(await createOutputFolder(outPath, { force, inputPath }), work);
}

/** The same for a single output file (a directions file): checked before the work, renamed into place at the end. */
export async function withOutputFile<T>(outPath: string, inputPath: string, force: boolean, work: (out: OutputFile) => Promise<T>): Promise<T> {
  return withOutput(await createOutputFile(outPath, { force, inputPath }), work);
}

async function withOutput<O extends Output, T>(out: O, work: (out: O) => Promise<T>): Promise<T> {
  let stopping: Promise<void> | undefined;
  const interrupted = (signal: NodeJS.Signals) => {
    process.stderr.write(`abliterate: interrupted (${signal}); nothing was written to ${out.path}\n`);
    stopping = out.abort().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    const result = await work(out);
    await out.commit();
    return result;
  } catch (error) {
    // Interrupted: the work failed because its output went away; the exit is under way, say nothing more.
    if (stopping) await stopping;
    // A failed clean-up must not hide the error; it is reported with it.
    const leftover = await out.abort().then(
      () => undefined,
      () => out.tempPath,
    );
    if (leftover && error instanceof Error) error.message += `; the partial output could not be removed: delete ${leftover}`;
    else if (error instanceof OutputWriteError) error.message += `; nothing was written to ${out.path}`;
    throw error;
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
  }
}

/** Writes the cut model, the report and the directions into the output folder. */
export async function writeRunOutput(
  out: OutputFolder,
  model: LlamaModel,
  result: AbliterationResult,
  report: AbliterationReport,
  parameters: CutParameters,
  onProgress?: (done: number, total: number) => void,
): Promise<void> {
  const start = performance.now();
  const files = await exportModel(model, out, { parameters, onProgress });
  report.timings_s = { ...report.timings_s, export: (performance.now() - start) / 1000 };
  report.skipped_files = files.skipped;
  noteSkippedFiles(files);
  await writeDirections(await out.sink(DIRECTIONS_FILE), result.measurement, result.point);
  await out.writeFile(REPORT_FILE, `${JSON.stringify(report, null, 2)}\n`);
}

/** Says on stderr which files of the input folder the export did not copy. */
export function noteSkippedFiles(files: ExportFiles): void {
  for (const { file, reason } of files.skipped) status(`note: ${file} was not copied: ${reason}`);
}

/** "point 5 (output of layer 4)", "point 0 (embedding)". */
function pointName(point: number): string {
  return `point ${point} (${point === 0 ? 'embedding' : `output of layer ${point - 1}`})`;
}

function pad(text: string, width: number): string {
  return text.padEnd(width);
}

function fmt(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits);
}

/** The before/after table printed by `abliterate run`. */
export function summaryTable(report: AbliterationReport): string {
  const score = report.scores.find((s) => s.point === report.point);
  const rows: [string, string, string][] = [
    ['harmful refusal', fmt(report.before.harmful_refusal_rate, 2), fmt(report.after.harmful_refusal_rate, 2)],
    ['harmless refusal', fmt(report.before.harmless_refusal_rate, 2), fmt(report.after.harmless_refusal_rate, 2)],
    ['borderline refusal', fmt(report.before.borderline_refusal_rate, 2), fmt(report.after.borderline_refusal_rate, 2)],
    ['first-token KL', fmt(0), fmt(report.kl)],
    ['perplexity', fmt(report.before.perplexity, 2), fmt(report.after.perplexity, 2)],
  ];
  const lines = [
    `direction from ${pointName(report.point)} (${report.selection.method}; effect size ${fmt(score?.effect_size, 2)}, gap ${fmt(score?.gap, 2)})`,
    '',
    `${pad('', 18)}${pad('before', 10)}after`,
    ...rows.map(([name, before, after]) => `${pad(name, 18)}${pad(before, 10)}${after}`),
  ];
  if (report.output) lines.push('', `written to ${report.output}`);
  return lines.join('\n');
}
