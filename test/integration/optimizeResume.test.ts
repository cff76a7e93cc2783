import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseStudy } from '../../src/abliterate/optimize/study.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { SafetensorsModel } from '../../src/io/safetensors.ts';

const run = promisify(execFile);
/** A small search: few prompts and short answers, so that each trial takes a moment. */
const SMALL = ['--limit', '12', '--measure-prompts', '8', '--val-tokens', '4', '--trials', '6'];

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'abliterate-study-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function completeLines(file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.slice(0, text.lastIndexOf('\n') + 1).split('\n').slice(0, -1);
}

describe('optimize --study', () => {
  it('a search killed mid-way resumes from its study file: no trial lost but the running one, none repeated', async () => {
    const study = join(dir, 'study.jsonl');
    const args = ['bin/abliterate.js', 'optimize', 'models/tiny-chat', ...SMALL, '--study', study, '--json'];
    // Killed (SIGKILL: no clean-up) once two trials are on disk.
    const child = spawn(process.execPath, args, { stdio: 'ignore' });
    const exited = new Promise<void>((done) => child.on('exit', () => done()));
    let killedAfter = 0;
    for (;;) {
      const lines = await completeLines(study);
      if (lines.length >= 3) {
        child.kill('SIGKILL');
        break;
      }
      if (child.exitCode !== null) throw new Error(`the search ended (code ${child.exitCode}) before it could be killed`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await exited;
    const before = await completeLines(study);
    killedAfter = before.length - 1;
    expect(killedAfter).toBeGreaterThanOrEqual(2);
    expect(killedAfter).toBeLessThan(6);

    const { stdout } = await run(process.execPath, args, { maxBuffer: 64 * 2 ** 20, timeout: 20 * 60_000 });
    const report = JSON.parse(stdout) as { search: { trials: { number: number }[] } };
    const after = await completeLines(study);
    // The trials on disk before the kill are kept as they were; the rest follow, numbered on.
    expect(after.slice(0, before.length)).toEqual(before);
    const parsed = parseStudy(`${after.join('\n')}\n`);
    expect(parsed.trials.map((t) => t.number)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(report.search.trials.map((t) => t.number)).toEqual([0, 1, 2, 3, 4, 5]);

    // Other settings do not mix with these trials.
    const other = run(process.execPath, ['bin/abliterate.js', 'optimize', 'models/tiny-chat', ...SMALL, '--seed', '9', '--study', study]);
    await expect(other).rejects.toMatchObject({ stderr: expect.stringMatching(/other settings \(seed/) });
    expect(await completeLines(study)).toEqual(after);
  }, 30 * 60_000);
});

describe('run after a search', () => {
  it('exports a reproduce manifest from which run --config rebuilds the same weights bit for bit, without searching', async () => {
    const cli = async (...args: string[]) => JSON.parse((await run(process.execPath, ['bin/abliterate.js', ...args, '--json'], { maxBuffer: 64 * 2 ** 20, timeout: 20 * 60_000 })).stdout) as { output: string; search?: { trials: unknown[]; exported_trial: number } };
    const first = await cli('run', 'models/tiny-chat', ...SMALL, '--max-tokens', '4', '--out', join(dir, 'searched'));
    expect(first.search?.trials).toHaveLength(6);
    const manifest = await readFile(join(first.output, 'reproduce.toml'), 'utf8');
    expect(manifest).toMatch(new RegExp(`trial ${first.search!.exported_trial} of a search with seed 1`));
    const again = await cli('run', 'models/tiny-chat', '--config', join(first.output, 'reproduce.toml'), '--out', join(dir, 'rebuilt'));
    expect(again.search?.trials ?? []).toHaveLength(0);
    const a = await SafetensorsModel.open(new NodeFolder(first.output));
    const b = await SafetensorsModel.open(new NodeFolder(again.output));
    expect([...b.tensors.keys()].sort()).toEqual([...a.tensors.keys()].sort());
    let changed = 0;
    const original = await SafetensorsModel.open(new NodeFolder('models/tiny-chat'));
    for (const name of a.tensors.keys()) {
      const bytes = Buffer.from(await a.read(name));
      expect(Buffer.compare(bytes, Buffer.from(await b.read(name))), name).toBe(0);
      if (Buffer.compare(bytes, Buffer.from(await original.read(name))) !== 0) changed++;
    }
    // The rebuilt cut is a real one: some tensors differ from the original model's.
    expect(changed).toBeGreaterThan(0);
  }, 30 * 60_000);
});
