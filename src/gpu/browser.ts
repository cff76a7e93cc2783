import { NoAdapterError } from './errors.ts';
import { Gpu, type GpuRestrictions } from './gpu.ts';
import { summarizeAdapter } from './adapter.ts';

/** Opens a WebGPU device through `navigator.gpu`. */
export async function createBrowserGpu(options: GpuRestrictions = {}): Promise<Gpu> {
  if (typeof navigator === 'undefined' || !('gpu' in navigator)) {
    throw new NoAdapterError('this browser has no WebGPU (navigator.gpu is missing); use a recent Chrome, Edge or Firefox with WebGPU enabled');
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new NoAdapterError('WebGPU is present but no adapter is available (it may be disabled or blocklisted for this GPU)');
  return Gpu.fromAdapter(adapter, summarizeAdapter(adapter), options);
}
