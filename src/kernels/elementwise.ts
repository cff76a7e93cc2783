import type { ComputeBatch } from '../gpu/gpu.ts';
import { workgroups1D } from '../gpu/dispatch.ts';

const WG = 64;

/**
 * x ← x + y over `n` elements (the residual adds). With `check`, flags[slot] also gets the lowest
 * index of a NaN or ±Inf sum (it keeps a lower value it holds; see shaders/add.wgsl).
 */
export function recordAdd(batch: ComputeBatch, args: { x: GPUBuffer; y: GPUBuffer; n: number; check?: { flags: GPUBuffer; slot: number } }): void {
  const { x, y, n, check } = args;
  const kernel = batch.gpu.kernel('add.wgsl', { WG, CHECK_FINITE: check !== undefined });
  batch.dispatch(kernel, { params: { n, slot: check?.slot ?? 0 }, x, y, flags: check?.flags }, workgroups1D(n, WG), `n=${n}${check ? ` check slot ${check.slot}` : ''}`);
}

/** gate ← silu(gate) · up over `n` elements (the gated MLP). */
export function recordSiluMul(batch: ComputeBatch, args: { gate: GPUBuffer; up: GPUBuffer; n: number }): void {
  const { gate, up, n } = args;
  batch.dispatch(batch.gpu.kernel('silu_mul.wgsl', { WG }), { params: { n }, gate, up }, workgroups1D(n, WG), `n=${n}`);
}

/** gate ← gelu_tanh(gate) · up over `n` elements (Gemma's gated MLP, transformers' gelu_pytorch_tanh). */
export function recordGeluTanhMul(batch: ComputeBatch, args: { gate: GPUBuffer; up: GPUBuffer; n: number }): void {
  const { gate, up, n } = args;
  batch.dispatch(batch.gpu.kernel('gelu_tanh_mul.wgsl', { WG }), { params: { n }, gate, up }, workgroups1D(n, WG), `n=${n}`);
}

/** x ← cap · tanh(x / cap) over `n` elements (Gemma 2's final-logit soft-capping). */
export function recordSoftCap(batch: ComputeBatch, args: { x: GPUBuffer; n: number; cap: number }): void {
  const { x, n, cap } = args;
  if (!(cap > 0 && Number.isFinite(cap))) throw new RangeError(`soft cap must be a positive number (got ${cap})`);
  batch.dispatch(batch.gpu.kernel('soft_cap.wgsl', { WG }), { params: { n, cap }, x }, workgroups1D(n, WG), `n=${n} cap=${cap}`);
}
