/**
 * Writes that cannot be redirected or lose data, and text inputs read within bounds, through the
 * real CLI: `measure --out` refuses the input folder and unwritable paths before any work (no
 * adapter is even opened); links planted at the temporary names of the old writer are not followed;
 * a model folder in the Hugging Face cache layout (files are links into ../../blobs) exports whole
 * and loads; a multi-GB file in another weight format is left out and said so, a large README is
 * copied in bounded memory; configs, prompt files and plain text are capped and special files
 * named; no error quotes a file's bytes; reports carry the paths the user gave.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readDirections } from '../../src/abliterate/directionsFile.ts';
import { MemorySource } from '../../src/io/byteSource.ts';
import { currentRss, expectCliError, mib, MiB, peakRss, resetPeakRss, ROOT, runCli, snapshot, tempDir, writeDirectionsFile, writeModelDir, type CliResult, type ModelDir } from './helpers.ts';

const TINY_CHAT = join(ROOT, 'models/tiny-chat');

let work: ReturnType<typeof tempDir>;
let model: ModelDir;
let input: Map<string, string>;

beforeAll(() => {
  work = tempDir('writes');
  model = writeModelDir(join(work.path, 'model'));
  input = snapshot(model.dir);
});
afterAll(() => work?.remove());

/** The CLI stopped with `message` before opening an adapter (so before any work), and wrote nothing into the model folder. */
function expectEarlyError(result: CliResult, message: string | RegExp): void {
  expectCliError(result, message);
  expect(result.lines.filter((l) => l.startsWith('adapter: ')), 'an adapter was opened: the work had started').toEqual([]);
  expect(snapshot(model.dir)).toEqual(input);
}

describe('measure --out', () => {
  it('refuses the input folder and anything in it, even with --force, before any work', async () => {
    const weights = join(model.dir, 'model.safetensors');
    const measure = (out: string, ...extra: string[]) => runCli(['measure', model.dir, '--out', out, '--limit', '2', ...extra]);
    expectEarlyError(await measure(weights, '--force'), `${weights} is inside the input folder ${model.dir}; write the output elsewhere`);
    expectEarlyError(await measure(join(model.dir, 'directions.safetensors')), `${join(model.dir, 'directions.safetensors')} is inside the input folder ${model.dir}; write the output elsewhere`);
    // Through a link to the input folder.
    const alias = join(work.path, 'alias');
    symlinkSync(model.dir, alias);
    expectEarlyError(await measure(join(alias, 'model.safetensors'), '--force'), `${join(alias, 'model.safetensors')} is inside the input folder ${model.dir}; write the output elsewhere`);
  });

  it('an output that cannot be written fails before the measurement, in one line', async () => {
    const measure = (out: string, ...extra: string[]) => runCli(['measure', model.dir, '--out', out, '--limit', '2', ...extra]);
    expectEarlyError(await measure(work.path, '--force'), `${work.path} is a folder; give the name of a file to write`);
    const missing = join(work.path, 'no-such-folder', 'd.safetensors');
    expectEarlyError(await measure(missing), `cannot write ${missing}: the folder ${join(work.path, 'no-such-folder')} does not exist`);
    const file = join(work.path, 'a-file');
    writeFileSync(file, 'x');
    expectEarlyError(await measure(join(file, 'd.safetensors')), `cannot write ${join(file, 'd.safetensors')}: ${file} is not a folder`);
    expectEarlyError(await measure(file), `${file} already exists; use --force to replace it`);
    // Root writes anywhere but on a read-only file system.
    expectEarlyError(await measure('/proc/directions.safetensors'), /^cannot write \/proc\/directions\.safetensors: E[A-Z]+: [^']+$/);
  });

  it('links planted at the temporary names the old writer used (.<out>.tmp-<pid>) redirect nothing; the file records the model as given', async () => {
    const victim = join(work.path, 'victim.txt');
    writeFileSync(victim, 'must not change\n');
    // Process ids are handed out in turn: the CLI's will be among the next ones.
    const last = Number(readFileSync('/proc/sys/kernel/ns_last_pid', 'utf8'));
    for (let pid = last + 1; pid <= last + 400; pid++) symlinkSync(victim, join(work.path, `.dirs.safetensors.tmp-${pid}`));
    const result = await runCli(['measure', 'model', '--out', 'dirs.safetensors', '--limit', '4', '--json'], { cwd: work.path });
    expect(result.code, result.stderr).toBe(0);
    expect(readFileSync(victim, 'utf8')).toBe('must not change\n');
    const written = join(work.path, 'dirs.safetensors');
    expect(lstatSync(written).isFile()).toBe(true);
    expect((JSON.parse(result.stdout) as { output: string }).output).toBe(written);
    const bytes = readFileSync(written);
    const directions = await readDirections(new MemorySource(new Uint8Array(bytes), 'dirs.safetensors'));
    expect(directions.direction).toHaveLength(model.random.config.hiddenSize);
    // The model path as given (relative), not resolved.
    expect(bytes.toString('latin1')).toContain('"model":"model"');
    expect(bytes.toString('latin1')).not.toContain(work.path);
    expect(readdirSync(work.path).filter((e) => e.startsWith('.dirs.safetensors.tmp-') && !lstatSync(join(work.path, e)).isSymbolicLink())).toEqual([]);
    expect(snapshot(model.dir)).toEqual(input);
  });
});

describe('measure interrupted', () => {
  it('SIGINT once the work has started: exit 130, one line, its temporary file removed', async () => {
    const out = join(work.path, 'interrupted.safetensors');
    const result = await runCli(['measure', model.dir, '--out', out], {
      onSpawn: (child) => {
        child.stderr!.on('data', (text: Buffer) => {
          if (text.toString().includes('adapter: ')) child.kill('SIGINT');
        });
      },
    });
    expect(result.code, result.stderr).toBe(130);
    expect(result.lines.filter((l) => l.startsWith('abliterate: '))).toEqual([`abliterate: interrupted (SIGINT); nothing was written to ${out}`]);
    expect(readdirSync(work.path).filter((e) => e.startsWith('.interrupted.safetensors') || e === 'interrupted.safetensors')).toEqual([]);
    expect(snapshot(model.dir)).toEqual(input);
  });
});

/** sha256 of a file. */
function hash(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

describe('a model folder in the Hugging Face cache layout, with files in other formats', () => {
  let snapshotDir: string;
  const GGUF_BYTES = 3 * 2 ** 30;
  const README_BYTES = 300 * MiB;

  beforeAll(() => {
    // models--org--tiny-chat/{blobs/<sha256>, snapshots/<revision>/<name> -> ../../blobs/<sha256>}
    const repo = join(work.path, 'models--org--tiny-chat');
    const blobs = join(repo, 'blobs');
    snapshotDir = join(repo, 'snapshots', '0123456789abcdef');
    mkdirSync(blobs, { recursive: true });
    mkdirSync(snapshotDir, { recursive: true });
    const link = (name: string, blob: string) => symlinkSync(`../../blobs/${blob}`, join(snapshotDir, name));
    for (const name of readdirSync(TINY_CHAT)) {
      const digest = hash(join(TINY_CHAT, name));
      writeFileSync(join(blobs, digest), readFileSync(join(TINY_CHAT, name)));
      link(name, digest);
    }
    // Sparse: a 3 GiB GGUF read whole would abort Node; a 300 MB README read whole shows in memory.
    writeFileSync(join(blobs, 'gguf-blob'), '');
    truncateSync(join(blobs, 'gguf-blob'), GGUF_BYTES);
    link('tiny-chat.Q8_0.gguf', 'gguf-blob');
    writeFileSync(join(blobs, 'readme-blob'), '# tiny-chat\n');
    truncateSync(join(blobs, 'readme-blob'), README_BYTES);
    link('README.md', 'readme-blob');
    writeFileSync(join(snapshotDir, '.gitattributes'), '*.gguf filter=lfs\n');
  });

  it('cut exports every file the links point to, as files, leaves the GGUF out with a note, copies the README in bounded memory, and the export loads', async () => {
    const directions = join(work.path, 'tiny-directions.safetensors');
    const config = JSON.parse(readFileSync(join(TINY_CHAT, 'config.json'), 'utf8')) as { hidden_size: number; num_hidden_layers: number };
    await writeDirectionsFile(directions, config.hidden_size, config.num_hidden_layers + 1);
    const out = join(work.path, 'tiny-chat-cut');
    const watch: { atStart?: number; peak?: number } = {};
    const timer: { id?: NodeJS.Timeout } = {};
    const result = await runCli(['cut', snapshotDir, '--direction', directions, '--out', out, '--json'], {
      timeoutMs: 120_000,
      onSpawn: (child) => {
        const pid = child.pid!;
        // From the moment the export writes its first file, the peak resident memory.
        timer.id = setInterval(() => {
          if (watch.atStart === undefined) {
            const temp = readdirSync(work.path).find((e) => e.startsWith('.tiny-chat-cut.tmp-'));
            if (temp === undefined || readdirSync(join(work.path, temp)).length === 0) return;
            watch.atStart = currentRss(pid);
            resetPeakRss(pid);
          } else watch.peak = peakRss(pid) ?? watch.peak;
        }, 2);
      },
    });
    clearInterval(timer.id);
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as { skipped_files: { file: string; reason: string }[] };
    const reason = 'weights in another format (they would still hold the uncut model)';
    expect(summary.skipped_files).toEqual([{ file: 'tiny-chat.Q8_0.gguf', reason }]);
    expect(result.lines).toContain(`note: tiny-chat.Q8_0.gguf was not copied: ${reason}`);

    const expected = [...readdirSync(TINY_CHAT), 'README.md'].sort();
    expect(readdirSync(out).sort()).toEqual(expected);
    for (const name of expected) expect(lstatSync(join(out, name)).isFile(), `${name} is a file, not a link`).toBe(true);
    for (const name of readdirSync(TINY_CHAT).filter((n) => n !== 'model.safetensors')) expect(hash(join(out, name)), name).toBe(hash(join(TINY_CHAT, name)));
    expect(statSync(join(out, 'README.md')).size).toBe(README_BYTES);
    expect(readFileSync(join(out, 'README.md')).subarray(0, 12).toString()).toBe('# tiny-chat\n');

    const growth = watch.peak! - watch.atStart!;
    console.log(`export with a ${mib(README_BYTES)} README: resident memory ${mib(watch.atStart!)} when it started, peak ${mib(watch.peak!)} (${mib(growth, true)})`);
    // Chunks of 4 MiB; reading the README whole would add 300 MB.
    expect(growth).toBeLessThan(120 * MiB);

    // The exported folder loads and answers (tokenizer, template and config came through the links).
    const generated = await runCli(['generate', out, '--prompt', 'Hello', '--chat', '--max-tokens', '3', '--json'], { timeoutMs: 60_000 });
    expect(generated.code, generated.stderr).toBe(0);
    expect((JSON.parse(generated.stdout) as { tokens: number[] }).tokens.length).toBeGreaterThan(0);
  }, 180_000);
});

describe('run: reports name paths as given and list the files left out', () => {
  it('a relative model path stays relative in the report and the metadata; an ONNX file is left out and listed', async () => {
    const parent = join(work.path, 'relative');
    const local = writeModelDir(join(parent, 'model'));
    writeFileSync(join(local.dir, 'model.onnx'), 'not really onnx');
    writeFileSync(join(local.dir, 'LICENSE'), 'license text\n');
    const result = await runCli(['run', 'model', '--out', 'out', '--limit', '2', '--max-tokens', '2', '--point', '1', '--json'], { cwd: parent });
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as { model: string; output: string; parameters: { source_model: string }; skipped_files: unknown[] };
    expect(report.model).toBe('model');
    expect(report.parameters.source_model).toBe('model');
    expect(report.output).toBe('out');
    expect(report.skipped_files).toEqual([{ file: 'model.onnx', reason: 'weights in another format (they would still hold the uncut model)' }]);
    const written = readFileSync(join(parent, 'out', 'abliteration_report.json'), 'utf8');
    expect(written).not.toContain(work.path);
    expect(JSON.parse(written)).toMatchObject({ model: 'model', skipped_files: report.skipped_files });
    expect(readdirSync(join(parent, 'out')).sort()).toEqual(['LICENSE', 'abliteration_report.json', 'config.json', 'model.safetensors', 'refusal_direction.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
  }, 120_000);
});

describe('text inputs: capped, special files named, contents never echoed', () => {
  const runWith = (...extra: string[]) => runCli(['run', model.dir, '--no-optimize', '--out', join(work.path, 'never'), '--limit', '2', ...extra]);
  let fifo: string;
  beforeAll(() => {
    fifo = join(work.path, 'prompts.txt');
    execFileSync('mkfifo', [fifo]);
  });

  it('--config /dev/zero, a FIFO and an oversized config fail at once', async () => {
    expectEarlyError(await runWith('--config', '/dev/zero'), 'the config file /dev/zero is a device, not a regular file');
    expectEarlyError(await runWith('--config', fifo), `the config file ${fifo} is a FIFO (named pipe), not a regular file`);
    const big = join(work.path, 'big.toml');
    writeFileSync(big, '');
    truncateSync(big, 2 * MiB);
    expectEarlyError(await runWith('--config', big), `the config file ${big} is 2 MiB, more than the 1 MiB it may have`);
    expectEarlyError(await runWith('--config', join(work.path, 'none.toml')), `the config file ${join(work.path, 'none.toml')} does not exist`);
  });

  it('a prompt file or plain text that is a FIFO, a folder, or too large', async () => {
    expectEarlyError(await runWith('--harmful', fifo), `the prompt file ${fifo} is a FIFO (named pipe), not a regular file`);
    expectEarlyError(await runWith('--harmless', work.path), `the prompt file ${work.path} is a folder, not a regular file`);
    expectEarlyError(await runWith('--plain-text', fifo), `the plain text ${fifo} is a FIFO (named pipe), not a regular file`);
    const huge = join(work.path, 'huge.txt');
    writeFileSync(huge, '');
    truncateSync(huge, 300 * MiB);
    expectEarlyError(await runWith('--harmful', huge), `${huge} is 300 MiB, more than the 256 MiB this file may have`);
    const longText = join(work.path, 'long.txt');
    writeFileSync(longText, '');
    truncateSync(longText, 17 * MiB);
    expectEarlyError(await runWith('--plain-text', longText), `the plain text ${longText} is 17 MiB, more than the 16 MiB it may have`);
  });

  it('model files that are links to another file: the error never quotes its bytes', async () => {
    const secret = join(work.path, 'secret.txt');
    const text = 'SECRET-d41d8cd98f00b204e9800998ecf8427e\n';
    writeFileSync(secret, text);
    const firstEight = new DataView(new TextEncoder().encode(text).buffer).getBigUint64(0, true).toString();
    const check = (result: CliResult, message: string) => {
      expectCliError(result, message);
      for (const leak of ['SECRET', 'd41d8', firstEight, '"S']) expect(result.stderr).not.toContain(leak);
    };
    const linked = (name: string) => {
      const dir = join(work.path, `linked-${name}`);
      mkdirSync(dir);
      for (const file of readdirSync(model.dir)) if (file !== name) symlinkSync(join(model.dir, file), join(dir, file));
      symlinkSync(secret, join(dir, name));
      return dir;
    };
    const config = linked('config.json');
    check(await runCli(['inspect', config]), `${config}/config.json: invalid JSON (unexpected character)`);
    const weights = linked('model.safetensors');
    check(
      await runCli(['inspect', weights]),
      `${weights}/model.safetensors: the header length in the first 8 bytes is larger than the 100000000-byte limit (not a safetensors file, or a corrupt one)`,
    );
    const tokenizer = linked('tokenizer.json');
    check(await runCli(['generate', tokenizer, '--prompt', 'hi', '--max-tokens', '1']), `${tokenizer}/tokenizer.json: invalid JSON (unexpected character)`);
  });
});
