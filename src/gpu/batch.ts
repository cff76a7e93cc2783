import { GpuValidationError, GpuOutOfMemoryError } from './errors.ts';
import type { Kernel, ParamValues } from './kernel.ts';
import type { Gpu } from './gpu.ts';

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
