// Gemma's gated MLP activation, in place: gate ← gelu_tanh(gate) · up, with transformers'
// gelu_pytorch_tanh: gelu_tanh(g) = g/2 · (1 + tanh(√(2/π) · (g + 0.044715 g³))).
// 1 + tanh(u) = 2 / (1 + e^(−2u)), so gelu_tanh(g) = g / (1 + e^(−2u)): one exp, no cancellation for
// g < 0, and for u < −44 e^(−2u) is +inf and the result −0, the right limit.
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * WG;
  if (i < params.n) {
    let g = gate[i];
    // Past |g| = 10 the tanh is ±1 to f32 precision; clamping keeps g³ finite for huge g.
    let c = clamp(g, -10.0, 10.0);
    let u = SQRT_2_OVER_PI * (c + 0.044715 * c * c * c);
    gate[i] = g / (1.0 + exp(-2.0 * u)) * up[i];
  }
}
