import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

// The library's layering (ARCHITECTURE.md, "Where things live"): gpu and io at the bottom, kernels on gpu,
// model on kernels, abliterate on model, cli on top. Type-only imports count: a cycle of types
// still ties two modules together.

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const srcDir = join(root, 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.ts$/.test(entry.name) && !entry.name.endsWith('.d.ts') ? [path] : [];
  });
}

/** Every relative import and re-export of each file, as paths relative to the repository root. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(srcDir)) {
    const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, false);
    const targets = importedFiles.map((i) => i.fileName).filter((name) => name.startsWith('.'));
    graph.set(relative(root, file), targets.map((name) => relative(root, resolve(dirname(file), name))));
  }
  return graph;
}

/** The import cycles among the files (each as a path that returns to its first file). */
function cycles(graph: Map<string, string[]>): string[][] {
  const found: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (file: string): void => {
    state.set(file, 'open');
    stack.push(file);
    for (const next of graph.get(file) ?? []) {
      if (state.get(next) === 'open') found.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(file, 'done');
  };
  for (const file of graph.keys()) if (!state.has(file)) visit(file);
  return found;
}

describe('imports in src/', () => {
  const graph = importGraph();

  it('resolve to files that exist', () => {
    const missing = [...graph].flatMap(([file, targets]) => targets.filter((t) => !graph.has(t) && !t.endsWith('.json')).map((t) => `${file} → ${t}`));
    expect(missing).toEqual([]);
    expect(graph.size).toBeGreaterThan(50);
  });

  it('form no cycles', () => {
    expect(cycles(graph).map((cycle) => cycle.join(' → '))).toEqual([]);
  });

  it('finds a cycle when there is one', () => {
    const looped = new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]]);
    expect(cycles(looped)).toEqual([['a', 'b', 'c', 'a']]);
  });

  it('point downwards: gpu and io use no higher layer, kernels no model, nothing in src reads bench/', () => {
    const forbidden: [string, string[]][] = [
      ['src/gpu/', ['src/kernels/', 'src/model/', 'src/abliterate/', 'src/cli/']],
      ['src/io/', ['src/kernels/', 'src/model/', 'src/abliterate/', 'src/cli/']],
      ['src/kernels/', ['src/model/', 'src/abliterate/', 'src/cli/']],
      ['src/model/', ['src/abliterate/', 'src/cli/']],
      ['src/abliterate/', ['src/cli/']],
      ['src/', ['bench/', 'test/', 'web/']],
    ];
    const violations = [...graph].flatMap(([file, targets]) =>
      forbidden
        .filter(([layer]) => file.startsWith(layer))
        .flatMap(([, above]) => targets.filter((t) => above.some((a) => t.startsWith(a))).map((t) => `${file} → ${t}`)),
    );
    expect(violations).toEqual([]);
  });

  it('in src/cli/ reach the library through its public entry (src/index.ts) only: the command line is a client of the API', () => {
    // The one exception: the study file, the search's resumable log of trials, is a format of the
    // command line (optimize --study), not part of the library's API.
    const allowed = new Set(['src/index.ts', 'src/abliterate/optimize/study.ts']);
    const deep = [...graph].flatMap(([file, targets]) => (file.startsWith('src/cli/') ? targets.filter((t) => !t.startsWith('src/cli/') && !allowed.has(t)).map((t) => `${file} → ${t}`) : []));
    expect(deep).toEqual([]);
    expect([...graph.keys()].filter((file) => file.startsWith('src/cli/')).length).toBeGreaterThan(10);
  });
});

describe('imports in web/src/', () => {
  it('use the library through its public API only (the package name), never a path into src/', () => {
    const webSrc = join(root, 'web/src');
    const deep = sourceFiles(webSrc).flatMap((file) =>
      ts
        .preProcessFile(readFileSync(file, 'utf8'), true, false)
        .importedFiles.map((i) => i.fileName)
        .filter((name) => name.startsWith('.') && relative(root, resolve(dirname(file), name)).startsWith('src/'))
        .map((name) => `${relative(root, file)} → ${name}`),
    );
    expect(deep).toEqual([]);
  });
});
