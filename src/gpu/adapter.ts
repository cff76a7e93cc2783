import type { AdapterSummary } from './gpu.ts';

/** Describes an adapter in a line a user can read, and tells software drivers apart. */
export function summarizeAdapter(adapter: GPUAdapter): AdapterSummary {
  const info = adapter.info;
  const text = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.toLowerCase();
  const known = ['llvmpipe', 'swiftshader', 'lavapipe'].find((name) => text.includes(name));
  const name = known === 'lavapipe' ? 'llvmpipe' : known ?? (info.description || `${info.vendor} ${info.architecture}`.trim() || 'unknown adapter');
  return {
    name,
    vendor: info.vendor,
    architecture: info.architecture,
    description: info.description,
    software: known !== undefined || info.architecture === 'software',
  };
}
