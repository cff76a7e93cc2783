import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../../src/gpu/gpu.ts';
import type { Measurement } from '../../../src/abliterate/measure.ts';
import { applyTrialCut } from '../../../src/abliterate/optimize/search.ts';
import { cutParameters, interpolatedDirection, searchSpace } from '../../../src/abliterate/optimize/space.ts';
import { uniformParams } from '../../../src/abliterate/optimize/tpe.ts';
import { mulberry32 } from '../../../src/util/random.ts';
import { testGpu } from '../../helpers/gpu.ts';
import { loadRandomModel } from '../../helpers/models.ts';
import { Random } from '../../helpers/random.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

/** Directions and harmless means at every point, random: what a trial's cut reads from a measurement. */
function randomMeasurement(rng: Random, points: number, hidden: number): Measurement {
  const vector = () => Float32Array.from(rng.normals(hidden));
  const unit = (v: Float32Array) => {
    const n = Math.hypot(...v);
    return v.map((x) => x / n);
  };
  return {
    hiddenSize: hidden,
    points,
    harmfulCount: 2,
    harmlessCount: 2,
    harmfulMeans: Array.from({ length: points }, vector),
    harmlessMeans: Array.from({ length: points }, vector),
    directions: Array.from({ length: points }, () => unit(vector())),
    scores: Array.from({ length: points }, (_, point) => ({ point, gap: 1, relativeGap: 1, cosine: 0, effectSize: point })),
    projections: { harmful: [], harmless: [] },
  };
}

async function allBytes(model: Awaited<ReturnType<typeof loadRandomModel>>['model']): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const [name, matrix] of model.matrices()) {
    for (const [i, chunk] of matrix.chunks.entries()) out.set(`${name}#${i}`, new Uint8Array(await gpu.read(chunk.buffer)));
  }
  return out;
}

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

describe('trial cuts', () => {
  it('50 trials of the search space in a row, each cut and undone, leave every weight bit for bit as it was', async () => {
    const { random, model } = await loadRandomModel(gpu, { dtype: 'BF16', numLayers: 4 });
    try {
      const rng = new Random(random.seed);
      const measurement = randomMeasurement(rng, 5, random.config.hiddenSize);
      const original = await allBytes(model);
      const space = searchSpace(4, { directionWindow: [0, 1] });
      const draw = mulberry32(random.seed);
      let changedSome = 0;
      for (let trial = 0; trial < 50; trial++) {
        const params = cutParameters(uniformParams(space, draw));
        const cut = await applyTrialCut(model, measurement, params);
        if (trial % 10 === 0) {
          const during = await allBytes(model);
          if ([...original].some(([k, v]) => !same(v, during.get(k)!))) changedSome++;
        }
        await cut.undo();
        if (trial % 5 === 4) {
          const now = await allBytes(model);
          for (const [k, v] of original) expect(same(v, now.get(k)!), `${k} after trial ${trial}`).toBe(true);
        }
      }
      expect(changedSome).toBeGreaterThan(0);
      expect(model.modifiedTensors.size).toBe(0);
    } finally {
      model.dispose();
    }
  });

  it('interpolates adjacent directions, renormalised, and projects out the harmless mean when asked', () => {
    const rng = new Random(3);
    const m = randomMeasurement(rng, 4, 16);
    const at = interpolatedDirection(m, 2, false);
    expect(Array.from(at)).toEqual(Array.from(m.directions[2]!).map((x) => expect.closeTo(x, 6)));
    const mid = interpolatedDirection(m, 1.25, false);
    const mix = m.directions[1]!.map((x, i) => 0.75 * x + 0.25 * m.directions[2]![i]!);
    const n = Math.hypot(...mix);
    for (let i = 0; i < 16; i++) expect(mid[i]).toBeCloseTo(mix[i]! / n, 6);
    expect(Math.hypot(...mid)).toBeCloseTo(1, 6);
    const projected = interpolatedDirection(m, 2, true);
    const b = m.harmlessMeans[2]!;
    expect(projected.reduce((s, x, i) => s + x * b[i]!, 0) / Math.hypot(...b)).toBeCloseTo(0, 5);
    expect(Math.hypot(...projected)).toBeCloseTo(1, 6);
  });
});
