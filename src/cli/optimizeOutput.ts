import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { stringify as toToml } from 'smol-toml';
import { CHOICE_RULE, DAMAGE_KL, PARAMETER_NAMES, type SearchCutParameters as CutParameters, type SearchResult, type TrialRecord } from '../index.ts';
import { status } from './common.ts';
import { BUNDLED, type CommandValues } from './settings.ts';

export const MANIFEST_FILE = 'reproduce.toml';

const PROMPT_KEYS = ['harmful', 'harmless', 'eval-harmful', 'eval-harmless', 'eval-borderline', 'val-harmful', 'val-harmless', 'plain-text'] as const;

function fmt(x: number, digits = 3): string {
  return Number.isFinite(x) ? x.toFixed(digits) : '-';
}

function describeCut(p: CutParameters): string {
  const component = (name: string, max: number, peak: number, min: number, falloff: number) =>
    max > 0 ? `${name} ${fmt(max, 2)}@${fmt(peak, 1)}→${fmt(min * max, 2)}±${fmt(falloff, 1)}` : `${name} off`;
  return [
    `${p.scope === 'global' ? 'dir' : 'per-layer, emb dir'} ${fmt(p.direction_index, 2)}`,
    component('attn', p.attn_max_weight, p.attn_peak, p.attn_min_fraction, p.attn_falloff),
    component('mlp', p.mlp_max_weight, p.mlp_peak, p.mlp_min_fraction, p.mlp_falloff),
    [p.projected ? 'projected' : '', p.preserve_norm ? 'norm-preserving' : '', p.embedding ? 'embedding' : ''].filter(Boolean).join(',') || '-',
  ].join('; ');
}

/** The Pareto front as a table, the chosen and the exported trial marked. */
export function frontTable(search: SearchResult, validationSizes: { harmful: number; harmless: number }): string {
  const { original } = search;
  const lines = [
    `search: ${search.trials.length} trials, ${fmt(search.seconds, 0)} s${search.secondsPerTrial !== null ? ` (${fmt(search.secondsPerTrial, 1)} s a trial)` : ''}; ` +
      `uncut model on the validation prompts: ${original.refusals}/${validationSizes.harmful} harmful and ${original.harmless_refusals}/${validationSizes.harmless} harmless refused`,
    '',
    `Pareto front (refusals against KL; trials that refuse more harmless prompts than the original left out):`,
    `${'trial'.padEnd(8)}${'refusals'.padEnd(10)}${'KL'.padEnd(8)}${'harmless'.padEnd(10)}cut`,
  ];
  const row = (t: TrialRecord) => {
    const mark = t.number === search.exported.number ? '*' : t.number === search.chosen?.number ? '+' : ' ';
    return `${`${mark}${t.number}`.padEnd(8)}${`${t.refusals}/${validationSizes.harmful}`.padEnd(10)}${fmt(t.kl).padEnd(8)}${`${t.harmless_refusals}/${validationSizes.harmless}`.padEnd(10)}${describeCut(t.params)}`;
  };
  lines.push(...search.front.map(row));
  const exported = search.trials.find((t) => t.number === search.exported.number);
  if (exported && !search.front.includes(exported)) lines.push(row(exported));
  lines.push('', `* exported trial${search.chosen && search.chosen.number !== search.exported.number ? '; + the rule\'s choice' : ''}. Rule: ${CHOICE_RULE}.`);
  return lines.join('\n');
}

/** Warns when the exported cut changes the model so much that it is damaged (Heretic's threshold). */
export function warnOnDamage(kl: number, where: string): void {
  if (kl > DAMAGE_KL) status(`warning: the first-token KL on ${where} is ${fmt(kl)} (> ${DAMAGE_KL}): the cut is likely to damage the model's answers; consider a trial with a lower KL (--trial N)`);
}

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** The prompt files a config uses (its own or the bundled ones), absolute. */
export function promptFiles(config: Partial<CommandValues>): Record<(typeof PROMPT_KEYS)[number], string> {
  return Object.fromEntries(PROMPT_KEYS.map((k) => [k, resolve(config[k] ?? BUNDLED[k])])) as Record<(typeof PROMPT_KEYS)[number], string>;
}

export async function promptHashes(config: Partial<CommandValues>): Promise<Record<string, string>> {
  const files = promptFiles(config);
  const out: Record<string, string> = {};
  for (const [key, file] of Object.entries(files)) out[key] = await sha256File(file).catch(() => 'unreadable');
  return out;
}

/** What identifies a model folder without reading its weights: its config and its weight files' names and sizes. */
export async function modelIdentity(dir: string): Promise<Record<string, unknown>> {
  const full = resolve(dir);
  const files = (await readdir(full)).filter((f) => f.endsWith('.safetensors')).sort();
  const sizes: Record<string, number> = {};
  for (const f of files) sizes[f] = (await stat(join(full, f))).size;
  return { path: full, config_sha256: await sha256File(join(full, 'config.json')).catch(() => 'unreadable'), weights: sizes };
}

/**
 * The reproduce manifest: a `run --config` file with every setting the exported weights depend on
 * and the cut's parameters pinned, so that run rebuilds them (on the same adapter) bit for bit
 * without searching; the `[reproduce]` table records what it was made with, and is checked.
 */
export async function manifestToml(
  config: Partial<CommandValues>,
  effective: { measurePrompts: number; batchSize: number; maxNewTokens: number; markers: readonly string[] },
  params: CutParameters,
  info: { version: string; adapter: string; sourceModel: string; trial: number | null; seed: number },
): Promise<string> {
  const files = promptFiles(config);
  const settings: Record<string, unknown> = { ...files };
  for (const key of ['column', 'limit'] as const) if (config[key] !== undefined) settings[key] = config[key];
  // The values in force, not only those given: a later version's defaults must not change the rebuild.
  settings['measure-prompts'] = effective.measurePrompts;
  settings['batch-size'] = effective.batchSize;
  settings['max-tokens'] = effective.maxNewTokens;
  settings.markers = [...effective.markers];
  settings.pin = PARAMETER_NAMES.map((name) => `${name}=${String(params[name])}`);
  const hashes = await promptHashes(config);
  const provenance = [
    `abliterate ${info.version}, adapter ${info.adapter}, source model ${info.sourceModel}`,
    `trial ${info.trial ?? 'pinned'} of a search with seed ${info.seed}`,
    ...Object.entries(hashes).map(([key, hash]) => `sha256 ${key}: ${hash}`),
  ];
  return `# Rebuilds the exported weights bit for bit (on the same adapter):\n#   abliterate run ${info.sourceModel} --config ${MANIFEST_FILE} --out DIR\n${provenance.map((l) => `# ${l}`).join('\n')}\n${toToml(settings)}\n`;
}

export async function packageVersion(): Promise<string> {
  const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}
