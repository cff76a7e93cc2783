/** Errors the GPU layer raises instead of letting WebGPU fail silently. */
export class GpuError extends Error {
  override name = 'GpuError';
}

/** A validation error from WebGPU, with the kernel(s) and shapes of the work that caused it. */
export class GpuValidationError extends GpuError {
  override name = 'GpuValidationError';
}

/** The device was lost (driver reset, out of memory on some drivers, or destroyed). */
export class GpuDeviceLostError extends GpuError {
  override name = 'GpuDeviceLostError';
}

/** An allocation that would exceed the adapter's limits or the configured memory budget. */
export class GpuOutOfMemoryError extends GpuError {
  override name = 'GpuOutOfMemoryError';
}

export class NoAdapterError extends GpuError {
  override name = 'NoAdapterError';
}

export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} B`;
}
