import type { Command } from 'commander';
import { detectExpertStorage, formatBytes, inactiveExpertParameters, SUPPORTED_ARCHITECTURES } from '../index.ts';
import { checkModelFolder, openGpu, printJson } from './common.ts';
import { addSettingOptions, commandValues, type CommandSettings } from './options.ts';

export const INSPECT_SETTINGS: CommandSettings = { name: 'inspect', options: ['json', 'adapter'] };

export function registerInspect(program: Command): void {
  addSettingOptions(
    program.command('inspect').description('summarise a model folder (architecture, sizes, dtypes) and the adapter it would run on').argument('<model-dir>'),
    INSPECT_SETTINGS,
  ).action(async (dir: string, _o: unknown, command: Command) => {
    const options = await commandValues(command, INSPECT_SETTINGS);
    // A config that disagrees with its weights is an error here too, not a summary of a model that cannot run.
    const { config, tensors } = await checkModelFolder(dir);
    let parameters = 0;
    let bytes = 0;
    const dtypes = new Map<string, number>();
    for (const info of tensors.tensors.values()) {
      const count = info.shape.reduce((a, b) => a * b, 1);
      parameters += count;
      bytes += info.byteLength;
      dtypes.set(info.dtype, (dtypes.get(info.dtype) ?? 0) + count);
    }
    const gpu = await openGpu(options);
    const adapter = { ...gpu.adapter, features: gpu.features, limits: gpu.limits };
    gpu.dispose();
    const moe = config.moe;
    const experts = moe
      ? {
          experts: moe.numExperts,
          experts_per_token: moe.topK,
          expert_intermediate_size: moe.expertIntermediateSize,
          shared_expert_intermediate_size: moe.sharedExpertIntermediateSize,
          renormalised_top_k: moe.normTopkProb,
          sparse_layers: moe.sparseLayers.filter(Boolean).length,
          expert_storage: detectExpertStorage(config, (name) => tensors.allTensors.has(name)),
        }
      : null;
    const activeParameters = parameters - inactiveExpertParameters(config);
    const summary = {
      model: dir,
      architecture: config.architecture,
      family: SUPPORTED_ARCHITECTURES[config.architecture],
      block: config.block,
      moe: experts,
      layers: config.numLayers,
      hidden_size: config.hiddenSize,
      intermediate_size: config.intermediateSize,
      heads: config.numHeads,
      kv_heads: config.numKvHeads,
      head_dim: config.headDim,
      vocab_size: config.vocabSize,
      tied_embeddings: config.tieWordEmbeddings,
      rope_theta: config.ropeTheta,
      rope_scaling: config.ropeScaling ?? null,
      parameters,
      active_parameters: activeParameters,
      weight_bytes: bytes,
      dtypes: Object.fromEntries(dtypes),
      files: tensors.files,
      adapter,
    };
    if (options.json) return printJson(summary);
    const lines = [
      `model         ${dir}`,
      `architecture  ${SUPPORTED_ARCHITECTURES[config.architecture]} (${config.architecture}), ${config.numLayers} layers, hidden ${config.hiddenSize}, MLP ${config.intermediateSize}`,
      ...(experts
        ? [
            `experts       ${experts.experts} of intermediate ${experts.expert_intermediate_size}, ${experts.experts_per_token} per token${experts.renormalised_top_k ? ' (renormalised)' : ''}` +
              `${experts.shared_expert_intermediate_size ? `, shared expert of ${experts.shared_expert_intermediate_size}` : ''}, in ${experts.sparse_layers} layers (${experts.expert_storage.replace('_', '-')} tensors)`,
          ]
        : []),
      ...(config.block.qkNorm || config.block.fusedQkv ? [`block         ${[config.block.qkNorm ? 'q/k norms' : '', config.block.fusedQkv ? 'fused qkv_proj and gate_up_proj' : ''].filter(Boolean).join(', ')}`] : []),
      `attention     ${config.numHeads} heads, ${config.numKvHeads} KV heads, head dim ${config.headDim}, rope θ ${config.ropeTheta}${config.ropeScaling ? ` (${config.ropeScaling.type} scaling)` : ''}`,
      `vocabulary    ${config.vocabSize}${config.tieWordEmbeddings ? ', tied embeddings' : ''}`,
      `parameters    ${(parameters / 1e6).toFixed(2)} M${moe ? ` (${(activeParameters / 1e6).toFixed(2)} M active per token)` : ''} in ${[...dtypes.keys()].join('/')}, ${formatBytes(bytes)} in ${tensors.files.length} file(s)`,
      `adapter       ${adapter.name}${adapter.software ? ' (software)' : ''}: ${adapter.description}`,
      `features      ${Object.entries(adapter.features).filter(([, on]) => on).map(([name]) => name).join(', ') || 'none'}`,
      `limits        binding ${formatBytes(adapter.limits.maxStorageBufferBindingSize)}, buffer ${formatBytes(adapter.limits.maxBufferSize)}, workgroup memory ${formatBytes(adapter.limits.maxComputeWorkgroupStorageSize)}`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  });
}
