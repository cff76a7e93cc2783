// Sum of one value per lane across the workgroup. The total is returned through
// workgroupUniformLoad, so callers may branch on it around later barriers.
// Include after declaring `var<workgroup> partial: array<f32, WG>` (WG a power of two).
fn workgroup_sum(value: f32, lane: u32) -> f32 {
  partial[lane] = value;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lane < stride) {
      partial[lane] += partial[lane + stride];
    }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&partial[0]);
}
