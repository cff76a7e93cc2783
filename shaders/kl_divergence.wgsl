// Per-row KL(P‖Q) = Σ_v p_v (log p_v − log q_v), P = softmax(logits_p[r]), Q = softmax(logits_q[r]),
// from the logits through log-softmax: log p_v = (z_v − max_z) − log Σ exp(z − max_z).
// One workgroup per row. Pass 1: the log-sum-exp of both rows. Pass 2:
//   KL = Σ_v e_v · (δ_v − c) / S_p,  e_v = exp(zp_v − max_p), S_p = Σ e_v,
//   δ_v = (zp_v − max_p) − (zq_v − max_q),  c = log S_p − log S_q,
// skipping elements with e_v = 0 (p_v underflows: their term is 0 even where q_v is 0).
// Identical rows give exactly 0. Otherwise the result is ≥ 0 up to f32 rounding: a tiny negative
// value (of the order of 1e-7 times the logits' range) is possible and is not clamped.
struct Params {
  rows: u32,
  vocab: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits_p: array<f32>;
@group(0) @binding(2) var<storage, read> logits_q: array<f32>;
@group(0) @binding(3) var<storage, read_write> kl: array<f32>;

var<workgroup> lse_max: array<f32, WG>;
var<workgroup> lse_sum: array<f32, WG>;
var<workgroup> partial: array<f32, WG>;

#include "common/logsumexp.wgsl"
#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let row = wid.x + wid.y * groups.x;
  if (row >= params.rows) {
    return;
  }
  let vocab = params.vocab;
  let base = row * vocab;
  var sp = LSE_EMPTY;
  var sq = LSE_EMPTY;
  for (var i = lane; i < vocab; i += WG) {
    sp = lse_push(sp, logits_p[base + i]);
    sq = lse_push(sq, logits_q[base + i]);
  }
  let p = workgroup_lse(sp, lane);
  let q = workgroup_lse(sq, lane);
  let c = log(p.y) - log(q.y);
  var sum = 0.0;
  for (var i = lane; i < vocab; i += WG) {
    let zp = logits_p[base + i] - p.x;
    let e = exp(zp);
    if (e > 0.0) {
      sum += e * ((zp - (logits_q[base + i] - q.x)) - c);
    }
  }
  let total = workgroup_sum(sum, lane);
  if (lane == 0u) {
    kl[row] = total / p.y;
  }
}
