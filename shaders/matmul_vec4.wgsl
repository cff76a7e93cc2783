// y[t, out_offset + n] = Σ_k x[t, k] · W[n, k] (+ bias[n]) — matmul.wgsl with 16-byte loads.
// x and W are bound as arrays of vec4, so each invocation reads 8 consecutive k of a row in one load of
// W (bf16, f16) or two (f32) and two loads of x, instead of one load a word. Needs k % 8 == 0
// (every hidden and intermediate size of real models); the recorder uses matmul.wgsl otherwise.
// Each invocation computes a TM×TN block of outputs from registers, with no workgroup memory.
#include "common/matmul_io.wgsl"
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight: array<vec4<u32>>;

// Elements 8i .. 8i + 7 of W (row-major, counted in elements), as two vec4.
struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}
#if WEIGHT_F32
fn weight8(i: u32) -> W8 {
  return W8(bitcast<vec4<f32>>(weight[2u * i]), bitcast<vec4<f32>>(weight[2u * i + 1u]));
}
#elif WEIGHT_BF16
fn weight8(i: u32) -> W8 {
  let w = weight[i];
  let lo = vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u);
  let hi = vec4<u32>(w.z << 16u, w.z & 0xffff0000u, w.w << 16u, w.w & 0xffff0000u);
  return W8(bitcast<vec4<f32>>(lo), bitcast<vec4<f32>>(hi));
}
#else
fn weight8(i: u32) -> W8 {
  let w = weight[i];
  return W8(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));
}
#endif

@compute @workgroup_size(WG_X, WG_Y)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  // Blocks of output features beyond the per-dimension workgroup limit fold into z.
  let n0 = (gid.x + gid.z * groups.x * WG_X) * TN;
  let t0 = gid.y * TM;
  if (n0 >= params.n || t0 >= params.tokens) {
    return;
  }
  // Counted in blocks of 8 elements.
  let k8 = params.k / 8u;
  // Rows past the end are clamped to the last one; their results are never stored.
  var rows: array<u32, TM>;
  for (var i = 0u; i < TM; i++) {
    rows[i] = min(t0 + i, params.tokens - 1u) * k8;
  }
  var cols: array<u32, TN>;
  for (var j = 0u; j < TN; j++) {
    cols[j] = min(n0 + j, params.n - 1u) * k8;
  }
  var acc: array<array<f32, TN>, TM>;
  for (var kk = 0u; kk < k8; kk++) {
    var xlo: array<vec4<f32>, TM>;
    var xhi: array<vec4<f32>, TM>;
    for (var i = 0u; i < TM; i++) {
      xlo[i] = x[2u * (rows[i] + kk)];
      xhi[i] = x[2u * (rows[i] + kk) + 1u];
    }
    for (var j = 0u; j < TN; j++) {
      let w = weight8(cols[j] + kk);
      for (var i = 0u; i < TM; i++) {
        acc[i][j] += dot(xlo[i], w.lo) + dot(xhi[i], w.hi);
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
