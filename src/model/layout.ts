/**
 * Where each weight of a decoder layer lives in the files, per family: the tensor names, and for
 * fused tensors (Phi-3's `qkv_proj` and `gate_up_proj`, fused expert stacks) the row range of each
 * part. The loader, the shape check, the streamed cut and the size report all read this one
 * description, so a family is added here and in `BlockDescription`, not in if-chains elsewhere.
 */
import type { ModelConfig } from './config.ts';

/**
 * Rows [rowStart, rowStart + rows) of a tensor seen as a matrix [all rows, cols]; a 3-D tensor
 * [E, R, C] is seen as [E·R, C]. A whole 2-D tensor is rowStart 0 and all its rows.
 */
export interface MatrixSlice {
  tensor: string;
  rowStart: number;
  rows: number;
  cols: number;
  /** The slice is the whole tensor (not a part of a fused one). */
  whole: boolean;
}

export interface DenseMlpLayout {
  gate: MatrixSlice;
  up: MatrixSlice;
  down: MatrixSlice;
  gateBias?: string;
  upBias?: string;
  downBias?: string;
}

export interface MoeLayout {
  /** The router: [numExperts, hidden]. */
  router: string;
  experts: DenseMlpLayout[];
  /** Qwen2-MoE's shared expert and its gate [1, hidden]. */
  shared?: DenseMlpLayout;
  sharedGate?: string;
}

export interface LayerLayout {
  inputNorm: string;
  postAttentionNorm: string;
  q: MatrixSlice;
  k: MatrixSlice;
  v: MatrixSlice;
  o: MatrixSlice;
  qBias?: string;
  kBias?: string;
  vBias?: string;
  oBias?: string;
  /** Qwen3's per-head norms of q and k, [headDim] each. */
  qNorm?: string;
  kNorm?: string;
  /** Gemma's norms of the MLP's input and output (its `postAttentionNorm` normalises the attention's output). */
  preFeedforwardNorm?: string;
  postFeedforwardNorm?: string;
  mlp: ({ kind: 'dense' } & DenseMlpLayout) | ({ kind: 'moe' } & MoeLayout);
}

/**
 * How the experts are stored: one tensor per expert and projection (the Hugging Face layout most
 * checkpoints have), or fused 3-D stacks `experts.gate_up_proj` [E, 2·I, H] and `experts.down_proj`
 * [E, H, I] as newer transformers versions write them.
 */
export type ExpertStorage = 'per_expert' | 'fused';

const whole = (tensor: string, rows: number, cols: number): MatrixSlice => ({ tensor, rowStart: 0, rows, cols, whole: true });
const part = (tensor: string, rowStart: number, rows: number, cols: number): MatrixSlice => ({ tensor, rowStart, rows, cols, whole: false });

/** The fused expert stacks of a MoE layer's module, as newer transformers name them. */
export function fusedExpertTensor(config: ModelConfig, l: number, which: 'gate_up_proj' | 'down_proj'): string {
  return `model.layers.${l}.${config.block.mlpModule}.experts.${which}`;
}

/** Says how a model's experts are stored, from the tensor names present (per-expert when it has no experts). */
export function detectExpertStorage(config: ModelConfig, has: (name: string) => boolean): ExpertStorage {
  const moe = config.moe;
  if (!moe) return 'per_expert';
  const first = moe.sparseLayers.indexOf(true);
  return first >= 0 && has(fusedExpertTensor(config, first, 'gate_up_proj')) ? 'fused' : 'per_expert';
}

function denseMlp(prefix: string, hidden: number, intermediate: number, fused: boolean, bias: boolean): DenseMlpLayout {
  const mlp: DenseMlpLayout = fused
    ? {
        gate: part(`${prefix}.gate_up_proj.weight`, 0, intermediate, hidden),
        up: part(`${prefix}.gate_up_proj.weight`, intermediate, intermediate, hidden),
        down: whole(`${prefix}.down_proj.weight`, hidden, intermediate),
      }
    : {
        gate: whole(`${prefix}.gate_proj.weight`, intermediate, hidden),
        up: whole(`${prefix}.up_proj.weight`, intermediate, hidden),
        down: whole(`${prefix}.down_proj.weight`, hidden, intermediate),
      };
  if (bias) {
    mlp.gateBias = `${prefix}.gate_proj.bias`;
    mlp.upBias = `${prefix}.up_proj.bias`;
    mlp.downBias = `${prefix}.down_proj.bias`;
  }
  return mlp;
}

/** Where layer l's weights are. */
export function layerLayout(config: ModelConfig, l: number, experts: ExpertStorage = 'per_expert'): LayerLayout {
  const { hiddenSize: h, numHeads, numKvHeads, headDim, block } = config;
  const p = `model.layers.${l}`;
  const qDim = numHeads * headDim;
  const kvDim = numKvHeads * headDim;
  const attn = `${p}.self_attn`;
  const layout: LayerLayout = {
    inputNorm: `${p}.input_layernorm.weight`,
    postAttentionNorm: `${p}.post_attention_layernorm.weight`,
    ...(block.fusedQkv
      ? {
          q: part(`${attn}.qkv_proj.weight`, 0, qDim, h),
          k: part(`${attn}.qkv_proj.weight`, qDim, kvDim, h),
          v: part(`${attn}.qkv_proj.weight`, qDim + kvDim, kvDim, h),
        }
      : { q: whole(`${attn}.q_proj.weight`, qDim, h), k: whole(`${attn}.k_proj.weight`, kvDim, h), v: whole(`${attn}.v_proj.weight`, kvDim, h) }),
    o: whole(`${attn}.o_proj.weight`, h, qDim),
    mlp: { kind: 'dense', ...denseMlp(`${p}.mlp`, h, config.intermediateSize, block.fusedGateUp, config.mlpBias) },
  };
  if (config.attentionBias) {
    layout.qBias = `${attn}.q_proj.bias`;
    layout.kBias = `${attn}.k_proj.bias`;
    layout.vBias = `${attn}.v_proj.bias`;
  }
  if (config.oProjBias) layout.oBias = `${attn}.o_proj.bias`;
  if (block.qkNorm) {
    layout.qNorm = `${attn}.q_norm.weight`;
    layout.kNorm = `${attn}.k_norm.weight`;
  }
  if (block.sandwichNorms) {
    layout.preFeedforwardNorm = `${p}.pre_feedforward_layernorm.weight`;
    layout.postFeedforwardNorm = `${p}.post_feedforward_layernorm.weight`;
  }
  const moe = config.moe;
  if (moe && moe.sparseLayers[l]) {
    const module = `${p}.${block.mlpModule}`;
    const I = moe.expertIntermediateSize;
    const expertList: DenseMlpLayout[] = [];
    for (let e = 0; e < moe.numExperts; e++) {
      if (experts === 'fused') {
        const gateUp = fusedExpertTensor(config, l, 'gate_up_proj');
        const down = fusedExpertTensor(config, l, 'down_proj');
        expertList.push({ gate: part(gateUp, e * 2 * I, I, h), up: part(gateUp, e * 2 * I + I, I, h), down: part(down, e * h, h, I) });
      } else if (moe.expertNaming === 'w1w2w3') {
        const x = `${module}.experts.${e}`;
        expertList.push({ gate: whole(`${x}.w1.weight`, I, h), up: whole(`${x}.w3.weight`, I, h), down: whole(`${x}.w2.weight`, h, I) });
      } else {
        expertList.push(denseMlp(`${module}.experts.${e}`, h, I, false, false));
      }
    }
    const sparse: LayerLayout['mlp'] = { kind: 'moe', router: `${module}.gate.weight`, experts: expertList };
    if (moe.sharedExpertIntermediateSize > 0) {
      sparse.shared = denseMlp(`${module}.shared_expert`, h, moe.sharedExpertIntermediateSize, false, false);
      sparse.sharedGate = `${module}.shared_expert_gate.weight`;
    }
    layout.mlp = sparse;
  }
  return layout;
}

/** Every matrix slice of a layer, in loading order. */
export function layoutMatrices(layout: LayerLayout): MatrixSlice[] {
  const mlps = layout.mlp.kind === 'dense' ? [layout.mlp] : [...layout.mlp.experts, ...(layout.mlp.shared ? [layout.mlp.shared] : [])];
  return [layout.q, layout.k, layout.v, layout.o, ...mlps.flatMap((m) => [m.gate, m.up, m.down])];
}

/**
 * The matrices of layer l that write into the residual stream: `o_proj`, and `down_proj` of the
 * MLP or of every expert (and the shared expert). Removing a direction from their outputs removes
 * it from everything the layer adds to the stream, so these are what a cut changes.
 */
export function residualWriterSlices(layout: LayerLayout): MatrixSlice[] {
  const mlp = layout.mlp;
  if (mlp.kind === 'dense') return [layout.o, mlp.down];
  return [layout.o, ...mlp.experts.map((e) => e.down), ...(mlp.shared ? [mlp.shared.down] : [])];
}

/** The tensors a model of this config must have, with their shapes, by Hugging Face name. */
export function expectedTensors(config: ModelConfig, experts: ExpertStorage = 'per_expert'): Map<string, number[]> {
  const { hiddenSize: h, vocabSize, headDim } = config;
  const expected = new Map<string, number[]>([['model.embed_tokens.weight', [vocabSize, h]], ['model.norm.weight', [h]]]);
  if (!config.tieWordEmbeddings) expected.set('lm_head.weight', [vocabSize, h]);
  const vector = (name: string | undefined, n: number) => {
    if (name !== undefined) expected.set(name, [n]);
  };
  for (let l = 0; l < config.numLayers; l++) {
    const layout = layerLayout(config, l, experts);
    vector(layout.inputNorm, h);
    vector(layout.postAttentionNorm, h);
    vector(layout.qBias, layout.q.rows);
    vector(layout.kBias, layout.k.rows);
    vector(layout.vBias, layout.v.rows);
    vector(layout.oBias, h);
    vector(layout.qNorm, headDim);
    vector(layout.kNorm, headDim);
    vector(layout.preFeedforwardNorm, h);
    vector(layout.postFeedforwardNorm, h);
    const mlps = layout.mlp.kind === 'dense' ? [layout.mlp] : [...layout.mlp.experts, ...(layout.mlp.shared ? [layout.mlp.shared] : [])];
    for (const m of mlps) {
      vector(m.gateBias, m.gate.rows);
      vector(m.upBias, m.up.rows);
      vector(m.downBias, h);
    }
    if (layout.mlp.kind === 'moe') {
      expected.set(layout.mlp.router, [config.moe!.numExperts, h]);
      if (layout.mlp.sharedGate) expected.set(layout.mlp.sharedGate, [1, h]);
      if (experts === 'fused') {
        const { numExperts: E, expertIntermediateSize: I } = config.moe!;
        expected.set(fusedExpertTensor(config, l, 'gate_up_proj'), [E, 2 * I, h]);
        expected.set(fusedExpertTensor(config, l, 'down_proj'), [E, h, I]);
      }
    }
    // Every matrix slice: whole tensors get their shape; fused parts add up to their tensor's rows.
    const fusedRows = new Map<string, { rows: number; cols: number }>();
    for (const slice of layoutMatrices(layout)) {
      if (slice.whole) expected.set(slice.tensor, [slice.rows, slice.cols]);
      else if (!expected.has(slice.tensor)) {
        const sum = fusedRows.get(slice.tensor) ?? { rows: 0, cols: slice.cols };
        sum.rows += slice.rows;
        fusedRows.set(slice.tensor, sum);
      }
    }
    for (const [name, { rows, cols }] of fusedRows) expected.set(name, [rows, cols]);
  }
  return expected;
}

/**
 * Parameters of the experts a token does not use: per sparse layer, (experts − top-k) experts of
 * 3 · hidden · expert intermediate each. Total parameters minus these are the active parameters.
 */
export function inactiveExpertParameters(config: ModelConfig): number {
  const moe = config.moe;
  if (!moe) return 0;
  const sparse = moe.sparseLayers.filter(Boolean).length;
  return sparse * (moe.numExperts - moe.topK) * 3 * config.hiddenSize * moe.expertIntermediateSize;
}
