import { ComputeBatch } from './batch.ts';
import { GpuDeviceLostError, GpuError, GpuOutOfMemoryError, GpuValidationError, formatBytes } from './errors.ts';
import { compileKernel, Kernel } from './kernel.ts';
import type { Defines } from './preprocess.ts';

export interface AdapterSummary {
  /** A short human name: "llvmpipe", "swiftshader", or the hardware description. */
  name: string;
  vendor: string;
  architecture: string;
  description: string;
  /** True for CPU (software) Vulkan drivers. */
  software: boolean;
}

export interface GpuFeatures {
  shaderF16: boolean;
  subgroups: boolean;
  timestampQuery: boolean;
}

export interface GpuLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupsPerDimension: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupStorageSize: number;
  maxStorageBuffersPerShaderStage: number;
  minUniformBufferOffsetAlignment: number;
  minStorageBufferOffsetAlignment: number;
}

/** Options that narrow what the device offers, to test small-limit paths on any adapter. */
export interface GpuRestrictions {
  /** Act as if bindings could be at most this many bytes (splits large tensors). */
  maxStorageBufferBindingSize?: number;
  /** Refuse allocations once this many bytes of buffers are live. */
  memoryBudget?: number;
  /** Act as if these optional features were absent. */
  disableFeatures?: readonly (keyof GpuFeatures)[];
}

const OPTIONAL_FEATURES: Record<keyof GpuFeatures, GPUFeatureName> = {
  shaderF16: 'shader-f16',
  subgroups: 'subgroups' as GPUFeatureName,
  timestampQuery: 'timestamp-query',
};

/**
 * One WebGPU device, the same in Node (Dawn) and in the browser: kernels compiled once and cached,
 * buffers tracked so that `dispose()` frees them all and memory use can be reported, and every
 * WebGPU error turned into an exception.
 */
export class Gpu {
  readonly features: GpuFeatures;
  readonly limits: GpuLimits;
  private readonly kernels = new Map<string, Kernel>();
  private readonly liveBuffers = new Map<GPUBuffer, number>();
  private readonly pendingErrors: string[] = [];
  private lostReason: string | undefined;
  private disposed = false;
  /** Bytes of buffers this device may hold at once (Infinity: as many as the adapter allows). */
  readonly memoryBudget: number;
  private readonly onUncapturedError = (event: Event) => {
    this.pendingErrors.push((event as GPUUncapturedErrorEvent).error.message);
  };

  private constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterSummary,
    adapterFeatures: ReadonlySet<string>,
    restrictions: GpuRestrictions,
    private keepAlive: unknown,
  ) {
    const disabled = new Set(restrictions.disableFeatures ?? []);
    this.features = {
      shaderF16: adapterFeatures.has('shader-f16') && !disabled.has('shaderF16'),
      subgroups: adapterFeatures.has('subgroups') && !disabled.has('subgroups'),
      timestampQuery: adapterFeatures.has('timestamp-query') && !disabled.has('timestampQuery'),
    };
    const l = device.limits;
    this.limits = {
      maxStorageBufferBindingSize: Math.min(l.maxStorageBufferBindingSize, restrictions.maxStorageBufferBindingSize ?? Infinity),
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
      minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
    };
    this.memoryBudget = restrictions.memoryBudget ?? Infinity;
    device.addEventListener('uncapturederror', this.onUncapturedError);
    void device.lost.then((info) => {
      if (!this.disposed) this.lostReason = `${info.reason}: ${info.message}`;
    });
  }

  /** Requests a device with the adapter's largest buffer limits and the optional features it has. */
  static async fromAdapter(adapter: GPUAdapter, summary: AdapterSummary, restrictions: GpuRestrictions = {}, keepAlive?: unknown): Promise<Gpu> {
    const available = new Set<string>([...adapter.features]);
    const requiredFeatures = Object.values(OPTIONAL_FEATURES).filter((f) => available.has(f));
    const wanted = [
      'maxStorageBufferBindingSize',
      'maxBufferSize',
      'maxComputeWorkgroupStorageSize',
      'maxComputeInvocationsPerWorkgroup',
      'maxComputeWorkgroupSizeX',
      'maxComputeWorkgroupSizeY',
      'maxComputeWorkgroupsPerDimension',
      'maxStorageBuffersPerShaderStage',
    ] as const;
    const requiredLimits: Record<string, number> = {};
    for (const key of wanted) requiredLimits[key] = adapter.limits[key];
    const device = await adapter.requestDevice({ label: 'abliterate', requiredFeatures, requiredLimits });
    return new Gpu(device, summary, available, restrictions, keepAlive);
  }

  /** A compiled kernel for `shaders/<name>` with the given defines; compiled once per device. */
  kernel(name: string, defines: Defines = {}): Kernel {
    this.assertAlive();
    const key = `${name}|${JSON.stringify(Object.entries(defines).sort(([a], [b]) => a.localeCompare(b)))}`;
    let kernel = this.kernels.get(key);
    if (!kernel) {
      kernel = compileKernel(this.device, name, defines);
      const compiled = kernel;
      void compiled.compilation.then((messages) => {
        const errors = messages.filter((m) => m.includes(' error: '));
        if (errors.length) this.pendingErrors.push(`shader ${compiled.label} failed to compile:\n${errors.join('\n')}`);
      });
      this.kernels.set(key, kernel);
    }
    return kernel;
  }

  /** Every kernel variant compiled on this device so far. */
  compiledKernels(): Kernel[] {
    return [...this.kernels.values()];
  }

  batch(label: string): ComputeBatch {
    return new ComputeBatch(this, label);
  }

  /** A tracked storage buffer. Sizes are rounded up to 4 bytes; limits and the budget are checked first. */
  createBuffer(size: number, label: string, usage: number = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST): GPUBuffer {
    this.assertAlive();
    const bytes = Math.max(4, Math.ceil(size / 4) * 4);
    if (bytes > this.limits.maxBufferSize) {
      throw new GpuOutOfMemoryError(`${label}: a buffer of ${formatBytes(bytes)} exceeds this adapter's maxBufferSize of ${formatBytes(this.limits.maxBufferSize)}`);
    }
    const inUse = this.allocatedBytes;
    if (inUse + bytes > this.memoryBudget) {
      throw new GpuOutOfMemoryError(
        `${label}: needs ${formatBytes(bytes)} more GPU memory, but ${formatBytes(inUse)} of the ${formatBytes(this.memoryBudget)} budget is in use; ` +
          'try a smaller batch, fewer prompts at once, or a larger memory budget',
      );
    }
    const buffer = this.device.createBuffer({ label, size: bytes, usage });
    this.liveBuffers.set(buffer, bytes);
    return buffer;
  }

  /** Uploads bytes into a new tracked buffer. */
  upload(data: ArrayBufferView, label: string, usage?: number): GPUBuffer {
    const buffer = this.createBuffer(data.byteLength, label, usage);
    this.write(buffer, data);
    return buffer;
  }

  write(buffer: GPUBuffer, data: ArrayBufferView, offset = 0): void {
    this.assertAlive();
    const padded = data.byteLength % 4 === 0 ? data : padTo4(data);
    this.device.queue.writeBuffer(buffer, offset, padded.buffer, padded.byteOffset, padded.byteLength);
  }

  destroyBuffer(buffer: GPUBuffer): void {
    if (this.liveBuffers.delete(buffer)) buffer.destroy();
  }

  /** Copies a buffer range back to the host once the queued work has finished. */
  async read(buffer: GPUBuffer, offset = 0, size = buffer.size - offset): Promise<ArrayBuffer> {
    this.assertAlive();
    const staging = this.device.createBuffer({ label: `read ${buffer.label}`, size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    try {
      this.device.pushErrorScope('validation');
      const encoder = this.device.createCommandEncoder({ label: `read ${buffer.label}` });
      encoder.copyBufferToBuffer(buffer, offset, staging, 0, size);
      this.device.queue.submit([encoder.finish()]);
      const error = await this.device.popErrorScope();
      if (error) throw new GpuValidationError(`reading ${buffer.label} [offset=${offset} size=${size}]: ${error.message}`);
      await staging.mapAsync(GPUMapMode.READ);
      return staging.getMappedRange().slice(0);
    } catch (error) {
      this.assertAlive();
      throw error;
    } finally {
      staging.destroy();
    }
  }

  async readF32(buffer: GPUBuffer, offset = 0, count?: number): Promise<Float32Array> {
    return new Float32Array(await this.read(buffer, offset, count === undefined ? undefined : count * 4));
  }

  async readU32(buffer: GPUBuffer, offset = 0, count?: number): Promise<Uint32Array> {
    return new Uint32Array(await this.read(buffer, offset, count === undefined ? undefined : count * 4));
  }

  /**
   * Waits until all submitted work has run, buffer writes included. Dawn keeps the staging copy of
   * every write in host memory until a submission carries it and the device is polled: uploads
   * between two submissions hold all their bytes twice.
   */
  async finish(): Promise<void> {
    this.assertAlive();
    this.device.queue.submit([]);
    await this.device.queue.onSubmittedWorkDone();
    await this.throwPendingErrors();
  }

  get allocatedBytes(): number {
    let total = 0;
    for (const size of this.liveBuffers.values()) total += size;
    return total;
  }

  get bufferCount(): number {
    return this.liveBuffers.size;
  }

  assertAlive(): void {
    if (this.disposed) throw new GpuError('the GPU device was disposed');
    if (this.lostReason !== undefined) throw new GpuDeviceLostError(`the GPU device was lost (${this.lostReason}); restart the run`);
  }

  /** Raises errors that WebGPU reported outside an error scope (shader compilation, uncaptured). */
  async throwPendingErrors(): Promise<void> {
    this.assertAlive();
    if (this.pendingErrors.length) {
      const messages = this.pendingErrors.splice(0);
      throw new GpuValidationError(messages.join('\n'));
    }
  }

  /** Frees every buffer and the device. The object is unusable afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const buffer of this.liveBuffers.keys()) buffer.destroy();
    this.liveBuffers.clear();
    this.kernels.clear();
    // dawn.node keeps a device with a listener alive for good: each disposed Gpu would leak ~2 MB.
    this.device.removeEventListener('uncapturederror', this.onUncapturedError);
    this.device.destroy();
    // The instance must outlive the device's loss, which Dawn reports later: dawn.node aborts the
    // process if the instance is collected first.
    const instance = this.keepAlive;
    this.keepAlive = undefined;
    void this.device.lost.then(() => instance);
  }
}

function padTo4(data: ArrayBufferView): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return out;
}
