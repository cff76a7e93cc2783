import { GpuDeviceLostError, GpuError, GpuOutOfMemoryError, GpuValidationError, formatBytes } from './errors.ts';
import { compileKernel, Kernel, type ParamValues } from './kernel.ts';
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

/** A buffer, or a byte range of one, bound to a kernel variable. */
export type BufferBinding = GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

export type Workgroups = readonly [number, number?, number?];

interface DispatchCommand {
  type: 'dispatch';
  kernel: Kernel;
  buffers: Readonly<Record<string, BufferBinding>>;
  params: ParamValues | undefined;
  workgroups: Workgroups;
  label: string;
}

/** Options of `ComputeBatch.submit`. */
export interface SubmitOptions {
  /**
   * GPU timestamps (feature `timestamp-query`): `beginningOfPassWriteIndex` is written when the batch's
   * first compute pass begins and `endOfPassWriteIndex` when its last one ends (src/gpu/profiler.ts).
   */
  timestampWrites?: GPUComputePassTimestampWrites;
}

type Command =
  | DispatchCommand
  | { type: 'copy'; from: GPUBuffer; fromOffset: number; to: GPUBuffer; toOffset: number; size: number }
  | { type: 'clear'; buffer: GPUBuffer; offset: number; size: number | undefined }
  | { type: 'write'; buffer: GPUBuffer; offset: number; data: Uint8Array };

/**
 * Records kernel dispatches and copies, then encodes them into one command buffer on `submit()`.
 * Encoding happens inside WebGPU error scopes, so a validation error becomes an exception that names
 * the kernel and the shapes given at `dispatch()`, instead of a console warning and zeros.
 */
export class ComputeBatch {
  private readonly commands: Command[] = [];

  constructor(
    readonly gpu: Gpu,
    readonly label: string,
  ) {}

  get size(): number {
    return this.commands.length;
  }

  /** Queues one kernel dispatch; `shape` describes the sizes for error messages (e.g. "rows=7 cols=300"). */
  dispatch(kernel: Kernel, bindings: Readonly<Record<string, BufferBinding | ParamValues | undefined>>, workgroups: Workgroups, shape = ''): this {
    const buffers: Record<string, BufferBinding> = {};
    let params: ParamValues | undefined;
    for (const [name, value] of Object.entries(bindings)) {
      if (value === undefined) continue;
      if (kernel.uniform && name === kernel.uniform.binding) params = value as ParamValues;
      else buffers[name] = value as BufferBinding;
    }
    const [x, y = 1, z = 1] = workgroups;
    const limit = this.gpu.limits.maxComputeWorkgroupsPerDimension;
    const label = shape ? `${kernel.label} [${shape}]` : kernel.label;
    for (const n of [x, y, z]) {
      if (!Number.isInteger(n) || n < 0 || n > limit) throw new GpuValidationError(`${label}: workgroup count ${n} is outside 0..${limit}`);
    }
    this.commands.push({ type: 'dispatch', kernel, buffers, params, workgroups: [x, y, z], label });
    return this;
  }

  copy(from: GPUBuffer, fromOffset: number, to: GPUBuffer, toOffset: number, size: number): this {
    this.commands.push({ type: 'copy', from, fromOffset, to, toOffset, size });
    return this;
  }

  /** Writes host data into a buffer at this point of the batch (ordered with the dispatches around it). */
  write(buffer: GPUBuffer, data: ArrayBufferView, offset = 0): this {
    if (data.byteLength === 0) return this;
    const bytes = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    this.commands.push({ type: 'write', buffer, offset, data: bytes });
    return this;
  }

  clear(buffer: GPUBuffer, offset = 0, size?: number): this {
    this.commands.push({ type: 'clear', buffer, offset, size });
    return this;
  }

  /** Encodes everything recorded, submits it, and throws if WebGPU reported an error. */
  async submit(options: SubmitOptions = {}): Promise<void> {
    const { device } = this.gpu;
    this.gpu.assertAlive();
    device.pushErrorScope('out-of-memory');
    device.pushErrorScope('validation');
    let transient: GPUBuffer[] = [];
    let encodingError: unknown;
    try {
      transient = this.encodeAndSubmit(device, options.timestampWrites);
    } catch (error) {
      encodingError = error;
    }
    // The scopes are popped whatever happened, so that they never leak into later work.
    const validation = await device.popErrorScope();
    const memory = await device.popErrorScope();
    for (const buffer of transient) buffer.destroy();
    const error = validation ?? memory;
    if (error) {
      const Type = memory && !validation ? GpuOutOfMemoryError : GpuValidationError;
      throw new Type(this.describeFailure(error.message));
    }
    if (encodingError !== undefined) throw encodingError;
    await this.gpu.throwPendingErrors();
  }

  /** Encodes and submits; returns the buffers that live only for this submission. */
  private encodeAndSubmit(device: GPUDevice, timestamps: GPUComputePassTimestampWrites | undefined): GPUBuffer[] {
    const dispatches = this.commands.filter((c): c is DispatchCommand => c.type === 'dispatch');
    const align = this.gpu.limits.minUniformBufferOffsetAlignment;
    const slotOf = new Map<DispatchCommand, number>();
    let arenaSize = 0;
    for (const d of dispatches) {
      if (!d.kernel.uniform) continue;
      slotOf.set(d, arenaSize);
      arenaSize += Math.ceil(d.kernel.uniform.size / align) * align;
    }
    const transient: GPUBuffer[] = [];
    let arena: GPUBuffer | undefined;
    if (arenaSize > 0) {
      const bytes = new ArrayBuffer(arenaSize);
      const view = new DataView(bytes);
      for (const [d, offset] of slotOf) d.kernel.packParams(d.params ?? {}, view, offset);
      arena = device.createBuffer({ label: `${this.label} parameters`, size: arenaSize, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      device.queue.writeBuffer(arena, 0, bytes);
      transient.push(arena);
    }

    // All host writes of the batch share one staging buffer, copied from in command order.
    const writes = this.commands.filter((c): c is Extract<Command, { type: 'write' }> => c.type === 'write');
    const stagingOffset = new Map<Command, number>();
    let stagingSize = 0;
    for (const w of writes) {
      stagingOffset.set(w, stagingSize);
      stagingSize += w.data.byteLength;
    }
    let staging: GPUBuffer | undefined;
    if (stagingSize > 0) {
      staging = device.createBuffer({ label: `${this.label} uploads`, size: stagingSize, usage: GPUBufferUsage.COPY_SRC, mappedAtCreation: true });
      const mapped = new Uint8Array(staging.getMappedRange());
      for (const w of writes) mapped.set(w.data, stagingOffset.get(w));
      staging.unmap();
      transient.push(staging);
    }

    // Compute passes: a run of dispatches between copies, clears and writes.
    let passCount = 0;
    this.commands.forEach((c, i) => {
      if (c.type === 'dispatch' && this.commands[i - 1]?.type !== 'dispatch') passCount++;
    });
    let passIndex = 0;
    const passTimestamps = (): GPUComputePassTimestampWrites | undefined => {
      const first = passIndex === 0;
      const last = passIndex === passCount - 1;
      passIndex++;
      if (!timestamps || !(first || last)) return undefined;
      const { querySet, beginningOfPassWriteIndex: begin, endOfPassWriteIndex: end } = timestamps;
      return {
        querySet,
        ...(first && begin !== undefined ? { beginningOfPassWriteIndex: begin } : {}),
        ...(last && end !== undefined ? { endOfPassWriteIndex: end } : {}),
      };
    };

    const encoder = device.createCommandEncoder({ label: this.label });
    let pass: GPUComputePassEncoder | undefined;
    const endPass = () => {
      pass?.end();
      pass = undefined;
    };
    for (const command of this.commands) {
      if (command.type === 'copy') {
        endPass();
        encoder.copyBufferToBuffer(command.from, command.fromOffset, command.to, command.toOffset, command.size);
      } else if (command.type === 'clear') {
        endPass();
        encoder.clearBuffer(command.buffer, command.offset, command.size);
      } else if (command.type === 'write') {
        endPass();
        encoder.copyBufferToBuffer(staging!, stagingOffset.get(command)!, command.buffer, command.offset, command.data.byteLength);
      } else {
        if (!pass) {
          const timestampWrites = passTimestamps();
          pass = encoder.beginComputePass(timestampWrites ? { label: this.label, timestampWrites } : { label: this.label });
        }
        const bindGroup = this.bindGroup(device, command, arena, slotOf.get(command));
        pass.setPipeline(command.kernel.pipeline);
        pass.setBindGroup(0, bindGroup);
        const [x, y = 1, z = 1] = command.workgroups;
        if (x * y * z > 0) pass.dispatchWorkgroups(x, y, z);
      }
    }
    endPass();
    device.queue.submit([encoder.finish()]);
    return transient;
  }

  private bindGroup(device: GPUDevice, command: DispatchCommand, arena: GPUBuffer | undefined, slot: number | undefined): GPUBindGroup {
    const { kernel } = command;
    const entries: GPUBindGroupEntry[] = kernel.bindings.map((b) => {
      if (b.kind === 'uniform') {
        if (!arena || slot === undefined) throw new GpuValidationError(`${command.label}: parameters missing`);
        return { binding: b.binding, resource: { buffer: arena, offset: slot, size: kernel.uniform!.size } };
      }
      const bound = command.buffers[b.name];
      if (!bound) throw new GpuValidationError(`${command.label}: buffer ${b.name} is not bound`);
      const resource = 'buffer' in bound ? bound : { buffer: bound };
      return { binding: b.binding, resource };
    });
    for (const name of Object.keys(command.buffers)) {
      if (!kernel.bindings.some((b) => b.name === name)) throw new GpuValidationError(`${command.label}: kernel has no binding ${name}`);
    }
    return device.createBindGroup({ label: command.label, layout: kernel.layout, entries });
  }

  private describeFailure(message: string): string {
    const dispatches = this.commands.filter((c): c is DispatchCommand => c.type === 'dispatch');
    const culprit = dispatches.find((d) => message.includes(d.label)) ?? dispatches.find((d) => message.includes(d.kernel.label));
    // Otherwise, the dispatches that bind a buffer the message names.
    const named = [...message.matchAll(/\[Buffer "([^"]*)"\]/g)].map((m) => m[1]);
    const suspects = dispatches.filter((d) => Object.values(d.buffers).some((b) => named.includes(('buffer' in b ? b.buffer : b).label)));
    const listed = [...new Set((suspects.length ? suspects : dispatches).map((d) => d.label))];
    const where = culprit
      ? `in ${culprit.label}`
      : `in batch "${this.label}" (${listed.slice(0, 8).join('; ') || 'no dispatches'}${listed.length > 8 ? `; and ${listed.length - 8} more` : ''})`;
    return `GPU error ${where}: ${message.trim()}`;
  }
}

function padTo4(data: ArrayBufferView): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return out;
}
