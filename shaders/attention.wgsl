// Causal grouped-query attention over the KV cache.
//
// Query token t (slot s = slots[t], position p = positions[t]) attends, in each head h, to the cached
// keys 0..p of slot s in kv head h / GROUP, with scale `scale` (1/sqrt(headDim)) and a numerically
// stable online softmax; positions after p are never read, so prefill of packed prompts and decode
// share this kernel once kv_cache_write has stored the new keys and values.
//
// Sliding window (`window` > 0): only the last `window` keys, positions p − window + 1 .. p, are read
// (transformers' sliding mask: key k is seen when p − window < k ≤ p). With window 0 the loop starts
// at key 0 and every operation is the same as without a window.
// SOFT_CAP (Gemma 2): each score s = scale · q·k becomes softCap · tanh(s / softCap) before the softmax.
//
// Layouts (in f32 elements): q rows of qStride, head h at qOffset + h·HEAD_DIM; caches [slots, maxLen,
// kvHeads, HEAD_DIM]; out rows of outStride, head h at h·HEAD_DIM. With VEC4 every one of these is read
// as vec4 (HEAD_DIM, strides and offsets multiples of 4); without, as f32.
//
// One workgroup per (token, kv head) computes the GROUP query heads that share the kv head, so each
// cached key and value is read once for all of them. Keys go in chunks of CHUNK:
//   1. each invocation takes keys of the chunk and computes their GROUP scores (q is in workgroup memory);
//   2. invocation g < GROUP takes the chunk maximum of head g and the factor that rescales what came before;
//   3. all invocations turn the scores into exp(score − max);
//   4. the GROUP·HEAD_DIM outputs (UNITS vectors of W) are spread over the invocations: with fewer units
//      than invocations, SLICES invocations share a unit, each taking every SLICES-th key of the chunk,
//      and their partial sums are added once at the end. Adjacent invocations read adjacent values.

struct Params {
  tokens: u32,
  kvHeads: u32,
  maxLen: u32,
  qStride: u32,
  qOffset: u32,
  outStride: u32,
  scale: f32,
  // HEAD_DIM / W again, as a run-time value: loops over it stay loops (fully unrolled, they compile
  // slowly on llvmpipe and run no faster).
  headUnits: u32,
  window: u32,
  softCap: f32,
}

#include "common/attention_io.wgsl"
const UNITS: u32 = GROUP * DW;
const SLICES: u32 = max(1u, WG / UNITS);
const OUT_PER_THREAD: u32 = (UNITS + WG - 1u) / WG;
const PARTIALS: u32 = select(1u, SLICES * UNITS, SLICES > 1u);

var<workgroup> qs: array<V, UNITS>;
var<workgroup> ps: array<f32, GROUP * CHUNK>;
var<workgroup> chunkMax: array<f32, GROUP>;
var<workgroup> rescale: array<f32, GROUP>;
var<workgroup> keyCount: u32;
var<workgroup> firstKey: u32;
var<workgroup> partialAcc: array<V, PARTIALS>;
var<workgroup> partialSum: array<f32, PARTIALS>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
  @builtin(num_workgroups) groups: vec3<u32>,
) {
  let item = wid.x + wid.y * groups.x;
  let kvHeads = params.kvHeads;
  if (item >= params.tokens * kvHeads) {
    return;
  }
  let t = item / kvHeads;
  let kvh = item % kvHeads;
  let kvRow = kvHeads * DW;
  let base = slots[t] * params.maxLen * kvRow + kvh * DW;

  if (lid == 0u) {
    let count = min(positions[t] + 1u, params.maxLen);
    keyCount = count;
    firstKey = select(0u, count - params.window, params.window > 0u && count > params.window);
  }
  let qBase = (t * params.qStride + params.qOffset) / W + kvh * UNITS;
  for (var e = lid; e < UNITS; e += WG) {
    qs[e] = q[qBase + e] * params.scale;
  }
  let count = workgroupUniformLoad(&keyCount);
  let first = workgroupUniformLoad(&firstKey);

  // Invocation lid accumulates units lid + o·WG (one unit, slice `slice`, when SLICES > 1).
  let slice = lid / UNITS;
  let accumulates = slice < SLICES;
  var runningMax = 0.0;
  var acc: array<V, OUT_PER_THREAD>;
  var sum: array<f32, OUT_PER_THREAD>;
  for (var o = 0u; o < OUT_PER_THREAD; o++) {
    acc[o] = V(0.0);
    sum[o] = 0.0;
  }

  for (var c0 = first; c0 < count; c0 += CHUNK) {
    let n = min(CHUNK, count - c0);
    // The previous chunk's readers of ps and rescale are done (and qs is loaded).
    workgroupBarrier();
    for (var j = lid; j < n; j += WG) {
      let at = base + (c0 + j) * kvRow;
      var s: array<f32, GROUP>;
      for (var g = 0u; g < GROUP; g++) {
        s[g] = 0.0;
      }
      for (var d = 0u; d < params.headUnits; d++) {
        let kd = kCache[at + d];
        for (var g = 0u; g < GROUP; g++) {
          s[g] += dotv(qs[g * DW + d], kd);
        }
      }
      for (var g = 0u; g < GROUP; g++) {
#if SOFT_CAP
        ps[g * CHUNK + j] = params.softCap * tanhStable(s[g] / params.softCap);
#else
        ps[g * CHUNK + j] = s[g];
#endif
      }
    }
    workgroupBarrier();
    if (lid < GROUP) {
      var m = ps[lid * CHUNK];
      for (var j = 1u; j < n; j++) {
        m = max(m, ps[lid * CHUNK + j]);
      }
      if (c0 == first) {
        rescale[lid] = 0.0;
      } else {
        m = max(m, runningMax);
        rescale[lid] = exp(runningMax - m);
      }
      runningMax = m;
      chunkMax[lid] = m;
    }
    workgroupBarrier();
    for (var e = lid; e < GROUP * CHUNK; e += WG) {
      let j = e % CHUNK;
      if (j < n) {
        ps[e] = exp(ps[e] - chunkMax[e / CHUNK]);
      }
    }
    workgroupBarrier();
    if (accumulates) {
      for (var o = 0u; o < OUT_PER_THREAD; o++) {
        let unit = lid % UNITS + o * WG;
        if (unit < UNITS) {
          let g = unit / DW;
          let r = rescale[g];
          var a = acc[o] * r;
          var l = sum[o] * r;
          var at = base + (c0 + slice) * kvRow + unit % DW;
          for (var j = slice; j < n; j += SLICES) {
            let pj = ps[g * CHUNK + j];
            a += pj * vCache[at];
            l += pj;
            at += SLICES * kvRow;
          }
          acc[o] = a;
          sum[o] = l;
        }
      }
    }
  }

  let outBase = (t * params.outStride) / W + kvh * UNITS;
  if (SLICES == 1u) {
    for (var o = 0u; o < OUT_PER_THREAD; o++) {
      let unit = lid + o * WG;
      if (unit < UNITS) {
        out[outBase + unit] = acc[o] / sum[o];
      }
    }
  } else {
    if (accumulates) {
      partialAcc[lid] = acc[0];
      partialSum[lid] = sum[0];
    }
    workgroupBarrier();
    if (lid < UNITS) {
      var a = partialAcc[lid];
      var l = partialSum[lid];
      for (var s = 1u; s < SLICES; s++) {
        a += partialAcc[s * UNITS + lid];
        l += partialSum[s * UNITS + lid];
      }
      out[outBase + lid] = a / l;
    }
  }
}
