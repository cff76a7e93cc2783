// Residual add in place: x ← x + y, over n elements. With CHECK_FINITE, the sum is also tested for
// NaN and ±Inf (on the bits, as shaders/check_finite.wgsl does): flags[slot] ← min(flags[slot],
// index of a non-finite sum), so the forward pass checks every layer without a dispatch of its own.
struct Params { n: u32, slot: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
#if CHECK_FINITE
@group(0) @binding(3) var<storage, read_write> flags: array<atomic<u32>>;
#endif

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * WG;
  if (i < params.n) {
    let sum = x[i] + y[i];
    x[i] = sum;
#if CHECK_FINITE
    if ((bitcast<u32>(sum) & 0x7f800000u) == 0x7f800000u) {
      atomicMin(&flags[params.slot], i);
    }
#endif
  }
}
