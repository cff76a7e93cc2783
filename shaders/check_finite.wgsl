// Finds non-finite values (NaN, ±Inf) in a buffer of f32: flags[slot] ← min(flags[slot], index of
// the first non-finite element). A slot left at 0xffffffff saw only finite values. The test is on
// the bits (exponent all ones), which no compiler may fold away as it may `x != x`.
struct Params { n: u32, slot: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  // Grid-stride: a few workgroups cover any length; each invocation stops at its first find.
  let stride = groups.x * WG;
  for (var i = gid.x; i < params.n; i += stride) {
    if ((x[i] & 0x7f800000u) == 0x7f800000u) {
      atomicMin(&flags[params.slot], i);
      return;
    }
  }
}
