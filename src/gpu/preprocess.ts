/**
 * A small WGSL preprocessor: `#include "file.wgsl"`, `#if NAME` / `#if !NAME` / `#elif` / `#else` /
 * `#endif` on boolean defines, and numeric defines emitted as WGSL `const` declarations so they can
 * size arrays and workgroups. Kernel variants are chosen by defines, never by string building.
 */
export type Defines = Readonly<Record<string, boolean | number>>;

export class ShaderSourceError extends Error {
  override name = 'ShaderSourceError';
}

export function preprocessShader(
  name: string,
  defines: Defines,
  sources: Readonly<Record<string, string>>,
): string {
  const header = Object.entries(defines)
    .filter((entry): entry is [string, number] => typeof entry[1] === 'number')
    .map(([key, value]) => `const ${key} = ${formatNumber(key, value)};`);
  const body = expand(name, defines, sources, []);
  // WGSL directives (`enable`, `requires`, `diagnostic`) must precede the define constants.
  const isDirective = (line: string) => /^\s*(enable|requires|diagnostic)\b[^;]*;\s*$/.test(line);
  return [...body.filter(isDirective), ...header, ...body.filter((line) => !isDirective(line))].join('\n');
}

function formatNumber(key: string, value: number): string {
  if (!Number.isFinite(value)) throw new ShaderSourceError(`define ${key} is not finite: ${value}`);
  return Number.isInteger(value) ? `${value}` : `${value}f`;
}

function expand(name: string, defines: Defines, sources: Readonly<Record<string, string>>, stack: string[]): string[] {
  const source = sources[name];
  if (source === undefined) throw new ShaderSourceError(`unknown shader ${name}${stack.length ? ` (included from ${stack.at(-1)})` : ''}`);
  if (stack.includes(name)) throw new ShaderSourceError(`include cycle: ${[...stack, name].join(' -> ')}`);
  const out: string[] = [];
  // Each frame: is this branch active, and has any branch of this #if been taken yet.
  const frames: { active: boolean; taken: boolean; parentActive: boolean }[] = [];
  const active = () => frames.every((f) => f.active);
  const lines = source.split('\n');
  lines.forEach((line, index) => {
    const where = `${name}:${index + 1}`;
    const directive = /^\s*#(\w+)\s*(.*?)\s*$/.exec(line);
    if (!directive) {
      if (active()) out.push(line);
      return;
    }
    const [, keyword, argument = ''] = directive;
    switch (keyword) {
      case 'include': {
        if (!active()) return;
        const file = /^"([^"]+)"$/.exec(argument)?.[1];
        if (!file) throw new ShaderSourceError(`${where}: malformed #include ${argument}`);
        out.push(...expand(file, defines, sources, [...stack, name]));
        return;
      }
      case 'if': {
        const parentActive = active();
        const value = evaluate(argument, defines, where);
        frames.push({ active: value, taken: value, parentActive });
        return;
      }
      case 'elif': {
        const frame = frames.at(-1);
        if (!frame) throw new ShaderSourceError(`${where}: #elif without #if`);
        const value = !frame.taken && evaluate(argument, defines, where);
        frame.active = value;
        frame.taken ||= value;
        return;
      }
      case 'else': {
        const frame = frames.at(-1);
        if (!frame) throw new ShaderSourceError(`${where}: #else without #if`);
        frame.active = !frame.taken;
        frame.taken = true;
        return;
      }
      case 'endif':
        if (!frames.pop()) throw new ShaderSourceError(`${where}: #endif without #if`);
        return;
      default:
        throw new ShaderSourceError(`${where}: unknown directive #${keyword}`);
    }
  });
  if (frames.length) throw new ShaderSourceError(`${name}: #if without #endif`);
  return out;
}

function evaluate(expression: string, defines: Defines, where: string): boolean {
  const match = /^(!?)\s*(\w+)$/.exec(expression);
  if (!match) throw new ShaderSourceError(`${where}: #if takes NAME or !NAME, got "${expression}"`);
  const [, negate, key] = match;
  const value = defines[key!];
  if (value === undefined) throw new ShaderSourceError(`${where}: define ${key} is not set`);
  return negate ? !value : Boolean(value);
}
