import { Option, type Command } from 'commander';
import { UsageError, parseInteger, parseNumber } from './common.ts';
import { parseWindow, readRunConfig, type RunFileConfig } from './settings.ts';

export type RunCommandOptions = Record<string, unknown>;

/** The options shared by `run` and the step commands, named as the keys of the TOML config. */
export function addRunOptions(command: Command): Command {
  return command
    .option('--harmful <file>', 'harmful prompts to measure (.txt, .jsonl, .json, .csv, .parquet); default: the bundled train split')
    .option('--harmless <file>', 'harmless prompts to measure; default: the bundled train split')
    .option('--eval-harmful <file>', 'held-out harmful prompts for the evaluation; default: the bundled test split')
    .option('--eval-harmless <file>', 'held-out harmless prompts for the evaluation; default: the bundled test split')
    .option('--val-harmful <file>', 'harmful validation prompts for --select ablation')
    .option('--val-harmless <file>', 'harmless validation prompts for --select ablation')
    .option('--plain-text <file>', 'plain text for perplexity; default: the bundled sample')
    .option('--column <name>', 'column or field holding the prompt in csv, jsonl, json and parquet files')
    .option('--limit <n>', 'use at most n prompts of each file', parseInteger('--limit', 1))
    .option('--measure-prompts <n>', 'prompts of each kind measured, sampled from the sets (0: all; default 256)', parseInteger('--measure-prompts', 0))
    .option('--layer <n>', 'take the direction at this point (0: embedding, i: output of layer i − 1) instead of selecting', parseInteger('--layer', 0))
    .addOption(new Option('--select <method>', 'choose the layer by score, or by ablating the best candidates').choices(['score', 'ablation']))
    .option('--window <from,to>', 'depth window (fractions) to choose the layer in; default 0.2,0.8', parseWindow)
    .addOption(new Option('--metric <name>', 'score that ranks layers').choices(['effect_size', 'gap', 'relative_gap']))
    .option('--candidates <n>', 'candidates tried by --select ablation', parseInteger('--candidates', 1))
    .option('--alpha <a>', 'cut strength: W ← W − α d̂ d̂ᵀ W', parseNumber('--alpha', -100, 100))
    .option('--layers <which>', 'layers to cut: all, FROM-TO, 1,4,9, above_median, top_k:N')
    .option('--kernel <shape>', 'per-layer strength: constant, or tent:PEAK,WIDTH[,MIN[,MAX]]')
    .option('--preserve-norm', 'keep each cut row of W at its original norm')
    .option('--no-embedding', 'leave the embedding alone (cut only o_proj and down_proj)')
    .option('--max-tokens <n>', 'new tokens per evaluation answer', parseInteger('--max-tokens', 1))
    .option('--batch-size <n>', 'prompts per forward step', parseInteger('--batch-size', 1))
    .option('--markers <list>', 'refusal markers, separated by |', (text: string) => text.split('|').filter(Boolean));
}

const RENAMED: Record<string, string> = {
  evalHarmful: 'eval-harmful',
  evalHarmless: 'eval-harmless',
  valHarmful: 'val-harmful',
  valHarmless: 'val-harmless',
  plainText: 'plain-text',
  preserveNorm: 'preserve-norm',
  maxTokens: 'max-tokens',
  measurePrompts: 'measure-prompts',
  batchSize: 'batch-size',
};

/** The TOML config (if any) with every option given on the command line (or its env var) on top. */
export async function configFromCommand(command: Command): Promise<RunFileConfig> {
  const options = command.opts<Record<string, unknown>>();
  const config: Record<string, unknown> = typeof options.config === 'string' ? { ...(await readRunConfig(options.config)) } : {};
  for (const [key, value] of Object.entries(options)) {
    if (key === 'config') continue;
    const source = command.getOptionValueSource(key);
    if (source !== 'cli' && source !== 'env') continue;
    config[RENAMED[key] ?? key] = value;
  }
  if (Array.isArray(config.markers) && config.markers.length === 0) throw new UsageError('--markers needs at least one marker');
  return config as RunFileConfig;
}
