import { WgslReflect, type TypeInfo, type VariableInfo } from 'wgsl_reflect/wgsl_reflect.module.js';
import { GpuError } from './errors.ts';
import { preprocessShader, type Defines } from './preprocess.ts';
import { shaderSources } from './shaderSources.generated.ts';

/** A binding of a kernel, as declared in its WGSL source (group 0). */
export interface KernelBinding {
  name: string;
  binding: number;
  kind: 'uniform' | 'storage' | 'read-only-storage';
}

/** Where one scalar of a uniform struct lives, so that parameters are packed by name. */
interface ParamField {
  offset: number;
  scalar: 'u32' | 'i32' | 'f32';
  count: number;
}

export interface UniformLayout {
  binding: string;
  size: number;
  fields: ReadonlyMap<string, ParamField>;
}

export type ParamValues = Readonly<Record<string, number | readonly number[]>>;

/**
 * A compiled compute kernel: one WGSL file specialised by defines. Its bindings and its uniform
 * parameter struct are read from the source by reflection, so TypeScript never restates them.
 */
export class Kernel {
  readonly bindings: readonly KernelBinding[];
  readonly uniform: UniformLayout | undefined;
  readonly workgroupSize: readonly [number, number, number];
  readonly layout: GPUBindGroupLayout;
  readonly pipeline: GPUComputePipeline;
  readonly compilation: Promise<readonly string[]>;

  constructor(
    device: GPUDevice,
    readonly name: string,
    readonly defines: Defines,
    readonly source: string,
  ) {
    const reflect = new WgslReflect(source);
    const entry = reflect.entry.compute[0];
    if (!entry || reflect.entry.compute.length !== 1) throw new GpuError(`${this.label}: expected exactly one @compute entry point`);
    const size = entry.workgroupSize;
    this.workgroupSize = [Number(size?.[0] ?? 1), Number(size?.[1] ?? 1), Number(size?.[2] ?? 1)];
    const resources: [VariableInfo, KernelBinding['kind']][] = [
      ...reflect.uniforms.map((v): [VariableInfo, KernelBinding['kind']] => [v, 'uniform']),
      ...reflect.storage.map((v): [VariableInfo, KernelBinding['kind']] => [v, v.access === 'read' ? 'read-only-storage' : 'storage']),
    ];
    for (const [v] of resources) if (v.group !== 0) throw new GpuError(`${this.label}: binding ${v.name} must be in @group(0)`);
    this.bindings = resources.map(([v, kind]) => ({ name: v.name, binding: v.binding, kind })).sort((a, b) => a.binding - b.binding);
    if (reflect.uniforms.length > 1) throw new GpuError(`${this.label}: at most one uniform parameter struct`);
    const uniform = reflect.uniforms[0];
    this.uniform = uniform && { binding: uniform.name, size: uniform.type.size, fields: uniformFields(uniform.type, this.label) };

    const module = device.createShaderModule({ label: this.label, code: source });
    this.compilation = module.getCompilationInfo().then((info) =>
      info.messages.map((m) => `${this.name}:${m.lineNum}:${m.linePos} ${m.type}: ${m.message}`),
    );
    this.layout = device.createBindGroupLayout({
      label: this.label,
      entries: this.bindings.map((b) => ({
        binding: b.binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: b.kind },
      })),
    });
    this.pipeline = device.createComputePipeline({
      label: this.label,
      layout: device.createPipelineLayout({ label: this.label, bindGroupLayouts: [this.layout] }),
      compute: { module, entryPoint: entry.name },
    });
  }

  get label(): string {
    const specialisation = Object.entries(this.defines).map(([k, v]) => `${k}=${v}`).join(',');
    return specialisation ? `${this.name}{${specialisation}}` : this.name;
  }

  /** Packs named parameters into the uniform struct's bytes; every field must be given. */
  packParams(values: ParamValues, target: DataView, offset: number): void {
    const layout = this.uniform;
    if (!layout) throw new GpuError(`${this.label} takes no parameters`);
    for (const name of Object.keys(values)) {
      if (!layout.fields.has(name)) throw new GpuError(`${this.label}: unknown parameter ${name}`);
    }
    for (const [name, field] of layout.fields) {
      const value = values[name];
      if (value === undefined) throw new GpuError(`${this.label}: parameter ${name} is missing`);
      const items = typeof value === 'number' ? [value] : value;
      if (items.length !== field.count) throw new GpuError(`${this.label}: parameter ${name} needs ${field.count} values`);
      items.forEach((item, i) => {
        const at = offset + field.offset + 4 * i;
        if (field.scalar === 'f32') target.setFloat32(at, item, true);
        else {
          if (!Number.isInteger(item)) throw new GpuError(`${this.label}: parameter ${name} must be an integer, got ${item}`);
          if (field.scalar === 'u32') {
            if (item < 0 || item > 0xffffffff) throw new GpuError(`${this.label}: parameter ${name}=${item} out of u32 range`);
            target.setUint32(at, item, true);
          } else target.setInt32(at, item, true);
        }
      });
    }
  }
}

function uniformFields(type: TypeInfo, label: string): Map<string, ParamField> {
  const fields = new Map<string, ParamField>();
  if (!type.isStruct) throw new GpuError(`${label}: the uniform must be a struct`);
  for (const member of (type as unknown as { members: { name: string; offset: number; type: TypeInfo & { format?: TypeInfo } }[] }).members) {
    const scalarName = member.type.format?.name ?? member.type.name;
    const count = /^vec([234])/.exec(member.type.name)?.[1];
    if (scalarName !== 'u32' && scalarName !== 'i32' && scalarName !== 'f32') {
      throw new GpuError(`${label}: parameter ${member.name} has unsupported type ${member.type.name}`);
    }
    fields.set(member.name, { offset: member.offset, scalar: scalarName, count: count ? Number(count) : 1 });
  }
  return fields;
}

export function compileKernel(device: GPUDevice, name: string, defines: Defines): Kernel {
  return new Kernel(device, name, defines, preprocessShader(name, defines, shaderSources));
}
