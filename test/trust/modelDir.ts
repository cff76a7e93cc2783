/**
 * Random models written as real model folders (single file or sharded, with the bundled
 * tokenizer), folder snapshots to prove that nothing was written or changed, and resident-memory
 * figures of a process. No vitest here: child scripts use it too.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { orthonormalize } from '../../src/abliterate/cut.ts';
import { writeDirections } from '../../src/abliterate/directionsFile.ts';
import type { Measurement } from '../../src/abliterate/measure.ts';
import { MemorySink } from '../../src/io/safetensorsWriter.ts';
import { expectedTensors } from '../../src/model/weights.ts';
import { Random } from '../helpers/random.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import { MapWeights, randomModel, toSafetensors, type RandomModel, type RandomModelOptions, type RandomTensor } from '../reference/randomModel.ts';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = join(ROOT, 'bin/abliterate.js');
export const TOKENIZER_DIR = join(ROOT, 'models/tiny-chat');

/** A fresh temporary folder, removed by the returned function. */
export function tempDir(prefix: string): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), `abliterate-trust-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface ModelDirOptions extends RandomModelOptions {
  /** Write this many shards and model.safetensors.index.json (default: one model.safetensors). */
  shards?: number;
  /** config.json `max_position_embeddings` (randomModel writes 4096). */
  maxPositionEmbeddings?: number;
  /** Copy tokenizer.json and tokenizer_config.json of models/tiny-chat (default true). */
  tokenizer?: boolean;
  /**
   * Draw the weights fast (bf16 of random sign and mantissa at a fixed scale per tensor) instead of
   * exactly seeded normals: for models of hundreds of MiB, where only sizes matter.
   */
  fast?: boolean;
}

export interface ModelDir {
  dir: string;
  random: RandomModel;
  /** The weight files written, by name, with the tensors each holds. */
  shards: Map<string, string[]>;
}

/** Writes a random-weight model folder: config.json, safetensors (sharded on request), the tiny-chat tokenizer. */
export function writeModelDir(dir: string, options: ModelDirOptions = {}): ModelDir {
  mkdirSync(dir, { recursive: true });
  const shape = { vocabSize: 1024, hiddenSize: 64, intermediateSize: 128, numLayers: 2, dtype: 'BF16' as const, seed: 7, ...options };
  const random = options.fast ? fastModel(shape) : randomModel(shape);
  const config = { ...random.configJson };
  if (options.maxPositionEmbeddings !== undefined) config.max_position_embeddings = options.maxPositionEmbeddings;
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  const shards = new Map<string, string[]>();
  const count = options.shards ?? 1;
  if (count === 1) {
    writeFileSync(join(dir, 'model.safetensors'), toSafetensors(random.tensors));
    shards.set('model.safetensors', random.tensors.map((t) => t.name));
  } else {
    // Consecutive tensors, about the same number of bytes per shard.
    const total = random.tensors.reduce((n, t) => n + t.bytes.byteLength, 0);
    const groups: (typeof random.tensors)[] = [[]];
    let size = 0;
    for (const t of random.tensors) {
      if (size >= (total / count) * groups.length && groups.length < count) groups.push([]);
      groups.at(-1)!.push(t);
      size += t.bytes.byteLength;
    }
    if (groups.length !== count) throw new Error(`could not split ${random.tensors.length} tensors into ${count} shards`);
    const weightMap: Record<string, string> = {};
    groups.forEach((group, i) => {
      const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.safetensors`;
      writeFileSync(join(dir, file), toSafetensors(group));
      shards.set(file, group.map((t) => t.name));
      for (const t of group) weightMap[t.name] = file;
    });
    writeFileSync(join(dir, 'model.safetensors.index.json'), `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
  }
  if (options.tokenizer ?? true) {
    for (const file of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(TOKENIZER_DIR, file), join(dir, file));
  }
  return { dir, random, shards };
}

/** randomModel's config and tensor names and shapes, with bf16 weights drawn by a cheap generator. */
function fastModel(options: RandomModelOptions): RandomModel {
  const shape = randomModel({ ...options, hiddenSize: 2 * (options.numHeads ?? 4), intermediateSize: 2, numLayers: 1, vocabSize: 4, headDim: undefined });
  const configJson = {
    ...shape.configJson,
    hidden_size: options.hiddenSize,
    intermediate_size: options.intermediateSize,
    num_hidden_layers: options.numLayers,
    vocab_size: options.vocabSize,
    torch_dtype: 'bfloat16',
  };
  const config = parseModelConfig(configJson, 'fast random config.json');
  let state = (options.seed ?? 1) >>> 0 || 1;
  const tensors = [...expectedTensors(config)].map(([name, dims]): RandomTensor => {
    const count = dims.reduce((a, b) => a * b, 1);
    const words = new Uint16Array(count);
    if (dims.length === 1) words.fill(0x3f80); // norm weights: 1
    else {
      // |w| in [2^e, 2^(e+1)) with 2^e ≈ 1/sqrt(fan_in) (1 for the embedding), random sign and mantissa.
      const exponent = name.includes('embed_tokens') ? 127 : 127 - Math.round(Math.log2(Math.sqrt(dims[1]!)));
      for (let i = 0; i < count; i++) {
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        words[i] = ((state >>> 16) & 0x807f) | (exponent << 7);
      }
    }
    return { name, dtype: 'BF16', shape: dims, bytes: new Uint8Array(words.buffer) };
  });
  return { seed: options.seed ?? 1, configJson, config, tensors, weights: new MapWeights() };
}

/** A directions file as `abliterate measure` writes it, with random unit directions; the chosen point is 3 (or the last). */
/** A directions file of random unit directions; with `subspaceRank`, also a random orthonormal subspace of that rank per point (version 3). */
export async function writeDirectionsFile(path: string, hidden: number, points: number, subspaceRank?: number): Promise<void> {
  const rng = new Random(11);
  const unit = () => {
    const v = Float32Array.from(rng.normals(hidden));
    const n = Math.hypot(...v);
    return v.map((x) => x / n);
  };
  const zeros = () => new Float32Array(hidden);
  const measurement = {
    hiddenSize: hidden,
    points,
    directions: Array.from({ length: points }, unit),
    harmfulMeans: Array.from({ length: points }, zeros),
    harmlessMeans: Array.from({ length: points }, zeros),
    scores: Array.from({ length: points }, (_, point) => ({ point, gap: 1, relativeGap: 0.1, cosine: 0.9, effectSize: 1 + point })),
    ...(subspaceRank && {
      subspaces: Array.from({ length: points }, (_, point) => ({
        point,
        pairs: 8,
        basis: orthonormalize(Array.from({ length: subspaceRank }, unit)),
        singularValues: Array.from({ length: subspaceRank }, (_, k) => subspaceRank - k),
        explainedVariance: Array.from({ length: subspaceRank }, () => 1 / (subspaceRank + 1)),
        effectiveRank: subspaceRank,
        silhouette: 0.5,
      })),
    }),
  } as unknown as Measurement;
  const sink = new MemorySink('directions');
  await writeDirections(sink, measurement, Math.min(3, points - 1));
  writeFileSync(path, await sink.bytes());
}

/** Every file under `dir` (relative path → sha256), to compare a folder before and after. */
export function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (sub: string) => {
    for (const entry of readdirSync(join(dir, sub), { withFileTypes: true })) {
      const rel = sub ? `${sub}/${entry.name}` : entry.name;
      if (entry.isDirectory()) walk(rel);
      else out.set(rel, createHash('sha256').update(readFileSync(join(dir, rel))).digest('hex'));
    }
  };
  walk('');
  return out;
}

/** Names in `dir` that an output folder at `dir/name` may leave: the folder itself and its hidden temporaries. */
export function outputTraces(dir: string, name: string): string[] {
  return readdirSync(dir).filter((entry) => entry === name || entry.startsWith(`.${name}.tmp-`) || entry.startsWith(`.${name}.old-`));
}

export function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Peak resident memory of a running process so far (Linux: VmHWM), in bytes; undefined once it has exited. */
export function peakRss(pid: number): number | undefined {
  return procStatus(pid, 'VmHWM');
}

export function currentRss(pid: number): number | undefined {
  return procStatus(pid, 'VmRSS');
}

function procStatus(pid: number, field: string): number | undefined {
  try {
    const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Resets a process's peak resident memory to its current one (Linux ≥ 4.0). */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export const MiB = 2 ** 20;

/** Bytes in MiB for messages; `signed` writes the sign of a change. */
export function mib(bytes: number, signed = false): string {
  return `${signed && bytes >= 0 ? '+' : ''}${(bytes / MiB).toFixed(1)} MiB`;
}
