/**
 * A model folder whose config.json disagrees with its weights is an error in every command,
 * `inspect` included, and a bad folder fails before the GPU is touched (no adapter is opened: the
 * CLI prints "adapter: …" only once it has one). The CLI's output is its own: no native notices.
 */
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toSafetensors, type RandomTensor } from '../reference/randomModel.ts';
import { expectCliError, runCli, tempDir, writeModelDir, type CliResult, type ModelDir } from './helpers.ts';

let work: ReturnType<typeof tempDir>;
let base: ModelDir;
let sharded: ModelDir;
let n = 0;

beforeAll(() => {
  work = tempDir('model-folder');
  base = writeModelDir(join(work.path, 'base'));
  sharded = writeModelDir(join(work.path, 'sharded'), { shards: 2 });
});
afterAll(() => work?.remove());

function copyOf(model: ModelDir = base): string {
  const dir = join(work.path, `case-${++n}`);
  cpSync(model.dir, dir, { recursive: true });
  return dir;
}

function editConfig(dir: string, edit: (config: Record<string, unknown>) => void): void {
  const file = join(dir, 'config.json');
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(config);
  writeFileSync(file, JSON.stringify(config));
}

/** The model's tensors with one stored in another dtype (its values' bytes repeated or cut to the new width). */
function withDtype(tensors: readonly RandomTensor[], name: string, dtype: string, bytesPerValue: number): RandomTensor[] {
  return tensors.map((t) => {
    if (t.name !== name) return t;
    const count = t.shape.reduce((a, b) => a * b, 1);
    return { ...t, dtype: dtype as RandomTensor['dtype'], bytes: new Uint8Array(count * bytesPerValue).fill(0x11) };
  });
}

/** Failed with this message before opening a GPU adapter. */
function expectFailsBeforeGpu(result: CliResult, message: string | RegExp): void {
  expectCliError(result, message);
  expect(result.lines.filter((l) => l.startsWith('adapter: ')), result.stderr).toEqual([]);
}

const mismatch = (dir: string, problems: string) => `${dir}: the weights do not match config.json: ${problems}`;

describe.concurrent('config.json against the weights, in inspect too', () => {
  it('fewer layers in the config than in the weights', async () => {
    const dir = copyOf();
    editConfig(dir, (c) => {
      c.num_hidden_layers = 1;
    });
    expectFailsBeforeGpu(await runCli(['inspect', dir]), mismatch(dir, 'the weights have 2 layers but num_hidden_layers is 1'));
    expectFailsBeforeGpu(await runCli(['generate', dir, '--prompt', 'hi']), mismatch(dir, 'the weights have 2 layers but num_hidden_layers is 1'));
  });

  it('more layers in the config than in the weights', async () => {
    const dir = copyOf();
    editConfig(dir, (c) => {
      c.num_hidden_layers = 4;
    });
    expectFailsBeforeGpu(
      await runCli(['inspect', dir, '--json']),
      mismatch(dir, 'the weights have 2 layers but num_hidden_layers is 4; model.layers.2.input_layernorm.weight is missing; model.layers.2.post_attention_layernorm.weight is missing; model.layers.2.self_attn.q_proj.weight is missing; model.layers.2.self_attn.k_proj.weight is missing; and 14 more'),
    );
  });

  it('shapes that do not match the config', async () => {
    const dir = copyOf();
    editConfig(dir, (c) => {
      c.hidden_size = 32;
    });
    expectFailsBeforeGpu(await runCli(['inspect', dir]), new RegExp(`^${mismatch(dir, 'model\\.embed_tokens\\.weight has shape \\[1024, 64\\], expected \\[1024, 32\\] from config\\.json; ')}.*; and \\d+ more$`));
  });

  it.each([
    ['F64', 8],
    ['I8', 1],
    ['I64', 8],
    ['F8_E4M3', 1],
  ])('a tensor stored as %s', async (dtype, width) => {
    const dir = copyOf();
    writeFileSync(join(dir, 'model.safetensors'), toSafetensors(withDtype(base.random.tensors, 'model.layers.1.self_attn.v_proj.weight', dtype, width)));
    expectFailsBeforeGpu(await runCli(['inspect', dir]), mismatch(dir, `model.layers.1.self_attn.v_proj.weight has dtype ${dtype}, which is not supported (only F32, F16, BF16)`));
  });

  it('a tensor in a shard but not in the index', async () => {
    const dir = copyOf(sharded);
    const indexFile = join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
    const [shard] = [...sharded.shards].find(([, names]) => names.includes('model.norm.weight'))!;
    delete index.weight_map['model.norm.weight'];
    writeFileSync(indexFile, JSON.stringify(index));
    expectFailsBeforeGpu(await runCli(['inspect', dir]), mismatch(dir, `model.norm.weight is in ${shard} but not listed in model.safetensors.index.json`));
  });
});

describe.concurrent('a bad folder fails before the GPU is opened', () => {
  it('config, tokenizer and weights, through every kind of command', async () => {
    const noConfig = copyOf();
    writeFileSync(join(noConfig, 'config.json'), '{ not json');
    expectFailsBeforeGpu(await runCli(['generate', noConfig, '--prompt', 'hi']), new RegExp(`^${noConfig}/config\\.json`));
    expectFailsBeforeGpu(await runCli(['run', noConfig, '--no-optimize', '--out', join(work.path, 'never'), '--limit', '2']), new RegExp(`^${noConfig}/config\\.json`));
    const badTokenizer = copyOf();
    writeFileSync(join(badTokenizer, 'tokenizer.json'), '{"model": 3}');
    expectFailsBeforeGpu(await runCli(['taps', badTokenizer, '--prompt', 'hi']), /tokenizer\.json/);
    const truncated = copyOf();
    writeFileSync(join(truncated, 'model.safetensors'), readFileSync(join(base.dir, 'model.safetensors')).subarray(0, 100));
    expectFailsBeforeGpu(await runCli(['inspect', truncated]), new RegExp(`^${truncated}/model\\.safetensors`));
    // eval checks the baseline folder too before it opens the GPU for the first model.
    expectFailsBeforeGpu(await runCli(['eval', base.dir, '--baseline', noConfig, '--limit', '2']), new RegExp(`^${noConfig}/config\\.json`));
  });
});

describe('the output is the tool\'s own', () => {
  // As from a terminal or a shell pipeline: stderr is a pipe (a Node child's is a socket, which
  // cannot be reopened, so the CLI cannot silence native output there; see src/gpu/quietNative.ts).
  const throughPipe = { shellPrefix: 'exec 2> >(cat >&2)' };

  it('no native notices on stderr: only the adapter line', async () => {
    const result = await runCli(['generate', base.dir, '--prompt', 'hello', '--max-tokens', '2'], throughPipe);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr.split('\n').filter((l) => l !== ''), result.stderr).toEqual([expect.stringMatching(/^adapter: /)]);
  });

  it('with ABLITERATE_DEBUG set, what the native code prints is shown (on lavapipe, Dawn\'s two limit notices for each instance probed: the loader\'s default one and the chosen driver\'s)', async () => {
    const result = await runCli(['inspect', base.dir, '--json'], { ...throughPipe, env: { ABLITERATE_DEBUG: '1' } });
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as { layers: number; adapter: { name: string } };
    expect(summary.layers).toBe(2);
    const notices = result.stderr.split('\n').filter((l) => /artificially reduced/.test(l));
    if (summary.adapter.name === 'llvmpipe') expect([2, 4]).toContain(notices.length);
    else expect(notices.length).toBeLessThanOrEqual(4);
  });
});
