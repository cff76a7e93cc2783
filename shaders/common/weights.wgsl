// Decoding of a weight matrix kept on the GPU in its file dtype, packed in u32 words.
// Include after declaring `weight: array<u32>`. Element i of the row-major tensor:
//   F32: one element a word; BF16: two a word (low half first), decoded by a shift;
//   F16: two a word, decoded by unpack2x16float. Accumulation is always f32.
#if WEIGHT_F32
fn weight_at(i: u32) -> f32 {
  return bitcast<f32>(weight[i]);
}
// Four consecutive elements starting at i (i a multiple of 4).
fn weight4(i: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(vec4<u32>(weight[i], weight[i + 1u], weight[i + 2u], weight[i + 3u]));
}
#elif WEIGHT_BF16
fn weight_at(i: u32) -> f32 {
  let word = weight[i >> 1u];
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}
fn weight4(i: u32) -> vec4<f32> {
  let a = weight[i >> 1u];
  let b = weight[(i >> 1u) + 1u];
  return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}
#else
fn weight_at(i: u32) -> f32 {
  return unpack2x16float(weight[i >> 1u])[i & 1u];
}
fn weight4(i: u32) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(weight[i >> 1u]), unpack2x16float(weight[(i >> 1u) + 1u]));
}
#endif
