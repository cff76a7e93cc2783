import { existsSync, readFileSync } from 'node:fs';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { bytesPerElement, type Dtype } from '../../src/io/dtype.ts';
import { recordAttention, type AttentionVariant } from '../../src/kernels/attention.ts';
import { isMatvecTiling, matmulTiling, recordMatmul, type MatmulVariant } from '../../src/kernels/matmul.ts';
import { recordRmsNorm } from '../../src/kernels/rmsnorm.ts';
import { recordAccumulateRows } from '../../src/kernels/rows.ts';
import { attentionTiling, tunedMatmulVariant } from '../../src/kernels/tuning.ts';
import { uploadMatrix, type PackedMatrix } from '../../src/gpu/packedMatrix.ts';
import { randomFloats, randomWeights } from './fill.ts';
import type { Bench } from './runner.ts';

export interface MatrixShape {
  /** Which model and which weight, e.g. "1B gate/up". */
  name: string;
  /** Output features (rows of W) and input features (columns). */
  n: number;
  k: number;
  /** Only ever multiplied with a few rows (the output projection gets one row per sequence). */
  decodeOnly?: boolean;
}

export const LLAMA_1B_SHAPES: MatrixShape[] = [
  { name: '1B q/o', n: 2048, k: 2048 },
  { name: '1B gate/up', n: 8192, k: 2048 },
  { name: '1B down', n: 2048, k: 8192 },
  { name: '1B lm_head', n: 128256, k: 2048, decodeOnly: true },
];

/** The bundled model's matrix shapes, when models/tiny-chat/config.json exists. */
export function bundledShapes(folder = 'models/tiny-chat'): { shapes: MatrixShape[]; config: Record<string, number> } | undefined {
  const path = `${folder}/config.json`;
  if (!existsSync(path)) return undefined;
  const c = JSON.parse(readFileSync(path, 'utf8')) as Record<string, number>;
  const H = c.hidden_size!;
  const heads = c.num_attention_heads!;
  const headDim = c.head_dim ?? H / heads;
  const kv = (c.num_key_value_heads ?? heads) * headDim;
  return {
    config: c,
    shapes: [
      { name: 'tiny q/o', n: heads * headDim, k: H },
      { name: 'tiny k/v', n: kv, k: H },
      { name: 'tiny gate/up', n: c.intermediate_size!, k: H },
      { name: 'tiny down', n: H, k: c.intermediate_size! },
      { name: 'tiny lm_head', n: c.vocab_size!, k: H, decodeOnly: true },
    ],
  };
}

export async function randomMatrix(gpu: Gpu, name: string, dtype: Dtype, rows: number, cols: number): Promise<PackedMatrix> {
  const rowBytes = cols * bytesPerElement(dtype);
  // One chunk's worth of random rows, reused for every chunk.
  const maxRows = Math.max(1, Math.min(rows, Math.floor(Math.min(gpu.limits.maxStorageBufferBindingSize, 256 * 2 ** 20) / rowBytes)));
  const block = randomWeights(maxRows * cols, dtype, rows * 31 + cols);
  return uploadMatrix(gpu, name, dtype, rows, cols, async (_start, count) => {
    if (count <= maxRows) return block.subarray(0, count * rowBytes);
    const out = new Uint8Array(count * rowBytes);
    for (let at = 0; at < out.length; at += block.length) out.set(block.subarray(0, Math.min(block.length, out.length - at)), at);
    return out;
  });
}

export function destroyMatrix(gpu: Gpu, m: PackedMatrix): void {
  for (const c of m.chunks) gpu.destroyBuffer(c.buffer);
}

/** A short name of a matmul variant, e.g. "rb TM4 TN4 8×8 v4" or "sk TM1 TN4 WG64 sg". */
export function variantName(v: MatmulVariant): string {
  if (isMatvecTiling(v)) return `splitk TM${v.TM} TN${v.TN} WG${v.WG}${v.SUBGROUPS ? ' sg' : ''}`;
  return `reg TM${v.TM} TN${v.TN} ${v.WG_X}×${v.WG_Y}${v.VEC4 ? ' vec4' : ''}`;
}

/** The variant the engine picks for this call (what recordMatmul does without a tiling). */
export function engineVariant(gpu: Gpu, tokens: number, dtype: Dtype): MatmulVariant {
  return tunedMatmulVariant(gpu, tokens, dtype) ?? matmulTiling(tokens);
}

/** Times one matmul; returns undefined when the case was filtered out. */
export async function timeMatmul(
  bench: Bench,
  section: 'kernel' | 'sweep',
  shape: MatrixShape,
  weight: PackedMatrix,
  tokens: number,
  variant?: MatmulVariant,
  budgetMs?: number,
) {
  const { gpu } = bench;
  const { n, k } = shape;
  const x = gpu.upload(randomFloats(tokens * k, 1, tokens + k), 'x');
  const y = gpu.createBuffer(tokens * n * 4, 'y');
  try {
    const batch = gpu.batch(`matmul ${shape.name}`);
    recordMatmul(batch, { x, tokens, weight, y, tiling: variant });
    const measured = await bench.time(batch, budgetMs);
    const used = variant ?? engineVariant(gpu, tokens, weight.dtype);
    return bench.record({
      section,
      kernel: tokens <= 16 ? 'matvec' : 'matmul',
      shape: `${shape.name} ${n}×${k} T=${tokens}`,
      dtype: weight.dtype,
      variant: variantName(used),
      bytes: n * k * bytesPerElement(weight.dtype) + 4 * tokens * (n + k),
      flops: 2 * tokens * n * k,
      measured,
    });
  } finally {
    gpu.destroyBuffer(x);
    gpu.destroyBuffer(y);
  }
}

export interface MatmulPlan {
  shapes: MatrixShape[];
  dtypes: Dtype[];
  decode: number[];
  prefill: number[];
  /** Extra prefill token counts for some shape/dtype pairs. */
  extraPrefill?: (shape: MatrixShape, dtype: Dtype) => number[];
}

export async function benchMatmuls(bench: Bench, plan: MatmulPlan): Promise<void> {
  const { gpu } = bench;
  for (const shape of plan.shapes) {
    for (const dtype of plan.dtypes) {
      const tokenCounts = [...plan.decode, ...(shape.decodeOnly ? [] : [...plan.prefill, ...(plan.extraPrefill?.(shape, dtype) ?? [])])];
      const wanted = tokenCounts.filter((t) => bench.wants('kernel', t <= 16 ? 'matvec' : 'matmul', shape.name, `T=${t}`, dtype));
      if (wanted.length === 0) continue;
      const weight = await randomMatrix(gpu, shape.name, dtype, shape.n, shape.k);
      try {
        for (const tokens of wanted) await timeMatmul(bench, 'kernel', shape, weight, tokens);
      } finally {
        destroyMatrix(gpu, weight);
      }
    }
  }
}

export interface AttentionShape {
  name: string;
  heads: number;
  kvHeads: number;
  headDim: number;
}

export const LLAMA_1B_ATTENTION: AttentionShape = { name: '1B', heads: 32, kvHeads: 8, headDim: 64 };

/**
 * Attention over a KV cache: decode (`sequences` queries, each at the last of `context` positions of
 * its own slot) or prefill (one sequence of `context` tokens, causal).
 */
export async function benchAttention(bench: Bench, shape: AttentionShape, mode: 'decode' | 'prefill', context: number, sequences = 1, variant?: AttentionVariant): Promise<void> {
  const label = `${shape.name} ${mode} ctx=${context}${mode === 'decode' ? ` seqs=${sequences}` : ''}`;
  if (!bench.wants('kernel', 'attention', label, variant ?? 'tuned')) return;
  const { gpu } = bench;
  const { heads, kvHeads, headDim } = shape;
  const slots = mode === 'decode' ? sequences : 1;
  const tokens = mode === 'decode' ? sequences : context;
  const cacheFloats = slots * context * kvHeads * headDim;
  const kCache = gpu.upload(randomFloats(cacheFloats, 1, 3), 'k cache');
  const vCache = gpu.upload(randomFloats(cacheFloats, 1, 4), 'v cache');
  const q = gpu.upload(randomFloats(tokens * heads * headDim, 1, 5), 'q');
  const out = gpu.createBuffer(tokens * heads * headDim * 4, 'attention out');
  const positions = gpu.upload(Uint32Array.from({ length: tokens }, (_, t) => (mode === 'decode' ? context - 1 : t)), 'positions');
  const slotIds = gpu.upload(Uint32Array.from({ length: tokens }, (_, t) => (mode === 'decode' ? t : 0)), 'slots');
  try {
    const batch = gpu.batch(`attention ${label}`);
    recordAttention(batch, { q, kCache, vCache, positions, slots: slotIds, out, tokens, heads, kvHeads, headDim, maxLen: context, sequences: slots, variant });
    const measured = await bench.time(batch);
    // Keys seen: each decode query sees `context`; prefill token t sees t + 1.
    const keysSeen = mode === 'decode' ? sequences * context : (context * (context + 1)) / 2;
    // Each K and V row is read once per kv head group (the kernel shares it across the group's heads).
    const kvBytes = 2 * keysSeen * kvHeads * headDim * 4;
    bench.record({
      section: 'kernel',
      kernel: 'attention',
      shape: `${label} h=${heads}/${kvHeads}×${headDim}`,
      dtype: 'F32',
      variant: variant ?? (attentionTiling(gpu, heads / kvHeads, headDim, tokens / slots) ? 'tiled (tuned)' : 'rows (tuned)'),
      bytes: kvBytes + 2 * tokens * heads * headDim * 4,
      flops: 4 * keysSeen * heads * headDim,
      measured,
    });
  } finally {
    for (const b of [kCache, vCache, q, out, positions, slotIds]) gpu.destroyBuffer(b);
  }
}

export async function benchRmsNorm(bench: Bench, rows: number, dim: number): Promise<void> {
  if (!bench.wants('kernel', 'rmsnorm', `rows=${rows}`, `dim=${dim}`)) return;
  const { gpu } = bench;
  const x = gpu.upload(randomFloats(rows * dim, 1, 6), 'x');
  const weight = gpu.upload(randomFloats(dim, 1, 7), 'norm weight');
  const y = gpu.createBuffer(rows * dim * 4, 'y');
  try {
    const batch = gpu.batch('rmsnorm');
    recordRmsNorm(batch, { x, weight, y, rows, dim, eps: 1e-5 });
    const measured = await bench.time(batch);
    bench.record({ section: 'kernel', kernel: 'rmsnorm', shape: `rows=${rows} dim=${dim}`, dtype: 'F32', bytes: (2 * rows * dim + dim) * 4, flops: 4 * rows * dim, measured });
  } finally {
    for (const b of [x, weight, y]) gpu.destroyBuffer(b);
  }
}

/** The accumulating tap: `count` selected rows of a [tokens, dim] activation added into running sums. */
export async function benchAccumulateRows(bench: Bench, tokens: number, count: number, dim: number): Promise<void> {
  if (!bench.wants('kernel', 'accumulate_rows', `count=${count}`, `dim=${dim}`)) return;
  const { gpu } = bench;
  const x = gpu.upload(randomFloats(tokens * dim, 1, 8), 'x');
  const rows = gpu.upload(Uint32Array.from({ length: count }, (_, i) => Math.floor(((i + 1) * tokens) / count) - 1), 'rows');
  const sums = gpu.createBuffer(dim * 4, 'sums');
  try {
    const batch = gpu.batch('accumulate_rows');
    recordAccumulateRows(batch, { x, rows, count, dim, sums });
    const measured = await bench.time(batch);
    bench.record({
      section: 'kernel',
      kernel: 'accumulate_rows',
      shape: `count=${count} of ${tokens} dim=${dim}`,
      dtype: 'F32',
      bytes: (count * dim + 2 * dim) * 4 + count * 4,
      flops: count * dim,
      measured,
    });
  } finally {
    for (const b of [x, rows, sums]) gpu.destroyBuffer(b);
  }
}

/** column_dot (v = dᵀW) and rank1_update (low_rank_update with K = 1: W −= α d vᵀ), the two halves of the rank-1 cut, on one matrix. */
export async function benchRank1(bench: Bench, shape: MatrixShape, dtype: Dtype, rank = 1): Promise<void> {
  const updateName = rank === 1 ? 'rank1_update' : `rank${rank}_update`;
  const wantDot = rank === 1 && bench.wants('kernel', 'column_dot', shape.name, dtype);
  const wantUpdate = bench.wants('kernel', updateName, shape.name, dtype);
  if (!wantDot && !wantUpdate) return;
  const { gpu } = bench;
  const rank1 = await import('../../src/kernels/lowRank.ts');
  const { n: rows, k: cols } = shape;
  const matrix = await randomMatrix(gpu, shape.name, dtype, rows, cols);
  const unit = randomFloats(rows, 1, 9);
  const norm = Math.hypot(...unit);
  const d = gpu.upload(unit.map((v) => v / norm), 'direction');
  // The update's factors: K vectors a (rows) and b (cols) of typical sizes; every element takes the
  // general path of the exact update (a zero factor would take its short cut).
  const a = gpu.upload(randomFloats(rank * rows, 1 / Math.sqrt(rows), 10), 'a');
  const b = gpu.upload(randomFloats(rank * cols, 1e-2, 11), 'b');
  const v = gpu.createBuffer(cols * 4, 'v');
  const weightBytes = rows * cols * bytesPerElement(dtype);
  try {
    if (wantDot) {
      const batch = gpu.batch('column_dot');
      rank1.recordColumnDot(batch, { matrix, basis: d, v });
      const measured = await bench.time(batch);
      bench.record({ section: 'kernel', kernel: 'column_dot', shape: `${shape.name} ${rows}×${cols}`, dtype, bytes: weightBytes + 4 * (rows + cols), flops: 2 * rows * cols, measured });
    }
    if (wantUpdate) {
      const batch = gpu.batch(updateName);
      // Each timed run changes the weights a little more: the same work every time.
      rank1.recordLowRankUpdate(batch, { matrix, a, b, rank, alpha: 1 });
      const measured = await bench.time(batch);
      bench.record({ section: 'kernel', kernel: updateName, shape: `${shape.name} ${rows}×${cols}`, dtype, bytes: 2 * weightBytes + 4 * rank * (rows + cols), flops: 2 * rank * rows * cols, measured });
    }
  } finally {
    destroyMatrix(gpu, matrix);
    for (const buffer of [d, a, b, v]) gpu.destroyBuffer(buffer);
  }
}
