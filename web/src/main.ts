/**
 * The page: pick a local model folder (or the bundled one), run measure → select → evaluate → cut
 * → evaluate on WebGPU with the library's own code, look at the results, download the cut model.
 */
import { BlobSource, DIRECTIONS_FILE, type HardeningDetection, type DetectStage, FileMissingError, formatBytes, MemoryTarget, optimizeSettingsFrom, parseSettingText, readPrompts, REPORT_FILE, type FileFolder, type Gpu, type LlamaModel, type PromptSets, type Stage, type EvaluationStep } from 'abliterate';
import { bundledManifest, bundledModel, bundledPromptFile, directoryPicker, fetchBundled, folderFromDrop, folderFromHandle, folderFromInput, type BundledManifest } from './folders.ts';
import { hasSubspace, renderGenerations, renderHistogram, renderScoreChart, renderSubspace, renderTable, selectionMetricKey, type ScoreKey } from './results.ts';
import { abortableTarget, createSubfolder, DirectoryTarget, DownloadLinks, tarBlob } from './saving.ts';
import { drawSearch, renderTrialTable, trialSettings, type SearchState } from './search.ts';
import { readSearchForm, readSettingsForm, renderSearchForm, renderSettingsForm } from './settingsForm.ts';
import { Workbench, type PageSettings, type Run, type RunExtras } from './workbench.ts';

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element as T;
}

const ui = {
  adapter: $('adapter'),
  webgpuMissing: $('webgpu-missing'),
  message: $('message'),
  dropZone: $('drop-zone'),
  pickFolder: $<HTMLButtonElement>('pick-folder'),
  folderInput: $<HTMLInputElement>('folder-input'),
  folderInputLabel: $('folder-input-label'),
  loadBundled: $<HTMLButtonElement>('load-bundled'),
  closeModel: $<HTMLButtonElement>('close-model'),
  bundledNote: $('bundled-note'),
  loadProgress: $('load-progress'),
  loadProgressLabel: $('load-progress-label'),
  loadProgressBar: $<HTMLProgressElement>('load-progress-bar'),
  modelCard: $('model-card'),
  summary: $('model-summary'),
  promptsOwn: $<HTMLInputElement>('prompts-own'),
  promptsBundled: $<HTMLInputElement>('prompts-bundled'),
  ownPrompts: $('own-prompts'),
  fileHarmful: $<HTMLInputElement>('file-harmful'),
  fileHarmless: $<HTMLInputElement>('file-harmless'),
  fileEvalHarmful: $<HTMLInputElement>('file-eval-harmful'),
  fileEvalHarmless: $<HTMLInputElement>('file-eval-harmless'),
  promptColumn: $<HTMLInputElement>('prompt-column'),
  settings: $<HTMLFormElement>('settings'),
  layer: $<HTMLSelectElement>('setting-layer'),
  run: $<HTMLButtonElement>('run'),
  cancel: $<HTMLButtonElement>('cancel'),
  runWhy: $('run-why'),
  runNote: $('run-note'),
  runStatus: $('run-status'),
  runProgressDetail: $('run-progress-detail'),
  resultsHeading: $('results-heading'),
  promptsCard: $('prompts-card'),
  runProgress: $('run-progress'),
  runProgressLabel: $('run-progress-label'),
  runProgressBar: $<HTMLProgressElement>('run-progress-bar'),
  stages: $<HTMLOListElement>('stages'),
  results: $('results'),
  resultSummary: $('result-summary'),
  resultBody: $<HTMLTableElement>('result-table').tBodies[0]!,
  scoreMetric: $<HTMLSelectElement>('score-metric'),
  scoreChart: $('score-chart'),
  histogramCaption: $('histogram-caption'),
  histogram: $('histogram'),
  generations: $('generations'),
  saveMode: $<HTMLSelectElement>('save-mode'),
  saveModel: $<HTMLButtonElement>('save-model'),
  saveReport: $<HTMLButtonElement>('save-report'),
  saveDirection: $<HTMLButtonElement>('save-direction'),
  exportProgress: $('export-progress'),
  exportProgressBar: $<HTMLProgressElement>('export-progress-bar'),
  downloadLinks: $<HTMLUListElement>('download-links'),
  gpuMemory: $<HTMLOutputElement>('gpu-memory'),
  subspaceRank: $<HTMLInputElement>('setting-subspace-rank'),
  subspace: $('subspace'),
  rankChart: $('rank-chart'),
  spectrumChart: $('spectrum-chart'),
  spectrumCaption: $('spectrum-caption'),
  searchCard: $('search-card'),
  searchSettings: $<HTMLFormElement>('search-settings'),
  searchRun: $<HTMLButtonElement>('search-run'),
  searchCancel: $<HTMLButtonElement>('search-cancel'),
  searchStatus: $('search-status'),
  searchResults: $('search-results'),
  searchChart: $('search-chart'),
  trialBody: $<HTMLTableElement>('trial-table').tBodies[0]!,
  detectCard: $('detect-card'),
  detectRun: $<HTMLButtonElement>('detect-run'),
  detectCancel: $<HTMLButtonElement>('detect-cancel'),
  detectStatus: $('detect-status'),
  detectResult: $('detect-result'),
  detectVerdict: $('detect-verdict'),
  detectEvidence: $<HTMLTableElement>('detect-evidence').tBodies[0]!,
  detectNext: $('detect-next'),
};
renderSettingsForm(ui.settings);
renderSearchForm(ui.searchSettings);

const workbench = new Workbench();
const downloads = new DownloadLinks();
let gpu: Gpu | undefined;
let manifest: BundledManifest | undefined;
let busy: 'loading' | 'running' | 'exporting' | undefined;
let controller: AbortController | undefined;
/** The last search's trials (kept when a run is cancelled mid-search: its trials can still be used). */
let search: SearchState | undefined;

// ---------------------------------------------------------------------------------------------
// Messages

type MessageKind = 'error' | 'info' | 'success';

function showMessage(kind: MessageKind, title: string, detail?: string): void {
  ui.message.hidden = false;
  ui.message.className = `banner ${kind}`;
  ui.message.dataset.kind = kind;
  const strong = document.createElement('strong');
  strong.textContent = title;
  ui.message.replaceChildren(strong);
  if (detail) {
    const p = document.createElement('p');
    p.textContent = detail;
    ui.message.append(p);
  }
}

function clearMessage(): void {
  ui.message.hidden = true;
  ui.message.replaceChildren();
  delete ui.message.dataset.kind;
}

function isAbort(error: unknown): boolean {
  return error instanceof DOMException ? error.name === 'AbortError' : (error as Error | undefined)?.name === 'AbortError';
}

/** A sentence a user can act on, from any error the engine or the browser throws. */
function describeError(error: unknown): string {
  if (error instanceof FileMissingError && error.file === 'config.json') {
    return `${error.folder}: there is no config.json, so this is not a Hugging Face model folder. Pick the folder that holds config.json, tokenizer.json and the *.safetensors weights.`;
  }
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}

/** `cancelled` is what a cancel means at this point ("Cancelled during evaluate before; nothing was changed."). */
function reportError(title: string, error: unknown, cancelled = 'Cancelled; nothing was changed.'): void {
  if (isAbort(error)) {
    showMessage('info', cancelled);
    return;
  }
  console.error(error);
  showMessage('error', title, describeError(error));
}

// ---------------------------------------------------------------------------------------------
// State of the controls

function setBusy(state: typeof busy): void {
  busy = state;
  document.body.dataset.busy = state ?? '';
  const noGpu = !gpu;
  const hasModel = !!workbench.model;
  ui.pickFolder.disabled = !!state || noGpu;
  ui.folderInput.disabled = !!state || noGpu;
  ui.loadBundled.disabled = !!state || noGpu || !manifest || !!manifest.model.missing;
  ui.closeModel.disabled = !!state || !hasModel;
  ui.run.disabled = !!state || !hasModel;
  ui.searchRun.disabled = !!state || !hasModel;
  ui.detectRun.disabled = !!state || !hasModel;
  // The disabled Run button says why (aria-describedby and title).
  const why = noGpu
    ? 'WebGPU is not available, so nothing can run.'
    : state === 'loading'
      ? 'Waiting for the model to load.'
      : state === 'running'
        ? 'A run is in progress: Cancel stops it.'
        : state === 'exporting'
          ? 'The model is being saved.'
          : !hasModel
            ? 'Pick a model folder or try the bundled model first (step 1).'
            : '';
  ui.runWhy.textContent = why;
  ui.runWhy.hidden = !why;
  if (why) ui.run.title = why;
  else ui.run.removeAttribute('title');
  for (const cancel of [ui.cancel, ui.searchCancel, ui.detectCancel]) {
    cancel.disabled = state !== 'running' && state !== 'exporting';
    cancel.textContent = 'Cancel';
    cancel.removeAttribute('aria-disabled');
  }
  // Settings and prompt choices stay as they were for the whole run.
  for (const control of [...ui.settings.elements, ...ui.searchSettings.elements, ...ui.promptsCard.querySelectorAll('input')]) (control as HTMLInputElement).disabled = state === 'running';
  if (search) renderSearch();
  for (const button of [ui.saveModel, ui.saveReport, ui.saveDirection]) button.disabled = !!state || !workbench.run;
  ui.dropZone.classList.toggle('disabled', !!state || noGpu);
  updateMemory();
}

function updateMemory(): void {
  const bytes = gpu?.allocatedBytes ?? 0;
  const buffers = gpu?.bufferCount ?? 0;
  ui.gpuMemory.dataset.bytes = String(bytes);
  ui.gpuMemory.dataset.buffers = String(buffers);
  ui.gpuMemory.textContent = buffers ? `GPU memory: ${formatBytes(bytes)} in ${buffers} buffers` : 'GPU memory: none in use';
}

// ---------------------------------------------------------------------------------------------
// The GPU

async function openGpu(): Promise<void> {
  if (typeof navigator === 'undefined' || !('gpu' in navigator)) {
    showNoWebGpu('This browser has no WebGPU (navigator.gpu is missing).');
    return;
  }
  try {
    gpu = await workbench.gpu();
    const a = gpu.adapter;
    const features = Object.entries(gpu.features)
      .filter(([, on]) => on)
      .map(([name]) => name)
      .join(', ');
    ui.adapter.textContent = `WebGPU adapter: ${a.name}${a.software ? ' (software, CPU)' : ''} · ${features || 'no optional features'} · largest binding ${formatBytes(gpu.limits.maxStorageBufferBindingSize)}`;
    ui.adapter.dataset.adapter = a.name;
    if (a.software) {
      ui.runNote.hidden = false;
      ui.runNote.textContent =
        'This adapter is software (the CPU): expect minutes for the bundled model with 32 prompts per set, and much longer for a real model. The progress shows an estimate as it goes.';
    }
    ui.adapter.dataset.state = 'ready';
  } catch (error) {
    showNoWebGpu(describeError(error));
  }
}

function showNoWebGpu(reason: string): void {
  ui.adapter.textContent = 'No WebGPU adapter';
  ui.adapter.dataset.state = 'missing';
  ui.webgpuMissing.hidden = false;
  ui.webgpuMissing.replaceChildren();
  const title = document.createElement('strong');
  title.textContent = 'WebGPU is not available, so this page cannot run a model.';
  const detail = document.createElement('p');
  detail.textContent = `${reason} Use a recent Chrome or Edge (or Firefox with WebGPU enabled) on a machine whose GPU driver is not blocklisted; on Linux, Chrome may need chrome://flags/#enable-unsafe-webgpu and #enable-vulkan.`;
  ui.webgpuMissing.append(title, detail);
}

// ---------------------------------------------------------------------------------------------
// Loading a model

function summaryRows(model: LlamaModel, folder: FileFolder): [string, string][] {
  const c = model.config;
  const dtypes = new Map<string, number>();
  for (const info of model.tensors.allTensors.values()) dtypes.set(info.dtype, (dtypes.get(info.dtype) ?? 0) + 1);
  const tokenizer = (() => {
    try {
      return model.tokenizer;
    } catch {
      return undefined;
    }
  })();
  return [
    ['folder', folder.name],
    ['architecture', `${c.architecture}${c.tieWordEmbeddings ? ', tied embeddings' : ''}${c.attentionBias ? ', q/k/v biases' : ''}`],
    ['layers', String(c.numLayers)],
    ['hidden size', `${c.hiddenSize} (MLP ${c.intermediateSize})`],
    ['attention heads', `${c.numHeads} query, ${c.numKvHeads} key/value, ${c.headDim} per head`],
    ['vocabulary', String(c.vocabSize)],
    ['weights', `${formatBytes(model.weightBytes)} in ${model.tensors.files.length} file${model.tensors.files.length === 1 ? '' : 's'}; ${[...dtypes].map(([d, n]) => `${n} ${d}`).join(', ')}`],
    ['tokenizer', tokenizer ? `chat template, ${tokenizer.stopTokenIds.size} stop token${tokenizer.stopTokenIds.size === 1 ? '' : 's'}` : 'missing (tokenizer.json): the model cannot be abliterated'],
  ];
}

function showSummary(model: LlamaModel, folder: FileFolder): void {
  ui.summary.replaceChildren(
    ...summaryRows(model, folder).flatMap(([term, value]) => {
      const dt = document.createElement('dt');
      dt.textContent = term;
      const dd = document.createElement('dd');
      dd.textContent = value;
      dd.dataset.field = term;
      return [dt, dd];
    }),
  );
  ui.summary.hidden = false;
  const previous = ui.layer.value;
  ui.layer.replaceChildren(new Option('auto (by score)', 'auto'), new Option('auto (ablate the best 4)', 'ablation'));
  for (let point = 0; point <= model.config.numLayers; point++) {
    ui.layer.append(new Option(point === 0 ? '0 (embedding)' : `${point} (output of layer ${point - 1})`, String(point)));
  }
  ui.layer.value = [...ui.layer.options].some((o) => o.value === previous) ? previous : 'auto';
  // The subspace's eigendecomposition (hidden × hidden per point, on the CPU) is quick up to about 1024.
  ui.subspaceRank.value = model.config.hiddenSize <= 1024 ? '4' : '0';
}

function clearResults(): void {
  downloads.revokeAll();
  search = undefined;
  ui.searchResults.hidden = true;
  ui.searchCard.dataset.state = 'empty';
  ui.searchStatus.textContent = '';
  ui.results.hidden = true;
  ui.results.dataset.state = 'empty';
  ui.downloadLinks.replaceChildren();
  ui.runProgress.hidden = true;
}

function clearDetect(): void {
  ui.detectResult.hidden = true;
  ui.detectCard.dataset.state = 'empty';
  ui.detectStatus.textContent = '';
}

function closeModel(): void {
  workbench.close();
  clearResults();
  clearDetect();
  ui.summary.hidden = true;
  ui.summary.replaceChildren();
  ui.modelCard.dataset.state = 'empty';
  clearMessage();
  setBusy(undefined);
}

async function loadFolder(source: () => Promise<FileFolder>, what: string): Promise<void> {
  if (busy) return;
  clearMessage();
  clearResults();
  clearDetect();
  ui.summary.hidden = true;
  workbench.close();
  ui.modelCard.dataset.state = 'loading';
  ui.modelCard.dataset.attempt = String(Number(ui.modelCard.dataset.attempt ?? 0) + 1);
  setBusy('loading');
  ui.loadProgress.hidden = false;
  ui.loadProgressBar.value = 0;
  ui.loadProgressLabel.textContent = `Reading ${what}`;
  try {
    const folder = await source();
    ui.loadProgressLabel.textContent = `Loading ${folder.name} onto the GPU`;
    const model = await workbench.load(folder, (done, total) => {
      ui.loadProgressBar.max = total;
      ui.loadProgressBar.value = done;
      updateMemory();
    });
    showSummary(model, folder);
    ui.modelCard.dataset.state = 'loaded';
  } catch (error) {
    workbench.close();
    ui.modelCard.dataset.state = 'error';
    reportError('Could not load the model', error);
  } finally {
    ui.loadProgress.hidden = true;
    setBusy(undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Prompts and settings

/** The subspace rank: not a library setting (measure's --top-k is the CLI's), checked the same way. */
const SUBSPACE_RANK = { key: 'subspace-rank', group: 'measure', kind: 'integer', label: 'Subspace rank K', help: 'top-K subspace measured at every point (0: none)', min: 0, max: 64 } as const;

function readSettings(): { page: PageSettings; limit: number; extras: RunExtras } {
  const { limit = 0, ...form } = readSettingsForm(ui.settings);
  let rank: number;
  try {
    rank = parseSettingText(SUBSPACE_RANK, ui.subspaceRank.value, SUBSPACE_RANK.label) as number;
  } catch (error) {
    ui.subspaceRank.focus();
    throw error;
  }
  return {
    extras: rank > 0 ? { subspaceRank: rank } : {},
    page: {
      ...form,
      point: ui.layer.value === 'auto' || ui.layer.value === 'ablation' ? undefined : Number(ui.layer.value),
      select: ui.layer.value === 'ablation' ? 'ablation' : 'score',
    },
    limit,
  };
}

async function promptFile(input: HTMLInputElement, bundled: string | undefined, label: string): Promise<string[]> {
  const column = ui.promptColumn.value.trim() || undefined;
  const file = ui.promptsOwn.checked ? input.files?.[0] : undefined;
  if (file) return readPrompts(new BlobSource(file, file.name), { column });
  if (!bundled) throw new Error(`choose a file of ${label}`);
  if (!manifest?.data.files.some((f) => f.name === bundled)) throw new Error(`the bundled prompt set ${bundled} is not available from this server; choose your own file of ${label}`);
  return readPrompts(await bundledPromptFile(bundled));
}

/**
 * The same sets as the CLI's defaults (data/*.txt), or the user's files; `limit` cuts each set as
 * --limit does. With `validation`, the bundled validation split too, for the search.
 */
async function loadPromptSets(limit: number, validation = false): Promise<PromptSets> {
  const own = ui.promptsOwn.checked;
  const cut = (prompts: string[]) => (limit > 0 ? prompts.slice(0, limit) : prompts);
  const sets: PromptSets = {
    harmful: cut(await promptFile(ui.fileHarmful, own ? undefined : 'harmful_train.txt', 'harmful prompts to measure')),
    harmless: cut(await promptFile(ui.fileHarmless, own ? undefined : 'harmless_train.txt', 'harmless prompts to measure')),
    evalHarmful: cut(await promptFile(ui.fileEvalHarmful, 'harmful_test.txt', 'harmful prompts to evaluate')),
    evalHarmless: cut(await promptFile(ui.fileEvalHarmless, 'harmless_test.txt', 'harmless prompts to evaluate')),
  };
  // The search scores its trials on the validation split (the CLI's default), not on the held-out test split it is evaluated on.
  for (const [key, file] of [['validationHarmful', 'harmful_val.txt'], ['validationHarmless', 'harmless_val.txt']] as const) {
    if (validation && manifest?.data.files.some((f) => f.name === file)) sets[key] = cut(await readPrompts(await bundledPromptFile(file)));
  }
  // Perplexity on the bundled plain text, read whole as the CLI does.
  if (manifest?.data.files.some((f) => f.name === 'plain_text.txt')) sets.plainText = await (await fetchBundled('data/plain_text.txt')).text();
  return sets;
}

// ---------------------------------------------------------------------------------------------
// Running

/** The stages of a hand-tuned run; a search has 'search' in place of 'select'. */
const STAGES: Stage[] = ['measure', 'select', 'evaluate before', 'cut', 'evaluate after'];
const SEARCH_STAGES: Stage[] = ['measure', 'search', 'evaluate before', 'cut', 'evaluate after'];
let stages = STAGES;
const STAGE_LABELS: Record<Stage, string> = {
  measure: 'Measuring the residual stream',
  select: 'Choosing the layer',
  search: 'Searching for the cut',
  'evaluate before': 'Evaluating the original model',
  cut: 'Cutting the direction from the weights',
  'evaluate after': 'Evaluating the abliterated model',
};

function renderStages(active: Stage | undefined, timings: Record<string, number>): void {
  const activeIndex = active ? stages.indexOf(active) : stages.length;
  ui.stages.replaceChildren(
    ...stages.map((stage, i) => {
      const li = document.createElement('li');
      const state = i < activeIndex ? 'done' : i === activeIndex ? 'active' : 'pending';
      li.dataset.state = state;
      li.dataset.stage = stage;
      const seconds = timings[stage];
      li.textContent = `${stage}${state === 'done' && seconds !== undefined ? ` · ${seconds.toFixed(1)} s` : ''}`;
      return li;
    }),
  );
}

const STEP_UNITS: Record<EvaluationStep, string> = {
  'harmful refusals': 'answers to harmful prompts',
  'harmless refusals': 'answers to harmless prompts',
  'borderline refusals': 'answers to borderline prompts',
  'first-token KL': 'prompts compared with the original',
  perplexity: 'windows of plain text',
};

function seconds(value: number): string {
  return value < 90 ? `${Math.round(value)} s` : `${Math.round(value / 60)} min`;
}

/** Progress of one stage or sub-step: "n of N", elapsed time, and an estimate once something is done. */
class StepProgress {
  private start = performance.now();
  private key = '';

  constructor(private readonly log: string[]) {}

  update(stage: Stage, step: string | undefined, unit: string, done: number, total: number): void {
    const key = `${stage}/${step ?? ''}`;
    if (key !== this.key) {
      this.key = key;
      this.start = performance.now();
      this.log.push(key);
      ui.runProgress.dataset.steps = this.log.join(',');
      // Announced once per sub-step, not on every tick.
      ui.runStatus.textContent = `${STAGE_LABELS[stage]}${step ? `: ${step}` : ''}, ${total} ${unit}.`;
    }
    const elapsed = (performance.now() - this.start) / 1000;
    const left = done > 0 && done < total ? (elapsed / done) * (total - done) : undefined;
    ui.runProgressLabel.textContent = `${STAGE_LABELS[stage]}${step ? ` · ${step}` : ''}`;
    ui.runProgressBar.max = Math.max(1, total);
    ui.runProgressBar.value = done;
    ui.runProgressDetail.textContent = `${done} of ${total} ${unit} · ${seconds(elapsed)} elapsed${left !== undefined ? ` · about ${seconds(left)} left` : ''}`;
    ui.runProgress.dataset.step = step ?? '';
    ui.runProgress.dataset.done = String(done);
    ui.runProgress.dataset.total = String(total);
  }
}

/** A hand-tuned run (step 3), a new search (step 4), or one trial of the last search evaluated and used. */
type RunKind = { kind: 'manual' } | { kind: 'search' } | { kind: 'trial'; trial: number };

async function runAbliteration(what: RunKind = { kind: 'manual' }): Promise<void> {
  if (busy || !workbench.model) return;
  if (
    what.kind !== 'trial' &&
    workbench.run &&
    !window.confirm('Start a new run? The results shown and the cut model are replaced: the model is reloaded from its files first. Save anything you want to keep before.')
  ) {
    return;
  }
  clearMessage();
  let settings: ReturnType<typeof readSettings>;
  let extras: RunExtras;
  try {
    if (what.kind === 'trial') {
      // The search's own settings, whatever the form says now: the trial is measured as it was.
      if (!search) return;
      settings = { page: search.page, limit: search.limit, extras: search.extras };
      extras = { ...search.extras, optimize: trialSettings(search, what.trial) };
    } else {
      settings = readSettings();
      extras = what.kind === 'search' ? { ...settings.extras, optimize: optimizeSettingsFrom(readSearchForm(ui.searchSettings)) } : settings.extras;
    }
  } catch (error) {
    showMessage('error', 'Check the settings', describeError(error));
    return;
  }
  const kept = what.kind === 'trial' ? search : undefined;
  clearResults();
  search = kept;
  stages = extras.optimize ? SEARCH_STAGES : STAGES;
  controller = new AbortController();
  const { signal } = controller;
  setBusy('running');
  ui.runProgress.hidden = false;
  ui.runProgressBar.value = 0;
  ui.runProgressLabel.textContent = 'Reading the prompt sets';
  ui.runProgressDetail.textContent = '';
  ui.runStatus.textContent = 'Run started: reading the prompt sets.';
  // Focus goes to the control that matters now.
  (extras.optimize ? ui.searchCancel : ui.cancel).focus();
  const timings: Record<string, number> = {};
  let stageStart = performance.now();
  let current: Stage | undefined;
  const progress = new StepProgress([]);
  renderStages('measure', timings);
  let finished = false;
  try {
    const sets = await loadPromptSets(settings.limit, !!extras.optimize);
    signal.throwIfAborted();
    if (what.kind === 'search') {
      search = {
        optimize: extras.optimize!,
        page: settings.page,
        limit: settings.limit,
        extras: settings.extras,
        trials: [],
        original: undefined,
        harmful: sets.validationHarmful?.length ?? Math.min(32, sets.evalHarmful.length),
        harmless: sets.validationHarmless?.length ?? Math.min(32, sets.evalHarmless.length),
        shown: undefined,
      };
      ui.searchCard.dataset.state = 'searching';
      ui.searchStatus.textContent = `Measuring, then ${search.optimize.trials} trials on ${search.harmful} harmful and ${search.harmless} harmless validation prompts.`;
    } else if (what.kind === 'trial') {
      ui.searchStatus.textContent = `Evaluating trial ${what.trial} on the test prompts…`;
    }
    const trialsStart = performance.now();
    const run = await workbench.abliterate(
      sets,
      settings.page,
      {
        signal,
        onReload: (done, total) => {
          ui.runProgressLabel.textContent = 'Reloading the original weights';
          ui.runProgressBar.max = total;
          ui.runProgressBar.value = done;
        },
        onStage: (stage) => {
          if (current) timings[current] = (performance.now() - stageStart) / 1000;
          current = stage;
          stageStart = performance.now();
          ui.runProgressLabel.textContent = STAGE_LABELS[stage];
          ui.runProgressDetail.textContent = '';
          ui.runStatus.textContent = `${STAGE_LABELS[stage]}.`;
          ui.runProgressBar.removeAttribute('value');
          renderStages(stage, timings);
          updateMemory();
        },
        onProgress: (stage, done, total) => {
          // The evaluation stages report their sub-steps through onStep.
          if (stage !== 'evaluate before' && stage !== 'evaluate after') progress.update(stage, undefined, stage === 'select' ? 'candidate points' : 'prompts', done, total);
          updateMemory();
        },
        onStep: (stage, step, done, total) => progress.update(stage, step, STEP_UNITS[step], done, total),
        // Only a new search reports trials; a picked trial's run has them all already.
        onTrial:
          what.kind === 'search'
            ? (trial, original) => {
                search!.trials.push(trial);
                search!.original = original;
                const total = search!.optimize.trials;
                progress.update('search', undefined, 'trials', search!.trials.length, total);
                const elapsed = (performance.now() - trialsStart) / 1000;
                ui.searchStatus.textContent = `Trial ${trial.number + 1} of ${total}: ${trial.refusals}/${search!.harmful} harmful refused, KL ${trial.kl.toFixed(3)} (${trial.seconds.toFixed(1)} s; ${seconds(elapsed)} so far).`;
                renderSearch();
              }
            : undefined,
      },
      extras,
    );
    renderStages(undefined, run.result.timings);
    const total = Object.values(run.result.timings).reduce((a, b) => a + b, 0);
    ui.runProgressLabel.textContent = `Done in ${total.toFixed(1)} s`;
    ui.runProgressDetail.textContent = '';
    ui.runStatus.textContent = `Run finished in ${seconds(total)}; the results follow.`;
    ui.runProgressBar.max = 1;
    ui.runProgressBar.value = 1;
    if (search && run.result.search) {
      search.original = run.result.search.original;
      search.shown = run.result.search.exported.number ?? undefined;
      const chosen = run.result.search.chosen?.number;
      ui.searchStatus.textContent =
        what.kind === 'trial'
          ? `Trial ${what.trial} evaluated and cut${what.trial === chosen ? " (the rule's choice)" : ''}: its results and answers are below; Save saves it.`
          : `${search.trials.length} trials in ${seconds(run.result.search.seconds)} (${run.result.search.secondsPerTrial?.toFixed(1) ?? '–'} s per trial); ${run.result.search.front.length} on the front. The rule chose trial ${chosen ?? '–'}, evaluated below. Use another trial to compare its answers.`;
      ui.searchCard.dataset.state = 'done';
    }
    showResults(run);
    finished = true;
  } catch (error) {
    ui.runProgress.hidden = true;
    const during = current ?? 'reading the prompts';
    const changed = current === 'cut' || current === 'evaluate after' ? 'the cut was undone, so the model is as it was loaded' : 'nothing was changed';
    reportError('Could not finish the abliteration', error, `Cancelled during ${during}; ${changed}.`);
    ui.runStatus.textContent = isAbort(error) ? `Cancelled during ${during}.` : 'The run failed; the message above says why.';
    if (search) {
      search.shown = undefined;
      ui.searchCard.dataset.state = search.trials.length ? 'done' : 'empty';
      if (search.trials.length) ui.searchStatus.textContent = `Stopped after ${search.trials.length} trials; each can still be evaluated and used.`;
    }
  } finally {
    controller = undefined;
    setBusy(undefined);
    if (finished) ui.resultsHeading.focus();
    else (extras.optimize ? ui.searchRun : ui.run).focus();
  }
}

/** The scatter and the trial table of the last search; trials can be picked when nothing runs. */
function renderSearch(): void {
  if (!search || search.trials.length === 0) {
    ui.searchResults.hidden = true;
    return;
  }
  ui.searchResults.hidden = false;
  const pick = busy ? undefined : (trial: number) => void runAbliteration({ kind: 'trial', trial });
  drawSearch(ui.searchChart, search, pick);
  renderTrialTable(ui.trialBody, search, pick);
  ui.searchResults.dataset.trials = String(search.trials.length);
}

function showResults(run: Run): void {
  const r = run.result;
  const score = r.scores[r.point];
  const window = `${Math.round(r.selection.window[0] * 100)}–${Math.round(r.selection.window[1] * 100)} % depth window`;
  const metric = r.selection.metric.replace('_', ' ');
  const exported = r.search?.exported;
  const how =
    r.selection.method === 'forced'
      ? 'chosen in the settings'
      : r.selection.method === 'ablation'
        ? `the fewest refusals when ablated, of the ${r.selection.trials?.length ?? 0} best by ${metric} in the ${window}`
        : r.selection.method === 'optimize'
          ? `the measured point nearest trial ${exported?.number ?? '–'}'s direction index ${exported?.params.direction_index.toFixed(2) ?? '–'}${exported?.params.scope === 'per_layer' ? '; each layer cut along its own direction' : ''}`
          : `the best ${metric} in the ${window}`;
  const strength = exported
    ? `with trial ${exported.number}'s strength profiles (o_proj up to ${exported.params.attn_max_weight.toFixed(2)}, down_proj up to ${exported.params.mlp_max_weight.toFixed(2)})${exported.params.projected ? ', projected direction' : ''}${exported.params.preserve_norm ? ', row norms preserved' : ''}${exported.params.embedding ? ', embedding included' : ''}`
    : `with α = ${run.settings.alpha}${run.settings.embedding ? ', embedding included' : ''}`;
  ui.resultSummary.textContent =
    `Direction taken at point ${r.point} (${r.point === 0 ? 'the embedding' : `the output of layer ${r.point - 1}`}; ${how}; effect size ${score?.effectSize.toFixed(2) ?? '–'}), measured on ${r.measurement.harmfulCount} harmful and ${r.measurement.harmlessCount} harmless prompts, ` +
    `cut from ${r.cut.tensors.length} weight matrices ${strength}.`;
  ui.resultSummary.dataset.layer = String(r.point);
  if (exported) ui.resultSummary.dataset.trial = String(exported.number);
  else delete ui.resultSummary.dataset.trial;
  renderTable(ui.resultBody, run);
  ui.scoreMetric.value = selectionMetricKey(run);
  ui.histogramCaption.textContent = `Projections on the refusal direction at point ${r.point}: harmful vs harmless prompts (dashed lines: each set’s mean)`;
  renderGenerations(ui.generations, run);
  ui.subspace.hidden = !hasSubspace(run);
  const k = r.measurement.subspaces?.[0]?.explainedVariance.length ?? 0;
  ui.spectrumCaption.textContent = `Explained variance of the top ${k} directions of the harmful − harmless differences per point (the rest is the other directions)`;
  // Shown before the charts are drawn: they take the width of their container.
  ui.results.hidden = false;
  renderCharts();
  ui.results.dataset.state = 'done';
}

function renderCharts(): void {
  if (search) renderSearch();
  const run = workbench.run;
  if (!run || ui.results.hidden) return;
  renderScoreChart(ui.scoreChart, run, ui.scoreMetric.value as ScoreKey);
  renderHistogram(ui.histogram, run);
  if (hasSubspace(run)) renderSubspace(ui.rankChart, ui.spectrumChart, run);
}

// ---------------------------------------------------------------------------------------------
// Hardening detection

const DETECT_STAGES: Record<DetectStage, string> = {
  measure: 'measuring the residual stream and its subspaces',
  'evaluate before': 'evaluating the harmful test prompts',
  'test cut': 'cutting the best direction as a test',
  'evaluate after': 'evaluating the harmful test prompts after the test cut',
};

const SIGNAL_NAMES: Record<string, string> = {
  refusal_after_cut: 'harmful refusal left after a rank-1 cut',
  cut_raised_refusal: 'the cut raised refusal by',
  effective_rank: 'effective rank of the leading spectrum',
  score_concentration: 'best point’s score over the mean',
  hdd_red_distance: 'harm-detection vs refusal direction (Grassmann distance)',
};

async function runDetect(): Promise<void> {
  if (busy || !workbench.model) return;
  if (workbench.run && !window.confirm('Detect hardening? The results shown and the cut model are replaced: the model is reloaded from its files first. Save anything you want to keep before.')) return;
  clearMessage();
  let settings: ReturnType<typeof readSettings>;
  try {
    settings = readSettings();
  } catch (error) {
    showMessage('error', 'Check the settings', describeError(error));
    return;
  }
  clearResults();
  clearDetect();
  controller = new AbortController();
  const { signal } = controller;
  setBusy('running');
  ui.detectCard.dataset.state = 'running';
  ui.detectCancel.focus();
  const start = performance.now();
  let finished = false;
  try {
    ui.detectStatus.textContent = 'Reading the prompt sets…';
    const sets = await loadPromptSets(settings.limit);
    const detection = await workbench.detect(
      { harmful: sets.harmful, harmless: sets.harmless, testHarmful: sets.evalHarmful },
      {
        topK: settings.extras.subspaceRank ?? 8,
        batchSize: settings.page['batch-size'],
        maxNewTokens: settings.page['max-tokens'],
        signal,
        onReload: () => (ui.detectStatus.textContent = 'Reloading the original weights…'),
        onStage: (stage) => (ui.detectStatus.textContent = `Detecting: ${DETECT_STAGES[stage]}…`),
      },
    );
    showDetection(detection);
    ui.detectStatus.textContent = `Done in ${seconds((performance.now() - start) / 1000)}; the test cut was undone.`;
    ui.detectCard.dataset.state = 'done';
    finished = true;
  } catch (error) {
    ui.detectCard.dataset.state = 'empty';
    ui.detectStatus.textContent = '';
    reportError('Could not finish the detection', error, 'Cancelled; the model is as it was loaded.');
  } finally {
    controller = undefined;
    setBusy(undefined);
    if (finished) ui.detectVerdict.focus();
    else ui.detectRun.focus();
  }
}

function showDetection(d: HardeningDetection): void {
  ui.detectVerdict.dataset.verdict = d.verdict;
  ui.detectVerdict.tabIndex = -1;
  ui.detectVerdict.textContent =
    `Verdict: ${d.verdict} (confidence ${Math.round(d.confidence * 100)} %, score ${d.score.toFixed(2)}). ` +
    `Harmful test prompts refused: ${Math.round(d.refusal.before * 100)} % before and ${Math.round(d.refusal.after * 100)} % after a rank-1 cut at point ${d.point} (${d.refusal.prompts} prompts).`;
  const fixed = (x: number) => (Number.isFinite(x) ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(3)) : '–');
  ui.detectEvidence.replaceChildren(
    ...d.evidence.map((e) => {
      const tr = document.createElement('tr');
      tr.dataset.signal = e.signal;
      tr.dataset.fires = String(e.fires);
      const head = document.createElement('th');
      head.scope = 'row';
      head.textContent = SIGNAL_NAMES[e.signal] ?? e.signal;
      head.append(Object.assign(document.createElement('span'), { className: 'hint', textContent: e.note }));
      tr.append(head, ...[fixed(e.value), fixed(e.threshold), e.weight === 0 ? 'n/a' : e.fires ? 'yes' : 'no', e.weight.toFixed(2)].map((text) => Object.assign(document.createElement('td'), { textContent: text })));
      return tr;
    }),
  );
  const r = d.recommendation;
  ui.detectNext.textContent = `Next: cut rank ${r.rank} (${r.target}) at point ${r.point}. ${r.reason.charAt(0).toUpperCase()}${r.reason.slice(1)}. With the CLI: ${r.commands.join(' && ')}`;
  ui.detectResult.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Saving

function outputName(): string {
  const model = workbench.model;
  const base = (model?.folder.name ?? 'model').split('/').filter(Boolean).pop() ?? 'model';
  return `${base}-abliterated`;
}

async function saveModel(): Promise<void> {
  if (busy || !workbench.run) return;
  clearMessage();
  const picker = directoryPicker();
  const toFolder = ui.saveMode.value === 'folder' && picker !== undefined;
  controller = new AbortController();
  const { signal } = controller;
  const progress = (done: number, total: number) => {
    ui.exportProgressBar.max = total;
    ui.exportProgressBar.value = done;
  };
  try {
    if (toFolder) {
      // Ask for the folder first: the picker needs the click's user activation.
      const parent = await picker({ id: 'abliterate-output', mode: 'readwrite' });
      setBusy('exporting');
      ui.exportProgress.hidden = false;
      const dir = await createSubfolder(parent, outputName());
      try {
        const target = new DirectoryTarget(dir, signal);
        await workbench.exportModel(target, progress);
        await target.writeFile(REPORT_FILE, await reportBlob().text());
        const directions = await workbench.directionsFile();
        const sink = await target.sink(DIRECTIONS_FILE);
        await sink.write(new Uint8Array(await directions.arrayBuffer()));
        await sink.close();
      } catch (error) {
        await parent.removeEntry(dir.name, { recursive: true }).catch(() => undefined);
        throw error;
      }
      showMessage('success', `Saved to ${parent.name ? `${parent.name}/` : ''}${dir.name}`, 'The cut model, its report and the direction file were written there.');
    } else {
      setBusy('exporting');
      ui.exportProgress.hidden = false;
      if (ui.saveMode.value === 'folder') showMessage('info', 'This browser cannot write to a folder you choose', 'The files are offered as downloads instead.');
      downloads.revokeAll();
      const memory = new MemoryTarget();
      await workbench.exportModel(abortableTarget(memory, signal), progress);
      // The same files as a folder export: the model, its report and the direction file.
      const files = new Map(memory.blobs());
      files.set(REPORT_FILE, reportBlob());
      files.set(DIRECTIONS_FILE, await workbench.directionsFile());
      const name = outputName();
      const tar = tarBlob(name, files);
      ui.downloadLinks.replaceChildren(
        link(tar, `${name}.tar`, `all files as ${name}.tar (${formatBytes(tar.size)})`),
        ...[...files].map(([file, blob]) => link(blob, file, `${file} (${formatBytes(blob.size)})`)),
      );
      downloads.download(tar, `${name}.tar`);
      showMessage('success', `Saved as ${name}.tar (${formatBytes(tar.size)})`, `The cut model, its report (${REPORT_FILE}) and the direction file (${DIRECTIONS_FILE}) are in it; the links below offer each file on its own.`);
    }
  } catch (error) {
    if ((error as DOMException).name === 'AbortError' && !signal.aborted) return; // the folder picker was dismissed
    reportError('Could not save the model', error, 'Cancelled while saving; nothing was saved.');
  } finally {
    controller = undefined;
    ui.exportProgress.hidden = true;
    setBusy(undefined);
  }
}

function link(blob: Blob, file: string, text: string): HTMLLIElement {
  const li = document.createElement('li');
  const a = document.createElement('a');
  a.href = downloads.url(blob);
  a.download = file;
  a.textContent = text;
  a.dataset.file = file;
  li.append(a);
  return li;
}

function reportBlob(): Blob {
  const report = workbench.report(gpu?.adapter.name ?? 'unknown');
  return new Blob([`${JSON.stringify(report, null, 2)}\n`], { type: 'application/json' });
}

function saveReport(): void {
  if (!workbench.run) return;
  downloads.download(reportBlob(), REPORT_FILE);
}

async function saveDirection(): Promise<void> {
  if (!workbench.run) return;
  try {
    downloads.download(await workbench.directionsFile(), DIRECTIONS_FILE);
  } catch (error) {
    reportError('Could not write the direction file', error);
  }
}

// ---------------------------------------------------------------------------------------------
// Events

function wire(): void {
  ui.pickFolder.addEventListener('click', () => {
    const picker = directoryPicker();
    if (!picker) {
      ui.folderInput.click();
      return;
    }
    void picker({ id: 'abliterate-model', mode: 'read' }).then(
      (handle) => loadFolder(() => folderFromHandle(handle), handle.name),
      (error: unknown) => {
        if ((error as DOMException).name !== 'AbortError') reportError('Could not open the folder', error);
      },
    );
  });
  ui.folderInput.addEventListener('change', () => {
    const files = ui.folderInput.files;
    if (!files || files.length === 0) return;
    void loadFolder(async () => folderFromInput(files), 'the folder').finally(() => (ui.folderInput.value = ''));
  });
  ui.loadBundled.addEventListener('click', () => {
    if (!manifest) return;
    const m = manifest;
    void loadFolder(
      () =>
        bundledModel(m, (done, total) => {
          ui.loadProgressBar.max = total;
          ui.loadProgressBar.value = done;
        }),
      `the bundled model ${m.model.name}`,
    );
  });
  ui.closeModel.addEventListener('click', closeModel);

  // Drops anywhere on the page load the folder (and never make the browser open the file instead).
  document.addEventListener('dragover', (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = busy || !gpu ? 'none' : 'copy';
    ui.dropZone.dataset.state = 'over';
  });
  document.addEventListener('dragleave', (event) => {
    if (event.relatedTarget === null) ui.dropZone.dataset.state = 'idle';
  });
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    ui.dropZone.dataset.state = 'idle';
    const data = event.dataTransfer;
    if (!data || busy || !gpu) return;
    const pending = folderFromDrop(data);
    void loadFolder(() => pending, 'the dropped folder');
  });

  const togglePrompts = () => (ui.ownPrompts.hidden = !ui.promptsOwn.checked);
  ui.promptsOwn.addEventListener('change', togglePrompts);
  ui.promptsBundled.addEventListener('change', togglePrompts);
  ui.settings.addEventListener('submit', (event) => {
    event.preventDefault();
    void runAbliteration();
  });
  ui.run.addEventListener('click', () => void runAbliteration());
  ui.searchRun.addEventListener('click', () => void runAbliteration({ kind: 'search' }));
  ui.searchSettings.addEventListener('submit', (event) => {
    event.preventDefault();
    void runAbliteration({ kind: 'search' });
  });
  ui.detectRun.addEventListener('click', () => void runDetect());
  for (const cancel of [ui.cancel, ui.searchCancel, ui.detectCancel]) {
    cancel.addEventListener('click', () => {
      if (!controller || controller.signal.aborted) return;
      // Said at once; the stop itself comes at the next check of the signal (within one batch or window).
      cancel.textContent = 'Cancelling…';
      cancel.setAttribute('aria-disabled', 'true');
      ui.runStatus.textContent = 'Cancelling…';
      controller.abort(new DOMException('cancelled by the user', 'AbortError'));
    });
  }
  ui.folderInputLabel.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' && event.key !== ' ') return;
    event.preventDefault();
    ui.folderInput.click();
  });
  ui.scoreMetric.addEventListener('change', renderCharts);
  let chartWidth = 0;
  let searchWidth = 0;
  const resized = new ResizeObserver(() => {
    const width = ui.scoreChart.clientWidth;
    const searchNow = ui.searchChart.clientWidth;
    if (width === chartWidth && searchNow === searchWidth) return;
    chartWidth = width;
    searchWidth = searchNow;
    renderCharts();
  });
  resized.observe(ui.scoreChart);
  resized.observe(ui.searchChart);
  ui.saveModel.addEventListener('click', () => void saveModel());
  ui.saveReport.addEventListener('click', saveReport);
  ui.saveDirection.addEventListener('click', () => void saveDirection());
  if (!directoryPicker()) {
    ui.saveMode.value = 'download';
    ui.saveMode.options[0]!.disabled = true;
    ui.pickFolder.hidden = true;
  } else {
    // The directory picker covers it; the file dialog stays for browsers without one.
    ui.folderInputLabel.hidden = true;
  }
  window.addEventListener('unhandledrejection', (event) => reportError('Something went wrong', event.reason));
  setInterval(updateMemory, 1000);
}

async function start(): Promise<void> {
  wire();
  workbench.onWarning = (warning) => {
    if (ui.message.hidden || ui.message.dataset.kind !== 'info') showMessage('info', 'Note', warning);
    else ui.message.append(Object.assign(document.createElement('p'), { textContent: warning }));
  };
  setBusy('loading');
  const [, found] = await Promise.all([openGpu(), bundledManifest()]);
  manifest = found;
  if (!manifest) ui.bundledNote.textContent = 'The bundled model is not served by this server.';
  else if (manifest.model.missing) ui.bundledNote.textContent = `The bundled model is not available: ${manifest.model.missing}.`;
  else ui.bundledNote.textContent = `Bundled: ${manifest.model.name} (${formatBytes(manifest.model.files.reduce((s, f) => s + f.size, 0))}), fetched from this page's own server.`;
  ui.loadBundled.textContent = manifest && !manifest.model.missing ? `Try the bundled ${manifest.model.name}` : 'Try the bundled model';
  setBusy(undefined);
  document.body.dataset.ready = 'true';
}

void start();
