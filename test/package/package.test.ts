/**
 * The npm package as a user gets it: `npm pack` (which builds dist/), the tarball installed into a
 * new Node project and a new Vite app, and the README's two "Embed it in your app" examples run
 * there as written. Node: the example measures and cuts the bundled model; the test checks the
 * direction it wrote, and that exactly the embedding, o_proj and down_proj changed, with the
 * direction removed from them. Vite: the browser example builds with no Node module, and runs in
 * headless Chromium. Also: the installed CLI runs from dist/ without tsx, the declarations
 * type-check in a strict consumer, and the API docs generate without a warning.
 */
import { execFile } from 'node:child_process';
import { copyFile, cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeToFloat64, type Dtype } from '../../src/io/dtype.ts';
import { launchChromium, readSafetensorsBytes, REPO_ROOT, serveStatic, type StoredTensor } from '../browser/harness.ts';

const run = promisify(execFile);
const MODEL = join(REPO_ROOT, 'models/tiny-chat');
/** Prompts of each kind the examples measure: enough for a direction, few enough to be quick. */
const PROMPTS = 24;
const NPM_INSTALL = ['install', '--prefer-offline', '--no-audit', '--no-fund'];
const VITE_VERSION = (JSON.parse(await readFile(join(REPO_ROOT, 'node_modules/vite/package.json'), 'utf8')) as { version: string }).version;

let work: string;
let tarball: string;

/** The code block after `<!-- embed:NAME -->` in README.md. */
async function readmeExample(name: string): Promise<string> {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
  const match = new RegExp(`<!-- embed:${name} -->\\s*\`\`\`js\\n([\\s\\S]*?)\`\`\``).exec(readme);
  if (!match) throw new Error(`README.md has no example marked embed:${name}`);
  return match[1]!;
}

async function npm(cwd: string, args: string[]): Promise<string> {
  const { stdout } = await run('npm', args, { cwd, maxBuffer: 16 * 2 ** 20, env: { ...process.env, npm_config_update_notifier: 'false' } });
  return stdout;
}

/** A new project with the packed tarball (and `extra` packages) installed, with `flags` for npm install. */
async function project(name: string, extra: string[] = [], flags: string[] = []): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir);
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: `abliterate-${name}-check`, private: true, type: 'module' }));
  await npm(dir, [...NPM_INSTALL, ...flags, tarball, ...extra]);
  return dir;
}

/** The first `count` prompts of a bundled set, as a prompt file. */
async function writePrompts(path: string, set: string, count: number): Promise<void> {
  const lines = (await readFile(join(REPO_ROOT, 'data', set), 'utf8')).split('\n').filter((l) => l.trim());
  await writeFile(path, lines.slice(0, count).join('\n') + '\n');
}

function decode(tensor: StoredTensor): Float64Array {
  return decodeToFloat64(tensor.bytes, tensor.dtype as Dtype);
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'abliterate-package-'));
  const packed = JSON.parse(await npm(REPO_ROOT, ['pack', '--json', '--pack-destination', work])) as { filename: string; size: number; files: { path: string }[] }[];
  tarball = join(work, packed[0]!.filename);
  const files = packed[0]!.files.map((f) => f.path);
  console.log(`packed ${packed[0]!.filename}: ${(packed[0]!.size / 1024).toFixed(0)} KiB, ${files.length} files`);
  expect(files).toEqual(expect.arrayContaining(['dist/index.js', 'dist/index.d.ts', 'dist/browser.js', 'dist/browser.d.ts', 'dist/cli/main.js', 'bin/abliterate.js', 'data/harmful_train.txt']));
  expect(files.filter((f) => /^(src|test|web|bench|models|training|shaders|scripts)\//.test(f) || f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
}, 300_000);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the package in a Node project', () => {
  let dir: string;
  let printed: string;

  beforeAll(async () => {
    dir = await project('node');
    await cp(MODEL, join(dir, 'models/tiny-chat'), { recursive: true });
    await writePrompts(join(dir, 'harmful.txt'), 'harmful_train.txt', PROMPTS);
    await writePrompts(join(dir, 'harmless.txt'), 'harmless_train.txt', PROMPTS);
    await writeFile(join(dir, 'example.js'), await readmeExample('node'));
    printed = (await run(process.execPath, ['example.js'], { cwd: dir })).stdout;
  }, 300_000);

  it('runs the README example: a unit direction, and the cut removes it from exactly the tensors that write the residual stream', async () => {
    const match = /^point (\d+): cut (\d+) tensors$/m.exec(printed);
    expect(match, printed).not.toBeNull();
    const point = Number(match![1]);
    const config = JSON.parse(await readFile(join(MODEL, 'config.json'), 'utf8')) as { num_hidden_layers: number; hidden_size: number };
    const layers = config.num_hidden_layers;
    expect(point).toBeGreaterThan(0);
    expect(point).toBeLessThanOrEqual(layers);
    expect(Number(match![2])).toBe(2 * layers + 1);

    const out = join(dir, 'tiny-chat-abliterated');
    const directions = readSafetensorsBytes(await readFile(join(out, 'refusal_direction.safetensors')));
    const direction = [...directions.tensors.values()].map(decode).find((values) => values.length === config.hidden_size);
    expect(direction).toBeDefined();
    const norm = Math.hypot(...direction!);
    expect(Math.abs(norm - 1)).toBeLessThan(1e-5);

    const before = readSafetensorsBytes(await readFile(join(MODEL, 'model.safetensors'))).tensors;
    const after = readSafetensorsBytes(await readFile(join(out, 'model.safetensors'))).tensors;
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    const expected = ['model.embed_tokens.weight', ...Array.from({ length: layers }, (_, i) => [`model.layers.${i}.self_attn.o_proj.weight`, `model.layers.${i}.mlp.down_proj.weight`]).flat()];
    const changed = [...before.keys()].filter((name) => !Buffer.from(before.get(name)!.bytes).equals(Buffer.from(after.get(name)!.bytes)));
    expect(changed.sort()).toEqual(expected.sort());

    // The direction used for the cut is the one in the file: d̂ᵀW' ≈ 0 for every output matrix
    // [hidden, k], relative to the size of d̂ᵀW before (bf16 rounding bounds what is left).
    const d = direction!;
    for (const name of expected.filter((n) => n.includes('layers.'))) {
      const [rows, cols] = before.get(name)!.shape as [number, number];
      expect(rows).toBe(config.hidden_size);
      const projected = (w: Float64Array) => {
        let sum = 0;
        for (let j = 0; j < cols; j++) {
          let dot = 0;
          for (let i = 0; i < rows; i++) dot += d[i]! * w[i * cols + j]!;
          sum += dot * dot;
        }
        return Math.sqrt(sum);
      };
      const was = projected(decode(before.get(name)!));
      const left = projected(decode(after.get(name)!));
      expect(was).toBeGreaterThan(0);
      expect(left / was, name).toBeLessThan(0.05);
    }
  });

  it('runs the installed CLI from dist/, without the sources or tsx', async () => {
    const installed = join(dir, 'node_modules/abliterate');
    expect(await readdir(installed)).not.toContain('src');
    await expect(readdir(join(dir, 'node_modules/tsx'))).rejects.toThrow();
    const { stdout } = await run(join(dir, 'node_modules/.bin/abliterate'), ['inspect', 'models/tiny-chat', '--json'], { cwd: dir });
    const summary = JSON.parse(stdout) as { layers: number; hidden_size: number; parameters: number };
    expect(summary).toMatchObject({ layers: 6, hidden_size: 192, parameters: 2_558_400 });
  }, 120_000);

  it('has declarations that type-check the README example in a strict TypeScript project', async () => {
    await copyFile(join(dir, 'example.js'), join(dir, 'example.ts'));
    const tsconfig = {
      compilerOptions: { module: 'nodenext', target: 'es2022', strict: true, noEmit: true, skipLibCheck: false, types: ['node'], typeRoots: [join(REPO_ROOT, 'node_modules/@types')] },
      files: ['example.ts'],
    };
    await writeFile(join(dir, 'tsconfig.json'), JSON.stringify(tsconfig));
    const result = await run(process.execPath, [join(REPO_ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: dir }).catch((error: { stdout: string }) => error);
    expect(result.stdout).toBe('');
  }, 120_000);
});

describe('the package in a Node project installed without optional dependencies', () => {
  it('imports without Dawn (webgpu); opening a device says what to install', async () => {
    const dir = await project('no-optional', [], ['--omit=optional']);
    await expect(readdir(join(dir, 'node_modules/webgpu'))).rejects.toThrow();
    const check = [
      "import { createNodeGpu, NoAdapterError, SETTINGS_SCHEMA } from 'abliterate';",
      'console.log(Object.keys(SETTINGS_SCHEMA.entries).length > 0);',
      'await createNodeGpu().catch((error) => console.log(error instanceof NoAdapterError, error.message));',
    ];
    await writeFile(join(dir, 'check.js'), check.join('\n'));
    const { stdout } = await run(process.execPath, ['check.js'], { cwd: dir });
    expect(stdout).toBe('true\ntrue the Node WebGPU binding is not installed (the optional dependency "webgpu", Dawn): install it with npm install webgpu\n');
  }, 300_000);
});

describe('the package in a Vite app', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await project('vite', [`vite@${VITE_VERSION}`]);
    await writeFile(join(dir, 'index.html'), '<!doctype html>\n<html><body>loading</body><script type="module" src="./main.js"></script></html>\n');
    await writeFile(join(dir, 'main.js'), await readmeExample('browser'));
    await cp(MODEL, join(dir, 'public/tiny-chat'), { recursive: true });
    await writePrompts(join(dir, 'public/harmful.txt'), 'harmful_train.txt', PROMPTS);
    await writePrompts(join(dir, 'public/harmless.txt'), 'harmless_train.txt', PROMPTS);
  }, 300_000);

  it('builds the README example from the browser entry, with no Node module in the bundle', async () => {
    const { stdout, stderr } = await run(process.execPath, [join(dir, 'node_modules/vite/bin/vite.js'), 'build', '--base', './'], { cwd: dir });
    expect(`${stdout}\n${stderr}`).not.toMatch(/externalized for browser compatibility|__vite-browser-external/);
    const assets = join(dir, 'dist/assets');
    const code = (await Promise.all((await readdir(assets)).filter((f) => f.endsWith('.js')).map((f) => readFile(join(assets, f), 'utf8')))).join('\n');
    expect(code).toContain('navigator.gpu');
    expect(code).toContain('matmul.wgsl');
    const imported = [...code.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+)["']/g)].map((m) => m[1]!);
    const builtins = new Set(builtinModules);
    expect(imported.filter((name) => name.startsWith('node:') || builtins.has(name.split('/')[0]!) || name === 'webgpu')).toEqual([]);
    expect(code).not.toMatch(/__vite-browser-external|dawn\.node|createNodeGpu/);
  }, 300_000);

  it('runs the README example in headless Chromium', async () => {
    const server = await serveStatic(join(dir, 'dist'));
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      const failed = new Promise<never>((_, reject) => page.on('pageerror', reject));
      await page.goto(server.url);
      await Promise.race([page.waitForFunction(() => /^point \d+: cut \d+ tensors$/.test(document.body.textContent ?? ''), undefined, { timeout: 240_000 }), failed]);
      const text = await page.evaluate(() => document.body.textContent ?? '');
      expect(text).toMatch(/^point [1-6]: cut 13 tensors$/);
    } finally {
      await browser.close();
      await server.close();
    }
  }, 300_000);
});

describe('the API reference', () => {
  it('generates from the doc comments without a warning (broken links, names left out)', async () => {
    const result = await run(process.execPath, [join(REPO_ROOT, 'node_modules/typedoc/bin/typedoc'), '--emit', 'none'], { cwd: REPO_ROOT }).catch((error: { stdout: string; stderr: string; code: number }) => error);
    expect(`${result.stdout}${result.stderr}`).not.toMatch(/warning|error/i);
  }, 300_000);
});
