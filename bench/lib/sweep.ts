import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import type { Dtype } from '../../src/io/dtype.ts';
import { isMatvecTiling, recordMatmul, matmulTiling, type MatmulVariant } from '../../src/kernels/matmul.ts';
import { TOKEN_CLASSES, type TokenClass, type TuningFile } from '../../src/kernels/tuning.ts';
import type { Ceilings } from './ceilings.ts';
import { destroyMatrix, randomMatrix, timeMatmul, variantName, type MatrixShape } from './kernels.ts';
import { randomFloats } from './fill.ts';
import type { Bench, Row } from './runner.ts';

/** The shape and token count each class is tuned on (Llama-3.2-1B's matrices). */
const CASES: Record<TokenClass, { shape: MatrixShape; tokens: number }> = {
  decode: { shape: { name: '1B gate/up', n: 8192, k: 2048 }, tokens: 1 },
  batch: { shape: { name: '1B q/o', n: 2048, k: 2048 }, tokens: 16 },
  prefill: { shape: { name: '1B q/o', n: 2048, k: 2048 }, tokens: 64 },
};

function grid(cls: TokenClass, subgroups: boolean, quick: boolean): MatmulVariant[] {
  const out: MatmulVariant[] = [];
  const vec4s = [false, true];
  const sgs = subgroups ? [false, true] : [false];
  if (cls === 'decode') {
    for (const VEC4 of vec4s) for (const TN of quick ? [2, 4, 8] : [1, 2, 4, 8]) for (const WG_X of quick ? [64] : [16, 64, 256]) out.push({ TM: 1, TN, WG_X, WG_Y: 1, VEC4 });
    for (const SUBGROUPS of sgs) for (const TN of quick ? [2, 4] : [1, 2, 4]) for (const WG of quick ? [128] : [64, 128, 256]) out.push({ TM: 1, TN, WG, SUBGROUPS });
  } else {
    const blocks: [number, number][] =
      cls === 'batch' ? (quick ? [[1, 4], [4, 4], [16, 4]] : [[1, 4], [2, 4], [4, 4], [4, 8], [8, 4], [16, 4]]) : quick ? [[4, 4], [4, 8], [8, 8]] : [[2, 4], [4, 4], [4, 8], [8, 4], [8, 8], [4, 16]];
    const groups: [number, number][] = quick ? [[64, 1], [8, 8]] : [[64, 1], [8, 8], [16, 4]];
    for (const VEC4 of vec4s) for (const [TM, TN] of blocks) for (const [WG_X, WG_Y] of groups) out.push({ TM, TN, WG_X, WG_Y, VEC4 });
    if (cls === 'batch') for (const SUBGROUPS of sgs) for (const TM of [4, 16]) for (const TN of [2, 4]) for (const WG of quick ? [128] : [64, 128, 256]) out.push({ TM, TN, WG, SUBGROUPS });
  }
  return out;
}

/** Whether the variant's workgroup memory fits the device (the split-k tree keeps TM·TN·WG sums). */
function fitsWorkgroupMemory(v: MatmulVariant, limit: number, subgroups: boolean): boolean {
  if (!isMatvecTiling(v)) return true;
  const slots = v.SUBGROUPS && subgroups ? Math.ceil(v.WG / 4) : v.WG;
  return v.TM * v.TN * slots * 4 <= limit;
}

/** Largest relative difference of y from the reference output (matmul.wgsl's default tiling). */
async function checkVariant(bench: Bench, weight: Awaited<ReturnType<typeof randomMatrix>>, tokens: number, variant: MatmulVariant, expected: Float32Array, x: GPUBuffer): Promise<number> {
  const { gpu } = bench;
  const y = gpu.createBuffer(tokens * weight.rows * 4, 'sweep y');
  try {
    const batch = gpu.batch('sweep check');
    recordMatmul(batch, { x, tokens, weight, y, tiling: variant });
    await batch.submit();
    const got = await gpu.readF32(y);
    let scale = 0;
    let diff = 0;
    for (let i = 0; i < expected.length; i++) {
      scale = Math.max(scale, Math.abs(expected[i]!));
      diff = Math.max(diff, Math.abs(got[i]! - expected[i]!));
    }
    return Number.isFinite(diff) ? diff / Math.max(scale, 1e-30) : Infinity;
  } finally {
    gpu.destroyBuffer(y);
  }
}

/**
 * Times the variant grid for decode (1 token), batched decode (16) and prefill (64) on BF16 weights:
 * every variant once with a small budget, then the five fastest again, interleaved, with a larger one.
 * Variants are ranked by their fastest run, not the median: on a shared machine the fastest run is the
 * least disturbed one, and interleaving spreads slow periods over all contenders. The winners are
 * then timed on F32 and F16 against the runner-up, and everything goes to src/kernels/tuning/<adapter>.json.
 */
export async function runSweep(bench: Bench, ceilings: Ceilings): Promise<void> {
  const { gpu } = bench;
  const quick = bench.options.quick;
  const winners: TuningFile['winners'] = {};
  const evidence: Record<string, unknown>[] = [];
  for (const cls of TOKEN_CLASSES) {
    if (!bench.wants('sweep', cls)) continue;
    const { shape, tokens } = CASES[cls];
    const variants = grid(cls, gpu.features.subgroups, quick);
    process.stderr.write(`sweep ${cls}: ${variants.length} variants on ${shape.n}×${shape.k} T=${tokens}\n`);
    const dtypes: Dtype[] = ['BF16', 'F32', 'F16'];
    for (const dtype of dtypes) {
      const weight = await randomMatrix(gpu, shape.name, dtype, shape.n, shape.k);
      const x = gpu.upload(randomFloats(tokens * shape.k, 1, 11), 'sweep x');
      const reference = gpu.createBuffer(tokens * shape.n * 4, 'sweep reference');
      try {
        const rb = gpu.batch('sweep reference');
        recordMatmul(rb, { x, tokens, weight, y: reference, tiling: matmulTiling(tokens) });
        await rb.submit();
        const expected = await gpu.readF32(reference);
        // BF16: the whole grid; F32 and F16: the five best BF16 variants.
        const contenders =
          dtype === 'BF16'
            ? variants
            : evidence
                .filter((e) => e.class === cls && e.dtype === 'BF16' && e.stage === 2)
                .sort((a, b) => (a.ms as number) - (b.ms as number))
                .slice(0, 5)
                .map((e) => e.variant as MatmulVariant);
        const first: { variant: MatmulVariant; row: Row }[] = [];
        for (const variant of contenders) {
          if (!fitsWorkgroupMemory(variant, gpu.limits.maxComputeWorkgroupStorageSize, gpu.features.subgroups)) continue;
          let error: number;
          try {
            error = await checkVariant(bench, weight, tokens, variant, expected, x);
          } catch (e) {
            bench.note(`sweep ${cls} ${dtype} ${variantName(variant)}: ${String(e).split('\n')[0]}; excluded`);
            continue;
          }
          if (!(error < 1e-4)) {
            bench.note(`sweep ${cls} ${dtype} ${variantName(variant)}: relative error ${error.toExponential(2)} against matmul.wgsl; excluded`);
            continue;
          }
          const row = await timeMatmul(bench, 'sweep', shape, weight, tokens, variant, quick ? 60 : 100);
          if (dtype === 'BF16') evidence.push({ class: cls, dtype, stage: 1, variant, name: variantName(variant), ms: row.measured.minMs, medianMs: row.measured.ms });
          first.push({ variant, row });
        }
        first.sort((a, b) => a.row.measured.minMs - b.row.measured.minMs);
        const finalists = first.slice(0, dtype === 'BF16' ? 5 : first.length);
        const times = new Map<MatmulVariant, number[]>(finalists.map((f) => [f.variant, []]));
        for (let round = 0; round < (quick ? 2 : 3); round++) {
          for (const f of finalists) {
            const row = await timeMatmul(bench, 'sweep', shape, weight, tokens, f.variant, quick ? 100 : 250);
            times.get(f.variant)!.push(row.measured.minMs);
          }
        }
        const ranked = finalists
          .map((f) => ({ variant: f.variant, ms: Math.min(...times.get(f.variant)!) }))
          .sort((a, b) => a.ms - b.ms);
        for (const r of ranked) evidence.push({ class: cls, dtype, stage: 2, variant: r.variant, name: variantName(r.variant), ms: r.ms, gflops: (2 * tokens * shape.n * shape.k) / (r.ms * 1e6) });
        const best = ranked[0];
        if (best) {
          (winners[cls] ??= {})[dtype] = best.variant;
          process.stderr.write(`sweep ${cls} ${dtype}: ${variantName(best.variant)} ${best.ms.toFixed(2)} ms (runner-up ${ranked[1] ? `${variantName(ranked[1].variant)} ${ranked[1].ms.toFixed(2)} ms` : 'none'})\n`);
        }
      } finally {
        destroyMatrix(gpu, weight);
        gpu.destroyBuffer(x);
        gpu.destroyBuffer(reference);
      }
    }
  }
  const adapter = gpu.adapter.name;
  const file: TuningFile & Record<string, unknown> = {
    adapter,
    description: gpu.adapter.description,
    date: new Date().toISOString(),
    commit: commitOf(),
    quick,
    ceilings,
    cases: Object.fromEntries(TOKEN_CLASSES.map((c) => [c, `${CASES[c].shape.n}×${CASES[c].shape.k} T=${CASES[c].tokens}`])),
    winners,
    evidence,
  };
  const slug = adapter.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  mkdirSync('src/kernels/tuning', { recursive: true });
  const path = `src/kernels/tuning/${slug}${Object.keys(winners).length < TOKEN_CLASSES.length ? '-partial' : ''}.json`;
  writeFileSync(path, `${JSON.stringify(file, null, 1)}\n`);
  bench.note(`sweep winners written to ${path}; src/kernels/tuning.ts reads src/kernels/tuning/<adapter>.json`);
}

function commitOf(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}
