/**
 * `npm run bench`: each WGSL kernel's throughput against the adapter's ceilings measured in the same
 * run, end-to-end speed of the engine, and (with --sweep) the matmul variant grid. Prints tables and
 * writes JSON to bench/results/<adapter>-<date>.json.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname } from 'node:path';
import { Command } from 'commander';
import { createNodeGpu, parseAdapterChoice } from '../src/gpu/node.ts';
import { checkCeilings, describeCheck, measureCeilings } from './lib/ceilings.ts';
import { benchEndToEnd, endToEndText, FAMILY_SHAPES } from './lib/e2e.ts';
import { benchAccumulateRows, benchAttention, benchMatmuls, benchRank1, benchRmsNorm, bundledShapes, LLAMA_1B_ATTENTION, LLAMA_1B_SHAPES } from './lib/kernels.ts';
import { Bench } from './lib/runner.ts';
import { benchSearchTrials, searchTrialText } from './lib/searchTrial.ts';
import { runSweep } from './lib/sweep.ts';
import { applyCeilings, kernelTable } from './lib/table.ts';

const program = new Command('bench')
  .description('Kernel throughput against the adapter ceilings, and end-to-end speed')
  .option('--only <pattern>', 'run only the cases whose "section kernel shape dtype" matches this regular expression')
  .option('--quick', 'fewer shapes and repetitions (about a minute on lavapipe)')
  .option('--json <file>', 'where to write the JSON results (default bench/results/<adapter>-<date>.json)')
  .option('--sweep', 'time the matmul variant grid and write src/kernels/tuning/<adapter>.json')
  .option('--sections <list>', 'comma-separated: kernels, e2e, trial (default all three; ceilings always run, at the start and again at the end)', 'kernels,e2e,trial')
  .option('--trial-models <list>', 'models of the search-trial case: bundled, smollm2-135m, llama-1b, tiny (a small random one for dry runs); default: bundled and smollm2-135m with --quick, the first three without')
  .option('--adapter <name>', 'auto, hardware, lavapipe or swiftshader (default ABLITERATE_ADAPTER, then auto)')
  .option('--e2e-model <name>', 'random model shapes for the end-to-end part: smollm2-135m, llama-1b, or tiny (a small one for dry runs)', 'smollm2-135m')
  .option('--e2e-families <list>', `family cases of the end-to-end part, comma-separated (${FAMILY_SHAPES.map((f) => f.name).join(', ')}; "none" for none); with --quick each keeps 4 of its layers`, FAMILY_SHAPES.map((f) => f.name).join(','))
  .option('--decode-tokens <n>', 'new tokens per decode measurement', (v) => Number.parseInt(v, 10))
  .parse();

const opts = program.opts<{
  only?: string;
  quick?: boolean;
  json?: string;
  sweep?: boolean;
  sections: string;
  adapter?: string;
  e2eModel: string;
  e2eFamilies: string;
  decodeTokens?: number;
  trialModels?: string;
}>();

const sections = new Set(opts.sections.split(',').map((s) => s.trim()));
const gpu = await createNodeGpu({ adapter: parseAdapterChoice(opts.adapter) });
const bench = new Bench(gpu, { only: opts.only ? new RegExp(opts.only, 'i') : undefined, quick: opts.quick ?? false, sweep: opts.sweep ?? false });
const quick = bench.options.quick;
const started = performance.now();
// Taken at the start: the checkout may move on while a long run goes.
const commit = gitCommit();
const log = (text: string) => process.stderr.write(`${text}\n`);

log(`adapter: ${gpu.adapter.name} (${gpu.adapter.description || gpu.adapter.vendor}); timestamp-query: ${gpu.features.timestampQuery ? 'yes' : 'no'}; subgroups: ${gpu.features.subgroups ? 'yes' : 'no'}; shader-f16: ${gpu.features.shaderF16 ? 'yes' : 'no'}`);
if (bench.loadBefore > 1) log(`note: the machine's load average is ${bench.loadBefore.toFixed(2)} before the run; other processes share the cores and slow the figures`);

const ceilings = await measureCeilings(bench);
log(`ceilings: copyBufferToBuffer ${ceilings.copyBufferGBs.toFixed(2)} GB/s, copy kernel ${ceilings.copyKernelGBs.toFixed(2)} GB/s, read kernel ${ceilings.readKernelGBs.toFixed(2)} GB/s (${ceilings.readOrder}), FMA ${ceilings.fmaGflops.toFixed(2)} GFLOP/s`);

if (opts.sweep) await runSweep(bench, ceilings);

if (sections.has('kernels')) {
  const bundled = bundledShapes();
  if (bundled) {
    await benchMatmuls(bench, { shapes: bundled.shapes, dtypes: ['F32', 'BF16', 'F16'], decode: [1, 16], prefill: quick ? [64] : [64, 256, 512] });
  } else {
    bench.note('models/tiny-chat/config.json is absent: the bundled model\'s shapes are skipped');
  }
  await benchMatmuls(bench, {
    shapes: LLAMA_1B_SHAPES,
    dtypes: quick ? ['BF16'] : ['F32', 'BF16', 'F16'],
    decode: [1, 16],
    prefill: [64],
    extraPrefill: (shape, dtype) => (!quick && dtype === 'BF16' ? (shape.n === shape.k ? [256, 512] : [256]) : []),
  });
  for (const context of quick ? [128, 1024] : [128, 512, 2048]) await benchAttention(bench, LLAMA_1B_ATTENTION, 'decode', context);
  if (!quick) await benchAttention(bench, LLAMA_1B_ATTENTION, 'decode', 512, 16);
  // Prefill with both kernels side by side (the engine picks one per adapter, src/kernels/tuning.ts).
  for (const context of quick ? [64, 256] : [64, 256, 512]) for (const variant of ['rows', 'tiled'] as const) await benchAttention(bench, LLAMA_1B_ATTENTION, 'prefill', context, 1, variant);
  for (const rows of quick ? [1, 512] : [1, 64, 512]) await benchRmsNorm(bench, rows, 2048);
  await benchAccumulateRows(bench, 512, 16, 2048);
  if (!quick) await benchAccumulateRows(bench, 4096, 256, 2048);
  if (existsSync(new URL('../src/kernels/lowRank.ts', import.meta.url))) {
    await benchRank1(bench, { name: '1B o_proj', n: 2048, k: 2048 }, 'BF16');
    await benchRank1(bench, { name: '1B down_proj', n: 2048, k: 8192 }, 'BF16');
    if (!quick) await benchRank1(bench, { name: '1B down_proj', n: 2048, k: 8192 }, 'F32');
    if (!quick) await benchRank1(bench, { name: '1B down_proj', n: 2048, k: 8192 }, 'BF16', 4);
  } else {
    bench.note('src/kernels/lowRank.ts is absent: rank1_update and column_dot are skipped');
  }
}

// The best matmul of the run is an arithmetic ceiling too, when it beats the FMA kernel.
const bestMatmul = Math.max(0, ...bench.rows.filter((r) => r.kernel === 'matmul' || r.kernel === 'matvec').map((r) => r.gflops ?? 0));
ceilings.gflops = Math.max(ceilings.fmaGflops, bestMatmul);

const e2e = sections.has('e2e') ? await benchEndToEnd(bench, ceilings, { model: opts.e2eModel, decodeTokens: opts.decodeTokens, families: opts.e2eFamilies === 'none' ? [] : opts.e2eFamilies.split(',').map((f) => f.trim()).filter(Boolean) }) : undefined;
const trialModels = (opts.trialModels ?? (quick ? 'bundled,smollm2-135m' : 'bundled,smollm2-135m,llama-1b')).split(',').map((m) => m.trim());
const trials = sections.has('trial') ? await benchSearchTrials(bench, trialModels) : undefined;

// The ceilings again, after everything they judge: if the machine's load changed the run, they disagree.
const check = await checkCeilings(bench, ceilings);
log(describeCheck(check));
applyCeilings(bench.rows, ceilings, !check.steady);
const loadAtEnd = loadavg();
const loads = (l: readonly number[]) => l.map((x) => x.toFixed(2)).join(' / ');

const tableRows = bench.rows.filter((r) => r.section !== 'e2e' && r.section !== 'sweep');
const timing = gpu.features.timestampQuery ? 'GPU timestamp queries (ts), checked against CPU wall time per submit (cpu ms)' : 'CPU wall time from submit to onSubmittedWorkDone (no timestamp-query)';
const date = new Date().toISOString();
console.log(`\nabliterate bench — adapter ${gpu.adapter.name}, commit ${commit}, ${date.slice(0, 16).replace('T', ' ')} UTC${quick ? ', --quick' : ''}`);
console.log(`load average (1 / 5 / 15 min): ${loads(bench.loadAtStart)} at the start, ${loads(loadAtEnd)} at the end`);
console.log(`timing: ${timing}; median of the timed runs after warm-up`);
console.log(
  `ceilings: streaming ${ceilings.bandwidthGBs.toFixed(2)} GB/s (best read kernel, ${ceilings.readOrder}: %BW), driver copy ${ceilings.copyBufferGBs.toFixed(2)} GB/s (copyBufferToBuffer: %copy), copy kernel ${ceilings.copyKernelGBs.toFixed(2)}; bytes read + written; ` +
    `arithmetic ${ceilings.gflops.toFixed(2)} GFLOP/s (FMA kernel ${ceilings.fmaGflops.toFixed(2)}, best matmul ${bestMatmul.toFixed(2)}: %FLOP)`,
);
console.log(`${describeCheck(check)}\n`);
console.log(kernelTable(tableRows));
const agreement = timestampAgreement();
if (agreement) console.log(`\ntimestamps vs CPU wall time: ${agreement}`);
if (e2e) console.log(`\n${endToEndText(gpu.adapter.name, ceilings, e2e, !check.steady)}`);
if (trials?.length) console.log(`\n${searchTrialText(gpu.adapter.name, trials)}`);
for (const note of bench.notes) console.log(`note: ${note}`);
const seconds = (performance.now() - started) / 1000;
console.log(`\n${seconds.toFixed(0)} s; load average ${loads(bench.loadAtStart)} before, ${loads(loadAtEnd)} after`);

const adapterSlug = gpu.adapter.name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
const jsonPath = opts.json ?? `bench/results/${adapterSlug}-${date.slice(0, 10)}${quick ? '-quick' : ''}.json`;
mkdirSync(dirname(jsonPath), { recursive: true });
writeFileSync(
  jsonPath,
  `${JSON.stringify(
    {
      adapter: gpu.adapter,
      features: gpu.features,
      commit,
      date,
      options: { quick, only: opts.only, sweep: opts.sweep ?? false, sections: [...sections] },
      timing,
      loadAverage: { before: bench.loadBefore, after: loadAtEnd[0], beforeAll: bench.loadAtStart, afterAll: loadAtEnd },
      seconds,
      ceilings,
      ceilingCheck: check,
      ratiosWithheld: !check.steady,
      rows: bench.rows,
      endToEnd: e2e,
      searchTrial: trials,
      notes: bench.notes,
    },
    null,
    1,
  )}\n`,
);
log(`wrote ${jsonPath}`);
gpu.dispose();

function gitCommit(): string {
  try {
    const hash = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${hash}+changes` : hash;
  } catch {
    return process.env.ABLITERATE_COMMIT ?? 'unknown';
  }
}

/** How GPU timestamps compared with CPU wall time over the kernel rows. */
function timestampAgreement(): string | undefined {
  const pairs = bench.rows.filter((r) => r.measured.gpuMs !== undefined && r.section !== 'e2e');
  if (pairs.length === 0) return undefined;
  const ratios = pairs.map((r) => r.measured.gpuMs! / r.measured.cpuMs).sort((a, b) => a - b);
  const mid = ratios[ratios.length >> 1]!;
  const rejected = pairs.filter((r) => r.measured.method === 'cpu').length;
  const small = pairs.filter((r) => r.measured.cpuMs < 1);
  const smallRatio = small.length ? small.map((r) => r.measured.gpuMs! / r.measured.cpuMs).sort((a, b) => a - b)[small.length >> 1]! : undefined;
  return (
    `GPU/CPU time ratio median ${mid.toFixed(2)} (range ${ratios[0]!.toFixed(2)}–${ratios.at(-1)!.toFixed(2)}) over ${pairs.length} cases` +
    (smallRatio !== undefined ? `; ${smallRatio.toFixed(2)} for runs under 1 ms (submit overhead dominates CPU time there)` : '') +
    (rejected ? `; ${rejected} implausible timestamp readings (zero, or above the wall time) were replaced by CPU time` : '')
  );
}
