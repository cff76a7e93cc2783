/**
 * The matmul kernel variants, and which one the engine uses per adapter, from measurements: `npm run bench -- --sweep`
 * times the variant grid on the adapter it runs on and writes the winners, with the timings that
 * chose them, to src/kernels/tuning/<adapter>.json. The files of the adapters measured so far are bundled
 * here (the same in Node and the browser). Kernel shape matters by up to 10× on the software
 * adapters, and differently on each, so their choices come from those files; see bench/RESULTS.md.
 */
import type { Gpu } from '../gpu/gpu.ts';
import type { Dtype } from '../io/dtype.ts';
import llvmpipe from './tuning/llvmpipe.json' with { type: 'json' };
import swiftshader from './tuning/swiftshader.json' with { type: 'json' };

export interface MatmulTiling {
  /** Tokens and output features per invocation. */
  TM: number;
  TN: number;
  WG_X: number;
  WG_Y: number;
  /** 16-byte loads of x and W (shaders/matmul_vec4.wgsl) when k % 8 == 0. */
  VEC4?: boolean;
}

/**
 * The split-k variant (shaders/matvec.wgsl): a workgroup of WG invocations computes TM tokens × TN
 * features, its invocations splitting each dot product along k, then summing (with subgroup
 * operations when SUBGROUPS and the device has them).
 */
export interface MatvecTiling {
  TM: number;
  TN: number;
  WG: number;
  SUBGROUPS: boolean;
}

/** A matmul kernel variant: register-blocked (matmul.wgsl) or split-k (matvec.wgsl). */
export type MatmulVariant = MatmulTiling | MatvecTiling;

export function isMatvecTiling(variant: MatmulVariant): variant is MatvecTiling {
  return 'WG' in variant;
}

/** Register-blocked tiles; one token per invocation when there are few tokens (decode). */
export function matmulTiling(tokens: number): MatmulTiling {
  return tokens <= 2 ? { TM: 1, TN: 4, WG_X: 64, WG_Y: 1 } : { TM: 4, TN: 4, WG_X: 8, WG_Y: 8 };
}

/** Token counts tuned separately: decode (1–2), batched decode (3–31), prefill (32 and more). */
export const TOKEN_CLASSES = ['decode', 'batch', 'prefill'] as const;
export type TokenClass = (typeof TOKEN_CLASSES)[number];

export function tokenClass(tokens: number): TokenClass {
  return tokens <= 2 ? 'decode' : tokens < 32 ? 'batch' : 'prefill';
}

/** The part of src/kernels/tuning/<adapter>.json the engine reads. */
export interface TuningFile {
  /** AdapterSummary.name of the adapter measured ("llvmpipe", "swiftshader", or a GPU's description). */
  adapter: string;
  winners: Partial<Record<TokenClass, Partial<Record<Dtype, MatmulVariant>>>>;
}

const tuned = new Map<string, TuningFile>();
for (const file of [llvmpipe, swiftshader]) tuned.set(file.adapter, file as TuningFile);

/** Adds (or replaces) the tuning of an adapter, e.g. a file produced by the sweep on a GPU server. */
export function registerTuning(file: TuningFile): void {
  tuned.set(file.adapter, file);
}

/**
 * Hardware GPUs without a tuning file, few tokens: the split-k kernel (shaders/matvec.wgsl), whose
 * neighbouring invocations read neighbouring words of a weight row (coalesced) and add their partial
 * sums with subgroup operations — the usual shape of a bandwidth-bound matrix-vector product on GPUs.
 * The register-blocked kernel gives each invocation whole rows, so a warp's loads are a row apart.
 * Chosen by that reasoning, not by a measurement (no GPU was at hand); `bench/gpu/run.sh --sweep`
 * measures the grid on a GPU, and its file, once registered, replaces this rule for that GPU.
 */
function hardwareDefault(tokens: number): MatmulVariant | undefined {
  const cls = tokenClass(tokens);
  if (cls === 'decode') return { TM: 1, TN: 2, WG: 128, SUBGROUPS: true };
  if (cls === 'batch') return { TM: 4, TN: 2, WG: 128, SUBGROUPS: true };
  return undefined;
}

/**
 * The matmul variant for this adapter, token count and dtype: the measured winner when the adapter
 * was tuned, the hardware rule above for GPUs, else undefined (recordMatmul then uses matmulTiling).
 */
export function tunedMatmulVariant(gpu: Gpu, tokens: number, dtype: Dtype): MatmulVariant | undefined {
  const file = tuned.get(gpu.adapter.name);
  if (file) return file.winners[tokenClass(tokens)]?.[dtype];
  return gpu.adapter.software ? undefined : hardwareDefault(tokens);
}

/** Attention kernels: the tiled one (shaders/attention_tiled.wgsl) or one workgroup per token (shaders/attention.wgsl). */
export type AttentionVariant = 'tiled' | 'rows';

/** The tiled attention kernel's shape: BQ query tokens per workgroup (times the GQA group), BK keys per block. */
export interface AttentionTiling {
  BQ: number;
  BK: number;
}

/**
 * Per adapter: the tiled kernel's invocations per workgroup (BQ · group, rounded), keys per block, and
 * from how many query tokens per sequence it replaces attention.wgsl. Measured side by side with
 * `npm run bench -- --sections kernels --quick --only 'attention.*prefill'` (bench/RESULTS.md, "Tiled
 * attention"): on lavapipe at Llama-3.2-1B's heads the tiled kernel ran 2–5.7× faster than
 * attention.wgsl at 64 and 256 prompt tokens, so prefill uses it there from 8 tokens a sequence (one
 * tile; the crossover below that is not measured, and decode keeps attention.wgsl). SwiftShader and
 * GPUs keep attention.wgsl until measured. `variant` forces either kernel (tests, bench).
 */
interface AttentionRule {
  lanes: number;
  BK: number;
  minQueries: number;
}
const ATTENTION_RULES: Record<string, AttentionRule> = {
  llvmpipe: { lanes: 32, BK: 4, minQueries: 8 },
  swiftshader: { lanes: 32, BK: 4, minQueries: Infinity },
};
const HARDWARE_ATTENTION: AttentionRule = { lanes: 64, BK: 4, minQueries: Infinity };

/**
 * The tiled kernel keeps a query row and its accumulators per invocation (2 · head_dim values). Its
 * first form, with the head-dimension loops unrolled, did not finish compiling on llvmpipe in minutes at
 * head_dim 128; the present form is untested there, so longer heads use attention.wgsl.
 */
export const TILED_MAX_HEAD_DIM = 64;

/**
 * The tiled attention kernel's shape for this adapter and GQA group when `queriesPerSequence` (tokens of
 * the step over its sequences) reaches the adapter's threshold, else undefined (attention.wgsl).
 */
export function attentionTiling(gpu: Gpu, group: number, headDim: number, queriesPerSequence: number): AttentionTiling | undefined {
  const rule = ATTENTION_RULES[gpu.adapter.name] ?? HARDWARE_ATTENTION;
  if (queriesPerSequence < rule.minQueries) return undefined;
  if (headDim > TILED_MAX_HEAD_DIM) return undefined;
  const maxBq = Math.max(1, Math.floor(gpu.limits.maxComputeInvocationsPerWorkgroup / group));
  return { BQ: Math.min(maxBq, Math.max(1, Math.round(rule.lanes / group))), BK: rule.BK };
}
