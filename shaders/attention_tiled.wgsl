// Causal grouped-query attention over the KV cache, tiled over queries (flash-attention style): the
// variant for prefill, where many consecutive query tokens read the same slot's keys.
//
// Same contract as attention.wgsl (layouts, positions, slots, sliding window, SOFT_CAP): query token t
// (slot slots[t], position p = positions[t]) attends in head h to the cached keys of positions
// first..min(p, maxLen − 1) of its slot in kv head h / GROUP, first = p − window + 1 with a window.
//
// One workgroup (WG = BQ · GROUP invocations) per (tile of BQ consecutive tokens, kv head); invocation
// (i, g) owns query token t0 + i in query head kvh · GROUP + g, its q row and its HEAD_DIM accumulators
// in registers. The tile's tokens are split into runs of the same slot (a packed prefill has one run per tile except
// where a prompt ends); for each run the workgroup walks the union of its tokens' key ranges in
// blocks of BK keys. Every invocation of the workgroup reads the same key and value at the same time,
// at an address computed from workgroup-uniform values only, so a driver may load it once for all
// lanes and GPUs serve it from one cache line; no workgroup memory, no barriers. (On lavapipe this did
// not beat attention.wgsl: bench/RESULTS.md, "Tiled attention".) Each invocation keeps its own online
// softmax: per block, the block's scores, their maximum, one rescale of the accumulators, BK
// exponentials. Keys outside an invocation's causal or window range get weight exactly 0 (selected, not computed), so its result does not depend on the tile.
//
// Cost per key and query head: 2 · HEAD_DIM multiply-adds and one exponential; K and V are read once
// per tile of BQ tokens instead of once per token as in attention.wgsl.

struct Params {
  tokens: u32,
  kvHeads: u32,
  maxLen: u32,
  qStride: u32,
  qOffset: u32,
  outStride: u32,
  scale: f32,
  window: u32,
  softCap: f32,
  // HEAD_DIM / W again, as a run-time bound: loops over the head dimension stay loops. Unrolled together
  // with the loops over a block of keys, some shapes took lavapipe minutes to compile (head_dim 32 with
  // 8 keys a block, 64 with 2).
  headUnits: u32,
}

#include "common/attention_io.wgsl"

// Keys first..count − 1 of the token at t: count = min(p + 1, maxLen), first from the window.
fn keyRange(t: u32) -> vec2<u32> {
  let count = min(positions[t] + 1u, params.maxLen);
  let first = select(0u, count - params.window, params.window > 0u && count > params.window);
  return vec2<u32>(first, count);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
  @builtin(num_workgroups) groups: vec3<u32>,
) {
  let item = wid.x + wid.y * groups.x;
  let kvHeads = params.kvHeads;
  let tiles = (params.tokens + BQ - 1u) / BQ;
  if (item >= tiles * kvHeads) {
    return;
  }
  let kvh = item % kvHeads;
  let t0 = (item / kvHeads) * BQ;
  let tEnd = min(t0 + BQ, params.tokens);
  let kvRow = kvHeads * DW;

  let i = lid % BQ;
  let g = lid / BQ;
  let t = min(t0 + i, tEnd - 1u);
  let real = t0 + i < tEnd;
  let mine = keyRange(t);
  let qBase = (t * params.qStride + params.qOffset) / W + (kvh * GROUP + g) * DW;
  var qv: array<V, DW>;
  var acc: array<V, DW>;
  for (var d = 0u; d < params.headUnits; d++) {
    qv[d] = q[qBase + d] * params.scale;
    acc[d] = V(0.0);
  }
  // Running maximum (the lowest finite f32 until the first key of this invocation: its rescale factor
  // exp(lowest − m) is 0 for any score m near it) and sum of exp(score − max).
  var runningMax = -0x1.fffffep+127f;
  var sum = 0.0;

  // Runs of tokens that share a slot; every bound below is uniform across the workgroup.
  var r0 = t0;
  while (r0 < tEnd) {
    let slot = slots[r0];
    var range = keyRange(r0);
    var r1 = r0 + 1u;
    while (r1 < tEnd && slots[r1] == slot) {
      let other = keyRange(r1);
      range = vec2<u32>(min(range.x, other.x), max(range.y, other.y));
      r1++;
    }
    let inRun = real && t >= r0 && t < r1;
    // An invocation outside the run takes no key of it.
    let lo = select(mine.y, mine.x, inRun);
    let hi = mine.y;
    let base = slot * params.maxLen * kvRow + kvh * DW;
    for (var k0 = range.x; k0 < range.y; k0 += BK) {
      // Rows of the block; past the run's last key, the last key again (weight 0 below).
      var rows: array<u32, BK>;
      var s: array<f32, BK>;
      for (var j = 0u; j < BK; j++) {
        rows[j] = base + min(k0 + j, range.y - 1u) * kvRow;
        s[j] = 0.0;
      }
      for (var d = 0u; d < params.headUnits; d++) {
        let qd = qv[d];
        for (var j = 0u; j < BK; j++) {
          s[j] += dotv(qd, kCache[rows[j] + d]);
        }
      }
      var blockMax = runningMax;
      for (var j = 0u; j < BK; j++) {
#if SOFT_CAP
        s[j] = params.softCap * tanhStable(s[j] / params.softCap);
#endif
        let key = k0 + j;
        if (key >= lo && key < hi) {
          blockMax = max(blockMax, s[j]);
        }
      }
      // With no key of this invocation yet and none in this block, nothing changes.
      let rescale = select(exp(runningMax - blockMax), 1.0, blockMax == runningMax);
      var p: array<f32, BK>;
      var blockSum = 0.0;
      for (var j = 0u; j < BK; j++) {
        let key = k0 + j;
        p[j] = select(0.0, exp(s[j] - blockMax), key >= lo && key < hi);
        blockSum += p[j];
      }
      runningMax = blockMax;
      sum = sum * rescale + blockSum;
      for (var d = 0u; d < params.headUnits; d++) {
        var a = acc[d] * rescale;
        for (var j = 0u; j < BK; j++) {
          a += p[j] * vCache[rows[j] + d];
        }
        acc[d] = a;
      }
    }
    r0 = r1;
  }

  if (real) {
    let outBase = (t * params.outStride) / W + (kvh * GROUP + g) * DW;
    for (var d = 0u; d < params.headUnits; d++) {
      out[outBase + d] = acc[d] / sum;
    }
  }
}
