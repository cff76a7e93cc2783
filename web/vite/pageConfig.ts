import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { UserConfig } from 'vite';
import { rejectNodeOnlyImports } from './browserOnly.ts';
import { bundledFiles } from './bundledFiles.ts';

export const WEB_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = resolve(WEB_ROOT, '..');

export interface PageConfigOptions {
  /** The model offered with one click; default models/tiny-chat. */
  model?: string;
  /** Where `vite build` writes; default web/dist. */
  outDir?: string;
}

/**
 * The page's Vite config: the library imported by its package name and served from its browser
 * entry in src/ (the page uses the public API only), Node-only imports rejected, the bundled
 * model and prompts served.
 */
export function pageConfig(options: PageConfigOptions = {}): UserConfig {
  return {
    root: WEB_ROOT,
    // Relative URLs: the built page works from any folder of any static server.
    base: './',
    publicDir: false,
    resolve: { alias: [{ find: /^abliterate(\/browser)?$/, replacement: resolve(REPO_ROOT, 'src/browser.ts') }] },
    plugins: [
      rejectNodeOnlyImports(REPO_ROOT),
      bundledFiles({ repoRoot: REPO_ROOT, modelDir: resolve(options.model ?? resolve(REPO_ROOT, 'models/tiny-chat')), dataDir: resolve(REPO_ROOT, 'data') }),
    ],
    server: { host: '127.0.0.1', fs: { allow: [REPO_ROOT] } },
    preview: { host: '127.0.0.1' },
    build: {
      outDir: options.outDir ?? resolve(WEB_ROOT, 'dist'),
      emptyOutDir: true,
      target: 'es2022',
      sourcemap: true,
      chunkSizeWarningLimit: 4000,
    },
  };
}
