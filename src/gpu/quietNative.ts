import { closeSync, fstatSync, openSync } from 'node:fs';

/** Set (to anything) to see what the native WebGPU code prints while adapters are probed. */
export const DEBUG_ENV = 'ABLITERATE_DEBUG';

let depth = 0;
let saved: number | undefined;

/**
 * Runs `work` with file descriptor 2 pointed at /dev/null, so that what native code (Dawn, the
 * Vulkan loader and drivers) prints while adapters are probed — limit notices such as
 * "maxDynamicUniformBuffersPerPipelineLayout artificially reduced" — does not reach the user.
 * Node's own writes are synchronous, so nothing of ours is queued across the switch; callers write
 * nothing meanwhile. Node has no dup(): descriptor 2 is restored by reopening /proc/self/fd/N, which
 * works for terminals, files and pipes but not for sockets (the stdio of a Node child process), so
 * it is a no-op there, where /proc/self/fd is missing (not Linux), when descriptors 0 and 1 are not
 * open, or when ABLITERATE_DEBUG is set. Nested and overlapping calls share one redirection.
 */
export async function quietNativeOutput<T>(work: () => Promise<T>): Promise<T> {
  if (process.env[DEBUG_ENV] || !redirect()) return work();
  try {
    return await work();
  } finally {
    restore();
  }
}

function redirect(): boolean {
  if (depth > 0) {
    depth++;
    return true;
  }
  let copy: number;
  try {
    // /dev/null must land on descriptor 2, the lowest free one once 2 is closed.
    fstatSync(0);
    fstatSync(1);
    copy = openSync('/proc/self/fd/2', 'a');
  } catch {
    return false;
  }
  closeSync(2);
  const devNull = openSync('/dev/null', 'a');
  if (devNull !== 2) {
    closeSync(devNull);
    reopenStderr(copy);
    return false;
  }
  saved = copy;
  depth = 1;
  return true;
}

function restore(): void {
  if (--depth > 0 || saved === undefined) return;
  closeSync(2);
  reopenStderr(saved);
  saved = undefined;
}

/** Points descriptor 2 back at what `copy` refers to (appending, so a redirected file is not overwritten) and closes the copy. */
function reopenStderr(copy: number): void {
  const fd = openSync(`/proc/self/fd/${copy}`, 'a');
  closeSync(copy);
  if (fd !== 2) closeSync(fd);
}
