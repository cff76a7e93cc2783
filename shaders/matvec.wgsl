// y[t, out_offset + n] = Σ_k x[t, k] · W[n, k] (+ bias[n]) — the same product as matmul.wgsl, shaped
// for few tokens (decode). W is [n, k] row-major as Hugging Face stores it, packed in its file dtype.
//
// One workgroup computes a block of TM tokens × TN output features. Its WG invocations split the dot
// products along k: invocation l reads elements 4l.., 4(l + WG).., so neighbouring invocations read
// neighbouring words of each weight row (coalesced on GPUs, contiguous vector lanes on CPU drivers),
// and every weight is read once per TM tokens. The WG partial sums of each output are then added, with
// subgroup sums (SUBGROUPS) or a tree in workgroup memory.
#if SUBGROUPS
enable subgroups;
#endif

#include "common/matmul_io.wgsl"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;

#include "common/weights.wgsl"

const OUTPUTS: u32 = TM * TN;
#if SUBGROUPS
// One partial sum per output and subgroup (subgroups have at least 4 invocations).
const SLOTS: u32 = (WG + 3u) / 4u;
var<workgroup> partial: array<f32, OUTPUTS * SLOTS>;
#else
var<workgroup> partial: array<f32, OUTPUTS * WG>;
#endif

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
#if SUBGROUPS
  @builtin(subgroup_invocation_id) sg_lane: u32,
  @builtin(subgroup_size) sg_size: u32,
#endif
) {
  // Blocks of output features may be folded into y when there are more than 65535.
  let n0 = (wid.x + wid.z * groups.x) * TN;
  let t0 = wid.y * TM;
  // Uniform across the workgroup, so returning here keeps the barriers below uniform.
  if (n0 >= params.n || t0 >= params.tokens) {
    return;
  }
  let k = params.k;
  var rows: array<u32, TM>;
  for (var i = 0u; i < TM; i++) {
    rows[i] = min(t0 + i, params.tokens - 1u) * k;
  }
  var cols: array<u32, TN>;
  for (var j = 0u; j < TN; j++) {
    cols[j] = min(n0 + j, params.n - 1u) * k;
  }
  var acc: array<array<f32, TN>, TM>;
  if (k % 4u == 0u) {
    for (var kk = 4u * lane; kk < k; kk += 4u * WG) {
      var xs: array<vec4<f32>, TM>;
      for (var i = 0u; i < TM; i++) {
        let r = rows[i] + kk;
        xs[i] = vec4<f32>(x[r], x[r + 1u], x[r + 2u], x[r + 3u]);
      }
      for (var j = 0u; j < TN; j++) {
        let w = weight4(cols[j] + kk);
        for (var i = 0u; i < TM; i++) {
          acc[i][j] += dot(xs[i], w);
        }
      }
    }
  } else {
    for (var kk = lane; kk < k; kk += WG) {
      for (var j = 0u; j < TN; j++) {
        let w = weight_at(cols[j] + kk);
        for (var i = 0u; i < TM; i++) {
          acc[i][j] += x[rows[i] + kk] * w;
        }
      }
    }
  }

#if SUBGROUPS
  let sg = lane / sg_size;
  let subgroups = (WG + sg_size - 1u) / sg_size;
  for (var i = 0u; i < TM; i++) {
    for (var j = 0u; j < TN; j++) {
      let s = subgroupAdd(acc[i][j]);
      if (sg_lane == 0u) {
        partial[(i * TN + j) * SLOTS + sg] = s;
      }
    }
  }
  workgroupBarrier();
  for (var o = lane; o < OUTPUTS; o += WG) {
    var total = 0.0;
    for (var s = 0u; s < subgroups; s++) {
      total += partial[o * SLOTS + s];
    }
    store(t0 + o / TN, n0 + o % TN, total);
  }
#else
  for (var i = 0u; i < TM; i++) {
    for (var j = 0u; j < TN; j++) {
      partial[(i * TN + j) * WG + lane] = acc[i][j];
    }
  }
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lane < stride) {
      for (var o = 0u; o < OUTPUTS; o++) {
        partial[o * WG + lane] += partial[o * WG + lane + stride];
      }
    }
  }
  workgroupBarrier();
  for (var o = lane; o < OUTPUTS; o += WG) {
    store(t0 + o / TN, n0 + o % TN, partial[o * WG]);
  }
#endif
}
