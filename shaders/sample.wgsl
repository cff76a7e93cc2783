// Samples one token per row of logits [rows, cols] with temperature, top-k and top-p, by inverse CDF.
//
// Order the tokens by (logit descending, index ascending); every filter keeps a prefix of that order:
//   top-k (topK > 0): the first topK tokens (ties at the boundary: the lowest indices);
//   top-p (topP < 1): then the shortest prefix whose probability, renormalised over the top-k set,
//                     reaches topP (as Hugging Face applies top-k before top-p).
// Probabilities are exp((logit − max) / temperature). The kept set S is sampled by inverse CDF in token
// index order: the first token whose cumulative kept mass exceeds u · mass(S), with u = uniforms[row] in
// [0, 1) (u ≥ 1 gives the last kept token).
//
// No sort. Logits are mapped to u32 keys that order like the floats, and the key at each boundary is
// found exactly by a radix select, 4 bits per pass over the row (8 passes): each invocation histograms
// the next 4 key bits of the tokens that share the bits found so far, counting them (top-k) or summing
// their probability (top-p) into 16 buckets; the workgroup adds the histograms and takes the highest
// bucket where the running total reaches the target. The inverse CDF narrows the token range by a
// factor WG per pass: prefix sums over contiguous parts, one per invocation.
//
// One workgroup (WG invocations, a power of two) per row. Logits must be finite (mask with a large
// negative value, not −inf).

struct Params {
  rows: u32,
  cols: u32,
  topK: u32,
  topP: f32,
  invTemperature: f32,
  // 32 (the key width), WG and 16 (buckets per pass), given at run time so that the loops over them
  // stay loops: unrolled (each copy of a barrier another coroutine split), llvmpipe takes tens of
  // seconds to compile the kernel; as loops, a second or two.
  keyBits: u32,
  invocations: u32,
  buckets: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> uniforms: array<f32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;

struct Selection {
  // The key bits found so far, left-aligned.
  prefix: u32,
  // Count or mass of the tokens above the selected bucket.
  above: f32,
}

// A range of tokens the inverse CDF has narrowed down to, with the kept mass and the ties before it.
struct Level {
  start: u32,
  end: u32,
  tiesBefore: u32,
  massBefore: f32,
  goal: f32,
}

var<workgroup> hist: array<vec4<f32>, 4 * WG>;
var<workgroup> reduceF: array<f32, WG>;
var<workgroup> partMass: array<f32, WG>;
var<workgroup> partTies: array<u32, WG>;
var<workgroup> selection: Selection;
var<workgroup> levelShared: Level;

const NONE: u32 = 0xffffffffu;
const B0 = vec4<u32>(0u, 1u, 2u, 3u);

// Monotone map of f32 onto u32: a < b ⇔ key(a) < key(b) (−0 sorts just below +0).
fn key_of(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value_of(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// exp((value − max) / T) of the tokens whose key is `k`; key 0 (a NaN pattern, "below every logit")
// weighs nothing.
fn weight_of_key(k: u32, rowMax: f32, invT: f32) -> f32 {
  return select(exp((value_of(k) - rowMax) * invT), 0.0, k == 0u);
}

fn sum_f(v: f32, lid: u32) -> f32 {
  reduceF[lid] = v;
  for (var stride = params.invocations / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) {
      reduceF[lid] += reduceF[lid + stride];
    }
  }
  let total = workgroupUniformLoad(&reduceF[0]);
  workgroupBarrier();
  return total;
}

fn max_f(v: f32, lid: u32) -> f32 {
  reduceF[lid] = v;
  for (var stride = params.invocations / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) {
      reduceF[lid] = max(reduceF[lid], reduceF[lid + stride]);
    }
  }
  let total = workgroupUniformLoad(&reduceF[0]);
  workgroupBarrier();
  return total;
}

// Bits of `key` that the selection has fixed (the top `known` bits).
fn known_bits(key: u32, known: u32) -> u32 {
  return select(key & (0xffffffffu << (32u - known)), 0u, known == 0u);
}

// Adds up the invocations' 16-bucket histograms (h0..h3: buckets 0–3, …, 12–15) and picks, from the
// top, the bucket where above + the buckets from there up first reach `goal` (the lowest bucket if none
// does). `extra` is added to bucket `extraBucket` first. Returns the prefix extended by the bucket's 4
// bits (at `shift`) and the new count or mass above it.
fn select_bucket(h0: vec4<f32>, h1: vec4<f32>, h2: vec4<f32>, h3: vec4<f32>, lid: u32, prefix: u32, shift: u32, above: f32, goal: f32, extraBucket: u32, extra: f32) -> Selection {
  hist[4u * lid] = h0;
  hist[4u * lid + 1u] = h1;
  hist[4u * lid + 2u] = h2;
  hist[4u * lid + 3u] = h3;
  for (var stride = params.invocations / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) {
      for (var i = 0u; i < params.buckets / 4u; i++) {
        hist[4u * lid + i] += hist[4u * (lid + stride) + i];
      }
    }
  }
  workgroupBarrier();
  if (lid == 0u) {
    var acc = above;
    var bucket = 0u;
    for (var b = i32(params.buckets) - 1i; b >= 0i; b--) {
      let ub = u32(b);
      var total = hist[ub / 4u][ub % 4u];
      if (ub == extraBucket) {
        total += extra;
      }
      if (acc + total >= goal) {
        bucket = ub;
        break;
      }
      if (b > 0i) {
        acc += total;
      }
    }
    selection = Selection(prefix | (bucket << shift), acc);
  }
  let result = workgroupUniformLoad(&selection);
  return result;
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
  @builtin(num_workgroups) groups: vec3<u32>,
) {
  let row = wid.x + wid.y * groups.x;
  if (row >= params.rows) {
    return;
  }
  let cols = params.cols;
  let base = row * cols;
  let invT = params.invTemperature;

  var localMax = -3.0e38;
  for (var i = lid; i < cols; i += WG) {
    localMax = max(localMax, logits[base + i]);
  }
  let rowMax = max_f(localMax, lid);

  // Top-k: tauK = the largest key with at least topK keys ≥ it; the set is every key above tauK and the
  // first tiesK (in index order) equal to it. Off: tauK = 0, every key above it (all finite values).
  let topK = params.topK;
  let kOn = topK > 0u && topK < cols;
  var tauK = 0u;
  var tiesK = 0u;
  if (kOn) {
    var sel = Selection(0u, 0.0);
    for (var known = 0u; known < params.keyBits; known += 4u) {
      let shift = 28u - known;
      var h0 = vec4<f32>(0.0);
      var h1 = vec4<f32>(0.0);
      var h2 = vec4<f32>(0.0);
      var h3 = vec4<f32>(0.0);
      for (var i = lid; i < cols; i += WG) {
        let k = key_of(logits[base + i]);
        if (known_bits(k, known) == sel.prefix) {
          let b = vec4<u32>((k >> shift) & 15u);
          h0 += select(vec4<f32>(0.0), vec4<f32>(1.0), b == B0);
          h1 += select(vec4<f32>(0.0), vec4<f32>(1.0), b == B0 + 4u);
          h2 += select(vec4<f32>(0.0), vec4<f32>(1.0), b == B0 + 8u);
          h3 += select(vec4<f32>(0.0), vec4<f32>(1.0), b == B0 + 12u);
        }
      }
      sel = select_bucket(h0, h1, h2, h3, lid, sel.prefix, shift, sel.above, f32(topK), 16u, 0.0);
    }
    tauK = sel.prefix;
    tiesK = topK - u32(sel.above);
  }

  // Top-p: tau = the largest key whose keys ≥ it (within the top-k set) hold at least topP · massK;
  // then the fewest ties at tau (lowest indices) that reach it.
  var tau = tauK;
  var ties = select(NONE, tiesK, kOn);
  if (params.topP < 1.0) {
    let eTauK = weight_of_key(tauK, rowMax, invT);
    var m = 0.0;
    for (var i = lid; i < cols; i += WG) {
      let v = logits[base + i];
      if (key_of(v) > tauK) {
        m += exp((v - rowMax) * invT);
      }
    }
    let massAboveK = sum_f(m, lid);
    let goal = params.topP * (massAboveK + f32(tiesK) * eTauK);
    var sel = Selection(0u, 0.0);
    for (var known = 0u; known < params.keyBits; known += 4u) {
      let shift = 28u - known;
      var h0 = vec4<f32>(0.0);
      var h1 = vec4<f32>(0.0);
      var h2 = vec4<f32>(0.0);
      var h3 = vec4<f32>(0.0);
      for (var i = lid; i < cols; i += WG) {
        let v = logits[base + i];
        let k = key_of(v);
        if (k > tauK && known_bits(k, known) == sel.prefix) {
          let w = vec4<f32>(exp((v - rowMax) * invT));
          let b = vec4<u32>((k >> shift) & 15u);
          h0 += select(vec4<f32>(0.0), w, b == B0);
          h1 += select(vec4<f32>(0.0), w, b == B0 + 4u);
          h2 += select(vec4<f32>(0.0), w, b == B0 + 8u);
          h3 += select(vec4<f32>(0.0), w, b == B0 + 12u);
        }
      }
      // The top-k ties at tauK weigh tiesK tokens, whatever their count.
      let tieBucket = select(16u, (tauK >> shift) & 15u, known_bits(tauK, known) == sel.prefix);
      sel = select_bucket(h0, h1, h2, h3, lid, sel.prefix, shift, sel.above, goal, tieBucket, f32(tiesK) * eTauK);
    }
    tau = sel.prefix;
    let above = sel.above;
    var available = tiesK;
    if (tau != tauK || !kOn) {
      var c = 0.0;
      for (var i = lid; i < cols; i += WG) {
        c += select(0.0, 1.0, key_of(logits[base + i]) == tau);
      }
      available = u32(sum_f(c, lid));
    }
    let eTau = weight_of_key(tau, rowMax, invT);
    let need = (goal - above) / eTau;
    ties = available;
    if (eTau <= 0.0 || need <= 1.0) {
      ties = min(1u, available);
    } else if (need < f32(available)) {
      ties = u32(ceil(need));
    }
  }

  // Inverse CDF over the kept set S = {key > tau} ∪ {the first `ties` keys equal to tau}, in index order:
  // split the range into WG contiguous parts, add up each part's kept mass (and count its ties, so the
  // first `ties` of them in index order are the kept ones), find the part where u · total falls, and
  // repeat inside it until one token is left.
  let eTau = weight_of_key(tau, rowMax, invT);
  var level = Level(0u, cols, 0u, 0.0, 0.0);
  for (var depth = 0u; level.end - level.start > 1u; depth++) {
    let part = (level.end - level.start + WG - 1u) / WG;
    let start = min(level.start + lid * part, level.end);
    let end = min(start + part, level.end);
    var mass = 0.0;
    var tieCount = 0u;
    for (var i = start; i < end; i++) {
      let v = logits[base + i];
      let k = key_of(v);
      if (k > tau) {
        mass += exp((v - rowMax) * invT);
      }
      tieCount += select(0u, 1u, k == tau);
    }
    partMass[lid] = mass;
    partTies[lid] = tieCount;
    workgroupBarrier();
    if (lid == 0u) {
      // Mass and ties before each part (in place), then the part where the goal falls: the first whose
      // cumulative mass exceeds it, else (rounding) the last part with any mass.
      var massBefore = level.massBefore;
      var tiesBefore = level.tiesBefore;
      var lastNonEmpty = 0u;
      for (var j = 0u; j < params.invocations; j++) {
        let n = partTies[j];
        let kept = min(n, ties - min(ties, tiesBefore));
        let m = partMass[j] + f32(kept) * eTau;
        partMass[j] = massBefore;
        partTies[j] = tiesBefore;
        if (m > 0.0) {
          lastNonEmpty = j;
        }
        massBefore += m;
        tiesBefore += n;
      }
      var goal = level.goal;
      if (depth == 0u) {
        goal = uniforms[row] * massBefore;
      }
      var pick = lastNonEmpty;
      for (var j = 0u; j < lastNonEmpty; j++) {
        if (partMass[j + 1u] > goal) {
          pick = j;
          break;
        }
      }
      let pickStart = min(level.start + pick * part, level.end);
      levelShared = Level(pickStart, min(pickStart + part, level.end), partTies[pick], partMass[pick], goal);
    }
    level = workgroupUniformLoad(&levelShared);
  }
  if (lid == 0u) {
    tokens[row] = level.start;
  }
}
