import { execFileSync } from 'node:child_process';

// Regenerates src/gpu/shaderSources.generated.ts from shaders/ before any test file loads, so a
// `vitest run` started without the npm scripts never runs stale WGSL.
export default function setup(): void {
  execFileSync(process.execPath, [new URL('../scripts/embed-shaders.js', import.meta.url).pathname], { stdio: 'inherit' });
}
