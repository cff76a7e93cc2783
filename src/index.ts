/**
 * The Node entry (`abliterate`): the whole runtime-neutral API, a WebGPU device through Dawn
 * ({@link createNodeGpu}), model folders on disk ({@link NodeFolder}), and output folders written
 * under a temporary name and renamed ({@link createOutputFolder}). It also names
 * {@link createBrowserGpu}, so that its types describe both entries: a bundler building for the
 * browser resolves `abliterate` to the browser entry, which has everything here but the Node parts.
 *
 * @packageDocumentation
 */
/// <reference types="@webgpu/types" preserve="true" />

export * from './core.ts';
export { createBrowserGpu } from './gpu/browser.ts';
export { ADAPTER_CHOICES, createNodeGpu, MEMORY_BUDGET_ENV, parseMemoryBudget, type AdapterChoice, type NodeGpuOptions } from './gpu/node.ts';
export { NodeFolder, readTextFile } from './io/nodeFolder.ts';
export { createOutputFile, writeFileAtomic, type OutputFile, type OutputFileOptions } from './io/outputFile.ts';
export { createOutputFolder, NodeFileSink, OutputFolderError, OutputWriteError, type OutputFolder, type OutputFolderErrorKind, type OutputFolderOptions } from './io/outputFolder.ts';
export type { OutputPathErrorKind } from './io/outputPaths.ts';
