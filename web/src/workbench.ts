/**
 * The page's state around the engine: one GPU device for the page's lifetime, at most one model
 * on it, and the last abliteration. Every step is the library's own (the same code as the CLI):
 * `LlamaModel.load`, `runAbliteration`, `exportModel`, `writeDirections`, `reportOf`.
 */
import { abliterationSettings, createBrowserGpu, cutParameters, detectHardening, exportModel, LlamaModel, MemorySink, reportOf, runAbliteration, writeDirections, type AbliterationReport, type CutParameters, type AbliterationResult, type DetectOptions, type FileFolder, type HardeningDetection, type Gpu, type ModelWriteTarget, type OptimizeSettings, type PromptSets, type RunCallbacks, type RunSettings, type SettingValues } from 'abliterate';

/** The settings the page's form gives, by the schema's keys; the others keep their defaults. */
export type PageSettings = Partial<SettingValues>;

/** What the page adds to the form's settings: the search (instead of the hand-tuned cut) and the subspace measurement. */
export interface RunExtras {
  optimize?: OptimizeSettings | undefined;
  subspaceRank?: number | undefined;
}

export interface Run {
  result: AbliterationResult;
  settings: RunSettings;
  /** The cut's parameters, as the CLI stores them in the exported shards' `__metadata__`. */
  parameters: CutParameters;
  /** Files of the picked folder the last export left out (weights in other formats). */
  skippedFiles?: { file: string; reason: string }[];
}

export class Workbench {
  private gpuPromise: Promise<Gpu> | undefined;
  private current: { model: LlamaModel; folder: FileFolder } | undefined;
  private lastRun: Run | undefined;
  /** Told what the user should know that does not stop the work (e.g. prompts cut to fit the context). */
  onWarning: ((message: string) => void) | undefined;
  /** True while the weights on the GPU carry a cut (a new run reloads them first). */
  private cut = false;

  /** The page's GPU device, opened on first use and reopened if it was lost. */
  async gpu(): Promise<Gpu> {
    if (this.gpuPromise) {
      const gpu = await this.gpuPromise.catch(() => undefined);
      if (gpu && this.alive(gpu)) return gpu;
      this.forgetModel();
    }
    this.gpuPromise = createBrowserGpu();
    this.gpuPromise.catch(() => (this.gpuPromise = undefined));
    return this.gpuPromise;
  }

  private alive(gpu: Gpu): boolean {
    try {
      gpu.assertAlive();
      return true;
    } catch {
      return false;
    }
  }

  /** The open GPU, if any, without opening one. */
  async openedGpu(): Promise<Gpu | undefined> {
    return this.gpuPromise?.catch(() => undefined);
  }

  get model(): LlamaModel | undefined {
    return this.current?.model;
  }

  get run(): Run | undefined {
    return this.lastRun;
  }

  /** Loads a model, closing the one before (its GPU memory is freed first). */
  async load(folder: FileFolder, onProgress?: (done: number, total: number) => void): Promise<LlamaModel> {
    this.close();
    const gpu = await this.gpu();
    const model = await LlamaModel.load(gpu, folder, { onProgress, onWarning: (message) => this.onWarning?.(message) });
    this.current = { model, folder };
    return model;
  }

  /** Frees the model's weights and everything the last run kept on the GPU. */
  close(): void {
    this.lastRun?.result.cut.release();
    this.lastRun = undefined;
    this.current?.model.dispose();
    this.current = undefined;
    this.cut = false;
  }

  private forgetModel(): void {
    this.lastRun = undefined;
    this.current = undefined;
    this.cut = false;
  }

  /**
   * Measure, select, evaluate, cut, evaluate. A model cut by an earlier run is reloaded from its
   * files first, so every run starts from the original weights bit for bit.
   */
  async abliterate(sets: PromptSets, page: PageSettings, callbacks: RunCallbacks & { onReload?: (done: number, total: number) => void }, extras: RunExtras = {}): Promise<Run> {
    if (!this.current) throw new Error('load a model first');
    if (this.cut) await this.load(this.current.folder, callbacks.onReload);
    this.lastRun?.result.cut.release();
    this.lastRun = undefined;
    const model = this.current!.model;
    const settings: RunSettings = { ...abliterationSettings(page), ...extras };
    let cutStarted = false;
    const onStage: RunCallbacks['onStage'] = (stage) => {
      if (stage === 'cut') cutStarted = true;
      callbacks.onStage?.(stage);
    };
    let result: AbliterationResult;
    try {
      result = await runAbliteration(model, sets, settings, { ...callbacks, onStage });
    } catch (error) {
      // A failed run undoes its cut by the inverse update (within a rounding step): reload next time.
      if (cutStarted) this.cut = true;
      throw error;
    }
    this.cut = true;
    const parameters = cutParameters(result, settings, this.current!.folder.name);
    this.lastRun = { result, settings, parameters };
    return this.lastRun;
  }

  /**
   * The library's hardening detection on the original weights: a model cut by a run is reloaded
   * first (the run is dropped). Its test cut is undone bit for bit before it returns.
   */
  async detect(sets: { harmful: readonly string[]; harmless: readonly string[]; testHarmful: readonly string[] }, options: DetectOptions & { onReload?: (done: number, total: number) => void }): Promise<HardeningDetection> {
    if (!this.current) throw new Error('load a model first');
    if (this.cut) await this.load(this.current.folder, options.onReload);
    this.lastRun?.result.cut.release();
    this.lastRun = undefined;
    return detectHardening(this.current!.model, sets, options);
  }

  private requireRun(): { model: LlamaModel; run: Run } {
    if (!this.current || !this.lastRun) throw new Error('run the abliteration first');
    return { model: this.current.model, run: this.lastRun };
  }

  /** Writes the cut model (original dtypes and shards, untouched tensors copied byte for byte). */
  async exportModel(target: ModelWriteTarget, onProgress?: (done: number, total: number) => void): Promise<number> {
    const { model, run } = this.requireRun();
    const start = performance.now();
    run.skippedFiles = (await exportModel(model, target, { parameters: run.parameters, onProgress })).skipped;
    const seconds = (performance.now() - start) / 1000;
    run.result.timings = { ...run.result.timings, export: seconds };
    return seconds;
  }

  report(adapter: string): AbliterationReport {
    const { model, run } = this.requireRun();
    return { ...reportOf(run.result, model, run.parameters, null, adapter, run.settings), skipped_files: run.skippedFiles ?? [] };
  }

  async directionsFile(): Promise<Blob> {
    const { run } = this.requireRun();
    const sink = new MemorySink('refusal_direction.safetensors');
    await writeDirections(sink, run.result.measurement, run.result.point);
    return sink.blob();
  }
}
