import type { ComputeBatch } from '../gpu/batch.ts';
import { workgroups1D } from '../gpu/dispatch.ts';

const WG = 64;

/** x ← x + y over `n` elements (the residual adds). */
export function recordAdd(batch: ComputeBatch, args: { x: GPUBuffer; y: GPUBuffer; n: number }): void {
  const { x, y, n } = args;
  batch.dispatch(batch.gpu.kernel('add.wgsl', { WG }), { params: { n }, x, y }, workgroups1D(n, WG), `n=${n}`);
}

/** gate ← silu(gate) · up over `n` elements (the gated MLP). */
export function recordSiluMul(batch: ComputeBatch, args: { gate: GPUBuffer; up: GPUBuffer; n: number }): void {
  const { gate, up, n } = args;
  batch.dispatch(batch.gpu.kernel('silu_mul.wgsl', { WG }), { params: { n }, gate, up }, workgroups1D(n, WG), `n=${n}`);
}
