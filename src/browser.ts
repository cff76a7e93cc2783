/**
 * The browser entry (`abliterate/browser`, and what bundlers resolve `abliterate` to for a page):
 * the whole runtime-neutral API, a WebGPU device from `navigator.gpu`, and models read from picked
 * or fetched files ({@link BlobFolder}). It imports no Node built-in.
 *
 * @packageDocumentation
 */
/// <reference types="@webgpu/types" preserve="true" />

export * from './core.ts';
export { createBrowserGpu } from './gpu/browser.ts';
