import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import type { Plugin } from 'vite';

/** URL folder (relative to the page) of the bundled model, prompt sets and their manifest. */
export const BUNDLED_PATH = 'bundled';

export interface BundledFile {
  name: string;
  size: number;
}

/** What `bundled/manifest.json` says; the page reads it to offer the one-click first try. */
export interface BundledManifest {
  model: { name: string; files: BundledFile[]; missing?: string };
  data: { files: BundledFile[] };
}

export interface BundledFilesOptions {
  repoRoot: string;
  /** The model folder offered with one click (models/tiny-chat). */
  modelDir: string;
  /** The prompt sets (data/). */
  dataDir: string;
}

/** Files of a model folder worth shipping: weights, configs, tokenizer, templates. */
const MODEL_FILE = /\.(safetensors|json|txt|jinja|model|md)$/;
const DATA_FILE = /\.(txt|jsonl|json|csv|parquet)$/;

function listFiles(dir: string, keep: RegExp): BundledFile[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => keep.test(name) && !name.startsWith('.') && statSync(join(dir, name)).isFile())
    .sort()
    .map((name) => ({ name, size: statSync(join(dir, name)).size }));
}

function manifestOf(options: BundledFilesOptions): BundledManifest {
  const modelFiles = listFiles(options.modelDir, MODEL_FILE);
  const where = relative(options.repoRoot, options.modelDir) || options.modelDir;
  const hasWeights = modelFiles.some((f) => f.name.endsWith('.safetensors'));
  const missing = !existsSync(options.modelDir)
    ? `${where} does not exist`
    : !modelFiles.some((f) => f.name === 'config.json')
      ? `${where} has no config.json yet`
      : !hasWeights
        ? `${where} has no weights yet (no .safetensors file)`
        : undefined;
  return {
    model: { name: basename(options.modelDir), files: missing ? [] : modelFiles, ...(missing ? { missing } : {}) },
    data: { files: listFiles(options.dataDir, DATA_FILE) },
  };
}

const CONTENT_TYPES: Record<string, string> = { '.json': 'application/json', '.txt': 'text/plain; charset=utf-8', '.md': 'text/markdown; charset=utf-8' };

function contentType(name: string): string {
  return CONTENT_TYPES[/\.[^.]+$/.exec(name)?.[0] ?? ''] ?? 'application/octet-stream';
}

/**
 * Serves the bundled model and prompt sets from the page's own origin: the dev server answers
 * `bundled/…` from the repository (read at request time, so a model trained meanwhile appears), and
 * the production build copies the same files into `bundled/`.
 */
export function bundledFiles(options: BundledFilesOptions): Plugin {
  const fileOf = (manifest: BundledManifest, path: string): string | undefined => {
    const [kind, name, ...rest] = path.split('/');
    if (rest.length || !name) return undefined;
    if (kind === 'model' && manifest.model.files.some((f) => f.name === name)) return join(options.modelDir, name);
    if (kind === 'data' && manifest.data.files.some((f) => f.name === name)) return join(options.dataDir, name);
    return undefined;
  };
  return {
    name: 'abliterate:bundled-files',
    configureServer(server) {
      server.middlewares.use(`/${BUNDLED_PATH}/`, (req, res) => {
        const path = decodeURIComponent((req.url ?? '').split('?')[0]!.replace(/^\//, ''));
        const manifest = manifestOf(options);
        if (path === 'manifest.json') {
          res.setHeader('Content-Type', 'application/json');
          res.setHeader('Cache-Control', 'no-store');
          res.end(JSON.stringify(manifest));
          return;
        }
        const file = fileOf(manifest, path);
        if (!file) {
          res.statusCode = 404;
          res.end(`${BUNDLED_PATH}/${path} is not a bundled file`);
          return;
        }
        res.setHeader('Content-Type', contentType(file));
        res.setHeader('Cache-Control', 'no-store');
        res.end(readFileSync(file));
      });
    },
    generateBundle() {
      const manifest = manifestOf(options);
      this.emitFile({ type: 'asset', fileName: `${BUNDLED_PATH}/manifest.json`, source: JSON.stringify(manifest) });
      for (const f of manifest.model.files) this.emitFile({ type: 'asset', fileName: `${BUNDLED_PATH}/model/${f.name}`, source: readFileSync(join(options.modelDir, f.name)) });
      for (const f of manifest.data.files) this.emitFile({ type: 'asset', fileName: `${BUNDLED_PATH}/data/${f.name}`, source: readFileSync(join(options.dataDir, f.name)) });
      if (manifest.model.missing) this.warn(`the bundled model is not included: ${manifest.model.missing}`);
    },
  };
}
