/**
 * Model folders in the page: the files a user picks (directory picker, file dialog, drag and drop)
 * or the bundled model fetched from the page's own origin, all made into a `BlobFolder` whose
 * files are read with `File.slice`, tensor by tensor.
 */
import { BlobFolder, BlobSource, type ByteSource } from 'abliterate';
import type { BundledManifest } from '../vite/bundledFiles.ts';

export type { BundledManifest };

/** A file and its path inside the picked folder (the folder's own name first). */
export interface PickedFile {
  path: string;
  file: Blob;
}

export class FolderError extends Error {
  override name = 'FolderError';
}

/**
 * Builds the folder from picked files. Paths are relative to the picked folder; when the folder
 * itself has no config.json but exactly one of its subfolders has, that subfolder is the model
 * (a user often picks the parent of the model folder).
 */
export function folderFromFiles(picked: readonly PickedFile[], fallbackName = 'model'): BlobFolder {
  if (picked.length === 0) throw new FolderError('the folder is empty');
  const split = picked.map((p) => ({ parts: p.path.split('/').filter(Boolean), file: p.file }));
  // Every path starts with the picked folder's name when it comes from a directory (webkitRelativePath, entries).
  const roots = new Set(split.map((s) => (s.parts.length > 1 ? s.parts[0] : '')));
  let name = fallbackName;
  let files = split;
  if (roots.size === 1 && !roots.has('')) {
    name = [...roots][0]!;
    files = split.map((s) => ({ parts: s.parts.slice(1), file: s.file }));
  }
  const top = new Set(files.filter((f) => f.parts.length === 1).map((f) => f.parts[0]));
  if (!top.has('config.json')) {
    const modelDirs = [...new Set(files.filter((f) => f.parts.length === 2 && f.parts[1] === 'config.json').map((f) => f.parts[0]!))];
    if (modelDirs.length === 1) {
      const sub = modelDirs[0]!;
      name = `${name}/${sub}`;
      files = files.filter((f) => f.parts[0] === sub && f.parts.length > 1).map((f) => ({ parts: f.parts.slice(1), file: f.file }));
    }
  }
  return new BlobFolder(name, new Map(files.map((f) => [f.parts.join('/'), f.file])));
}

/** Files from `<input type=file webkitdirectory>`. */
export function folderFromInput(list: FileList): BlobFolder {
  const picked = [...list].map((file) => ({ path: file.webkitRelativePath || file.name, file }));
  return folderFromFiles(picked);
}

/** Minimal typings of the File System Access API (not in TypeScript's DOM library). */
export interface DirectoryHandle {
  readonly kind: 'directory';
  readonly name: string;
  values(): AsyncIterable<DirectoryHandle | FileHandle>;
  getDirectoryHandle(name: string, options?: { create?: boolean }): Promise<DirectoryHandle>;
  getFileHandle(name: string, options?: { create?: boolean }): Promise<FileHandle>;
  removeEntry(name: string, options?: { recursive?: boolean }): Promise<void>;
}

export interface FileHandle {
  readonly kind: 'file';
  readonly name: string;
  getFile(): Promise<File>;
  createWritable(): Promise<WritableFileStream>;
}

export interface WritableFileStream {
  write(data: Uint8Array | Blob | string): Promise<void>;
  close(): Promise<void>;
  abort(reason?: unknown): Promise<void>;
}

type DirectoryPicker = (options?: { id?: string; mode?: 'read' | 'readwrite'; startIn?: string }) => Promise<DirectoryHandle>;

/** `window.showDirectoryPicker` where the browser has it (Chrome, Edge), else undefined. */
export function directoryPicker(): DirectoryPicker | undefined {
  const picker = (globalThis as { showDirectoryPicker?: DirectoryPicker }).showDirectoryPicker;
  return typeof picker === 'function' ? picker.bind(globalThis) : undefined;
}

/** Reads a directory handle two levels deep (the model folder, or its parent). */
export async function folderFromHandle(handle: DirectoryHandle): Promise<BlobFolder> {
  const picked: PickedFile[] = [];
  const walk = async (dir: DirectoryHandle, prefix: string, depth: number) => {
    for await (const entry of dir.values()) {
      if (entry.kind === 'file') picked.push({ path: `${prefix}/${entry.name}`, file: await entry.getFile() });
      else if (depth < 1 && !entry.name.startsWith('.')) await walk(entry, `${prefix}/${entry.name}`, depth + 1);
    }
  };
  await walk(handle, handle.name, 0);
  if (picked.length === 0) throw new FolderError(`${handle.name}: the folder is empty`);
  return folderFromFiles(picked, handle.name);
}

/**
 * What was dropped on the page: a model folder (dragged from the file manager), its parent, or
 * the model's files themselves (several files selected and dragged together).
 */
export async function folderFromDrop(data: DataTransfer): Promise<BlobFolder> {
  const entries = [...data.items].map((item) => item.webkitGetAsEntry?.()).filter((e): e is FileSystemEntry => !!e);
  if (!entries.some((e) => e.isDirectory)) {
    const files = [...data.files];
    if (files.length === 0) throw new FolderError('nothing that can be read was dropped; drop a model folder');
    return folderFromFiles(
      files.map((file) => ({ path: file.name, file })),
      'dropped files',
    );
  }
  const picked: PickedFile[] = [];
  const fileOf = (entry: FileSystemFileEntry) => new Promise<File>((resolve, reject) => entry.file(resolve, reject));
  const children = async (dir: FileSystemDirectoryEntry) => {
    const reader = dir.createReader();
    const all: FileSystemEntry[] = [];
    for (;;) {
      const batch = await new Promise<FileSystemEntry[]>((resolve, reject) => reader.readEntries(resolve, reject));
      if (batch.length === 0) return all;
      all.push(...batch);
    }
  };
  const walk = async (entry: FileSystemEntry, prefix: string, depth: number) => {
    const path = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isFile) picked.push({ path, file: await fileOf(entry as FileSystemFileEntry) });
    else if (entry.isDirectory && depth < 2 && !entry.name.startsWith('.')) {
      for (const child of await children(entry as FileSystemDirectoryEntry)) await walk(child, path, depth + 1);
    }
  };
  for (const entry of entries) await walk(entry, '', 0);
  return folderFromFiles(picked);
}

// ---------------------------------------------------------------------------------------------
// The bundled model and prompt sets, served from the page's own origin (see web/vite/bundledFiles.ts).

const bundledUrl = (path: string) => new URL(`bundled/${path}`, document.baseURI).href;

export async function fetchBundled(path: string): Promise<Blob> {
  const response = await fetch(bundledUrl(path));
  if (!response.ok) throw new FolderError(`the page's server did not send ${path} (HTTP ${response.status})`);
  return response.blob();
}

export async function bundledManifest(): Promise<BundledManifest | undefined> {
  try {
    const response = await fetch(bundledUrl('manifest.json'), { cache: 'no-store' });
    if (!response.ok) return undefined;
    return (await response.json()) as BundledManifest;
  } catch {
    return undefined;
  }
}

/** Fetches the bundled model's files (a few MB) into Blobs. */
export async function bundledModel(manifest: BundledManifest, onProgress?: (done: number, total: number) => void): Promise<BlobFolder> {
  if (manifest.model.missing) throw new FolderError(`the bundled model is not available: ${manifest.model.missing}`);
  const total = manifest.model.files.reduce((sum, f) => sum + f.size, 0);
  let done = 0;
  const files = new Map<string, Blob>();
  for (const f of manifest.model.files) {
    files.set(f.name, await fetchBundled(`model/${f.name}`));
    done += f.size;
    onProgress?.(done, total);
  }
  return new BlobFolder(manifest.model.name, files);
}

/** A bundled prompt file as a ByteSource for `readPrompts`. */
export async function bundledPromptFile(name: string): Promise<ByteSource> {
  return new BlobSource(await fetchBundled(`data/${name}`), name);
}
