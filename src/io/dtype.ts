/**
 * The floating-point storage types the engine computes with (F32, F16, BF16): decoding file bytes
 * to floats, encoding f32 back with round-to-nearest-even, and packing bytes into `u32` words for
 * GPU buffers. Safetensors data is little-endian; every function here reads and writes
 * little-endian bytes whatever the host's byte order.
 */

/** The dtypes the engine computes with. Files may hold others (see `StoredDtype` in safetensors.ts). */
export type Dtype = 'F32' | 'F16' | 'BF16';

export const SUPPORTED_DTYPES: readonly Dtype[] = ['F32', 'F16', 'BF16'];

export function isSupportedDtype(value: unknown): value is Dtype {
  return value === 'F32' || value === 'F16' || value === 'BF16';
}

export function bytesPerElement(dtype: Dtype): 2 | 4 {
  switch (dtype) {
    case 'F32':
      return 4;
    case 'F16':
    case 'BF16':
      return 2;
    default:
      throw new TypeError(`unsupported dtype ${String(dtype)} (supported: ${SUPPORTED_DTYPES.join(', ')})`);
  }
}

/** Number of elements in `byteLength` bytes of `dtype`; throws if it is not a whole number. */
export function elementCount(byteLength: number, dtype: Dtype): number {
  const size = bytesPerElement(dtype);
  if (!Number.isSafeInteger(byteLength) || byteLength < 0 || byteLength % size !== 0) {
    throw new RangeError(`${byteLength} bytes is not a whole number of ${dtype} elements (${size} bytes each)`);
  }
  return byteLength / size;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// Scratch space to move between a float and its bits.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** The bits of `value` rounded to f32 (`Math.fround`). */
export function f32Bits(value: number): number {
  scratchF32[0] = value;
  return scratchU32[0]!;
}

export function f32FromBits(bits: number): number {
  scratchU32[0] = bits >>> 0;
  return scratchF32[0]!;
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions

/** The value of a bf16 bit pattern (exact: bf16 is the top half of an f32). */
export function bf16ToF32(bits: number): number {
  return f32FromBits((bits & 0xffff) << 16);
}

/** The value of an f16 bit pattern (exact, subnormals included). */
export function f16ToF32(bits: number): number {
  const h = bits & 0xffff;
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1024 + mantissa) * 2 ** (exponent - 25);
}

/**
 * f32 bits → bf16 bits, round to nearest, ties to even. NaN stays NaN (quiet, sign kept), ±Inf
 * stays, values past the largest bf16 round to ±Inf as IEEE-754 prescribes.
 */
export function f32BitsToBf16(bits: number): number {
  const x = bits >>> 0;
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x0040) & 0xffff;
  // Adding 0x7fff plus the lowest kept bit rounds to nearest with ties to even; a carry out of
  // the mantissa moves into the exponent, up to Inf.
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * f32 bits → f16 bits, round to nearest, ties to even, with f16 subnormals. NaN stays NaN (quiet,
 * sign and top payload bits kept), ±Inf stays, |x| ≥ 65520 becomes ±Inf.
 */
export function f32BitsToF16(bits: number): number {
  const x = bits >>> 0;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  const mantissa = x & 0x7fffff;
  if (exponent === 0xff) return mantissa === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mantissa >>> 13);
  const e = exponent - 112; // rebias 127 → 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal result (or zero): the value is m·2^(e−14) units of 2^−24, m with its hidden bit.
    if (e < -10) return sign; // below half the smallest subnormal
    const m = mantissa | 0x800000;
    const shift = 14 - e; // 14..24
    const kept = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    const rounded = rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
    return sign | rounded; // a carry into bit 10 is exactly the smallest normal
  }
  const kept = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  const rounded = rest > 0x1000 || (rest === 0x1000 && (kept & 1) === 1) ? kept + 1 : kept;
  return sign | rounded; // a carry runs into the exponent, and from 0x7bff to Inf
}

/** `value` (rounded to f32 first) → bf16 bits, round to nearest even. */
export function f32ToBf16(value: number): number {
  return f32BitsToBf16(f32Bits(value));
}

/** `value` (rounded to f32 first) → f16 bits, round to nearest even. */
export function f32ToF16(value: number): number {
  return f32BitsToF16(f32Bits(value));
}

let f16Table: Float32Array | undefined;

/** All 65536 f16 values, built on first use (256 KiB). */
function f16Values(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
  }
  return f16Table;
}

// ---------------------------------------------------------------------------------------------
// Little-endian views

/** The bytes as little-endian u16 values: a view when the host and alignment allow, else a copy. */
function u16View(bytes: Uint8Array): Uint16Array {
  const n = bytes.byteLength >>> 1;
  if (LITTLE_ENDIAN && bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Uint16Array(n);
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer).set(bytes.subarray(0, n * 2));
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[i] = view.getUint16(2 * i, true);
  }
  return out;
}

/** The bytes as little-endian u32 values: a view when the host and alignment allow, else a copy. */
function u32View(bytes: Uint8Array): Uint32Array {
  const n = bytes.byteLength >>> 2;
  if (LITTLE_ENDIAN && bytes.byteOffset % 4 === 0) return new Uint32Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Uint32Array(n);
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer).set(bytes.subarray(0, n * 4));
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[i] = view.getUint32(4 * i, true);
  }
  return out;
}

/** Little-endian bytes of u16 values (a view of `values` on little-endian hosts). */
function u16Bytes(values: Uint16Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = new Uint8Array(values.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setUint16(2 * i, values[i]!, true);
  return out;
}

/** Little-endian bytes of u32 values (a view of `values` on little-endian hosts). */
function u32Bytes(values: Uint32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setUint32(4 * i, values[i]!, true);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Bulk conversions

/** Decodes little-endian `dtype` bytes to f32 (exact for all three dtypes). Always a new array. */
export function decodeToFloat32(bytes: Uint8Array, dtype: Dtype): Float32Array {
  const n = elementCount(bytes.byteLength, dtype);
  switch (dtype) {
    case 'F32': {
      const out = new Float32Array(n);
      const words = u32View(bytes);
      new Uint32Array(out.buffer).set(words);
      return out;
    }
    case 'BF16': {
      const halves = u16View(bytes);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = halves[i]! << 16;
      return out;
    }
    case 'F16': {
      const halves = u16View(bytes);
      const table = f16Values();
      const out = new Float32Array(n);
      // Copy through the bit patterns so NaN payloads survive.
      const outBits = new Uint32Array(out.buffer);
      const tableBits = new Uint32Array(table.buffer);
      for (let i = 0; i < n; i++) outBits[i] = tableBits[halves[i]!]!;
      return out;
    }
  }
}

/** Decodes little-endian `dtype` bytes to f64 (exact). */
export function decodeToFloat64(bytes: Uint8Array, dtype: Dtype): Float64Array {
  return Float64Array.from(decodeToFloat32(bytes, dtype));
}

/**
 * Encodes f32 values as little-endian `dtype` bytes, rounding to nearest even for F16 and BF16.
 * A plain number array is rounded to f32 first. The result is a new buffer.
 */
export function encodeFromFloat32(values: Float32Array | readonly number[], dtype: Dtype): Uint8Array {
  const f32 = values instanceof Float32Array ? values : Float32Array.from(values);
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  switch (dtype) {
    case 'F32':
      return u32Bytes(Uint32Array.from(bits));
    case 'BF16': {
      const out = new Uint16Array(f32.length);
      for (let i = 0; i < out.length; i++) out[i] = f32BitsToBf16(bits[i]!);
      return u16Bytes(out);
    }
    case 'F16': {
      const out = new Uint16Array(f32.length);
      for (let i = 0; i < out.length; i++) out[i] = f32BitsToF16(bits[i]!);
      return u16Bytes(out);
    }
    default:
      throw new TypeError(`unsupported dtype ${String(dtype)} (supported: ${SUPPORTED_DTYPES.join(', ')})`);
  }
}

/**
 * Packs file bytes into `u32` words for a GPU buffer: the words' memory holds exactly the file's
 * little-endian bytes, so element `2i` of an F16/BF16 tensor is the low half of word `i` and
 * element `2i+1` the high half (WGSL: `unpack2x16float`, or a shift for bf16). An odd F16/BF16
 * element count is padded with a zero half. Returns a view of `bytes` when it is already 4-byte
 * aligned and a whole number of words (no copy), otherwise a copy.
 */
export function packToU32(bytes: Uint8Array, dtype: Dtype): Uint32Array {
  elementCount(bytes.byteLength, dtype);
  if (bytes.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0) {
    return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  }
  const out = new Uint32Array(Math.ceil(bytes.byteLength / 4));
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

/**
 * The inverse of `packToU32` for `count` elements read back from a GPU buffer: the file bytes of
 * those elements (a view of `words`' memory; padding dropped).
 */
export function unpackFromU32(words: Uint32Array, dtype: Dtype, count: number): Uint8Array {
  const byteLength = count * bytesPerElement(dtype);
  if (!Number.isSafeInteger(count) || count < 0 || byteLength > words.byteLength) {
    throw new RangeError(`${count} ${dtype} elements need ${byteLength} bytes; the buffer holds ${words.byteLength}`);
  }
  return new Uint8Array(words.buffer, words.byteOffset, byteLength);
}
