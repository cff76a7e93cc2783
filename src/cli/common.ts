import { SingleBar, Presets } from 'cli-progress';
import { type AdapterChoice, createNodeGpu, type Gpu, LlamaModel, type ModelFiles, NodeFolder, openModelFiles } from '../index.ts';

/** An error whose message is all a CLI user needs: printed as one line, exit code 1. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface GpuOptions {
  adapter?: AdapterChoice;
}

/** Writes a status line to stderr (stdout is kept for results). */
export function status(message: string): void {
  process.stderr.write(`${message}\n`);
}

export async function openGpu(options: GpuOptions): Promise<Gpu> {
  const gpu = await createNodeGpu({ adapter: options.adapter ?? 'auto' });
  status(`adapter: ${gpu.adapter.name}${gpu.adapter.software ? ' (software Vulkan driver)' : ''}`);
  return gpu;
}

/** A progress bar on stderr when it is a terminal; silent otherwise. */
export interface Progress {
  update(done: number, total?: number): void;
  stop(): void;
}

export function progressBar(label: string, total: number): Progress {
  if (!process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new SingleBar({ format: `${label.padEnd(16)} {bar} {value}/{total} {duration_formatted}`, stream: process.stderr, hideCursor: true }, Presets.shades_classic);
  bar.start(total, 0);
  return {
    update: (done, newTotal) => {
      if (newTotal !== undefined) bar.setTotal(newTotal);
      bar.update(done);
    },
    stop: () => bar.stop(),
  };
}

/** Runs work that reports progress with a progress bar labelled `label`. */
export function bar<T>(label: string, work: (update: (done: number, total: number) => void) => Promise<T>): Promise<T> {
  const progress = progressBar(label, 1);
  return work((done, total) => progress.update(done, total)).finally(() => progress.stop());
}

/** Reads and checks a model folder (config, tokenizer, weight headers) before any GPU work, so a bad folder fails at once. */
export function checkModelFolder(dir: string): Promise<ModelFiles> {
  // Named as the user gave it: messages and reports show that path, not a resolved one.
  return openModelFiles(new NodeFolder(dir));
}

export async function loadModel(gpu: Gpu, source: string | ModelFiles): Promise<LlamaModel> {
  const files = typeof source === 'string' ? await checkModelFolder(source) : source;
  const bar = progressBar('loading weights', 1);
  try {
    return await LlamaModel.load(gpu, files, {
      onProgress: (done, total) => bar.update(done, total),
      onWarning: (m) => status(`warning: ${m}`),
      // Qwen3's chat templates think only when asked: off unless ABLITERATE_THINKING=1.
      thinking: process.env.ABLITERATE_THINKING === '1',
    });
  } finally {
    bar.stop();
  }
}

/** Runs an action with a GPU and a loaded model, and always releases both. */
export async function withModel<T>(dir: string, options: GpuOptions, action: (model: LlamaModel, gpu: Gpu) => Promise<T>): Promise<T> {
  const files = await checkModelFolder(dir);
  const gpu = await openGpu(options);
  try {
    const model = await loadModel(gpu, files);
    try {
      return await action(model, gpu);
    } finally {
      model.dispose();
    }
  } finally {
    gpu.dispose();
  }
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}
