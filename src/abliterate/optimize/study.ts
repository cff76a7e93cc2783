import type { TrialObjectives, TrialRecord } from './search.ts';
import { PARAMETER_NAMES, type CutParameters } from './space.ts';

/**
 * A study is an append-only JSON Lines text: a header naming everything the trials' figures depend
 * on, then one line per finished trial. Reading it back resumes the search; a header that differs
 * from the new run's settings is refused, since its trials would not be comparable.
 */

export const STUDY_FORMAT = 'abliterate-study';
export const STUDY_VERSION = 1;

export interface StudyHeader {
  format: typeof STUDY_FORMAT;
  version: number;
  /** What the trials' figures depend on: model, prompts (hashes), evaluation and search settings. */
  settings: Record<string, unknown>;
}

export interface StudyTrialLine {
  trial: TrialRecord;
  /** The uncut model on the same validation prompts. */
  original: TrialObjectives;
}

/** JSON with object keys sorted, so that equal settings give equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

export function headerLine(settings: Record<string, unknown>): string {
  return `${canonicalJson({ format: STUDY_FORMAT, version: STUDY_VERSION, settings })}\n`;
}

export function trialLine(trial: TrialRecord, original: TrialObjectives): string {
  return `${canonicalJson({ trial, original })}\n`;
}

export interface ParsedStudy {
  header: StudyHeader;
  trials: TrialRecord[];
  /** Characters of the text up to the end of its last complete line: what is kept when resuming. */
  completeLength: number;
}

/**
 * Reads a study's text. A last line without its newline is the trial that was being written when the
 * process was killed: it is dropped (and `completeLength` stops before it).
 */
export function parseStudy(text: string, name = 'the study'): ParsedStudy {
  const end = text.lastIndexOf('\n') + 1;
  const lines = text.slice(0, end).split('\n').slice(0, -1);
  if (lines.length === 0) throw new RangeError(`${name} has no header line`);
  let header: StudyHeader;
  try {
    header = JSON.parse(lines[0]!) as StudyHeader;
  } catch {
    throw new RangeError(`${name} is not a study file (its first line is not JSON)`);
  }
  if (header.format !== STUDY_FORMAT) throw new RangeError(`${name} is not a study file`);
  if (header.version !== STUDY_VERSION) throw new RangeError(`${name} is a study of version ${header.version}; this version reads ${STUDY_VERSION}`);
  const trials: TrialRecord[] = [];
  for (const [i, line] of lines.slice(1).entries()) {
    let record: StudyTrialLine;
    try {
      record = JSON.parse(line) as StudyTrialLine;
    } catch {
      throw new RangeError(`${name}, line ${i + 2}: not JSON`);
    }
    const trial = record.trial;
    if (!validTrial(trial)) throw new RangeError(`${name}, line ${i + 2}: not a trial`);
    if (trial.number !== trials.length) throw new RangeError(`${name}, line ${i + 2}: trial ${trial.number} where trial ${trials.length} was expected`);
    trials.push(trial);
  }
  return { header, trials, completeLength: end };
}

function validTrial(trial: TrialRecord | undefined): trial is TrialRecord {
  if (!trial || typeof trial !== 'object' || !trial.params) return false;
  const numbers = [trial.number, trial.refusals, trial.harmless_refusals, trial.kl, trial.seconds];
  return numbers.every((n) => typeof n === 'number' && Number.isFinite(n)) && PARAMETER_NAMES.every((p) => p in (trial.params as CutParameters));
}

/** Throws, naming the first setting that differs, unless a study's header matches the settings. */
export function checkStudySettings(header: StudyHeader, settings: Record<string, unknown>, name = 'the study'): void {
  const keys = [...new Set([...Object.keys(header.settings), ...Object.keys(settings)])].sort();
  for (const key of keys) {
    const was = canonicalJson(header.settings[key]);
    const now = canonicalJson(settings[key]);
    if (was !== now) throw new RangeError(`${name} was made with other settings (${key}: ${was ?? 'unset'}, now ${now ?? 'unset'}); use a new study file`);
  }
}
