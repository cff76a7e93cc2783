import { expect } from 'vitest';

type Numbers = ArrayLike<number>;

/** max |a − e| / max |e|: relative error against the largest reference value, so sign changes near zero do not explode it. */
export function relativeError(actual: Numbers, expected: Numbers): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} != ${expected.length}`);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    if (!Number.isFinite(a)) return Infinity;
    maxDiff = Math.max(maxDiff, Math.abs(a - e));
    maxRef = Math.max(maxRef, Math.abs(e));
  }
  return maxRef === 0 ? maxDiff : maxDiff / maxRef;
}

/** Asserts a relative-error bound and reports the seed and the first differing element on failure. */
export function expectClose(actual: Numbers, expected: Numbers, bound: number, what: string, seed?: number): number {
  const error = relativeError(actual, expected);
  if (!(error <= bound)) {
    let worst = 0;
    for (let i = 0; i < expected.length; i++) {
      if (!(Math.abs(actual[i]! - expected[i]!) <= Math.abs(actual[worst]! - expected[worst]!))) worst = i;
    }
    expect.fail(
      `${what}: relative error ${error.toExponential(3)} > ${bound} (worst at ${worst}: got ${actual[worst]}, expected ${expected[worst]})` +
        (seed === undefined ? '' : `; reproduce with TEST_SEED=${seed}`),
    );
  }
  return error;
}
