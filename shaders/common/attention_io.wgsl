// What both attention kernels (attention.wgsl, attention_tiled.wgsl) share: the vector width of a row
// of Q, K, V and the output (VEC4: four head dimensions a load), Gemma 2's soft-capping tanh, and the
// bindings. The including file declares Params and HEAD_DIM.

#if VEC4
alias V = vec4<f32>;
const W: u32 = 4u;
fn dotv(a: V, b: V) -> f32 {
  return dot(a, b);
}
#else
alias V = f32;
const W: u32 = 1u;
fn dotv(a: V, b: V) -> f32 {
  return a * b;
}
#endif

#if SOFT_CAP
// tanh from one exp of a non-positive argument: no overflow for any x, sign kept.
fn tanhStable(x: f32) -> f32 {
  let e = exp(-2.0 * abs(x));
  return sign(x) * (1.0 - e) / (1.0 + e);
}
#endif

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<V>;
@group(0) @binding(2) var<storage, read> kCache: array<V>;
@group(0) @binding(3) var<storage, read> vCache: array<V>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<V>;

const DW: u32 = HEAD_DIM / W;
