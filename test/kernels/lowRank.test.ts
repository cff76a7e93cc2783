import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { bytesPerElement, decodeToFloat64, encodeFromFloat32, unpackFromU32, type Dtype } from '../../src/io/dtype.ts';
import { recordColumnDot, recordLowRankUpdate, recordSubspaceCut, recordSubspaceCutInverse, subspaceCutFactorsLength, type CutSide } from '../../src/kernels/lowRank.ts';
import type { PackedMatrix } from '../../src/gpu/packedMatrix.ts';
import { expectClose } from '../helpers/compare.ts';
import { destroyMatrix, f32, packedMatrix, poisonedBuffer, testGpu } from '../helpers/gpu.ts';
import { Random } from '../helpers/random.ts';

let gpu: Gpu;
let smallBindings: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
  // Forces weight matrices to be split into row chunks of at most 4 KiB.
  smallBindings = await testGpu({ maxStorageBufferBindingSize: 4096 });
});

/** Bit agreement of every low-rank update against its reference, per case: printed at the end. */
const agreement = new Map<string, { exact: number; total: number; maxUlp: number }>();
afterAll(() => {
  gpu?.dispose();
  smallBindings?.dispose();
  if (agreement.size) {
    const lines = [...agreement].map(([what, { exact, total, maxUlp }]) => `  ${what}: ${exact}/${total} bit-exact (${((100 * exact) / total).toFixed(4)}%), max ${maxUlp} ulp`);
    console.log(`low_rank_update against its references, rounded to nearest even:\n${lines.join('\n')}`);
  }
});

const DTYPES = ['F32', 'BF16', 'F16'] as const;

/** The element bit patterns (16 or 32 bits) of a GPU matrix, and the stored u32 words of every chunk. */
async function readMatrix(device: Gpu, matrix: PackedMatrix): Promise<{ bits: Uint32Array; values: Float64Array; words: Uint32Array[] }> {
  const size = bytesPerElement(matrix.dtype);
  const bytes = new Uint8Array(matrix.rows * matrix.cols * size);
  const words: Uint32Array[] = [];
  for (const chunk of matrix.chunks) {
    const w = await device.readU32(chunk.buffer);
    words.push(w);
    bytes.set(unpackFromU32(w, matrix.dtype, chunk.rows * matrix.cols), chunk.rowStart * matrix.cols * size);
  }
  return { bits: elementBits(bytes, matrix.dtype), values: decodeToFloat64(bytes, matrix.dtype), words };
}

function elementBits(bytes: Uint8Array, dtype: Dtype): Uint32Array {
  const copy = bytes.slice();
  return dtype === 'F32' ? new Uint32Array(copy.buffer) : Uint32Array.from(new Uint16Array(copy.buffer));
}

/** Float64 values rounded to the dtype with round-to-nearest-even (through f32), as bit patterns. */
function roundedBits(values: Float64Array, dtype: Dtype): Uint32Array {
  return elementBits(encodeFromFloat32(Float32Array.from(values), dtype), dtype);
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

function bitsOf(x: number): number {
  scratch[0] = x;
  return scratchBits[0]!;
}

/** The f32 next to `f` (an f32) in the direction of `toward` (> 0: up, < 0: down). */
function nextF32(f: number, toward: number): number {
  const bits = bitsOf(f);
  const magnitudeUp = f === 0 ? true : f > 0 === toward > 0;
  const negative = f === 0 ? toward < 0 : f < 0;
  const magnitude = (bits & 0x7fffffff) + (magnitudeUp ? 1 : -1);
  scratchBits[0] = (negative ? 0x80000000 : 0) | magnitude;
  return scratch[0]!;
}

/**
 * w − s·b for f32 w, s, b, correctly rounded to f32 — to nearest even, or to odd (for a later exact
 * rounding to 16 bits) — from an exact float64 pair: s·b is exact in float64 (48 bits) and TwoSum
 * gives w − s·b = t + e exactly.
 */
function exactUpdateF32(w: number, s: number, b: number, toOdd: boolean): number {
  const p = s * b;
  const t = w - p;
  const bv = t - w;
  const e = (w - (t - bv)) + (-p - bv);
  const f = Math.fround(t);
  if (f === t && e === 0) return f;
  if (toOdd) {
    if ((bitsOf(f) & 1) === 1) return f;
    return nextF32(f, t !== f ? t - f : e);
  }
  if (f === t) return f;
  // t exactly halfway between two f32: the residual e decides (fround already took the even one).
  const other = nextF32(f, t - f);
  if ((f + other) / 2 === t && e !== 0) return (e > 0) === (other > f) ? other : f;
  return f;
}

/**
 * The kernel's result, modelled exactly: y = w, then for each k, y − s_ik·b[k, j] (s_ik = α a[k, i] in f32)
 * correctly rounded to f32, the last step to odd for 16-bit dtypes, then rounded to the dtype. For
 * K = 1 that is the correctly rounded w − s_i·b_j.
 */
function exactUpdateBits(w: Float64Array, a: Float64Array, b: Float64Array, alpha: number, rank: number, rows: number, cols: number, dtype: Dtype): Uint32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < rows; i++) {
    const s = Array.from({ length: rank }, (_, k) => Math.fround(Math.fround(alpha) * a[k * rows + i]!));
    for (let j = 0; j < cols; j++) {
      let y = w[i * cols + j]!;
      for (let k = 0; k < rank; k++) y = exactUpdateF32(y, s[k]!, b[k * cols + j]!, k === rank - 1 && dtype !== 'F32');
      out[i * cols + j] = y;
    }
  }
  return elementBits(encodeFromFloat32(out, dtype), dtype);
}

/** Distance in units in the last place between two bit patterns of the dtype (NaN = NaN). */
function ulpDistance(x: number, y: number, dtype: Dtype): number {
  const width = dtype === 'F32' ? 32 : 16;
  const signBit = 2 ** (width - 1);
  const expMask = dtype === 'F32' ? 0x7f800000 : dtype === 'BF16' ? 0x7f80 : 0x7c00;
  const isNaN = (b: number) => (b & (signBit - 1)) > expMask;
  if (isNaN(x) || isNaN(y)) return isNaN(x) && isNaN(y) ? 0 : Infinity;
  const key = (b: number) => (b >= signBit ? -(b - signBit) : b);
  return Math.abs(key(x) - key(y));
}

/** Requires ≥ `minExact` (99.9%) bit-exact elements and ≤ `maxUlp` elsewhere; records the measured agreement. */
function expectBits(got: Uint32Array, want: Uint32Array, dtype: Dtype, what: string, seed: number, options: { minExact?: number; maxUlp?: number } = {}) {
  const { minExact = 0.999, maxUlp = 1 } = options;
  let exact = 0;
  let worst = 0;
  let worstAt = 0;
  for (let i = 0; i < want.length; i++) {
    const distance = ulpDistance(got[i]!, want[i]!, dtype);
    if (distance === 0) exact++;
    if (distance > worst) [worst, worstAt] = [distance, i];
  }
  const key = `${dtype} ${what.replace(/ rows=\d+ cols=\d+/, '')}`;
  const total = agreement.get(key) ?? { exact: 0, total: 0, maxUlp: 0 };
  agreement.set(key, { exact: total.exact + exact, total: total.total + want.length, maxUlp: Math.max(total.maxUlp, worst) });
  const context = `${dtype} ${what}: ${exact}/${want.length} bit-exact, worst ${worst} ulp at ${worstAt} (got 0x${got[worstAt]!.toString(16)}, want 0x${want[worstAt]!.toString(16)}); reproduce with TEST_SEED=${seed}`;
  // A tolerance below 100% allows one element in small cases (a 1×1 or 3×5 matrix cannot be 99.9%).
  expect(exact, context).toBeGreaterThanOrEqual(minExact === 1 ? want.length : Math.floor(minExact * want.length) - 1);
  expect(worst, context).toBeLessThanOrEqual(maxUlp);
}

function unitVector(rng: Random, n: number): Float64Array {
  const v = rng.normals(n);
  const norm = Math.hypot(...v);
  return Float64Array.from(f32(v.map((x) => x / norm)));
}

/** K unit vectors of length n, one after the other (not orthogonal: the kernels do not need it). */
function unitVectors(rng: Random, rank: number, n: number): Float64Array {
  const out = new Float64Array(rank * n);
  for (let k = 0; k < rank; k++) out.set(unitVector(rng, n), k * n);
  return out;
}

/** K orthonormal vectors of length n (K ≤ n), rounded to f32, one after the other. */
function orthonormalVectors(rng: Random, rank: number, n: number): Float64Array {
  const basis: Float64Array[] = [];
  while (basis.length < rank) {
    const x = rng.normals(n);
    for (let pass = 0; pass < 2; pass++) {
      for (const q of basis) {
        const p = dot(q, x);
        for (let i = 0; i < n; i++) x[i] = x[i]! - p * q[i]!;
      }
    }
    const norm = Math.sqrt(dot(x, x));
    if (norm > 1e-3) basis.push(x.map((v) => v / norm));
  }
  const out = new Float64Array(rank * n);
  basis.forEach((q, k) => out.set(f32(q), k * n));
  return out;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>, aOffset = 0, bOffset = 0, n = a.length - aOffset): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += a[aOffset + i]! * b[bOffset + i]!;
  return sum;
}

/** V = BᵀW in float64: V[k, j] = Σ_i basis[k, i] W[i, j]. */
function columnDots(w: Float64Array, basis: Float64Array, rank: number, rows: number, cols: number): Float64Array {
  const v = new Float64Array(rank * cols);
  for (let k = 0; k < rank; k++) for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) v[k * cols + j] = v[k * cols + j]! + basis[k * rows + i]! * w[i * cols + j]!;
  return v;
}

/** U = E B in float64 as [K, rows]: U[k, i] = E_i · basis[k]. */
function rowDots(w: Float64Array, basis: Float64Array, rank: number, rows: number, cols: number): Float64Array {
  const u = new Float64Array(rank * rows);
  for (let k = 0; k < rank; k++) for (let i = 0; i < rows; i++) u[k * rows + i] = dot(w, basis, i * cols, k * cols, cols);
  return u;
}

/** W − α Σ_k a_k b_kᵀ in float64, optionally each row rescaled to its original norm. */
function updated(w: Float64Array, a: Float64Array, b: Float64Array, alpha: number, rank: number, rows: number, cols: number, preserveRowNorm = false): Float64Array {
  const out = new Float64Array(w.length);
  for (let i = 0; i < rows; i++) {
    let oldSq = 0;
    let newSq = 0;
    for (let j = 0; j < cols; j++) {
      const x = w[i * cols + j]!;
      let y = x;
      for (let k = 0; k < rank; k++) y -= alpha * a[k * rows + i]! * b[k * cols + j]!;
      out[i * cols + j] = y;
      oldSq += x * x;
      newSq += y * y;
    }
    if (preserveRowNorm && newSq > oldSq * 1e-12) {
      const scale = Math.sqrt(oldSq / newSq);
      for (let j = 0; j < cols; j++) out[i * cols + j] = out[i * cols + j]! * scale;
    }
  }
  return out;
}

function rowNorms(w: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const norms = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    let sq = 0;
    for (let j = 0; j < cols; j++) sq += w[i * cols + j]! ** 2;
    norms[i] = Math.sqrt(sq);
  }
  return norms;
}

const SHAPES: [number, number][] = [
  [1, 1],
  [3, 5],
  [64, 64],
  [65, 127],
  [130, 257],
  [7, 1000],
  [200, 36],
];

const RANKS = [1, 2, 3, 5] as const;

function relativeNormError(got: Float64Array, want: Float64Array): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / want[i]!);
  return worst;
}

describe('column_dot: V = BᵀW over packed weights, K vectors at once', () => {
  async function check(device: Gpu, dtype: Dtype, rows: number, cols: number, rank: number) {
    const rng = new Random();
    const { matrix, stored } = await packedMatrix(device, 'w', dtype, rows, cols, rng.normals(rows * cols, 1 / Math.sqrt(cols)));
    const basis = unitVectors(rng, rank, rows);
    const basisBuf = device.upload(f32(basis), 'basis');
    // One poisoned value past the end: never written.
    const vBuf = poisonedBuffer(device, rank * cols + 1, 'v');
    const batch = device.batch('column_dot');
    recordColumnDot(batch, { matrix, basis: basisBuf, rank, v: vBuf });
    await batch.submit();
    const got = await device.readF32(vBuf);
    expect(Number.isNaN(got[rank * cols]!)).toBe(true);
    const error = expectClose(got.subarray(0, rank * cols), columnDots(stored, basis, rank, rows, cols), 1e-5, `${dtype} rows=${rows} cols=${cols} K=${rank}`, rng.seed);
    destroyMatrix(device, matrix);
    device.destroyBuffer(basisBuf);
    device.destroyBuffer(vBuf);
    return { error, chunks: matrix.chunks.length, got: got.subarray(0, rank * cols) };
  }

  for (const dtype of DTYPES) {
    it.each(SHAPES)(`${dtype} rows=%i cols=%i, K = 1, 2, 3, 5`, async (rows, cols) => {
      for (const rank of RANKS) await check(gpu, dtype, rows, cols, rank);
    });
  }

  it('accumulates over row chunks of a matrix larger than a storage binding', async () => {
    for (const dtype of DTYPES) {
      for (const [rows, cols, rank] of [
        [301, 33, 1],
        [97, 100, 3],
        [40, 1024, 2],
        [129, 65, 5],
      ] as const) {
        const { chunks } = await check(smallBindings, dtype, rows, cols, rank);
        expect(chunks).toBeGreaterThan(1);
      }
    }
  });

  it('is deterministic, and each vector gives the same sums whatever K', async () => {
    const rng = new Random();
    const [rows, cols] = [333, 129];
    const { matrix } = await packedMatrix(gpu, 'w', 'BF16', rows, cols, rng.normals(rows * cols));
    const basis = f32(unitVectors(rng, 3, rows));
    const run = async (data: Float32Array, rank: number) => {
      const basisBuf = gpu.upload(data, 'basis');
      const vBuf = poisonedBuffer(gpu, rank * cols, 'v');
      const batch = gpu.batch('column_dot');
      recordColumnDot(batch, { matrix, basis: basisBuf, rank, v: vBuf });
      await batch.submit();
      const v = await gpu.readF32(vBuf);
      gpu.destroyBuffer(basisBuf);
      gpu.destroyBuffer(vBuf);
      return v;
    };
    const results = [await run(basis, 3), await run(basis, 3), await run(basis, 3)];
    expect(results[1]).toEqual(results[0]);
    expect(results[2]).toEqual(results[0]);
    for (let k = 0; k < 3; k++) expect(await run(basis.slice(k * rows, (k + 1) * rows), 1)).toEqual(results[0]!.slice(k * cols, (k + 1) * cols));
    destroyMatrix(gpu, matrix);
  });
});

describe('low_rank_update: W ← W − α Σ_k a_k b_kᵀ in the stored dtype', () => {
  /** a = K unit directions over the rows, b = their column dots: the shapes and scales of the o_proj/down_proj cut. */
  async function check(device: Gpu, dtype: Dtype, rows: number, cols: number, rank: number, alpha: number, preserveRowNorm = false) {
    const rng = new Random();
    const { matrix, stored } = await packedMatrix(device, 'w', dtype, rows, cols, rng.normals(rows * cols, 1 / Math.sqrt(cols)));
    const a = unitVectors(rng, rank, rows);
    const b = Float64Array.from(f32(columnDots(stored, a, rank, rows, cols)));
    const aBuf = device.upload(f32(a), 'a');
    const bBuf = device.upload(f32(b), 'b');
    const before = await readMatrix(device, matrix);
    const batch = device.batch('low_rank_update');
    recordLowRankUpdate(batch, { matrix, a: aBuf, b: bBuf, rank, alpha, preserveRowNorm });
    await batch.submit();
    const after = await readMatrix(device, matrix);
    const expected = updated(stored, a, b, alpha, rank, rows, cols, preserveRowNorm);
    const what = `${preserveRowNorm ? 'update+norm' : 'update'} K=${rank} alpha=${alpha} rows=${rows} cols=${cols}`;
    if (preserveRowNorm && dtype === 'F32') {
      // The rescale factor comes from two f32 reductions: a few ulp of f32, not bit-exact.
      expectClose(after.values, expected, 1e-6, `${dtype} ${what}`, rng.seed);
      expectBits(after.bits, roundedBits(expected, dtype), dtype, what, rng.seed, { minExact: 0, maxUlp: Infinity });
    } else if (preserveRowNorm) {
      expectBits(after.bits, roundedBits(expected, dtype), dtype, what, rng.seed);
    } else {
      // Exactly the kernel's arithmetic: for K = 1 the correctly rounded w − s_i b_j, s_i = α a_i in f32.
      expectBits(after.bits, exactUpdateBits(stored, a, b, alpha, rank, rows, cols, dtype), dtype, `${what} (exact)`, rng.seed, { minExact: 1, maxUlp: 0 });
      if (dtype === 'F32') {
        // Against float64: where the update cancels most of w, f32 results move by many of their
        // ulp (s_i = fround(α a_i) is 2⁻²⁴ off α a_i, and K > 1 rounds after every step).
        expectClose(after.values, expected, 1e-6, `${dtype} ${what} (float64)`, rng.seed);
        expectBits(after.bits, roundedBits(expected, dtype), dtype, `${what} (float64)`, rng.seed, { minExact: 0, maxUlp: Infinity });
      } else if (rank === 1) {
        expectBits(after.bits, roundedBits(expected, dtype), dtype, `${what} (float64)`, rng.seed);
      } else {
        // K > 1 rounds to f32 after each step: where the steps cancel most of w, that moves the
        // 16-bit result by an ulp or two.
        expectClose(after.values, expected, dtype === 'BF16' ? 1e-2 : 2e-3, `${dtype} ${what} (float64)`, rng.seed);
        expectBits(after.bits, roundedBits(expected, dtype), dtype, `${what} (float64)`, rng.seed, { maxUlp: Infinity });
      }
    }
    // The padding half of an odd-length 16-bit matrix is kept.
    const last = after.words.at(-1)!;
    const lastChunk = matrix.chunks.at(-1)!;
    if (dtype !== 'F32' && (lastChunk.rows * cols) % 2 === 1) expect(last[(lastChunk.rows * cols - 1) >> 1]! >>> 16).toBe(before.words.at(-1)![(lastChunk.rows * cols - 1) >> 1]! >>> 16);
    destroyMatrix(device, matrix);
    device.destroyBuffer(aBuf);
    device.destroyBuffer(bBuf);
    return { matrix, after, stored };
  }

  for (const dtype of DTYPES) {
    it.each(SHAPES)(`${dtype} rows=%i cols=%i, K = 1, 2, 3, 5`, async (rows, cols) => {
      for (const rank of RANKS) {
        await check(gpu, dtype, rows, cols, rank, 1);
        await check(gpu, dtype, rows, cols, rank, 0.625);
      }
    });
  }

  it('updates every row chunk of a matrix larger than a storage binding', async () => {
    for (const dtype of DTYPES) {
      for (const [rows, cols, rank] of [
        [301, 33, 1],
        [97, 100, 2],
        [41, 513, 3],
        [129, 65, 5],
      ] as const) {
        const { matrix } = await check(smallBindings, dtype, rows, cols, rank, 1);
        expect(matrix.chunks.length).toBeGreaterThan(1);
      }
    }
  });

  it('preserves row norms', async () => {
    for (const dtype of DTYPES) {
      for (const [rows, cols, rank] of [
        [65, 127, 1],
        [130, 257, 3],
        [3, 5, 2],
        [64, 64, 5],
      ] as const) {
        const { after, stored } = await check(gpu, dtype, rows, cols, rank, 1, true);
        if (dtype === 'F32') {
          const error = relativeNormError(rowNorms(after.values, rows, cols), rowNorms(stored, rows, cols));
          expect(error).toBeLessThan(1e-6);
        }
      }
      await check(smallBindings, dtype, 97, 33, 1, 0.8, true);
      await check(smallBindings, dtype, 97, 33, 3, 0.8, true);
    }
  });

  it('rounds exactly on ties, cancellations and exponent gaps', async () => {
    // Few-bit mantissas at nearby scales: exact results often lie exactly halfway between two
    // representable values, or cancel entirely; widely different scales exercise the sticky bit.
    for (const dtype of DTYPES) {
      for (const rank of [1, 2]) {
        const rng = new Random();
        const [rows, cols] = [37, 201];
        const bits = dtype === 'F32' ? 12 : dtype === 'BF16' ? 5 : 6;
        const fewBits = (scale: number) => (rng.next() < 0.5 ? -1 : 1) * rng.int(1, 2 ** bits - 1) * 2 ** (rng.int(-3, 3) + scale);
        const values = Float64Array.from({ length: rows * cols }, () => fewBits(-bits));
        const a = Float64Array.from({ length: rank * rows }, () => fewBits(-bits));
        const b = Float64Array.from({ length: rank * cols }, () => (rng.next() < 0.1 ? fewBits(-bits - 40) : fewBits(0)));
        // Full cancellations: w = a_i b_j (of the last pair, when K = 1 the only one).
        for (let k = 0; k < 50; k++) {
          const i = rng.int(0, rows - 1);
          const j = rng.int(0, cols - 1);
          values[i * cols + j] = dtype === 'F32' && rank === 1 ? a[i]! * b[j]! : values[i * cols + j]!;
        }
        const { matrix, stored } = await packedMatrix(gpu, 'w', dtype, rows, cols, values);
        const batch = gpu.batch('low_rank_update ties');
        recordLowRankUpdate(batch, { matrix, a: gpu.upload(f32(a), 'a'), b: gpu.upload(f32(b), 'b'), rank, alpha: 1 });
        await batch.submit();
        const after = await readMatrix(gpu, matrix);
        const want = exactUpdateBits(stored, a, b, 1, rank, rows, cols, dtype);
        let ties = 0;
        const exact = updated(stored, a, b, 1, rank, rows, cols);
        for (let i = 0; i < exact.length; i++) {
          const x = dtype === 'F32' ? Math.fround(exact[i]!) : exact[i]!;
          if (x !== exact[i]) {
            const other = dtype === 'F32' ? nextF32(x, exact[i]! - x) : x;
            if ((x + other) / 2 === exact[i]) ties++;
          }
        }
        expectBits(after.bits, want, dtype, `hard cases K=${rank}${dtype === 'F32' ? ` (${ties} f32 ties)` : ''}`, rng.seed, { minExact: 1, maxUlp: 0 });
        if (rank === 1) expect(after.bits.some((x) => x === 0)).toBe(true);
        destroyMatrix(gpu, matrix);
      }
    }
  });

  it('keeps NaN elements NaN and updates their word neighbours', async () => {
    for (const dtype of DTYPES) {
      for (const rank of [1, 3]) {
        const rng = new Random();
        const [rows, cols] = [5, 7];
        const values = rng.normals(rows * cols);
        values[8] = Number.NaN;
        values[17] = Number.NaN;
        const { matrix, stored } = await packedMatrix(gpu, 'w', dtype, rows, cols, values);
        const a = Float64Array.from(f32(rng.normals(rank * rows)));
        const b = Float64Array.from(f32(rng.normals(rank * cols)));
        const batch = gpu.batch('low_rank_update nan');
        recordLowRankUpdate(batch, { matrix, a: gpu.upload(f32(a), 'a'), b: gpu.upload(f32(b), 'b'), rank, alpha: 0.5 });
        await batch.submit();
        const after = await readMatrix(gpu, matrix);
        expect(Number.isNaN(after.values[8]!) && Number.isNaN(after.values[17]!)).toBe(true);
        const want = exactUpdateBits(stored, a, b, 0.5, rank, rows, cols, dtype);
        for (let i = 0; i < rows * cols; i++) if (i !== 8 && i !== 17) expect(ulpDistance(after.bits[i]!, want[i]!, dtype)).toBe(0);
        destroyMatrix(gpu, matrix);
      }
    }
  });
});

/** Error bounds measured by the subspace-cut tests, printed at the end. */
const measured = new Map<string, number>();
afterAll(() => {
  if (measured.size) console.log(`subspace cut, measured:\n${[...measured].map(([what, value]) => `  ${what}: ${value.toExponential(2)}`).join('\n')}`);
});
function record(what: string, value: number): void {
  measured.set(what, Math.max(measured.get(what) ?? 0, value));
}

describe('subspace cut: W ← W − α B (BᵀW) (o_proj, down_proj) and E ← E − α (E B) Bᵀ (embedding)', () => {
  async function check(device: Gpu, dtype: Dtype, side: CutSide, rows: number, cols: number, rank: number, alpha: number, preserveRowNorm = false) {
    const rng = new Random();
    const hidden = side === 'output' ? rows : cols;
    const basis = orthonormalVectors(rng, rank, hidden);
    const values = rng.normals(rows * cols, 0.05);
    // A row (embedding) or column (o_proj) inside the subspace: removed entirely with α = 1.
    const inside = (i: number) => 3 * basis[i]! - 2 * basis[(rank - 1) * hidden + i]!;
    if (side === 'input') for (let j = 0; j < cols; j++) values[j] = inside(j);
    else for (let i = 0; i < rows; i++) values[i * cols] = inside(i);
    const { matrix, stored } = await packedMatrix(device, side === 'output' ? 'o_proj' : 'embed_tokens', dtype, rows, cols, values);
    const basisBuf = device.upload(f32(basis), 'basis');
    const factorsLength = subspaceCutFactorsLength(matrix, side, rank);
    const factorsBuf = poisonedBuffer(device, factorsLength, 'factors');
    const batch = device.batch('subspace cut');
    recordSubspaceCut(batch, { matrix, side, basis: basisBuf, rank, alpha, preserveRowNorm, factors: factorsBuf });
    await batch.submit();
    const what = `${side} K=${rank}${preserveRowNorm ? ' +norm' : ''}`;
    // The factors against float64.
    const factors = Float64Array.from(await device.readF32(factorsBuf));
    const wantFactors = side === 'output' ? columnDots(stored, basis, rank, rows, cols) : rowDots(stored, basis, rank, rows, cols);
    record(`${dtype} ${side} factors relative error`, expectClose(factors, wantFactors, 1e-5, `${dtype} ${what} factors`, rng.seed));
    const [a, b] = side === 'output' ? [basis, factors] : [factors, basis];
    const [a64, b64] = side === 'output' ? [basis, wantFactors] : [wantFactors, basis];
    const after = await readMatrix(device, matrix);
    if (!preserveRowNorm) {
      // Given the factors the GPU computed, the update is exactly the kernel's arithmetic.
      expectBits(after.bits, exactUpdateBits(stored, a, b, alpha, rank, rows, cols, dtype), dtype, `cut ${what} (exact given factors)`, rng.seed, { minExact: 1, maxUlp: 0 });
    }
    // The whole cut against float64, relative to the largest element.
    const expected = updated(stored, a64, b64, alpha, rank, rows, cols, preserveRowNorm);
    const bound = dtype === 'F32' ? 1e-5 : dtype === 'BF16' ? 1e-2 : 2e-3;
    record(`${dtype} cut vs float64 (max |Δ| / max |W|)`, expectClose(after.values, expected, bound, `${dtype} ${what}`, rng.seed));
    if (alpha === 1 && !preserveRowNorm) {
      // The property: the subspace is gone from what W writes (BᵀW' ≈ 0), or from each row of E (E'B ≈ 0).
      const residual = side === 'output' ? columnDots(after.values, basis, rank, rows, cols) : rowDots(after.values, basis, rank, rows, cols);
      const scale = Math.max(...(side === 'output' ? rowNorms(transpose(stored, rows, cols), cols, rows) : rowNorms(stored, rows, cols)));
      const worst = Math.max(...residual.map(Math.abs)) / scale;
      // f32: rounding only; 16-bit: the weights' own rounding (~2⁻⁹ per element, averaged by B).
      expect(worst, `${dtype} ${what} max residual / max norm; TEST_SEED=${rng.seed}`).toBeLessThan(dtype === 'F32' ? 1e-6 : dtype === 'BF16' ? 1e-2 : 2e-3);
      record(`${dtype} residual in the subspace / norm`, worst);
    }
    if (preserveRowNorm && dtype === 'F32') {
      // Row 0 of the embedding lies in the subspace: its remainder is rounding noise, left unscaled.
      const from = side === 'input' ? 1 : 0;
      const error = relativeNormError(rowNorms(after.values, rows, cols).subarray(from), rowNorms(stored, rows, cols).subarray(from));
      expect(error, `row norms; TEST_SEED=${rng.seed}`).toBeLessThan(1e-6);
      record('F32 row-norm change with preservation', error);
    }
    // The inverse update from the kept factors gives back the original within rounding.
    if (!preserveRowNorm) {
      const inverse = device.batch('subspace cut inverse');
      recordSubspaceCutInverse(inverse, { matrix, side, basis: basisBuf, rank, alpha, factors: factorsBuf });
      await inverse.submit();
      const back = await readMatrix(device, matrix);
      const error = expectClose(back.values, stored, dtype === 'F32' ? 1e-6 : dtype === 'BF16' ? 1e-2 : 2e-3, `${dtype} ${what} inverse`, rng.seed);
      record(`${dtype} inverse update vs original`, error);
    }
    destroyMatrix(device, matrix);
    device.destroyBuffer(basisBuf);
    device.destroyBuffer(factorsBuf);
    return matrix;
  }

  for (const dtype of DTYPES) {
    it(`${dtype}: K = 1, 2, 3, 5 on both sides`, async () => {
      for (const rank of RANKS) {
        await check(gpu, dtype, 'output', 96, 200, rank, 1);
        await check(gpu, dtype, 'output', 65, 127, rank, 0.7);
        await check(gpu, dtype, 'input', 300, 65, rank, 1);
        await check(gpu, dtype, 'input', 70, 256, rank, 0.7);
      }
    });
    it(`${dtype}: with row norms preserved`, async () => {
      for (const rank of [1, 3]) {
        await check(gpu, dtype, 'output', 96, 200, rank, 1, true);
        await check(gpu, dtype, 'input', 300, 65, rank, 0.7, true);
      }
    });
    it(`${dtype}: over row chunks`, async () => {
      for (const rank of RANKS) {
        expect((await check(smallBindings, dtype, 'output', 129, 65, rank, 1)).chunks.length).toBeGreaterThan(1);
        expect((await check(smallBindings, dtype, 'input', 257, 33, rank, 1)).chunks.length).toBeGreaterThan(1);
      }
      await check(smallBindings, dtype, 'input', 257, 33, 2, 1, true);
    });
  }
});

function transpose(w: Float64Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(w.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = w[i * cols + j]!;
  return t;
}

describe('recorder argument checks', () => {
  it('refuses undersized vectors, a bad rank and a non-finite alpha, recording nothing', async () => {
    const { matrix } = await packedMatrix(gpu, 'w', 'BF16', 4, 6, new Float64Array(24));
    const small = gpu.createBuffer(8, 'small');
    const ok = gpu.createBuffer(64, 'ok');
    const batch = gpu.batch('checks');
    expect(() => recordLowRankUpdate(batch, { matrix, a: small, b: ok, alpha: 1 })).toThrow(/a holds 2 f32 values, needs 4/);
    expect(() => recordLowRankUpdate(batch, { matrix, a: ok, b: ok, rank: 3, alpha: 1 })).toThrow(/b holds 16 f32 values, needs 18/);
    expect(() => recordLowRankUpdate(batch, { matrix, a: ok, b: ok, alpha: Number.NaN })).toThrow(/alpha/);
    expect(() => recordLowRankUpdate(batch, { matrix, a: ok, b: ok, rank: 0, alpha: 1 })).toThrow(/rank/);
    expect(() => recordColumnDot(batch, { matrix, basis: ok, v: small })).toThrow(/v holds 2 f32 values, needs 6/);
    expect(() => recordColumnDot(batch, { matrix, basis: ok, rank: 2.5, v: ok })).toThrow(/rank/);
    expect(() => recordSubspaceCut(batch, { matrix, side: 'output', basis: ok, rank: 5, alpha: 1, factors: ok })).toThrow(/rank must be an integer in 1..4/);
    expect(() => recordSubspaceCut(batch, { matrix, side: 'input', basis: ok, rank: 2, alpha: 1, factors: small })).toThrow(/factors holds 2 f32 values, needs 8/);
    expect(batch.size).toBe(0);
    destroyMatrix(gpu, matrix);
  });
});
