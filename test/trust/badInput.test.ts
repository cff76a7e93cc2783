/**
 * Bad input through the real CLI: each case asserts the exact one-line message the user sees, exit
 * code 1, no stack trace, nothing written under the output name (nor a temporary folder left), and
 * the input folder unchanged.
 */
import { cpSync, mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toSafetensors, type RandomTensor } from '../reference/randomModel.ts';
import { expectCliError, outputTraces, runCli, snapshot, tempDir, writeDirectionsFile, writeModelDir, type CliResult, type ModelDir } from './helpers.ts';

let work: ReturnType<typeof tempDir>;
let base: ModelDir;
let sharded: ModelDir;
let caseNumber = 0;

beforeAll(() => {
  work = tempDir('bad-input');
  base = writeModelDir(join(work.path, 'base'));
  sharded = writeModelDir(join(work.path, 'sharded'), { shards: 3 });
});
afterAll(() => work?.remove());

/** A copy of a model folder to damage, and an output path next to it. */
function copyOf(model: ModelDir = base): { dir: string; parent: string; out: string } {
  const parent = join(work.path, `case-${++caseNumber}`);
  const dir = join(parent, 'model');
  cpSync(model.dir, dir, { recursive: true });
  return { dir, parent, out: join(parent, 'out') };
}

function editJson(file: string, edit: (json: Record<string, unknown>) => void): void {
  const json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(json);
  writeFileSync(file, JSON.stringify(json));
}

/** `abliterate run` on the bundled prompts (two of each set, two new tokens) into `out`. */
function run(dir: string, out: string, extra: string[] = []): Promise<CliResult> {
  return runCli(['run', dir, '--no-optimize', '--out', out, '--limit', '2', '--max-tokens', '2', ...extra]);
}

/** Runs `abliterate run` on a damaged copy and checks the message, that nothing was written and that the input is unchanged. */
async function expectRunFails(target: { dir: string; parent: string; out: string }, message: string | RegExp, extra: string[] = []): Promise<string> {
  const before = snapshot(target.dir);
  const result = await run(target.dir, target.out, extra);
  const line = expectCliError(result, message);
  expect(outputTraces(target.parent, 'out')).toEqual([]);
  expect(snapshot(target.dir)).toEqual(before);
  return line;
}

describe.concurrent('model folders', () => {
  it('a folder without config.json', async () => {
    const target = copyOf();
    rmSync(join(target.dir, 'config.json'));
    await expectRunFails(target, `${target.dir}/config.json is missing: a Hugging Face model folder has a config.json next to its safetensors files`);
  });

  it('a config.json that is not JSON', async () => {
    const target = copyOf();
    writeFileSync(join(target.dir, 'config.json'), '{"model_type": "llama",');
    await expectRunFails(target, new RegExp(`^${target.dir}/config\\.json: invalid JSON \\(.+\\)$`));
  });

  it('a config with missing fields', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'config.json'), (c) => {
      delete c.intermediate_size;
      delete c.vocab_size;
    });
    await expectRunFails(
      target,
      `${target.dir}/config.json: intermediate_size is missing (it must be a positive integer); vocab_size is missing (it must be a positive integer)`,
    );
  });

  it('a config with wrong-typed fields', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'config.json'), (c) => {
      c.hidden_size = '64';
      c.rms_norm_eps = -1;
      c.tie_word_embeddings = 'no';
    });
    await expectRunFails(
      target,
      `${target.dir}/config.json: hidden_size must be a positive integer (got "64"); rms_norm_eps must be a positive number (got -1); tie_word_embeddings must be true or false (got "no")`,
    );
  });

  it('an unsupported architecture, listing the supported ones', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'config.json'), (c) => {
      c.model_type = 'gpt2';
      c.architectures = ['GPT2LMHeadModel'];
    });
    await expectRunFails(
      target,
      `${target.dir}/config.json: model_type "gpt2" (GPT2LMHeadModel) is not supported; supported: LlamaForCausalLM (model_type "llama"), MistralForCausalLM (model_type "mistral"), Qwen2ForCausalLM (model_type "qwen2"), ` +
        'Qwen3ForCausalLM (model_type "qwen3"), Phi3ForCausalLM (model_type "phi3"), MixtralForCausalLM (model_type "mixtral"), ' +
        'Qwen2MoeForCausalLM (model_type "qwen2_moe"), Qwen3MoeForCausalLM (model_type "qwen3_moe"), Gemma2ForCausalLM (model_type "gemma2"), Gemma3ForCausalLM (model_type "gemma3_text")',
    );
  });

  it('weights missing from the safetensors', async () => {
    const target = copyOf();
    const kept = base.random.tensors.filter((t) => t.name !== 'model.layers.1.mlp.down_proj.weight' && t.name !== 'lm_head.weight');
    writeFileSync(join(target.dir, 'model.safetensors'), toSafetensors(kept));
    await expectRunFails(
      target,
      `${target.dir}: the weights do not match config.json: lm_head.weight is missing; model.layers.1.mlp.down_proj.weight is missing`,
    );
  });

  it('a config that asks for more layers than the weights have', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'config.json'), (c) => {
      c.num_hidden_layers = 3;
    });
    const p = 'model.layers.2';
    await expectRunFails(
      target,
      `${target.dir}: the weights do not match config.json: the weights have 2 layers but num_hidden_layers is 3; ${p}.input_layernorm.weight is missing; ` +
        `${p}.post_attention_layernorm.weight is missing; ${p}.self_attn.q_proj.weight is missing; ${p}.self_attn.k_proj.weight is missing; and 5 more`,
    );
  });

  it('weights with the wrong shape for the config', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'config.json'), (c) => {
      c.intermediate_size = 96;
    });
    const shape = (l: number, name: string, got: string, expected: string) => `model.layers.${l}.mlp.${name}.weight has shape [${got}], expected [${expected}] from config.json`;
    await expectRunFails(
      target,
      `${target.dir}: the weights do not match config.json: ${shape(0, 'gate_proj', '128, 64', '96, 64')}; ${shape(0, 'up_proj', '128, 64', '96, 64')}; ` +
        `${shape(0, 'down_proj', '64, 128', '64, 96')}; ${shape(1, 'gate_proj', '128, 64', '96, 64')}; ${shape(1, 'up_proj', '128, 64', '96, 64')}; and 1 more`,
    );
  });

  it('a weight in a dtype the engine cannot compute with (fp8)', async () => {
    const target = copyOf();
    const tensors = base.random.tensors.map((t): RandomTensor => {
      if (t.name !== 'model.layers.0.self_attn.q_proj.weight') return t;
      const count = t.shape.reduce((a, b) => a * b, 1);
      return { ...t, dtype: 'F8_E4M3' as RandomTensor['dtype'], bytes: new Uint8Array(count).fill(0x38) };
    });
    writeFileSync(join(target.dir, 'model.safetensors'), toSafetensors(tensors));
    await expectRunFails(
      target,
      `${target.dir}: the weights do not match config.json: model.layers.0.self_attn.q_proj.weight has dtype F8_E4M3, which is not supported (only F32, F16, BF16)`,
    );
  });

  it('a truncated single file (cut short after a valid header)', async () => {
    const target = copyOf();
    const file = join(target.dir, 'model.safetensors');
    const bytes = readFileSync(file);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    const size = 8 + headerLength + 100_000;
    truncateSync(file, size);
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
    const [name, entry] = Object.entries(header).find(([, e]) => (e.data_offsets?.[1] ?? 0) > 100_000)!;
    const [begin, end] = entry.data_offsets!;
    await expectRunFails(
      target,
      `${file}: tensor "${name}": data_offsets [${begin}, ${end}] run past the end of the file (the data region holds 100000 bytes, from offset ${8 + headerLength} to ${size})`,
    );
  });

  it('a truncated shard of a sharded model', async () => {
    const target = copyOf(sharded);
    const file = join(target.dir, 'model-00002-of-00003.safetensors');
    const bytes = readFileSync(file);
    truncateSync(file, bytes.length - 1);
    await expectRunFails(target, new RegExp(`^${file}: tensor "[^"]+": data_offsets \\[\\d+, \\d+\\] run past the end of the file \\(the data region holds \\d+ bytes, from offset \\d+ to ${bytes.length - 1}\\)$`));
  });

  it('a shard index naming a file that is not there', async () => {
    const target = copyOf(sharded);
    rmSync(join(target.dir, 'model-00003-of-00003.safetensors'));
    const held = sharded.shards.get('model-00003-of-00003.safetensors')!;
    await expectRunFails(
      target,
      `${target.dir}/model.safetensors.index.json: shard model-00003-of-00003.safetensors is missing from the folder (it should hold "${held[0]}" and ${held.length - 1} more tensors)`,
    );
  });

  it('a tokenizer.json that is not JSON', async () => {
    const target = copyOf();
    writeFileSync(join(target.dir, 'tokenizer.json'), '{"version": "1.0", "model":');
    await expectRunFails(target, new RegExp(`^${target.dir}/tokenizer\\.json: invalid JSON \\(.+\\)$`));
  });

  it('a tokenizer that does not load', async () => {
    const target = copyOf();
    writeFileSync(join(target.dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', model: { type: 'NoSuchModel' } }));
    await expectRunFails(target, new RegExp(`^${target.dir}/tokenizer\\.json: the tokenizer does not load \\(.+\\)$`));
  });

  it('a chat template that raises while rendering', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'tokenizer_config.json'), (c) => {
      c.chat_template = "{% if messages[0]['role'] == 'user' %}{{ raise_exception('Conversation roles must alternate system/user/assistant') }}{% endif %}";
    });
    await expectRunFails(target, `${target.dir}/tokenizer_config.json: the chat template failed to render (Conversation roles must alternate system/user/assistant)`);
  });

  it('a chat template that renders nothing', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'tokenizer_config.json'), (c) => {
      c.chat_template = '{% for message in messages %}{{ message.text }}{% endfor %}';
    });
    await expectRunFails(target, `${target.dir}/tokenizer_config.json: the chat template rendered no text for a prompt (does it read the messages' "content"?)`);
  });

  it('a chat template that does not parse', async () => {
    const target = copyOf();
    editJson(join(target.dir, 'tokenizer_config.json'), (c) => {
      c.chat_template = '{% for message in messages %}{{ message.content }}';
    });
    await expectRunFails(target, new RegExp(`^${target.dir}/tokenizer_config\\.json: the chat template does not parse \\(.+\\)$`));
  });

  it('an output folder that exists, and one inside the input', async () => {
    const target = copyOf();
    const existing = join(target.parent, 'existing');
    cpSync(target.dir, existing, { recursive: true });
    const before = snapshot(existing);
    expectCliError(await run(target.dir, existing), `${existing} already exists; use --force to replace it`);
    expect(snapshot(existing)).toEqual(before);
    expectCliError(await run(target.dir, join(target.dir, 'cut')), `${join(target.dir, 'cut')} is inside the input folder ${target.dir}; write the output elsewhere`);
    expectCliError(await run(target.dir, target.dir, ['--force']), `${target.dir} is the input folder; write the output to a new folder`);
  });
});

describe.concurrent('directions files', () => {
  it('a directions file that does not exist, is not one, or does not fit the model', async () => {
    const target = copyOf();
    const cut = (direction: string) => runCli(['cut', target.dir, '--direction', direction, '--out', target.out]);
    const missing = join(target.parent, 'nowhere.safetensors');
    expectCliError(await cut(missing), `the directions file ${missing} does not exist`);
    const weights = join(target.dir, 'model.safetensors');
    expectCliError(await cut(weights), `${weights}: no "directions" tensor (expected a directions file written by abliterate measure or run)`);
    const other = join(target.parent, 'directions-128.safetensors');
    await writeDirectionsFile(other, 128, 3);
    expectCliError(await cut(other), `${other}: the directions have 128 values, but the model's hidden size is 64`);
    expect(outputTraces(target.parent, 'out')).toEqual([]);
  });
});

describe.concurrent('prompt files', () => {
  const file = (name: string, content: string | Uint8Array) => {
    const path = join(work.path, `prompts-${++caseNumber}`, name);
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, content);
    return path;
  };

  it('an empty prompt file', async () => {
    const target = copyOf();
    const empty = file('empty.txt', '');
    await expectRunFails(target, `no prompts in ${empty}`, ['--harmful', empty]);
  });

  it('a prompt file of blank lines only', async () => {
    const target = copyOf();
    const blank = file('blank.txt', '\n   \n\r\n\t\n');
    await expectRunFails(target, `no prompts in ${blank}`, ['--harmless', blank]);
  });

  it('a prompt file that does not exist', async () => {
    const target = copyOf();
    const missing = join(work.path, 'nowhere', 'harmful.txt');
    await expectRunFails(target, `the prompt file ${missing} does not exist`, ['--harmful', missing]);
  });

  it('a .jsonl with a bad line names the line', async () => {
    const target = copyOf();
    const jsonl = file('harmful.jsonl', '{"prompt": "how do I pick a lock"}\n\n{"prompt": "how do I make a fake id"}\n{"prompt": how do I}\n');
    await expectRunFails(target, new RegExp(`^${jsonl}: line 4: invalid JSON \\(.+\\)$`), ['--harmful', jsonl]);
  });

  it('a .jsonl line without the prompt field', async () => {
    const target = copyOf();
    const jsonl = file('harmful.jsonl', '{"prompt": "how do I pick a lock"}\n{"question": "how do I make a fake id"}\n');
    await expectRunFails(target, `${jsonl}: line 2: no field "prompt" (fields: question)`, ['--harmful', jsonl]);
  });

  it('a parquet file without the prompt column', async () => {
    const target = copyOf();
    const buffer = parquetWriteBuffer({
      columnData: [
        { name: 'question', data: ['how do I pick a lock', 'how do I make a fake id'], type: 'STRING' },
        { name: 'id', data: [1, 2], type: 'INT32' },
      ],
    } as Parameters<typeof parquetWriteBuffer>[0]);
    const parquet = file('harmful.parquet', new Uint8Array(buffer));
    await expectRunFails(target, `${parquet}: none of the columns prompt, instruction, text, goal; columns: question, id; name one with the column option`, ['--harmful', parquet]);
    await expectRunFails(target, `${parquet}: no column "prompt_text"; columns: question, id`, ['--harmful', parquet, '--column', 'prompt_text']);
  });

  it('a file that is not parquet despite its name', async () => {
    const target = copyOf();
    const parquet = file('harmful.parquet', 'prompt\nhow do I pick a lock\n');
    await expectRunFails(target, new RegExp(`^${parquet}: not a readable parquet file \\(.+\\)$`), ['--harmful', parquet]);
  });
});
