/**
 * The web page in real headless Chromium with WebGPU (SwiftShader on machines without a GPU): the
 * production build served from 127.0.0.1, the bundled model loaded with one click, the whole
 * abliteration run in the page, the cut model downloaded and compared tensor by tensor with what
 * the CLI writes for the same settings. Nothing is skipped: without Chromium or WebGPU the test fails
 * and says why.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path, { join } from 'node:path';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomModel, toSafetensors, type RandomModelOptions } from '../reference/randomModel.ts';
import { buildPage, compareTensors, launchChromium, readSafetensorsBytes, readTar, REPO_ROOT, serveStatic, type StaticServer, type StoredTensor } from './harness.ts';

const run = promisify(execFile);

/** Prompts per set (measure and evaluate, as the CLI's --limit) and new tokens per answer: one batch each, to keep CI time low. */
const LIMIT = 32;
const MAX_TOKENS = 24;
/** The cut strength of the README's demo command. */
const ALPHA = 1.25;
const TRAINED_MODEL = join(REPO_ROOT, 'models/tiny-chat');
const ARTIFACTS = join(REPO_ROOT, 'test-artifacts');

const trained = existsSync(join(TRAINED_MODEL, 'model.safetensors')) || existsSync(join(TRAINED_MODEL, 'model.safetensors.index.json'));

/**
 * Until models/tiny-chat is trained, a random-weight model with its tokenizer stands in (same
 * shapes as a tiny chat model); the refusal bounds are then not asserted, only the structure.
 */
async function standInModel(dir: string): Promise<string> {
  return randomModelFolder(join(dir, 'tiny-chat-stand-in'), { seed: 5, hiddenSize: 64, intermediateSize: 160, numLayers: 4, numHeads: 4, numKvHeads: 2, vocabSize: 1024, dtype: 'BF16' });
}

/** A random-weight model of any family with the bundled model's tokenizer (vocabulary ≤ 1024), written to `out`. */
async function randomModelFolder(out: string, options: RandomModelOptions): Promise<string> {
  for (const file of ['tokenizer.json', 'tokenizer_config.json']) {
    if (!existsSync(join(TRAINED_MODEL, file))) throw new Error(`${TRAINED_MODEL}/${file} is missing: the browser test needs the bundled model's tokenizer`);
  }
  const model = randomModel(options);
  const tokenizer = JSON.parse(await readFile(join(TRAINED_MODEL, 'tokenizer.json'), 'utf8')) as { added_tokens: { id: number; content: string }[] };
  const id = (content: string) => tokenizer.added_tokens.find((t) => t.content === content)?.id;
  const config = { ...model.configJson, bos_token_id: id('<|begin_of_text|>') ?? 1, eos_token_id: id('<|end|>') ?? 2 };
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'config.json'), JSON.stringify(config));
  await writeFile(join(out, 'model.safetensors'), toSafetensors(model.tensors));
  for (const file of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(TRAINED_MODEL, file), join(out, file));
  return out;
}

let work: string;
let modelDir: string;
let server: StaticServer;
let browser: Browser;
let context: BrowserContext;
let page: Page;
const pageErrors: string[] = [];
const requests: string[] = [];

async function memory(): Promise<{ bytes: number; buffers: number }> {
  const out = page.locator('#gpu-memory');
  // The element is refreshed every second and after each step; read it once the page is idle.
  await page.waitForFunction(() => document.body.dataset.busy === '');
  await page.evaluate(() => new Promise((done) => setTimeout(done, 1100)));
  return { bytes: Number(await out.getAttribute('data-bytes')), buffers: Number(await out.getAttribute('data-buffers')) };
}

/** Starts a load with `action` and waits for its outcome. */
async function load(action: () => Promise<unknown>, what: string): Promise<void> {
  const attempt = Number((await page.getAttribute('#model-card', 'data-attempt')) ?? 0) + 1;
  await action();
  await page.waitForSelector(`#model-card[data-attempt="${attempt}"]:is([data-state=loaded], [data-state=error])`, { timeout: 120_000 });
  const state = await page.getAttribute('#model-card', 'data-state');
  if (state !== 'loaded') throw new Error(`${what} did not load: ${await page.textContent('#message')}`);
}

const loadBundled = () => load(() => page.click('#load-bundled'), 'the bundled model');

/** Drops the bundled model's files on the page, as a user dragging them from the file manager. */
const dropBundledFiles = () =>
  load(
    () =>
      page.evaluate(async () => {
        const manifest = (await (await fetch('bundled/manifest.json')).json()) as { model: { files: { name: string }[] } };
        const data = new DataTransfer();
        for (const { name } of manifest.model.files) data.items.add(new File([await (await fetch(`bundled/model/${name}`)).blob()], name));
        document.getElementById('drop-zone')!.dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
      }),
    'the dropped files',
  );

/** Loads a folder through the file dialog's input and returns the error message shown. */
async function loadFolderExpectingError(dir: string): Promise<string> {
  const attempt = Number((await page.getAttribute('#model-card', 'data-attempt')) ?? 0) + 1;
  await page.setInputFiles('#folder-input', dir);
  await page.waitForSelector(`#model-card[data-attempt="${attempt}"][data-state=error]`, { timeout: 60_000 });
  const message = page.locator('#message[data-kind=error]');
  await expect.poll(() => message.isVisible()).toBe(true);
  return (await message.textContent()) ?? '';
}

async function cellValue(metric: string, when: 'before' | 'after'): Promise<number> {
  return Number(await page.getAttribute(`#result-table td[data-metric="${metric}"][data-when="${when}"]`, 'data-value'));
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'abliterate-web-'));
  modelDir = trained ? TRAINED_MODEL : await standInModel(work);
  if (!trained) console.warn(`browser test: ${TRAINED_MODEL} has no weights yet; a random-weight stand-in with its tokenizer is used and the refusal bounds are not asserted`);
  const dist = join(work, 'dist');
  await buildPage(dist, modelDir);
  server = await serveStatic(dist);
  browser = await launchChromium();
  context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('request', (request) => requests.push(request.url()));
  await page.goto(server.url);
  await page.waitForSelector('body[data-ready=true]', { timeout: 60_000 });
  if ((await page.getAttribute('#adapter', 'data-state')) !== 'ready') {
    throw new Error(`headless Chromium has no WebGPU adapter with the flags of test/browser/harness.ts: ${await page.textContent('#webgpu-missing')}`);
  }
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the web page in headless Chromium with WebGPU', () => {
  it('finds the WebGPU adapter and labels every control', async () => {
    expect(await page.getAttribute('#adapter', 'data-adapter')).toMatch(/swiftshader|llvmpipe|\w/);
    const unlabelled = await page.$$eval('input, select, textarea, button', (elements) =>
      elements
        .filter((e) => {
          const control = e as HTMLInputElement;
          if (control.type === 'hidden') return false;
          const name = control.labels?.length ? [...control.labels].map((l) => l.textContent).join('') : '';
          return !(name.trim() || control.getAttribute('aria-label') || (e.tagName === 'BUTTON' && e.textContent?.trim()));
        })
        .map((e) => e.id || e.outerHTML.slice(0, 80)),
    );
    expect(unlabelled).toEqual([]);

    // Before a model is loaded, the disabled Run button says why.
    expect(await page.isDisabled('#run')).toBe(true);
    expect(await page.getAttribute('#run', 'aria-describedby')).toBe('run-why');
    expect(await page.textContent('#run-why')).toMatch(/Pick a model folder or try the bundled model first/);
    expect(await page.getAttribute('#run', 'title')).toBe(await page.textContent('#run-why'));
    // The hidden file input is not a tab stop; the visible control that opens a folder is.
    const tabStops: string[] = [];
    await page.evaluate(() => (document.activeElement as HTMLElement | null)?.blur());
    for (let i = 0; i < 12; i++) {
      await page.keyboard.press('Tab');
      tabStops.push(await page.evaluate(() => document.activeElement?.id ?? ''));
    }
    expect(tabStops).not.toContain('folder-input');
    expect(tabStops.some((id) => id === 'pick-folder' || id === 'folder-input-label')).toBe(true);
    expect(await page.getAttribute('#folder-input', 'tabindex')).toBe('-1');
    // Progress is announced politely; a software adapter comes with a time estimate.
    expect(await page.getAttribute('#run-status', 'aria-live')).toBe('polite');
    if (/swiftshader|llvmpipe|lavapipe/i.test((await page.textContent('#adapter')) ?? '') || (await page.textContent('#adapter'))?.includes('software')) {
      expect(await page.isVisible('#run-note')).toBe(true);
      expect(await page.textContent('#run-note')).toMatch(/software.*minutes/);
    }
  });

  it('says clearly when the browser has no WebGPU', async () => {
    const other = await context.newPage();
    await other.addInitScript(() => {
      delete (Navigator.prototype as { gpu?: unknown }).gpu;
    });
    await other.goto(server.url);
    await other.waitForSelector('body[data-ready=true]');
    expect(await other.isVisible('#webgpu-missing')).toBe(true);
    expect(await other.textContent('#webgpu-missing')).toMatch(/WebGPU is not available/);
    expect(await other.isDisabled('#load-bundled')).toBe(true);
    await other.close();
  });

  it('explains a folder that is not a model, an unsupported architecture and a malformed weight file', async () => {
    const notModel = join(work, 'prompts-folder');
    await mkdir(notModel);
    await writeFile(join(notModel, 'harmful.txt'), 'a prompt\n');
    expect(await loadFolderExpectingError(notModel)).toMatch(/config\.json is missing.*model folder/);

    const gpt2 = join(work, 'gpt2');
    await mkdir(gpt2);
    copyFileSync(join(REPO_ROOT, 'test/fixtures/configs/gpt2.json'), join(gpt2, 'config.json'));
    expect(await loadFolderExpectingError(gpt2)).toMatch(/not supported; supported: LlamaForCausalLM/);

    const broken = join(work, 'broken-weights');
    await mkdir(broken);
    for (const file of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(modelDir, file), join(broken, file));
    await writeFile(join(broken, 'model.safetensors'), Buffer.concat([Buffer.from([200, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"model.embed_tokens.weight": {"dtype": "BF16", "shape": [')]));
    expect(await loadFolderExpectingError(broken)).toMatch(/model\.safetensors/);

    expect(pageErrors).toEqual([]);
    expect(await memory()).toEqual({ bytes: 0, buffers: 0 });
  });

  it('frees the GPU memory of a model that is closed or replaced', async () => {
    const before = await memory();
    const loaded: { bytes: number; buffers: number }[] = [];
    for (const next of [loadBundled, dropBundledFiles, loadBundled]) {
      await next();
      loaded.push(await memory());
    }
    expect(await page.textContent('#model-summary dd[data-field="folder"]')).toBe(path.basename(modelDir));
    console.log(`GPU memory with the model loaded, three loads in a row (click, drop, click): ${loaded.map((m) => `${m.bytes} B in ${m.buffers} buffers`).join(', ')}`);
    expect(loaded[0]!.bytes).toBeGreaterThan(0);
    expect(loaded[1]).toEqual(loaded[0]);
    expect(loaded[2]).toEqual(loaded[0]);
    await page.click('#close-model');
    expect(await memory()).toEqual(before);
    await loadBundled();
    expect(await memory()).toEqual(loaded[0]);
  }, 240_000);

  it('cancels a run, keeps the model usable and leaks no GPU memory', async () => {
    await page.fill('#setting-limit', String(LIMIT));
    await page.fill('#setting-max-tokens', '64');
    await page.click('#run');
    // Focus moves to Cancel; the settings are locked for the run.
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('cancel');
    expect(await page.isDisabled('#setting-alpha')).toBe(true);
    expect(await page.isDisabled('#setting-layer')).toBe(true);
    expect(await page.isDisabled('#prompts-own')).toBe(true);
    expect(await page.textContent('#run-why')).toMatch(/A run is in progress/);
    // Cancelled while the original model's harmless answers are generated: the stage's later
    // sub-steps (first-token KL, perplexity) and the cut never start.
    await page.waitForSelector('#run-progress[data-steps*="evaluate before/harmless refusals"]', { timeout: 180_000 });
    expect(await page.textContent('#run-progress-detail')).toMatch(/\d+ of \d+ answers to harmless prompts · \d+ s elapsed/);
    expect(await page.textContent('#run-status')).toMatch(/Evaluating the original model: harmless refusals/);
    await page.click('#cancel');
    // Said at once, before the stop arrives.
    expect(await page.textContent('#cancel')).toBe('Cancelling…');
    await page.waitForFunction(() => document.body.dataset.busy === '', undefined, { timeout: 60_000 });
    expect(await page.textContent('#message')).toBe('Cancelled during evaluate before; nothing was changed.');
    const steps = ((await page.getAttribute('#run-progress', 'data-steps')) ?? '').split(',');
    expect(steps).toContain('measure/');
    expect(steps).toContain('evaluate before/harmful refusals');
    expect(steps.at(-1)).toBe('evaluate before/harmless refusals');
    expect(await page.textContent('#cancel')).toBe('Cancel');
    expect(await page.isEnabled('#run')).toBe(true);
    expect(await page.isEnabled('#setting-alpha')).toBe(true);
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('run');
    expect(await page.isHidden('#results')).toBe(true);
    // The forward pass keeps its workspace for the next run; closing the model frees it with the weights.
    await page.click('#close-model');
    expect(await memory()).toEqual({ bytes: 0, buffers: 0 });
    await loadBundled();
  }, 240_000);

  let layer: number;
  let harmfulAfter: number;
  it(`abliterates the bundled model (${LIMIT} prompts per set, ${MAX_TOKENS} new tokens, the README's settings)`, async () => {
    await page.fill('#setting-limit', String(LIMIT));
    await page.fill('#setting-max-tokens', String(MAX_TOKENS));
    await page.selectOption('#setting-layer', 'ablation');
    await page.fill('#setting-alpha', String(ALPHA));
    // Without the subspace, the direction file is the mean-only one that the CLI's `measure` writes (compared below).
    await page.fill('#setting-subspace-rank', '0');
    const start = Date.now();
    await page.click('#run');
    await page.waitForSelector('#results[data-state=done], #message[data-kind=error]', { timeout: 900_000 });
    const failure = await page.locator('#message[data-kind=error]').count();
    if (failure) throw new Error(`the run failed in the page: ${await page.textContent('#message')}`);
    const rates = {
      harmfulBefore: await cellValue('harmful_refusal_rate', 'before'),
      harmfulAfter: await cellValue('harmful_refusal_rate', 'after'),
      harmlessBefore: await cellValue('harmless_refusal_rate', 'before'),
      harmlessAfter: await cellValue('harmless_refusal_rate', 'after'),
      kl: await cellValue('kl', 'after'),
    };
    layer = Number(await page.getAttribute('#result-summary', 'data-layer'));
    harmfulAfter = rates.harmfulAfter;
    console.log(`page run on ${await page.getAttribute('#adapter', 'data-adapter')}: ${((Date.now() - start) / 1000).toFixed(1)} s (${await page.textContent('#stages')}); layer ${layer}; ${JSON.stringify(rates)}`);
    for (const value of [rates.harmfulBefore, rates.harmfulAfter, rates.harmlessBefore, rates.harmlessAfter]) {
      expect(value).toBeGreaterThanOrEqual(0);
      expect(value).toBeLessThanOrEqual(1);
    }
    expect(Number.isFinite(rates.kl) && rates.kl >= 0).toBe(true);
    if (trained) {
      expect(rates.harmfulBefore).toBeGreaterThanOrEqual(0.9);
      expect(rates.harmlessBefore).toBeLessThanOrEqual(0.1);
      expect(rates.harmfulAfter).toBeLessThanOrEqual(0.1);
      expect(rates.harmlessAfter).toBeLessThanOrEqual(0.1);
    }
    // The charts: one bar per residual-stream point with the chosen one marked, and both classes in the histogram.
    const numLayers = Number(await page.textContent('#model-summary dd[data-field="layers"]'));
    expect(await page.locator('#score-chart rect.bar').count()).toBe(numLayers + 1);
    expect(await page.getAttribute('#score-chart rect.bar.chosen', 'data-layer')).toBe(String(layer));
    expect(await page.locator('#histogram g.harmful rect').count()).toBeGreaterThan(0);
    expect(await page.locator('#histogram g.harmless rect').count()).toBeGreaterThan(0);
    expect(await page.locator('#generations .pair').count()).toBe(6);
    expect(await page.locator('#generations .pair .answer').count()).toBe(12);
    expect(await page.isHidden('#subspace')).toBe(true);

    // Every sub-step of both evaluations was reported; focus went to the results.
    const steps = ((await page.getAttribute('#run-progress', 'data-steps')) ?? '').split(',');
    // (The original model has no baseline to compare with: its KL is 0 by definition and not computed.)
    for (const step of ['harmful refusals', 'harmless refusals', 'perplexity']) expect(steps).toContain(`evaluate before/${step}`);
    for (const step of ['harmful refusals', 'harmless refusals', 'first-token KL', 'perplexity']) expect(steps).toContain(`evaluate after/${step}`);
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('results-heading');
    // Rates as percentages with n/N, "lower is better" hints, and the terms explained.
    const rateCell = await page.textContent('#result-table td[data-metric="harmful_refusal_rate"][data-when="after"]');
    expect(rateCell).toBe(`${Math.round(rates.harmfulAfter * 100)} % (${Math.round(rates.harmfulAfter * LIMIT)}/${LIMIT})`);
    expect(await page.textContent('#result-table tr[data-metric="perplexity"] th')).toMatch(/lower is better/);
    expect(await page.textContent('#result-table tr[data-metric="kl"] th')).toMatch(/lower is better/);
    const glossary = (await page.textContent('#glossary')) ?? '';
    for (const term of ['direction point / layer', 'α (alpha)', 'effect size', 'first-token KL', 'perplexity', 'dashed lines']) expect(glossary).toContain(term);
    expect(await page.textContent('#histogram-caption')).toMatch(/dashed lines: each set’s mean/);
    expect(await page.textContent('#layer-help')).toMatch(/Point 0 is the embedding/);

    // A new run over existing results asks first; dismissing keeps everything.
    let question = '';
    page.once('dialog', (dialog) => {
      question = dialog.message();
      void dialog.dismiss();
    });
    await page.click('#run');
    expect(question).toMatch(/Start a new run\? The results shown and the cut model are replaced/);
    expect(await page.getAttribute('#results', 'data-state')).toBe('done');
    expect(await page.isVisible('#results')).toBe(true);
    expect(await page.evaluate(() => document.body.dataset.busy)).toBe('');
    expect(pageErrors).toEqual([]);
  }, 900_000);

  it('downloads a cut model whose tensors equal the CLI output for the same settings', async () => {
    await page.selectOption('#save-mode', 'download');
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 120_000 }), page.click('#save-model')]);
    expect(download.suggestedFilename()).toMatch(/-abliterated\.tar$/);
    const tarPath = join(work, 'page-model.tar');
    await download.saveAs(tarPath);
    const files = readTar(new Uint8Array(await readFile(tarPath)));
    const [root] = [...files.keys()][0]!.split('/');
    const pageFiles = new Map([...files].map(([path, bytes]) => [path.slice(root!.length + 1), bytes]));
    // Download mode saves what folder mode writes: the model, its report and the direction file, and says so.
    await page.waitForSelector('#message[data-kind=success]');
    expect(await page.textContent('#message')).toMatch(/Saved as .*-abliterated\.tar.*report.*direction file/);
    const tarReport = JSON.parse(Buffer.from(pageFiles.get('abliteration_report.json')!).toString('utf8')) as { point: number };
    expect(tarReport.point).toBe(layer);
    expect(readSafetensorsBytes(pageFiles.get('refusal_direction.safetensors')!).metadata.point).toBe(String(layer));
    expect(await page.locator('#download-links a[data-file="abliteration_report.json"]').count()).toBe(1);
    for (const file of ['abliteration_report.json', 'refusal_direction.safetensors']) pageFiles.delete(file);

    // The streamed path: the same export written file by file into a folder (the origin's private
    // file system stands in for the folder a user picks with showDirectoryPicker).
    await page.evaluate(() => {
      (window as { showDirectoryPicker?: unknown }).showDirectoryPicker = () => navigator.storage.getDirectory();
    });
    await page.selectOption('#save-mode', 'folder');
    await page.click('#save-model');
    await page.waitForSelector('#message[data-kind=success], #message[data-kind=error]', { timeout: 120_000 });
    expect(await page.textContent('#message')).toContain(`Saved to ${root}`);
    const streamed = await page.evaluate(async (folder) => {
      const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle(folder);
      const hashes: Record<string, string> = {};
      for await (const handle of (dir as unknown as { values(): AsyncIterable<FileSystemFileHandle> }).values()) {
        const digest = await crypto.subtle.digest('SHA-256', await (await handle.getFile()).arrayBuffer());
        hashes[handle.name] = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
      }
      return hashes;
    }, root!);
    const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
    expect(Object.keys(streamed).sort()).toEqual([...pageFiles.keys(), 'abliteration_report.json', 'refusal_direction.safetensors'].sort());
    for (const [file, bytes] of pageFiles) expect(streamed[file], file).toBe(sha256(bytes));
    await page.selectOption('#save-mode', 'download');

    const [reportDownload] = await Promise.all([page.waitForEvent('download'), page.click('#save-report')]);
    const report = JSON.parse(await readFile((await reportDownload.path())!, 'utf8')) as { point: number; parameters: Record<string, unknown>; after: { harmful_refusal_rate: number }; scores: unknown[] };
    // The CLI's report (reportOf is shared).
    expect(Object.keys(report)).toEqual(['format', 'version', 'model', 'adapter', 'point', 'selection', 'scores', 'strengths', 'before', 'after', 'kl', 'parameters', 'settings', 'timings_s', 'output', 'skipped_files']);
    expect(report.after.harmful_refusal_rate).toBe(harmfulAfter);
    expect(report.parameters).toMatchObject({ point: layer, alpha: ALPHA, embedding: true });
    const [directionDownload] = await Promise.all([page.waitForEvent('download'), page.click('#save-direction')]);
    const directions = readSafetensorsBytes(new Uint8Array(await readFile((await directionDownload.path())!)));
    expect(report.point).toBe(layer);
    expect(directions.metadata).toMatchObject({ format: 'abliterate-directions', version: '2', point: String(layer) });
    expect(directions.tensors.get('direction')?.dtype).toBe('F32');

    // The CLI's steps that decide the weights (measure, then cut) with the same settings, on the same
    // kind of adapter as the page (SwiftShader), so that even the float rounding agrees. (`run` writes
    // the same tensors; it also evaluates, which takes a minute and a half more on SwiftShader.)
    const out = join(work, 'cli-out');
    const cliDirections = join(work, 'cli-directions.safetensors');
    const cliStart = Date.now();
    const cli = async (...args: string[]) => {
      const { stdout } = await run(process.execPath, ['bin/abliterate.js', ...args, '--json'], {
        cwd: REPO_ROOT,
        env: { ...process.env, ABLITERATE_ADAPTER: 'swiftshader' },
        maxBuffer: 64 * 2 ** 20,
        timeout: 10 * 60_000,
      });
      return JSON.parse(stdout) as { point: number };
    };
    const measured = await cli('measure', modelDir, '--out', cliDirections, '--force', '--limit', String(LIMIT), '--point', String(layer));
    expect(measured.point).toBe(layer);
    await cli('cut', modelDir, '--direction', cliDirections, '--out', out, '--force', '--alpha', String(ALPHA));
    const cliSeconds = (Date.now() - cliStart) / 1000;
    const directionComparison = compareTensors(directions.tensors, readSafetensorsBytes(new Uint8Array(await readFile(cliDirections))).tensors);
    expect(directionComparison.layoutMismatches).toEqual([]);
    expect(directionComparison.maxUlp).toBeLessThanOrEqual(1);

    const cliFiles = await readdir(out);
    const weights = cliFiles.filter((f) => f.endsWith('.safetensors'));
    expect([...pageFiles.keys()].sort()).toEqual(cliFiles.sort());
    for (const file of cliFiles.filter((f) => !f.endsWith('.safetensors'))) {
      expect(Buffer.compare(Buffer.from(pageFiles.get(file)!), await readFile(join(out, file))), file).toBe(0);
    }
    const pageTensors = new Map<string, StoredTensor>();
    const cliTensors = new Map<string, StoredTensor>();
    for (const file of weights) {
      for (const [name, t] of readSafetensorsBytes(pageFiles.get(file)!).tensors) pageTensors.set(name, t);
      for (const [name, t] of readSafetensorsBytes(new Uint8Array(await readFile(join(out, file)))).tensors) cliTensors.set(name, t);
    }
    const comparison = compareTensors(pageTensors, cliTensors);
    console.log(
      `page (${await page.getAttribute('#adapter', 'data-adapter')}) vs CLI measure + cut (swiftshader, ${cliSeconds.toFixed(1)} s): ` +
        `${comparison.tensors} tensors, ${comparison.elements} elements, ${comparison.differing} differ (${((100 * comparison.differing) / comparison.elements).toFixed(4)} %), ` +
        `at most ${comparison.maxUlp} ulp; per tensor ${JSON.stringify(comparison.perTensor)}; directions file: ${directionComparison.differing} of ${directionComparison.elements} f32 values differ`,
    );
    expect(comparison.layoutMismatches).toEqual([]);
    expect(comparison.tensors).toBe(cliTensors.size);
    expect(comparison.maxUlp).toBeLessThanOrEqual(1);
    expect(comparison.differing / comparison.elements).toBeLessThanOrEqual(1e-4);
    // Tensors the cut does not touch are the input's bytes exactly.
    const original = new Map<string, StoredTensor>();
    for (const file of weights) for (const [name, t] of readSafetensorsBytes(new Uint8Array(await readFile(join(modelDir, file)))).tensors) original.set(name, t);
    const cut = (name: string) => /\.(o_proj|down_proj)\.weight$/.test(name) || name === 'model.embed_tokens.weight';
    for (const [name, t] of pageTensors) expect(Buffer.compare(Buffer.from(t.bytes), Buffer.from(original.get(name)!.bytes)) === 0, name).toBe(!cut(name));
  }, 900_000);

  it('fits a 390 px window and a 1280×800 one; the finished page is saved as a screenshot', async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    await page.setViewportSize({ width: 390, height: 800 });
    // The charts are redrawn for the new width on the next frames.
    await page.evaluate(() => new Promise((done) => setTimeout(done, 500)));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    await page.screenshot({ path: join(ARTIFACTS, 'web-narrow.png'), fullPage: true });
    expect(overflow).toBeLessThanOrEqual(0);
    // The metric drop-down shows its whole text, and the histogram keeps at least three x ticks, all inside the chart.
    const metric = await page.evaluate(() => {
      const select = document.getElementById('score-metric') as HTMLSelectElement;
      const probe = document.createElement('span');
      probe.style.font = getComputedStyle(select).font;
      probe.style.whiteSpace = 'pre';
      probe.textContent = select.selectedOptions[0]!.text;
      document.body.append(probe);
      const text = probe.getBoundingClientRect().width;
      probe.remove();
      const style = getComputedStyle(select);
      return { text, room: select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) };
    });
    expect(metric.text).toBeLessThanOrEqual(metric.room);
    const ticks = await page.evaluate(() => {
      // The plot's own svg (the legend's swatches are svgs too).
      const texts = [...document.querySelectorAll<SVGTextElement>('#histogram svg [aria-label="x-axis tick label"] text')];
      const svg = texts[0]?.ownerSVGElement?.getBoundingClientRect();
      const labels = texts.map((t) => t.getBoundingClientRect());
      return { count: labels.length, outside: svg ? labels.filter((r) => r.left < svg.left - 0.5 || r.right > svg.right + 0.5).length : -1 };
    });
    expect(ticks.count).toBeGreaterThanOrEqual(3);
    expect(ticks.outside).toBe(0);
    await page.setViewportSize({ width: 1280, height: 800 });
    expect(await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)).toBeLessThanOrEqual(0);
    await page.screenshot({ path: join(ARTIFACTS, 'web-finished.png'), fullPage: true });
  });

  it('frees everything on the GPU when the cut model is closed', async () => {
    await page.click('#close-model');
    expect(await memory()).toEqual({ bytes: 0, buffers: 0 });
    expect(await page.isHidden('#results')).toBe(true);
  });

  it('loads a Qwen3 model folder (q/k norms, head_dim apart from the hidden size) and abliterates it', async () => {
    const dir = await randomModelFolder(join(work, 'tiny-qwen3'), {
      architecture: 'qwen3',
      seed: 7,
      hiddenSize: 64,
      intermediateSize: 128,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 32,
      vocabSize: 1024,
      tieWordEmbeddings: true,
      dtype: 'BF16',
    });
    await load(() => page.setInputFiles('#folder-input', dir), 'the Qwen3 folder');
    expect(await page.textContent('#model-summary dd[data-field="architecture"]')).toBe('qwen3, tied embeddings');
    expect(await page.textContent('#model-summary dd[data-field="attention heads"]')).toBe('4 query, 2 key/value, 32 per head');
    expect((await memory()).bytes).toBeGreaterThan(0);
    await page.fill('#setting-limit', '4');
    await page.fill('#setting-max-tokens', '4');
    await page.selectOption('#setting-layer', 'auto');
    const start = Date.now();
    await page.click('#run');
    await page.waitForSelector('#results[data-state=done], #message[data-kind=error]', { timeout: 600_000 });
    if (await page.locator('#message[data-kind=error]').count()) throw new Error(`the run failed in the page: ${await page.textContent('#message')}`);
    const kl = await cellValue('kl', 'after');
    console.log(`page run on a random Qwen3 model: ${((Date.now() - start) / 1000).toFixed(1)} s; first-token KL after the cut ${kl}`);
    // Random weights: the cut changes the model (the KL is positive); the refusal rates are only rates.
    expect(kl).toBeGreaterThan(0);
    for (const metric of ['harmful_refusal_rate', 'harmless_refusal_rate']) {
      const value = await cellValue(metric, 'after');
      expect(value >= 0 && value <= 1).toBe(true);
    }
    expect(await page.locator('#score-chart rect.bar').count()).toBe(2 + 1);
    await page.click('#close-model');
    expect(await memory()).toEqual({ bytes: 0, buffers: 0 });
    expect(pageErrors).toEqual([]);
  }, 660_000);

  it('searches the cut (3 trials) with a live scatter and trial table, measures the subspace, uses another trial and saves it', async () => {
    if (!(await page.locator('#model-summary:not([hidden])').count())) await loadBundled();
    // The search's fields come from its settings schema (labels and defaults of `abliterate optimize`).
    expect(await page.textContent('label[for="search-trials"]')).toBe('Trials');
    expect(await page.inputValue('#search-trials')).toBe('40');
    expect(await page.inputValue('#search-seed')).toBe('1');
    expect(await page.textContent('label[for="search-val-tokens"]')).toBe('Tokens per validation answer');
    await page.fill('#search-trials', '0');
    await page.click('#search-run');
    expect(await page.textContent('#message[data-kind=error]')).toMatch(/Trials must be an integer ≥ 1, got "0"/);
    // Small: 8 prompts per set (the validation splits too), 8 new tokens, 3 trials.
    await page.fill('#setting-limit', '8');
    await page.fill('#setting-max-tokens', '8');
    await page.fill('#setting-subspace-rank', '3');
    await page.fill('#search-trials', '3');
    await page.fill('#search-startup-trials', '2');
    await page.fill('#search-val-tokens', '8');
    const start = Date.now();
    await page.click('#search-run');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('search-cancel');
    expect(await page.isDisabled('#search-trials')).toBe(true);
    // Live: the first trial is drawn while the search goes on.
    await page.waitForSelector('#search-chart circle.trial', { timeout: 600_000 });
    expect(await page.getAttribute('#search-card', 'data-state')).toBe('searching');
    expect(await page.locator('#trial-table tbody tr').count()).toBeLessThan(3);
    await page.waitForSelector('#results[data-state=done], #message[data-kind=error]', { timeout: 900_000 });
    if (await page.locator('#message[data-kind=error]').count()) throw new Error(`the search failed in the page: ${await page.textContent('#message')}`);
    const searchSeconds = (Date.now() - start) / 1000;
    expect(await page.locator('#search-chart circle.trial').count()).toBe(3);
    const rows = await page.$$eval('#trial-table tbody tr', (trs) =>
      trs.map((tr) => {
        const cells = [...tr.querySelectorAll('td')].map((td) => td.textContent ?? '');
        const ratio = (text: string) => Number(text.split('/')[0]);
        const el = tr as HTMLElement;
        return { trial: Number(el.dataset.trial), refusals: ratio(cells[0]!), harmless: ratio(cells[1]!), kl: Number(cells[2]), front: el.dataset.front === 'true', chosen: el.dataset.chosen === 'true', shown: el.dataset.shown === 'true' };
      }),
    );
    console.log(`page search: 3 trials in ${searchSeconds.toFixed(1)} s (${await page.textContent('#search-status')}); ${JSON.stringify(rows)}`);
    expect(rows.map((r) => r.trial)).toEqual([0, 1, 2]);
    const frontRows = rows.filter((r) => r.front);
    expect(frontRows.length).toBeGreaterThanOrEqual(1);
    const frontDots = await page.$$eval('#search-chart circle.trial.front', (cs) => cs.map((c) => Number((c as SVGElement).dataset.trial)).sort());
    expect(frontDots).toEqual(frontRows.map((r) => r.trial).sort());
    expect(await page.locator('#search-chart .front-line').count()).toBe(1);
    const chosen = rows.filter((r) => r.chosen);
    expect(chosen).toHaveLength(1);
    expect(rows.filter((r) => r.shown).map((r) => r.trial)).toEqual([chosen[0]!.trial]);
    expect(await page.getAttribute('#search-chart circle.trial.shown', 'data-trial')).toBe(String(chosen[0]!.trial));
    expect(await page.getAttribute('#result-summary', 'data-trial')).toBe(String(chosen[0]!.trial));
    const steps = ((await page.getAttribute('#run-progress', 'data-steps')) ?? '').split(',');
    expect(steps).toContain('search/');
    expect(await page.textContent('#stages')).toMatch(/search · [\d.]+ s/);

    // The subspace: effective rank per point and the top-3 spectrum, shares of at most 1 in all.
    const numLayers = Number(await page.textContent('#model-summary dd[data-field="layers"]'));
    expect(await page.isVisible('#subspace')).toBe(true);
    expect(await page.locator('#rank-chart rect.bar').count()).toBe(numLayers + 1);
    const shares = await page.$$eval('#spectrum-chart rect.share', (rects) => rects.map((r) => ({ point: Number((r as SVGElement).dataset.point), component: Number((r as SVGElement).dataset.component) })));
    expect(shares).toHaveLength((numLayers + 1) * 3);
    expect(new Set(shares.map((s) => s.component))).toEqual(new Set([1, 2, 3]));
    const ranks = await page.$$eval('#rank-chart rect.bar title', (titles) => titles.map((t) => Number(t.textContent!.split(': ')[1])));
    for (const rank of ranks) expect(rank).toBeGreaterThanOrEqual(1);

    // Another trial, picked in the table: evaluated with the search's settings, its answers shown, the chart marks it.
    const other = rows.find((r) => !r.shown)!.trial;
    await page.click(`#trial-table tr[data-trial="${other}"] button.use-trial`);
    await page.waitForSelector(`#result-summary[data-trial="${other}"]`, { timeout: 600_000 });
    await page.waitForSelector('#results[data-state=done], #message[data-kind=error]', { timeout: 600_000 });
    if (await page.locator('#message[data-kind=error]').count()) throw new Error(`the picked trial failed: ${await page.textContent('#message')}`);
    expect(await page.getAttribute('#search-chart circle.trial.shown', 'data-trial')).toBe(String(other));
    expect(await page.locator('#search-chart circle.trial').count()).toBe(3);
    expect(await page.getAttribute('#trial-table tr[data-shown]', 'data-trial')).toBe(String(other));
    expect(await page.textContent('#search-status')).toMatch(new RegExp(`Trial ${other} evaluated`));
    expect(await page.locator('#generations .pair .answer[data-when="after"]').count()).toBeGreaterThan(0);

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'web-search.png'), fullPage: true });

    // Saved: the report names the trial and carries the search; the model is cut.
    await page.selectOption('#save-mode', 'download');
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 120_000 }), page.click('#save-model')]);
    const files = readTar(new Uint8Array(await readFile((await download.path())!)));
    const report = JSON.parse(Buffer.from([...files].find(([name]) => name.endsWith('/abliteration_report.json'))![1]).toString('utf8')) as {
      parameters: { trial: number; selection: string; cut: Record<string, unknown> };
      search: { exported_trial: number; chosen_trial: number; front: number[]; original_validation: { harmless_refusals: number }; trials: { number: number; kl: number; refusals: number; harmless_refusals: number }[] };
    };
    // The front the page marked, checked against the definition on the trials' exact figures: the trials that refuse no
    // more harmless prompts than the original (all, if none do) that no other such trial matches or beats in both.
    const pool = report.search.trials.filter((t) => t.harmless_refusals <= report.search.original_validation.harmless_refusals);
    const candidates = pool.length ? pool : report.search.trials;
    const onFront = candidates.filter((t) => !candidates.some((o) => o !== t && o.refusals <= t.refusals && o.kl <= t.kl && (o.refusals < t.refusals || o.kl < t.kl)));
    expect(frontRows.map((r) => r.trial).sort()).toEqual(onFront.map((t) => t.number).sort());
    expect(report.parameters.trial).toBe(other);
    expect(report.parameters.selection).toBe('optimize');
    expect(report.search.exported_trial).toBe(other);
    expect(report.search.chosen_trial).toBe(chosen[0]!.trial);
    expect([...report.search.front].sort()).toEqual(frontRows.map((r) => r.trial).sort());
    expect(report.search.trials.map((t) => [t.number, t.refusals, Number(t.kl.toFixed(3))])).toEqual(rows.map((r) => [r.trial, r.refusals, r.kl]));
    const weights = [...files].filter(([name]) => name.endsWith('.safetensors') && !name.endsWith('refusal_direction.safetensors'));
    const saved = new Map<string, StoredTensor>();
    for (const [, bytes] of weights) for (const [name, t] of readSafetensorsBytes(bytes).tensors) saved.set(name, t);
    const original = new Map<string, StoredTensor>();
    for (const file of await readdir(modelDir)) if (file.endsWith('.safetensors')) for (const [name, t] of readSafetensorsBytes(new Uint8Array(await readFile(join(modelDir, file)))).tensors) original.set(name, t);
    const changed = [...saved].filter(([name, t]) => Buffer.compare(Buffer.from(t.bytes), Buffer.from(original.get(name)!.bytes)) !== 0).map(([name]) => name);
    expect(changed.length).toBeGreaterThan(0);
    for (const name of changed) expect(name).toMatch(/\.(o_proj|down_proj)\.weight$|^model\.embed_tokens\.weight$/);
    expect(pageErrors).toEqual([]);
  }, 1_200_000);

  it('shows the whole text of every direction-point option in a 1280 px window', async () => {
    if (!(await page.locator('#model-summary:not([hidden])').count())) await loadBundled();
    await page.setViewportSize({ width: 1280, height: 800 });
    const fit = await page.evaluate(() => {
      const select = document.getElementById('setting-layer') as HTMLSelectElement;
      const style = getComputedStyle(select);
      const probe = document.createElement('span');
      probe.style.font = style.font;
      probe.style.whiteSpace = 'pre';
      document.body.append(probe);
      const widths = [...select.options].map((o) => {
        probe.textContent = o.text;
        return { text: o.text, width: probe.getBoundingClientRect().width };
      });
      probe.remove();
      // The room for text: the box less its padding and the drop-down arrow (about 20 px).
      return { widths, room: select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 20 };
    });
    expect(fit.widths.map((w) => w.text)).toContain('auto (ablate the best 4)');
    for (const w of fit.widths) expect(w.width, w.text).toBeLessThanOrEqual(fit.room);
  });

  it('detects whether the bundled model is hardened, as abliterate detect, and leaves the weights as loaded', async () => {
    if (!(await page.locator('#model-summary:not([hidden])').count())) await loadBundled();
    await page.fill('#setting-limit', '8');
    await page.fill('#setting-max-tokens', '8');
    await page.fill('#setting-subspace-rank', '4');
    // A cut model is reloaded first: the question says the results are replaced.
    page.once('dialog', (dialog) => void dialog.accept());
    const start = Date.now();
    await page.click('#detect-run');
    await page.waitForSelector('#detect-card[data-state=done], #message[data-kind=error]', { timeout: 600_000 });
    if (await page.locator('#message[data-kind=error]').count()) throw new Error(`detect failed in the page: ${await page.textContent('#message')}`);
    const verdict = await page.getAttribute('#detect-verdict', 'data-verdict');
    console.log(`page detect: ${((Date.now() - start) / 1000).toFixed(1)} s; ${await page.textContent('#detect-verdict')} ${await page.textContent('#detect-next')}`);
    expect(['hardened', 'not hardened', 'uncertain']).toContain(verdict);
    expect(await page.textContent('#detect-verdict')).toMatch(/^Verdict: (hardened|not hardened|uncertain) \(confidence \d+ %, score [\d.]+\)\. Harmful test prompts refused: \d+ % before and \d+ % after a rank-1 cut at point \d+ \(8 prompts\)\.$/);
    const signals = await page.$$eval('#detect-evidence tbody tr', (trs) => trs.map((tr) => (tr as HTMLElement).dataset.signal));
    expect(signals.sort()).toEqual(['cut_raised_refusal', 'effective_rank', 'hdd_red_distance', 'refusal_after_cut', 'score_concentration']);
    expect(await page.textContent('#detect-next')).toMatch(/^Next: cut rank \d+ .* With the CLI: abliterate /);
    expect(await page.isHidden('#results')).toBe(true);
    // Nothing of the detection (its measurement, the test cut's copies) stays on the GPU once the model is closed.
    await page.click('#close-model');
    expect(await memory()).toEqual({ bytes: 0, buffers: 0 });
    expect(pageErrors).toEqual([]);
  }, 900_000);

  it('made no request outside its own origin', () => {
    const origin = new URL(server.url).origin;
    const outside = requests.filter((url) => !url.startsWith(`${origin}/`) && !url.startsWith('blob:') && !url.startsWith('data:'));
    expect(outside).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
