// Appends the new keys and values to the KV cache of one layer.
//
// k and v hold one row per token (kvDim = kvHeads · headDim values starting at kOffset / vOffset of
// each row, rows kStride / vStride apart: a fused QKV buffer can be passed as is, twice). The caches
// are [numSlots, maxLen, kvDim]; token t goes to (slots[t], positions[t]). A token whose slot or
// position is outside the cache is skipped, so a bad index never writes into another sequence.

struct Params {
  tokens: u32,
  kvDim: u32,
  maxLen: u32,
  numSlots: u32,
  kStride: u32,
  kOffset: u32,
  vStride: u32,
  vOffset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> slots: array<u32>;
@group(0) @binding(5) var<storage, read_write> kCache: array<f32>;
@group(0) @binding(6) var<storage, read_write> vCache: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let index = gid.x + gid.y * groups.x * WG;
  let kvDim = params.kvDim;
  if (index >= params.tokens * kvDim) {
    return;
  }
  let t = index / kvDim;
  let j = index % kvDim;
  let pos = positions[t];
  let slot = slots[t];
  if (pos >= params.maxLen || slot >= params.numSlots) {
    return;
  }
  let at = (slot * params.maxLen + pos) * kvDim + j;
  kCache[at] = k[t * params.kStride + params.kOffset + j];
  vCache[at] = v[t * params.vStride + params.vOffset + j];
}
