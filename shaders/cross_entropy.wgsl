// Per-row negative log-likelihood of a target token (perplexity):
//   nll[r] = logsumexp(logits[r]) − logits[r][targets[r]]
// computed max-subtracted: (max − logits[target]) + log Σ exp(logits − max). One workgroup per row.
// A target of 0xffffffff marks an ignored position (padding) and gives 0; any other target outside
// the vocabulary gives NaN, so that a wrong id cannot pass unnoticed.
struct Params {
  rows: u32,
  vocab: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> nll: array<f32>;

var<workgroup> lse_max: array<f32, WG>;
var<workgroup> lse_sum: array<f32, WG>;

#include "common/logsumexp.wgsl"

const IGNORED = 0xffffffffu;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let row = wid.x + wid.y * groups.x;
  if (row >= params.rows) {
    return;
  }
  let vocab = params.vocab;
  let base = row * vocab;
  var state = LSE_EMPTY;
  for (var i = lane; i < vocab; i += WG) {
    state = lse_push(state, logits[base + i]);
  }
  let total = workgroup_lse(state, lane);
  if (lane == 0u) {
    let id = targets[row];
    if (id == IGNORED) {
      nll[row] = 0.0;
    } else if (id >= vocab) {
      // A quiet NaN (built from a runtime value: WGSL rejects a constant NaN).
      nll[row] = bitcast<f32>(0x7fc00000u | (id & 0u));
    } else {
      nll[row] = (total.x - logits[base + id]) + log(total.y);
    }
  }
}
