import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LlamaModel } from '../../src/model/model.ts';
import type { ModelWriteTarget } from '../../src/io/safetensorsWriter.ts';

/** The parts of src/abliterate/cut.ts and export.ts the bench calls (loaded only when present). */
interface CutModule {
  applyCut(model: LlamaModel, spec: { direction: Float32Array; alpha?: number; undo?: 'none' }): Promise<{ undo?: () => Promise<void> | void }>;
}
interface ExportModule {
  exportModel(model: LlamaModel, target: ModelWriteTarget, options: { parameters: Record<string, unknown> }): Promise<void>;
}
interface OutputModule {
  createOutputFolder(path: string, options?: { force?: boolean }): Promise<ModelWriteTarget & { commit(): Promise<void>; abort(): Promise<void> }>;
}

/**
 * Seconds of a cut of every layer's o_proj and down_proj along a random unit direction (on the GPU,
 * until the work has finished), and of an export of the cut model to a temporary folder on disk.
 */
export async function runCutAndExport(model: LlamaModel, cutModule: string, exportModule: string): Promise<{ cutSeconds: number | 'not available'; exportSeconds: number | 'not available' }> {
  const cut = (await import(cutModule)) as CutModule;
  const exporter = (await import(exportModule)) as ExportModule;
  const output = (await import('../../src/io/outputFolder.ts')) as unknown as OutputModule;
  if (typeof cut.applyCut !== 'function' || typeof exporter.exportModel !== 'function') return { cutSeconds: 'not available', exportSeconds: 'not available' };
  const H = model.config.hiddenSize;
  const direction = Float32Array.from({ length: H }, (_, i) => Math.sin(i + 1));
  const norm = Math.hypot(...direction);
  for (let i = 0; i < H; i++) direction[i]! /= norm;
  const cutStart = performance.now();
  // Nothing kept for undo: the time of the cut itself.
  await cut.applyCut(model, { direction, alpha: 1, undo: 'none' });
  await model.gpu.finish();
  const cutSeconds = (performance.now() - cutStart) / 1000;
  const parent = mkdtempSync(join(tmpdir(), 'abliterate-bench-export-'));
  try {
    const exportStart = performance.now();
    const target = await output.createOutputFolder(join(parent, 'out'));
    await exporter.exportModel(model, target, { parameters: { bench: true } });
    await target.commit();
    return { cutSeconds, exportSeconds: (performance.now() - exportStart) / 1000 };
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
}
