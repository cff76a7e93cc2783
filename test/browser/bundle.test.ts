/**
 * The page's bundle is the library's browser-safe code only: the Vite build of web/ passes, and the
 * plugin that guards it rejects every kind of Node-only import (builtins, dawn.node, the library's
 * Node files) with a message that names the importer.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build, type Plugin } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rejectNodeOnlyImports } from '../../web/vite/browserOnly.ts';
import { buildPage, REPO_ROOT } from './harness.ts';

let out: string;
beforeAll(async () => {
  out = await mkdtemp(join(tmpdir(), 'abliterate-bundle-'));
});
afterAll(async () => {
  if (out) await rm(out, { recursive: true, force: true });
});

/** Builds a one-line entry module with the guard, in memory. */
async function buildEntry(code: string): Promise<void> {
  const entry: Plugin = {
    name: 'test-entry',
    resolveId: (id) => (id === 'virtual:entry' ? '\0virtual:entry' : null),
    load: (id) => (id === '\0virtual:entry' ? code : null),
  };
  await build({
    configFile: false,
    root: REPO_ROOT,
    logLevel: 'silent',
    plugins: [rejectNodeOnlyImports(REPO_ROOT), entry],
    build: { write: false, rollupOptions: { input: 'virtual:entry' } },
  });
}

describe('the page bundle', () => {
  it('builds from src/ with no Node-only module, and ships the bundled prompt sets', async () => {
    const output = await buildPage(join(out, 'dist'));
    const modules = output.output.flatMap((chunk) => (chunk.type === 'chunk' ? Object.keys(chunk.modules) : []));
    const fromSrc = modules.filter((m) => m.startsWith(join(REPO_ROOT, 'src') + '/'));
    expect(fromSrc.length).toBeGreaterThan(20);
    expect(fromSrc.some((m) => m.endsWith('src/abliterate/pipeline.ts'))).toBe(true);
    expect(modules.filter((m) => /src\/cli\/|src\/gpu\/node\.ts|nodeFolder|outputFolder|node_modules\/webgpu\//.test(m))).toEqual([]);
    const manifest = JSON.parse(await readFile(join(out, 'dist/bundled/manifest.json'), 'utf8')) as { data: { files: { name: string }[] } };
    expect(manifest.data.files.map((f) => f.name)).toEqual(expect.arrayContaining(['harmful_train.txt', 'harmless_train.txt', 'harmful_test.txt', 'harmless_test.txt']));
    expect((await readdir(join(out, 'dist/bundled/data'))).length).toBe(manifest.data.files.length);
  }, 120_000);

  it.each([
    ['a Node builtin', `import 'node:fs';`, /imports "node:fs", a Node-only module/],
    ['a bare builtin', `import 'path';`, /imports "path", a Node-only module/],
    ['dawn.node', `import 'webgpu';`, /imports "webgpu", a Node-only module/],
    ['the Node GPU adapter', `import '/src/gpu/node.ts';`, /imports src\/gpu\/node\.ts, which only runs in Node/],
    ['a CLI module, through a relative path', `import './src/cli/output.ts';`, /imports src\/cli\/output\.ts, which only runs in Node/],
  ])('rejects %s', async (_what, code, message) => {
    await expect(buildEntry(code)).rejects.toThrow(message);
  });

  it('lets the browser-safe library through', async () => {
    await expect(buildEntry(`import '/src/abliterate/pipeline.ts'; import '/src/gpu/browser.ts';`)).resolves.toBeUndefined();
  }, 60_000);
});
