// Routing weights of a mixture-of-experts layer, one token per invocation. From the router logits
// [tokens, stride] (experts in columns 0..experts−1, the shared expert's gate logit in column
// `experts` when HAS_SHARED), writes dense weights [tokens, stride]: 0 for the experts not among the
// TOP_K largest logits; for the selected ones either softmax over the selected logits (NORM_TOPK:
// Mixtral, Qwen-MoE with norm_topk_prob) or softmax over all experts, unrenormalised (Qwen-MoE's
// default); and sigmoid(gate logit) for the shared expert. Ties go to the lower expert index.
struct Params {
  tokens: u32,
  experts: u32,
  stride: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let t = gid.x + gid.y * groups.x * WG;
  if (t >= params.tokens) {
    return;
  }
  let base = t * params.stride;
  let experts = params.experts;
  var chosen: array<u32, TOP_K>;
  for (var j = 0u; j < TOP_K; j++) {
    var best = experts;
    for (var e = 0u; e < experts; e++) {
      var taken = false;
      for (var i = 0u; i < j; i++) {
        taken = taken || chosen[i] == e;
      }
      if (!taken && (best == experts || logits[base + e] > logits[base + best])) {
        best = e;
      }
    }
    chosen[j] = best;
  }
  // The first choice holds the largest logit: subtracting it keeps every exp ≤ 1.
  let top = logits[base + chosen[0]];
  var total = 0.0;
#if NORM_TOPK
  for (var j = 0u; j < TOP_K; j++) {
    total += exp(logits[base + chosen[j]] - top);
  }
#else
  for (var e = 0u; e < experts; e++) {
    total += exp(logits[base + e] - top);
  }
#endif
  for (var e = 0u; e < experts; e++) {
    weights[base + e] = 0.0;
  }
  for (var j = 0u; j < TOP_K; j++) {
    weights[base + chosen[j]] = exp(logits[base + chosen[j]] - top) / total;
  }
#if HAS_SHARED
  weights[base + experts] = 1.0 / (1.0 + exp(-logits[base + experts]));
#endif
}
