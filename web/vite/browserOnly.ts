import { builtinModules } from 'node:module';
import { relative, resolve, sep } from 'node:path';
import type { Plugin } from 'vite';

/** Library files that use Node (file system, process, dawn.node) and must never reach the page. */
export const NODE_ONLY_FILES: readonly string[] = ['src/gpu/node.ts', 'src/io/nodeFolder.ts', 'src/io/outputFolder.ts'];
export const NODE_ONLY_FOLDERS: readonly string[] = ['src/cli'];
/** Packages that only work in Node. */
export const NODE_ONLY_PACKAGES: readonly string[] = ['webgpu'];

const builtins = new Set(builtinModules);

function isNodeOnlyPackage(source: string): boolean {
  if (source.startsWith('node:') || builtins.has(source) || builtins.has(source.split('/')[0]!)) return true;
  return NODE_ONLY_PACKAGES.some((name) => source === name || source.startsWith(`${name}/`));
}

/**
 * Fails the build (and the dev server's module request) when a Node-only module is imported by the
 * page's code: a Node builtin, the `webgpu` package (dawn.node), or a library file that needs Node.
 * The message names the importer, so the chain can be followed back to the page.
 */
export function rejectNodeOnlyImports(repoRoot: string): Plugin {
  const files = new Set(NODE_ONLY_FILES.map((f) => resolve(repoRoot, f)));
  const folders = NODE_ONLY_FOLDERS.map((f) => resolve(repoRoot, f) + sep);
  const show = (id: string | undefined) => (id ? relative(repoRoot, id.split('?')[0]!) || id : 'the page');
  const isNodeOnlyFile = (id: string) => {
    const path = id.split('?')[0]!;
    return files.has(path) || folders.some((folder) => path.startsWith(folder));
  };
  return {
    name: 'abliterate:reject-node-only-imports',
    enforce: 'pre',
    async resolveId(source, importer, options) {
      if (isNodeOnlyPackage(source)) {
        this.error(`${show(importer)} imports "${source}", a Node-only module; the page must not depend on it`);
      }
      const resolved = await this.resolve(source, importer, { ...options, skipSelf: true });
      if (resolved && !resolved.external && isNodeOnlyFile(resolved.id)) {
        this.error(`${show(importer)} imports ${show(resolved.id)}, which only runs in Node; the page must not depend on it`);
      }
      return resolved;
    },
  };
}
