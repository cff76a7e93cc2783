/**
 * Bounded chat-template rendering. A chat template is code from the model folder: a huge loop,
 * nested loops, a string doubled in a loop or a list grown without end would otherwise take minutes
 * and gigabytes before V8 gives up. @huggingface/jinja renders synchronously and offers no hook,
 * so while `renderBounded` runs, its interpreter's `evaluate` (every node of the template) counts
 * steps and measures each value it produces, and the sizes asked of range() and the widths asked
 * of padding filters are checked before they are used. Outside `renderBounded` the interpreter is unchanged. This works
 * the same in Node and in the browser (no worker, no timer).
 */
import { Interpreter, type Template } from '@huggingface/jinja';

export class TemplateLimitError extends Error {
  override name = 'TemplateLimitError';
}

export interface TemplateLimits {
  /** Template nodes evaluated, loop bodies counted at every pass. */
  maxSteps: number;
  /** Wall-clock time, checked every 1024 steps: a safety net for steps that are slow on their own. */
  maxMilliseconds: number;
  /** Characters of any string the template builds, the output included. */
  maxChars: number;
  /** Items of any list the template builds (range() included). */
  maxItems: number;
  /** Width arguments of filters that pad (indent, tojson's indent). */
  maxWidth: number;
}

/**
 * Generous for real templates (a few thousand steps for a long conversation); the interpreter takes
 * 5–25 µs a step on a busy 2-core machine, so the step limit is reached within a few seconds.
 */
export const DEFAULT_TEMPLATE_LIMITS: TemplateLimits = { maxSteps: 200_000, maxMilliseconds: 5000, maxChars: 16 * 2 ** 20, maxItems: 100_000, maxWidth: 1000 };

let active: { limits: TemplateLimits; steps: number; start: number } | undefined;

interface Evaluable {
  evaluate(statement: unknown, environment: unknown): { value?: unknown };
  applyFilter(operand: unknown, filterNode: FilterNode, environment: unknown): unknown;
  evaluateArguments(args: unknown[], environment: unknown): [{ value?: unknown }[], Map<string, { value?: unknown }>];
}

interface FilterNode {
  type: string;
  callee?: { type: string; value?: string };
  args?: unknown[];
}

const PADDING_FILTERS = new Set(['indent', 'tojson']);

function install(): void {
  const prototype = Interpreter.prototype as unknown as Evaluable;
  const evaluate = prototype.evaluate;
  const applyFilter = prototype.applyFilter;
  prototype.evaluate = function (this: Evaluable, statement, environment) {
    if (!active) return evaluate.call(this, statement, environment);
    const { limits } = active;
    if (++active.steps > limits.maxSteps) throw new TemplateLimitError(`the chat template takes more than ${limits.maxSteps} steps to render (a loop that runs too long?)`);
    if (active.steps % 1024 === 0 && performance.now() - active.start > limits.maxMilliseconds) {
      throw new TemplateLimitError(`the chat template takes more than ${limits.maxMilliseconds / 1000} s to render`);
    }
    const node = statement as { type?: string; callee?: { type: string; value?: string }; args?: unknown[] };
    // range() builds its whole list at once: count it first (its arguments are evaluated twice, as numbers have no side effects).
    if (node?.type === 'CallExpression' && node.callee?.type === 'Identifier' && node.callee.value === 'range') {
      const [args] = this.evaluateArguments(node.args ?? [], environment);
      checkRange(args.map((a) => a.value), limits.maxItems);
    }
    const result = evaluate.call(this, statement, environment);
    const value = result?.value;
    if (typeof value === 'string' && value.length > limits.maxChars) throw new TemplateLimitError(`the chat template builds a text of more than ${limits.maxChars} characters`);
    if (Array.isArray(value) && value.length > limits.maxItems) throw new TemplateLimitError(`the chat template builds a list of more than ${limits.maxItems} items`);
    return result;
  };
  prototype.applyFilter = function (this: Evaluable, operand, filterNode, environment) {
    if (active && filterNode.type === 'CallExpression' && PADDING_FILTERS.has(filterNode.callee?.value ?? '')) {
      const [args, kwargs] = this.evaluateArguments(filterNode.args ?? [], environment);
      for (const arg of [...args, ...kwargs.values()]) {
        if (typeof arg.value === 'number' && arg.value > active.limits.maxWidth) {
          throw new TemplateLimitError(`the chat template asks the ${filterNode.callee!.value} filter for a width of ${arg.value}, more than ${active.limits.maxWidth}`);
        }
      }
    }
    return applyFilter.call(this, operand, filterNode, environment);
  };
}
install();

/** Refuses a range(start, stop, step) call (Python's arguments) of more numbers than `maxItems`, before it builds them. */
function checkRange(args: unknown[], maxItems: number): void {
  if (!args.every((a) => typeof a === 'number')) return;
  const [start, stop, step = 1] = (args.length === 1 ? [0, args[0]] : args) as number[];
  if (start === undefined || stop === undefined || step === 0) return;
  const count = Math.max(0, Math.ceil((stop - start) / step));
  if (!(count <= maxItems)) throw new TemplateLimitError(`the chat template asks range() for ${count} numbers, more than ${maxItems}`);
}

/** Renders `template` with `variables`, failing with a TemplateLimitError as soon as it goes past a limit. */
export function renderBounded(template: Template, variables: Record<string, unknown>, limits: TemplateLimits = DEFAULT_TEMPLATE_LIMITS): string {
  // Rendering is synchronous: no other render can start before this one ends.
  active = { limits, steps: 0, start: performance.now() };
  try {
    return template.render(variables);
  } finally {
    active = undefined;
  }
}
