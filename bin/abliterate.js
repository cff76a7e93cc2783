#!/usr/bin/env node
// Runs the TypeScript sources directly: bundles the shaders (cheap when unchanged), then loads the CLI.
import { register } from 'tsx/esm/api';
import '../scripts/embed-shaders.js';

register();
await import('../src/cli/main.ts');
