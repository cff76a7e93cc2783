/**
 * What the browser tests need: the page built by Vite, a static server on 127.0.0.1, headless
 * Chromium with WebGPU, and readers for the files the page downloads (tar, safetensors).
 */
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { build, type Rollup } from 'vite';
import { pageConfig, REPO_ROOT } from '../../web/vite/pageConfig.ts';

export { REPO_ROOT };

export const CHROMIUM = process.env.ABLITERATE_CHROMIUM ?? '/usr/bin/chromium';

/**
 * Flags that give headless Chromium a WebGPU adapter on a machine without a GPU: SwiftShader's
 * Vulkan, the only adapter Chromium exposes there (see test/browser/README.md),
 * plus flags that keep the browser off the network.
 */
export const WEBGPU_FLAGS: readonly string[] = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader',
  '--use-angle=swiftshader',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium is not installed at ${CHROMIUM}: install it (apt-get install chromium, see scripts/setup-system.sh) or set ABLITERATE_CHROMIUM; the browser tests cannot run without it`);
  }
  return chromium.launch({ executablePath: CHROMIUM, args: [...WEBGPU_FLAGS], headless: true });
}

/** Builds the page (production build) into `outDir`, offering `model` as the bundled model. */
export async function buildPage(outDir: string, model?: string): Promise<Rollup.RollupOutput> {
  const config = pageConfig({ model, outDir });
  const output = await build({ ...config, configFile: false, logLevel: 'warn' });
  return (Array.isArray(output) ? output[0] : output) as Rollup.RollupOutput;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
};

export interface StaticServer {
  url: string;
  /** Paths asked for, in order. */
  requests: string[];
  close(): Promise<void>;
}

/** Serves a folder on 127.0.0.1 at a free port. */
export async function serveStatic(root: string): Promise<StaticServer> {
  const base = resolve(root);
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://127.0.0.1').pathname);
    requests.push(path);
    const file = normalize(join(base, path.endsWith('/') ? `${path}index.html` : path));
    if (!file.startsWith(base + sep)) {
      res.writeHead(403).end();
      return;
    }
    void stat(file)
      .then(async (s) => {
        if (!s.isFile()) throw new Error('not a file');
        const body = await readFile(file);
        res.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream', 'Content-Length': body.byteLength, 'Cache-Control': 'no-store' });
        res.end(body);
      })
      .catch(() => res.writeHead(404).end('not found'));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    close: () => new Promise<void>((done) => server.close(() => done())),
  };
}

// ---------------------------------------------------------------------------------------------
// Reading what the page writes

/** The regular files of a tar (ustar, with GNU base-256 sizes), by path. */
export function readTar(bytes: Uint8Array): Map<string, Uint8Array> {
  const files = new Map<string, Uint8Array>();
  const text = (from: number, length: number) => new TextDecoder().decode(bytes.subarray(from, from + length)).replace(/\0.*$/s, '');
  let offset = 0;
  while (offset + 512 <= bytes.length) {
    const header = bytes.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    const name = text(offset, 100);
    const prefix = text(offset + 345, 155);
    let size = 0;
    if (header[124]! & 0x80) for (let i = 125; i < 136; i++) size = size * 256 + header[i]!;
    else size = parseInt(text(offset + 124, 12).trim() || '0', 8);
    const type = String.fromCharCode(header[156]!);
    const path = prefix ? `${prefix}/${name}` : name;
    if (type === '0' || type === '\0') files.set(path, bytes.subarray(offset + 512, offset + 512 + size));
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

export interface StoredTensor {
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** Parses a safetensors file held in memory: its metadata and each tensor's bytes. */
export function readSafetensorsBytes(bytes: Uint8Array): { metadata: Record<string, string>; tensors: Map<string, StoredTensor> } {
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))) as Record<string, unknown>;
  const data = 8 + headerLength;
  const tensors = new Map<string, StoredTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = entry as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets: [from, to] } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    tensors.set(name, { dtype, shape, bytes: bytes.subarray(data + from, data + to) });
  }
  return { metadata, tensors };
}

export interface TensorComparison {
  tensors: number;
  elements: number;
  /** Elements whose stored bits differ. */
  differing: number;
  /** Largest difference in units in the last place (bf16/f16: as 16-bit integers; f32: 32-bit). */
  maxUlp: number;
  /** Tensors with any difference, and how many elements each. */
  perTensor: Record<string, number>;
  /** Names, dtypes or shapes that do not match (empty when the layouts agree). */
  layoutMismatches: string[];
}

/** Orders the bits of an IEEE float so that adjacent floats differ by one. */
function ordered(bits: number, width: 16 | 32): number {
  const sign = width === 16 ? 0x8000 : 0x80000000;
  return bits >= sign ? -(bits - sign) : bits;
}

/** Compares two models' tensors element by element, in units in the last place of their dtype. */
export function compareTensors(a: Map<string, StoredTensor>, b: Map<string, StoredTensor>): TensorComparison {
  const result: TensorComparison = { tensors: 0, elements: 0, differing: 0, maxUlp: 0, perTensor: {}, layoutMismatches: [] };
  for (const name of new Set([...a.keys(), ...b.keys()])) {
    const x = a.get(name);
    const y = b.get(name);
    if (!x || !y) {
      result.layoutMismatches.push(`${name}: only in ${x ? 'the first' : 'the second'} model`);
      continue;
    }
    if (x.dtype !== y.dtype || x.shape.join(',') !== y.shape.join(',') || x.bytes.length !== y.bytes.length) {
      result.layoutMismatches.push(`${name}: ${x.dtype}[${x.shape}] vs ${y.dtype}[${y.shape}]`);
      continue;
    }
    result.tensors++;
    const width = x.dtype === 'F32' ? 32 : 16;
    const step = width / 8;
    const count = x.bytes.length / step;
    result.elements += count;
    const dx = new DataView(x.bytes.buffer, x.bytes.byteOffset, x.bytes.byteLength);
    const dy = new DataView(y.bytes.buffer, y.bytes.byteOffset, y.bytes.byteLength);
    let differing = 0;
    for (let i = 0; i < count; i++) {
      const p = width === 32 ? dx.getUint32(i * 4, true) : dx.getUint16(i * 2, true);
      const q = width === 32 ? dy.getUint32(i * 4, true) : dy.getUint16(i * 2, true);
      if (p === q) continue;
      differing++;
      result.maxUlp = Math.max(result.maxUlp, Math.abs(ordered(p, width) - ordered(q, width)));
    }
    if (differing) result.perTensor[name] = differing;
    result.differing += differing;
  }
  return result;
}
