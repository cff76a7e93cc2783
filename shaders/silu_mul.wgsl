// The gated MLP's activation, in place: gate ← silu(gate) · up (silu(g) = g / (1 + e^−g)).
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * WG;
  if (i < params.n) {
    let g = gate[i];
    // exp(−g) overflows to +inf for g < −88; g / inf = −0, which is the right limit.
    gate[i] = g / (1.0 + exp(-g)) * up[i];
  }
}
