import { existsSync } from 'node:fs';
import { GpuError, NoAdapterError } from './errors.ts';
import { Gpu, type GpuRestrictions } from './gpu.ts';
import { summarizeAdapter } from './adapter.ts';
import { quietNativeOutput } from './quietNative.ts';

/** Which adapter to use: the best found, a hardware one only, or a named software driver. */
export type AdapterChoice = 'auto' | 'hardware' | 'lavapipe' | 'swiftshader';
export const ADAPTER_CHOICES: readonly AdapterChoice[] = ['auto', 'hardware', 'lavapipe', 'swiftshader'];

/** Vulkan driver manifests of the software adapters, as Debian installs them. */
export const SOFTWARE_ICDS: Readonly<Record<'lavapipe' | 'swiftshader', readonly string[]>> = {
  lavapipe: ['/usr/share/vulkan/icd.d/lvp_icd.json'],
  swiftshader: ['/usr/lib/chromium/vk_swiftshader_icd.json'],
};

export interface NodeGpuOptions extends GpuRestrictions {
  /** Defaults to the ABLITERATE_ADAPTER environment variable, then 'auto'. */
  adapter?: AdapterChoice;
}

/** Environment variable that caps the GPU memory the engine allocates (bytes, or e.g. 512MiB, 2GiB). */
export const MEMORY_BUDGET_ENV = 'ABLITERATE_MEMORY_BUDGET';

/**
 * Opens a WebGPU device in Node through Dawn. 'auto' takes a hardware adapter when the Vulkan loader
 * finds one, and otherwise falls back to lavapipe, then SwiftShader.
 */
export async function createNodeGpu(options: NodeGpuOptions = {}): Promise<Gpu> {
  const dawn = await loadDawn();
  Object.assign(globalThis, dawn.globals);
  const choice = options.adapter ?? parseAdapterChoice(process.env.ABLITERATE_ADAPTER) ?? 'auto';
  const memoryBudget = options.memoryBudget ?? parseMemoryBudget(process.env[MEMORY_BUDGET_ENV]);
  const userIcd = process.env.VK_ICD_FILENAMES;
  const tried: string[] = [];
  const candidates: { label: string; icd: string | undefined }[] = [];
  if (choice === 'auto' || choice === 'hardware') candidates.push({ label: userIcd ? `VK_ICD_FILENAMES=${userIcd}` : 'system Vulkan drivers', icd: userIcd });
  for (const driver of ['lavapipe', 'swiftshader'] as const) {
    if (choice !== 'auto' && choice !== driver) continue;
    for (const icd of SOFTWARE_ICDS[driver]) {
      if (existsSync(icd)) candidates.push({ label: driver, icd });
      else tried.push(`${driver}: ${icd} not installed`);
    }
  }
  // Dawn and the Vulkan drivers print notices while adapters are probed (unless ABLITERATE_DEBUG is set, they are not shown).
  const gpu = await quietNativeOutput(async () => {
    for (const candidate of candidates) {
      const found = await requestAdapter(dawn.create, candidate.icd);
      if (!found) {
        tried.push(`${candidate.label}: no adapter`);
        continue;
      }
      const { adapter, instance } = found;
      const summary = summarizeAdapter(adapter);
      if (choice === 'hardware' && summary.software) {
        tried.push(`${candidate.label}: only a software adapter (${summary.name})`);
        continue;
      }
      // The loader found only a software driver: take them in our fallback order instead, each from an
      // instance that loads that driver alone. A device on the loader's default instance, which loads
      // every installed driver, makes the process crash at exit now and then (about one exit in eight
      // on lavapipe).
      if (choice === 'auto' && summary.software && candidate === candidates[0] && userIcd === undefined) {
        tried.push(`${candidate.label}: software adapter ${summary.name}`);
        continue;
      }
      // dawn.node crashes if the instance is garbage-collected while its device lives, so the Gpu holds it.
      return Gpu.fromAdapter(adapter, summary, { ...options, memoryBudget }, instance);
    }
    return undefined;
  });
  if (gpu) return gpu;
  throw new NoAdapterError(
    `no WebGPU adapter (${choice}): ${tried.join('; ')}. Install a Vulkan driver (scripts/setup-system.sh installs libvulkan1 and Mesa lavapipe)`,
  );
}

type Dawn = typeof import('webgpu');

/**
 * The Dawn binding, loaded on first use: `webgpu` is an optional dependency (a browser app has no
 * use for it and may install without it), so the Node entry imports without it and only opening a
 * device needs it.
 */
async function loadDawn(): Promise<Dawn> {
  try {
    return await import('webgpu');
  } catch (error) {
    const { code, message } = error as { code?: string; message?: string };
    if (code !== 'ERR_MODULE_NOT_FOUND' || !message?.includes("'webgpu'")) throw error;
    throw new NoAdapterError('the Node WebGPU binding is not installed (the optional dependency "webgpu", Dawn): install it with npm install webgpu');
  }
}

async function requestAdapter(create: Dawn['create'], icd: string | undefined): Promise<{ adapter: GPUAdapter; instance: GPU } | null> {
  // The Vulkan loader reads the driver list when each Dawn instance is created.
  if (icd === undefined) delete process.env.VK_ICD_FILENAMES;
  else process.env.VK_ICD_FILENAMES = icd;
  try {
    const instance = create([]);
    const adapter = await instance.requestAdapter({ powerPreference: 'high-performance' });
    return adapter && { adapter, instance };
  } catch {
    return null;
  }
}

export function parseAdapterChoice(value: string | undefined): AdapterChoice | undefined {
  if (value === undefined || value === '') return undefined;
  if ((ADAPTER_CHOICES as readonly string[]).includes(value)) return value as AdapterChoice;
  throw new NoAdapterError(`unknown adapter "${value}"; choose one of ${ADAPTER_CHOICES.join(', ')}`);
}

const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, kb: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mb: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gb: 2 ** 30, gib: 2 ** 30 };

/** A memory budget in bytes: "1073741824", "512MiB", "1.5 GiB" (K, M and G count in powers of 1024). */
export function parseMemoryBudget(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value);
  const unit = match ? BYTE_UNITS[match[2]!.toLowerCase()] : undefined;
  const bytes = match && unit !== undefined ? Math.floor(Number(match[1]) * unit) : NaN;
  if (!(bytes > 0) || !Number.isSafeInteger(bytes)) {
    throw new GpuError(`${MEMORY_BUDGET_ENV} must be a positive number of bytes, optionally with a KiB, MiB or GiB suffix (e.g. 512MiB); got "${value}"`);
  }
  return bytes;
}
