// y[t, out_offset + n] = Σ_k x[t, k] · W[n, k] (+ bias[n])
// W is [n, k] row-major as Hugging Face stores nn.Linear weights, packed in its file dtype.
// Each invocation computes a TM×TN block of outputs from registers, with no workgroup memory or
// barriers: on CPU Vulkan drivers this shape is ~10× faster than shared-memory tiling, and on GPUs
// it is a reasonable register-blocked kernel for the small token counts of prefill batches.
#include "common/matmul_io.wgsl"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;

#include "common/weights.wgsl"

@compute @workgroup_size(WG_X, WG_Y)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n0 = gid.x * TN;
  let t0 = gid.y * TM;
  if (n0 >= params.n || t0 >= params.tokens) {
    return;
  }
  let k = params.k;
  // Rows past the end are clamped to the last one; their results are never stored.
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
    for (var kk = 0u; kk < k; kk += 4u) {
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
    for (var kk = 0u; kk < k; kk++) {
      for (var j = 0u; j < TN; j++) {
        let w = weight_at(cols[j] + kk);
        for (var i = 0u; i < TM; i++) {
          acc[i][j] += x[rows[i] + kk] * w;
        }
      }
    }
  }
  for (var i = 0u; i < TM; i++) {
    let t = t0 + i;
    if (t >= params.tokens) {
      break;
    }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + j;
      if (n >= params.n) {
        break;
      }
      store(t, n, acc[i][j]);
    }
  }
}
