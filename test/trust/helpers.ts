/**
 * Helpers of the trust tests: the CLI run as a child process and its one-line errors checked.
 * Model folders, snapshots and memory figures are in ./modelDir.ts (usable outside vitest).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { expect } from 'vitest';
import { BIN, ROOT } from './modelDir.ts';

export * from './modelDir.ts';

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stderr without the adapter's own notices (Dawn's limit warnings on lavapipe: the CLI silences them, except when its stderr is a socket, as Node's child processes have). */
  lines: string[];
}

export interface CliOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Node options before the script (e.g. --import a preload). */
  nodeArgs?: string[];
  /** Run through `bash -c` with this prefix before `exec node ...` (ulimit, traps). */
  shellPrefix?: string;
  timeoutMs?: number;
  /** Run as this user and group (the test process must be root). */
  uid?: number;
  gid?: number;
  /** Called once the process has started, with it (to signal it). */
  onSpawn?: (child: ChildProcess) => void;
}

/** Dawn's notices on some adapters; not ours. */
const ADAPTER_NOISE = /^Warning: max\w+ artificially reduced/;

function quote(arg: string): string {
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Runs `abliterate <args>` as a child process. */
export function runCli(args: readonly string[], options: CliOptions = {}): Promise<CliResult> {
  const argv = [...(options.nodeArgs ?? []), BIN, ...args];
  // ABLITERATE_DEBUG only when a test asks for it.
  const env: Record<string, string | undefined> = { ...process.env, ABLITERATE_DEBUG: undefined, ...options.env };
  for (const [key, value] of Object.entries(env)) if (value === undefined) delete env[key];
  const spawnOptions = { cwd: options.cwd ?? ROOT, env, ...(options.uid === undefined ? {} : { uid: options.uid, gid: options.gid ?? options.uid }) };
  const child = options.shellPrefix
    ? spawn('bash', ['-c', `${options.shellPrefix}; exec ${quote(process.execPath)} ${argv.map(quote).join(' ')}`], spawnOptions)
    : spawn(process.execPath, argv, spawnOptions);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  options.onSpawn?.(child);
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
  return new Promise((resolvePromise, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const lines = stderr.split('\n').filter((l) => l !== '' && !ADAPTER_NOISE.test(l));
      resolvePromise({ code, signal, stdout, stderr, lines });
    });
  });
}

/** The CLI failed with exactly this one-line message: exit code 1, no stack trace, nothing else but status lines. */
export function expectCliError(result: CliResult, message: string | RegExp): string {
  const errors = result.lines.filter((l) => l.startsWith('abliterate: '));
  const context = `exit ${result.code}${result.signal ? ` (${result.signal})` : ''}\nstderr:\n${result.stderr}\nstdout:\n${result.stdout}`;
  expect(result.code, context).toBe(1);
  expect(errors, context).toHaveLength(1);
  expect(result.lines.filter((l) => /^\s+at |Error:|node:internal/.test(l)), `a stack trace or raw error on stderr\n${context}`).toEqual([]);
  // Besides the message: only status lines (adapter, warnings).
  expect(result.lines.filter((l) => !l.startsWith('abliterate: ') && !/^(adapter: |warning: )/.test(l)), context).toEqual([]);
  const line = errors[0]!.slice('abliterate: '.length);
  if (typeof message === 'string') expect(line, context).toBe(message);
  else expect(line, context).toMatch(message);
  return line;
}
