import type { ByteSource } from '../io/byteSource.ts';
import { decodeToFloat32 } from '../io/dtype.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { writeSafetensors, type ByteSink, type TensorToWrite } from '../io/safetensorsWriter.ts';
import type { LayerScore, Measurement } from './measure.ts';

/** What a directions file holds: every point's direction, the chosen point, and the scores. */
export interface Directions {
  layer: number;
  direction: Float32Array;
  directions: Float32Array[];
  scores: LayerScore[];
}

export class DirectionsFileError extends Error {
  override name = 'DirectionsFileError';
}

/** Writes the measured directions, the class means and the chosen point as safetensors. */
export async function writeDirections(sink: ByteSink, measurement: Measurement, layer: number, extra: Record<string, string> = {}): Promise<void> {
  const H = measurement.hiddenSize;
  const tensor = (name: string, rows: readonly Float32Array[], vector = false): TensorToWrite => ({
    name,
    dtype: 'F32',
    shape: vector ? [H] : [rows.length, H],
    bytes: async () => {
      const data = new Float32Array(rows.length * H);
      rows.forEach((r, i) => data.set(r, i * H));
      return new Uint8Array(data.buffer);
    },
  });
  await writeSafetensors(
    sink,
    [
      tensor('direction', [measurement.directions[layer]!], true),
      tensor('directions', measurement.directions),
      tensor('harmful_means', measurement.harmfulMeans),
      tensor('harmless_means', measurement.harmlessMeans),
    ],
    { format: 'abliterate-directions', layer: String(layer), scores: JSON.stringify(measurement.scores), ...extra },
  );
}

/** Reads a directions file written by `writeDirections` (`abliterate measure`, `run`). */
export async function readDirections(source: ByteSource): Promise<Directions> {
  const file = await SafetensorsFile.open(source);
  const fail = (why: string) => new DirectionsFileError(`${source.name}: ${why} (expected a directions file written by abliterate measure or run)`);
  if (!file.has('directions')) throw fail('no "directions" tensor');
  const info = file.tensor('directions');
  if (info.shape.length !== 2) throw fail('"directions" is not a matrix');
  const [points, hidden] = info.shape as [number, number];
  const all = decodeToFloat32(await file.read('directions'), info.dtype);
  const directions = Array.from({ length: points }, (_, p) => all.slice(p * hidden, (p + 1) * hidden));
  const layer = Number(file.metadata.layer);
  if (!Number.isInteger(layer) || layer < 0 || layer >= points) throw fail(`metadata "layer" is not a point index in 0..${points - 1}`);
  let scores: LayerScore[] = [];
  try {
    scores = file.metadata.scores ? (JSON.parse(file.metadata.scores) as LayerScore[]) : [];
  } catch {
    throw fail('metadata "scores" is not JSON');
  }
  return { layer, direction: directions[layer]!, directions, scores };
}
