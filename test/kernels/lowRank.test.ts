import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { bytesPerElement, decodeToFloat64, encodeFromFloat32, unpackFromU32, type Dtype } from '../../src/io/dtype.ts';
import { recordColumnDot, recordDirectionalCut, recordOrthogonalizeRows, recordRank1Update } from '../../src/kernels/lowRank.ts';
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

/** Bit agreement of every rank-1 update against its float64 reference, per case: printed at the end. */
const agreement = new Map<string, { exact: number; total: number; maxUlp: number }>();
afterAll(() => {
  gpu?.dispose();
  smallBindings?.dispose();
  if (agreement.size) {
    const lines = [...agreement].map(([what, { exact, total, maxUlp }]) => `  ${what}: ${exact}/${total} bit-exact (${((100 * exact) / total).toFixed(4)}%), max ${maxUlp} ulp`);
    console.log(`rank1_update against float64 then round-to-nearest-even:\n${lines.join('\n')}`);
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

/** The bits of W − s bᵀ (s_i = fround(α a_i)) correctly rounded to the dtype. */
function exactUpdateBits(w: Float64Array, a: Float64Array, b: Float64Array, alpha: number, rows: number, cols: number, dtype: Dtype): Uint32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < rows; i++) {
    const s = Math.fround(alpha * a[i]!);
    for (let j = 0; j < cols; j++) out[i * cols + j] = exactUpdateF32(w[i * cols + j]!, s, b[j]!, dtype !== 'F32');
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

/** dᵀW in float64. */
function columnDot(w: Float64Array, d: Float64Array, rows: number, cols: number): Float64Array {
  const v = new Float64Array(cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) v[j] = v[j]! + d[i]! * w[i * cols + j]!;
  return v;
}

/** Row dots W b in float64. */
function rowDots(w: Float64Array, b: Float64Array, rows: number, cols: number): Float64Array {
  const a = new Float64Array(rows);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) a[i] = a[i]! + w[i * cols + j]! * b[j]!;
  return a;
}

/** W − α a bᵀ in float64, optionally each row rescaled to its original norm. */
function updated(w: Float64Array, a: Float64Array, b: Float64Array, alpha: number, rows: number, cols: number, preserveRowNorm = false): Float64Array {
  const out = new Float64Array(w.length);
  for (let i = 0; i < rows; i++) {
    let oldSq = 0;
    let newSq = 0;
    for (let j = 0; j < cols; j++) {
      const x = w[i * cols + j]!;
      const y = x - alpha * a[i]! * b[j]!;
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

describe('column_dot: v = dᵀW over packed weights', () => {
  async function check(device: Gpu, dtype: Dtype, rows: number, cols: number) {
    const rng = new Random();
    const { matrix, stored } = await packedMatrix(device, 'w', dtype, rows, cols, rng.normals(rows * cols, 1 / Math.sqrt(cols)));
    const d = unitVector(rng, rows);
    const dBuf = device.upload(f32(d), 'd');
    // One poisoned value past the end: never written.
    const vBuf = poisonedBuffer(device, cols + 1, 'v');
    const batch = device.batch('column_dot');
    recordColumnDot(batch, { matrix, d: dBuf, v: vBuf });
    await batch.submit();
    const got = await device.readF32(vBuf);
    expect(Number.isNaN(got[cols]!)).toBe(true);
    const error = expectClose(got.subarray(0, cols), columnDot(stored, d, rows, cols), 1e-5, `${dtype} rows=${rows} cols=${cols}`, rng.seed);
    destroyMatrix(device, matrix);
    device.destroyBuffer(dBuf);
    device.destroyBuffer(vBuf);
    return { error, chunks: matrix.chunks.length };
  }

  for (const dtype of DTYPES) {
    it.each(SHAPES)(`${dtype} rows=%i cols=%i`, async (rows, cols) => {
      await check(gpu, dtype, rows, cols);
    });
  }

  it('accumulates over row chunks of a matrix larger than a storage binding', async () => {
    for (const dtype of DTYPES) {
      for (const [rows, cols] of [
        [301, 33],
        [97, 100],
        [40, 1024],
      ] as const) {
        const { chunks } = await check(smallBindings, dtype, rows, cols);
        expect(chunks).toBeGreaterThan(1);
      }
    }
  });

  it('is deterministic', async () => {
    const rng = new Random();
    const { matrix } = await packedMatrix(gpu, 'w', 'BF16', 333, 129, rng.normals(333 * 129));
    const dBuf = gpu.upload(f32(unitVector(rng, 333)), 'd');
    const results: Float32Array[] = [];
    for (let run = 0; run < 3; run++) {
      const vBuf = poisonedBuffer(gpu, 129, 'v');
      const batch = gpu.batch('column_dot');
      recordColumnDot(batch, { matrix, d: dBuf, v: vBuf });
      await batch.submit();
      results.push(await gpu.readF32(vBuf));
    }
    expect(results[1]).toEqual(results[0]);
    expect(results[2]).toEqual(results[0]);
    destroyMatrix(gpu, matrix);
  });
});

describe('rank1_update: W ← W − α a bᵀ in the stored dtype', () => {
  /** a = a unit direction over the rows, b = dᵀW: the shapes and scales of the o_proj/down_proj cut. */
  async function check(device: Gpu, dtype: Dtype, rows: number, cols: number, alpha: number, preserveRowNorm = false) {
    const rng = new Random();
    const { matrix, stored } = await packedMatrix(device, 'w', dtype, rows, cols, rng.normals(rows * cols, 1 / Math.sqrt(cols)));
    const a = unitVector(rng, rows);
    const b = Float64Array.from(f32(columnDot(stored, a, rows, cols)));
    const aBuf = device.upload(f32(a), 'a');
    const bBuf = device.upload(f32(b), 'b');
    const before = await readMatrix(device, matrix);
    const batch = device.batch('rank1_update');
    recordRank1Update(batch, { matrix, a: aBuf, b: bBuf, alpha, preserveRowNorm });
    await batch.submit();
    const after = await readMatrix(device, matrix);
    const expected = updated(stored, a, b, alpha, rows, cols, preserveRowNorm);
    const what = `${preserveRowNorm ? 'update+norm' : 'update'} alpha=${alpha} rows=${rows} cols=${cols}`;
    if (preserveRowNorm && dtype === 'F32') {
      // The rescale factor comes from two f32 reductions: a few ulp of f32, not bit-exact.
      expectClose(after.values, expected, 1e-6, `${dtype} ${what}`, rng.seed);
      expectBits(after.bits, roundedBits(expected, dtype), dtype, what, rng.seed, { minExact: 0, maxUlp: Infinity });
    } else if (preserveRowNorm) {
      expectBits(after.bits, roundedBits(expected, dtype), dtype, what, rng.seed);
    } else {
      // Exactly the correctly rounded w − s_i b_j, s_i = α a_i in f32.
      expectBits(after.bits, exactUpdateBits(stored, a, b, alpha, rows, cols, dtype), dtype, `${what} (exact)`, rng.seed, { minExact: 1, maxUlp: 0 });
      // The float64 update W − α a bᵀ rounded (through f32) to the dtype. With α ≠ 1 the kernel's
      // s_i = fround(α a_i) differs from α a_i by 2⁻²⁴ relative, which moves f32 results where
      // the update cancels most of w; only reported.
      expectBits(after.bits, roundedBits(expected, dtype), dtype, `${what} (float64)`, rng.seed, alpha === 1 ? {} : { minExact: 0, maxUlp: Infinity });
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
    it.each(SHAPES)(`${dtype} rows=%i cols=%i`, async (rows, cols) => {
      await check(gpu, dtype, rows, cols, 1);
      await check(gpu, dtype, rows, cols, 0.625);
    });
  }

  it('updates every row chunk of a matrix larger than a storage binding', async () => {
    for (const dtype of DTYPES) {
      for (const [rows, cols] of [
        [301, 33],
        [97, 100],
        [41, 513],
      ] as const) {
        const { matrix } = await check(smallBindings, dtype, rows, cols, 1);
        expect(matrix.chunks.length).toBeGreaterThan(1);
      }
    }
  });

  it('preserves row norms', async () => {
    for (const dtype of DTYPES) {
      for (const [rows, cols] of [
        [65, 127],
        [130, 257],
        [3, 5],
      ] as const) {
        const { after, stored } = await check(gpu, dtype, rows, cols, 1, true);
        if (dtype === 'F32') {
          const error = relativeNormError(rowNorms(after.values, rows, cols), rowNorms(stored, rows, cols));
          expect(error).toBeLessThan(1e-6);
        }
      }
      await check(smallBindings, dtype, 97, 33, 0.8, true);
    }
  });

  it('rounds exactly on ties, cancellations and exponent gaps', async () => {
    // Few-bit mantissas at nearby scales: exact results often lie exactly halfway between two
    // representable values, or cancel entirely; widely different scales exercise the sticky bit.
    for (const dtype of DTYPES) {
      const rng = new Random();
      const [rows, cols] = [37, 201];
      const bits = dtype === 'F32' ? 12 : dtype === 'BF16' ? 5 : 6;
      const fewBits = (scale: number) => (rng.next() < 0.5 ? -1 : 1) * rng.int(1, 2 ** bits - 1) * 2 ** (rng.int(-3, 3) + scale);
      const values = Float64Array.from({ length: rows * cols }, () => fewBits(-bits));
      const a = Float64Array.from({ length: rows }, () => fewBits(-bits));
      const b = Float64Array.from({ length: cols }, () => (rng.next() < 0.1 ? fewBits(-bits - 40) : fewBits(0)));
      // Full cancellations: w = a_i b_j.
      for (let k = 0; k < 50; k++) {
        const i = rng.int(0, rows - 1);
        const j = rng.int(0, cols - 1);
        values[i * cols + j] = dtype === 'F32' ? a[i]! * b[j]! : values[i * cols + j]!;
      }
      const { matrix, stored } = await packedMatrix(gpu, 'w', dtype, rows, cols, values);
      const batch = gpu.batch('rank1_update ties');
      recordRank1Update(batch, { matrix, a: gpu.upload(f32(a), 'a'), b: gpu.upload(f32(b), 'b'), alpha: 1 });
      await batch.submit();
      const after = await readMatrix(gpu, matrix);
      const want = exactUpdateBits(stored, a, b, 1, rows, cols, dtype);
      let ties = 0;
      const exact = updated(stored, a, b, 1, rows, cols);
      for (let i = 0; i < exact.length; i++) {
        const x = dtype === 'F32' ? Math.fround(exact[i]!) : exact[i]!;
        if (x !== exact[i]) {
          const other = dtype === 'F32' ? nextF32(x, exact[i]! - x) : x;
          if ((x + other) / 2 === exact[i]) ties++;
        }
      }
      expectBits(after.bits, want, dtype, `hard cases${dtype === 'F32' ? ` (${ties} f32 ties)` : ''}`, rng.seed, { minExact: 1, maxUlp: 0 });
      expect(after.bits.some((x) => x === 0)).toBe(true);
      destroyMatrix(gpu, matrix);
    }
  });

  it('keeps NaN elements NaN and updates their word neighbours', async () => {
    for (const dtype of DTYPES) {
      const rng = new Random();
      const [rows, cols] = [5, 7];
      const values = rng.normals(rows * cols);
      values[8] = Number.NaN;
      values[17] = Number.NaN;
      const { matrix, stored } = await packedMatrix(gpu, 'w', dtype, rows, cols, values);
      const a = Float64Array.from(f32(rng.normals(rows)));
      const b = Float64Array.from(f32(rng.normals(cols)));
      const batch = gpu.batch('rank1_update nan');
      recordRank1Update(batch, { matrix, a: gpu.upload(f32(a), 'a'), b: gpu.upload(f32(b), 'b'), alpha: 0.5 });
      await batch.submit();
      const after = await readMatrix(gpu, matrix);
      expect(Number.isNaN(after.values[8]!) && Number.isNaN(after.values[17]!)).toBe(true);
      const want = exactUpdateBits(stored, a, b, 0.5, rows, cols, dtype);
      for (let i = 0; i < rows * cols; i++) if (i !== 8 && i !== 17) expect(ulpDistance(after.bits[i]!, want[i]!, dtype)).toBeLessThanOrEqual(1);
      destroyMatrix(gpu, matrix);
    }
  });
});

function relativeNormError(got: Float64Array, want: Float64Array): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / want[i]!);
  return worst;
}

describe('the directional cut W ← W − α d (dᵀW) (o_proj, down_proj)', () => {
  it.each(DTYPES)('%s: column_dot then rank1_update give the float64 update of the stored values', async (dtype) => {
    for (const [device, rows, cols] of [
      [gpu, 96, 200],
      [smallBindings, 129, 65],
    ] as const) {
      const rng = new Random();
      const { matrix, stored } = await packedMatrix(device, 'o_proj', dtype, rows, cols, rng.normals(rows * cols, 0.05));
      const d = unitVector(rng, rows);
      const dBuf = device.upload(f32(d), 'direction');
      const vBuf = poisonedBuffer(device, cols, 'v');
      const batch = device.batch('cut');
      recordDirectionalCut(batch, { matrix, direction: dBuf, v: vBuf, alpha: 1 });
      await batch.submit();
      // The update is exact given the v the GPU used; v itself is checked against float64 above.
      const v = Float64Array.from(await device.readF32(vBuf));
      expectClose(v, columnDot(stored, d, rows, cols), 1e-5, `${dtype} v`, rng.seed);
      const after = await readMatrix(device, matrix);
      expectBits(after.bits, exactUpdateBits(stored, d, v, 1, rows, cols, dtype), dtype, `cut rows=${rows} cols=${cols}`, rng.seed);
      // The property: dᵀW' ≈ 0, relative to the column norms of W.
      const residual = columnDot(after.values, d, rows, cols);
      let maxResidual = 0;
      let maxColumn = 0;
      for (let j = 0; j < cols; j++) {
        maxResidual = Math.max(maxResidual, Math.abs(residual[j]!));
        let sq = 0;
        for (let i = 0; i < rows; i++) sq += stored[i * cols + j]! ** 2;
        maxColumn = Math.max(maxColumn, Math.sqrt(sq));
      }
      // f32: rounding only (~1e-7); 16-bit: the weights' own rounding (~2⁻⁹ per element, averaged by d).
      const bound = dtype === 'F32' ? 1e-6 : dtype === 'BF16' ? 1e-2 : 2e-3;
      expect(maxResidual / maxColumn, `${dtype} max |dᵀW'| / max ‖W_:j‖; TEST_SEED=${rng.seed}`).toBeLessThan(bound);
      console.log(`${dtype} cut ${rows}×${cols}: max |dᵀW'| / max ‖W_:j‖ = ${(maxResidual / maxColumn).toExponential(2)}`);
      destroyMatrix(device, matrix);
    }
  });
});

describe('embedding orthogonalisation E ← E − α (E d) dᵀ (ROW_DOT)', () => {
  async function check(device: Gpu, dtype: Dtype, rows: number, cols: number, alpha: number, preserveRowNorm: boolean) {
    const rng = new Random();
    const values = rng.normals(rows * cols, 0.02);
    const d = unitVector(rng, cols);
    // A row along the direction: removed entirely, and with norm preservation left (near) zero.
    for (let j = 0; j < cols; j++) values[j] = 3 * d[j]!;
    const { matrix, stored } = await packedMatrix(device, 'embed_tokens', dtype, rows, cols, values);
    const dBuf = device.upload(f32(d), 'direction');
    const batch = device.batch('orthogonalize');
    recordOrthogonalizeRows(batch, { matrix, direction: dBuf, alpha, preserveRowNorm });
    await batch.submit();
    const after = await readMatrix(device, matrix);
    const expected = updated(stored, rowDots(stored, d, rows, cols), d, alpha, rows, cols, preserveRowNorm);
    const what = `rowdot${preserveRowNorm ? '+norm' : ''} rows=${rows} cols=${cols}`;
    // Rows other than the parallel one (for which a 1e-7 error in the dot is the whole result).
    const tail = <T extends Float64Array | Uint32Array>(x: T): T => x.subarray(cols) as T;
    if (dtype === 'F32') {
      // The row dot is an f32 reduction, so the result is close to float64 relative to the row's
      // scale, not bit-exact (where the update cancels most of an element, by many of its ulp).
      expectClose(tail(after.values), tail(expected), 1e-6, `${dtype} ${what}`, rng.seed);
      expectBits(tail(after.bits), tail(roundedBits(expected, dtype)), dtype, what, rng.seed, { minExact: 0, maxUlp: Infinity });
    } else {
      expectBits(tail(after.bits), tail(roundedBits(expected, dtype)), dtype, what, rng.seed);
    }
    const norms = rowNorms(stored, rows, cols);
    const newNorms = rowNorms(after.values, rows, cols);
    // The row along the direction is removed (up to the rounding of its stored values), and in f32,
    // where what remains is rounding noise, norm preservation leaves it alone.
    if (alpha === 1 && (dtype === 'F32' || !preserveRowNorm)) {
      expect(newNorms[0]! / norms[0]!, `row along d; TEST_SEED=${rng.seed}`).toBeLessThan(dtype === 'F32' ? 1e-5 : 1e-2);
    }
    if (alpha === 1 && dtype === 'F32') {
      // E' d ≈ 0 relative to each row's norm.
      const dots = rowDots(after.values, d, rows, cols);
      let worst = 0;
      for (let i = 1; i < rows; i++) worst = Math.max(worst, Math.abs(dots[i]!) / norms[i]!);
      expect(worst, `max |E'_i·d| / ‖E_i‖; TEST_SEED=${rng.seed}`).toBeLessThan(1e-6);
      console.log(`${what}: max |E'_i·d| / ‖E_i‖ = ${worst.toExponential(2)}`);
    }
    if (preserveRowNorm && dtype === 'F32') {
      const error = relativeNormError(newNorms.subarray(1), norms.subarray(1));
      expect(error, `row norms; TEST_SEED=${rng.seed}`).toBeLessThan(1e-6);
      console.log(`${what}: max relative row-norm change ${error.toExponential(2)}`);
    }
    destroyMatrix(device, matrix);
    device.destroyBuffer(dBuf);
    return matrix;
  }

  for (const dtype of DTYPES) {
    it(`${dtype}`, async () => {
      await check(gpu, dtype, 300, 65, 1, false);
      await check(gpu, dtype, 70, 256, 0.7, false);
      await check(gpu, dtype, 33, 1, 1, false);
    });
    it(`${dtype} with row norms preserved`, async () => {
      await check(gpu, dtype, 300, 65, 1, true);
      await check(gpu, dtype, 70, 256, 0.7, true);
    });
    it(`${dtype} over row chunks`, async () => {
      const matrix = await check(smallBindings, dtype, 257, 33, 1, false);
      expect(matrix.chunks.length).toBeGreaterThan(1);
      await check(smallBindings, dtype, 257, 33, 1, true);
    });
  }
});

describe('recorder argument checks', () => {
  it('refuses missing or undersized vectors', async () => {
    const { matrix } = await packedMatrix(gpu, 'w', 'BF16', 4, 6, new Float64Array(24));
    const small = gpu.createBuffer(8, 'small');
    const ok = gpu.createBuffer(64, 'ok');
    const batch = gpu.batch('checks');
    expect(() => recordRank1Update(batch, { matrix, b: ok, alpha: 1 })).toThrow(/a is required/);
    expect(() => recordRank1Update(batch, { matrix, a: small, b: ok, alpha: 1 })).toThrow(/a holds 2 f32 values, needs 4/);
    expect(() => recordRank1Update(batch, { matrix, a: ok, b: ok, alpha: Number.NaN })).toThrow(/alpha/);
    expect(() => recordColumnDot(batch, { matrix, d: ok, v: small })).toThrow(/v holds 2 f32 values, needs 6/);
    expect(batch.size).toBe(0);
    destroyMatrix(gpu, matrix);
  });
});
