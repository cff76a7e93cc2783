// The uniforms, bias and output of the matmul kernels (matmul, matmul_vec4, matvec), and their store:
// y[t, out_offset + n] = value (+ bias[n]). Each kernel binds x (1) and W (2) in its own vector width.
struct Params {
  tokens: u32,
  k: u32,
  n: u32,
  out_stride: u32,
  out_offset: u32,
  // First row of this chunk of W, to index the bias of the whole matrix.
  row_start: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
#if HAS_BIAS
@group(0) @binding(3) var<storage, read> bias: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn store(t: u32, n: u32, value: f32) {
  if (t >= params.tokens || n >= params.n) {
    return;
  }
#if HAS_BIAS
  y[t * params.out_stride + params.out_offset + n] = value + bias[params.row_start + n];
#else
  y[t * params.out_stride + params.out_offset + n] = value;
#endif
}
