#!/usr/bin/env node
// The installed package runs the compiled CLI (dist/). A checkout of the repository, which has the
// TypeScript sources and tsx (a development dependency), runs the sources directly instead, so an
// edit needs no build: it bundles the shaders (cheap when unchanged), then loads the CLI.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const sources = join(dirname(fileURLToPath(import.meta.url)), '../src/cli/main.ts');
if (existsSync(sources)) {
  await import('../scripts/embed-shaders.js');
  const { register } = await import('tsx/esm/api');
  register();
  await import(pathToFileURL(sources).href);
} else {
  await import('../dist/cli/main.js');
}
