import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlobFolder } from '../../src/io/byteSource.ts';
import { NodeFolder } from '../../src/io/nodeFolder.ts';
import { ChatTokenizer, TokenizerError } from '../../src/model/tokenizer.ts';

// ---------------------------------------------------------------------------------------------
// A small byte-level BPE tokenizer.json, built here: the 256 byte symbols of GPT-2's byte-to-unicode
// map, a few merges, and added special tokens.

function byteSymbols(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const symbols: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) symbols.push(String.fromCodePoint(printable.includes(b) ? b : 256 + extra++));
  return symbols;
}

const MERGES = ['h e', 'l l', 'he ll', 'hell o', 'Ġ w', 'o r', 'Ġw or', 'l d', 'Ġwor ld', 'Ġ t', 'h i', 'Ġt hi'];

function tokenizerJson(specials: string[], bos?: string): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  byteSymbols().forEach((symbol, id) => (vocab[symbol] = id));
  for (const merge of MERGES) vocab[merge.replace(' ', '')] = Object.keys(vocab).length;
  const first = Object.keys(vocab).length;
  const added = specials.map((content, i) => ({ id: first + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const bosId = bos === undefined ? undefined : first + specials.indexOf(bos);
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor:
      bos === undefined
        ? { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true }
        : {
            type: 'TemplateProcessing',
            single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
            pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
            special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
          },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: MERGES,
    },
  };
}

const BASE = 256 + MERGES.length;

// Llama 3 style: BOS added by the post-processor and written by the template too.
const LLAMA3_SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'];
const [BOT, EOT_TEXT, START, END, EOT] = [BASE, BASE + 1, BASE + 2, BASE + 3, BASE + 4];
const LLAMA3_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

function llama3Files(overrides: { config?: Record<string, unknown>; generation?: Record<string, unknown> | null } = {}): Map<string, Blob> {
  const files = new Map<string, Blob>();
  const json = (value: unknown) => new Blob([JSON.stringify(value)]);
  files.set('tokenizer.json', json(tokenizerJson(LLAMA3_SPECIALS, '<|begin_of_text|>')));
  files.set(
    'tokenizer_config.json',
    json({
      bos_token: '<|begin_of_text|>',
      eos_token: '<|eot_id|>',
      chat_template: LLAMA3_TEMPLATE,
      clean_up_tokenization_spaces: true,
      model_max_length: 131072,
      tokenizer_class: 'PreTrainedTokenizerFast',
      ...overrides.config,
    }),
  );
  if (overrides.generation !== null) files.set('generation_config.json', json(overrides.generation ?? { bos_token_id: BOT, eos_token_id: [EOT_TEXT, EOT] }));
  files.set('config.json', json({ model_type: 'llama', bos_token_id: BOT, eos_token_id: [EOT_TEXT, 999] }));
  return files;
}

// ChatML style (Qwen2, SmolLM2): no BOS at all, a default system prompt in the template.
const CHATML_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
const [ENDOFTEXT, IM_START, IM_END] = [BASE, BASE + 1, BASE + 2];
const CHATML_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

function chatmlFiles(): Map<string, Blob> {
  return new Map<string, Blob>([
    ['tokenizer.json', new Blob([JSON.stringify(tokenizerJson(CHATML_SPECIALS))])],
    [
      'tokenizer_config.json',
      new Blob([JSON.stringify({ bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>', chat_template: CHATML_TEMPLATE, clean_up_tokenization_spaces: false })]),
    ],
  ]);
}

const folder = (files: Map<string, Blob>, name = 'models/t') => new BlobFolder(name, files);

async function loadError(files: Map<string, Blob>): Promise<string> {
  const error = await ChatTokenizer.fromFolder(folder(files)).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(TokenizerError);
  return (error as Error).message;
}

function thrown(f: () => unknown): string {
  try {
    f();
  } catch (error) {
    expect(error).toBeInstanceOf(TokenizerError);
    expect((error as Error).message).not.toContain('\n');
    return (error as Error).message;
  }
  throw new Error('expected an error');
}

// ---------------------------------------------------------------------------------------------

describe('Llama 3 style', () => {
  it('encodes with merges, adds BOS only when asked, and round-trips', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files()));
    const plain = tokenizer.encode('hello world', { addSpecialTokens: false });
    expect(plain.map((id) => tokenizer.idToToken(id))).toEqual(['hello', 'Ġworld']);
    expect(tokenizer.encode('hello world')).toEqual([BOT, ...plain]);
    for (const text of ['hello world', 'this is\ta test\n\nwith  spaces', 'héllo wörld 🌍 — 日本語', '']) {
      expect(tokenizer.decode(tokenizer.encode(text, { addSpecialTokens: false }))).toBe(text);
    }
  });

  it('ids and sizes', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files()));
    expect(tokenizer.bosTokenId).toBe(BOT);
    expect(tokenizer.bosToken).toBe('<|begin_of_text|>');
    expect(tokenizer.vocabSize).toBe(BASE + LLAMA3_SPECIALS.length);
    expect(tokenizer.padTokenId).toBeUndefined();
    expect(tokenizer.tokenToId('<|eot_id|>')).toBe(EOT);
  });

  it('stop tokens come from generation_config, tokenizer_config and config', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files()));
    expect([...tokenizer.stopTokenIds].sort((a, b) => a - b)).toEqual([EOT_TEXT, EOT, 999]);
    const single = await ChatTokenizer.fromFolder(folder(llama3Files({ generation: { eos_token_id: EOT_TEXT } })), { modelConfig: { eosTokenIds: [] } });
    expect([...single.stopTokenIds].sort((a, b) => a - b)).toEqual([EOT_TEXT, EOT]);
    const noGeneration = await ChatTokenizer.fromFolder(folder(llama3Files({ generation: null })), { modelConfig: { eosTokenIds: [] } });
    expect([...noGeneration.stopTokenIds]).toEqual([EOT]);
  });

  it('formats a chat', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files()));
    expect(tokenizer.formatChat([{ role: 'user', content: ' hi there ' }])).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    expect(tokenizer.formatChat([{ role: 'user', content: 'hi' }], { addGenerationPrompt: false })).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>',
    );
  });

  it('encodeChat has exactly one BOS although the template writes it and the tokenizer would add it', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files()));
    const ids = tokenizer.encodeChat('hello world');
    expect(ids.filter((id) => id === BOT)).toHaveLength(1);
    expect(ids[0]).toBe(BOT);
    expect(ids.slice(0, 3)).toEqual([BOT, START, tokenizer.tokenToId('u')]);
    expect(ids.slice(-4)).toEqual([START, ...tokenizer.encode('assistant', { addSpecialTokens: false }), END, ...tokenizer.encode('\n\n', { addSpecialTokens: false })].slice(-4));
    // The hazard: encoding the rendered text with special tokens doubles BOS.
    const naive = tokenizer.encode(tokenizer.formatChat([{ role: 'user', content: 'hello world' }]));
    expect(naive.slice(0, 2)).toEqual([BOT, BOT]);
    expect(tokenizer.decode(ids)).toBe(tokenizer.formatChat([{ role: 'user', content: 'hello world' }]));
  });

  it('decode can skip special tokens; unknown ids are dropped', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files()));
    const ids = tokenizer.encodeChat('hello world');
    expect(tokenizer.decode(ids, { skipSpecialTokens: true })).toBe('user\n\nhello worldassistant\n\n');
    expect(tokenizer.decode([...tokenizer.encode('hello', { addSpecialTokens: false }), 100000])).toBe('hello');
    expect(tokenizer.decode([])).toBe('');
  });

  it('passes extra variables to the template', async () => {
    const files = llama3Files({ config: { chat_template: '{{ date_string }}|{{ messages[0].content }}' } });
    const tokenizer = await ChatTokenizer.fromFolder(folder(files));
    expect(tokenizer.formatChat([{ role: 'user', content: 'x' }], { variables: { date_string: '26 Jul 2024' } })).toBe('26 Jul 2024|x');
  });
});

describe('ChatML style', () => {
  it('no BOS; default system prompt; im_end stops', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(chatmlFiles()));
    expect(tokenizer.bosTokenId).toBeUndefined();
    expect(tokenizer.padTokenId).toBe(ENDOFTEXT);
    expect([...tokenizer.stopTokenIds]).toEqual([IM_END]);
    const text = tokenizer.formatChat([{ role: 'user', content: 'hello' }]);
    expect(text).toBe('<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n');
    const ids = tokenizer.encodeChat('hello');
    expect(ids[0]).toBe(IM_START);
    expect(ids.filter((id) => id === IM_START)).toHaveLength(3);
    expect(ids.filter((id) => id === IM_END)).toHaveLength(2);
    expect(tokenizer.encode('hello')).toEqual(tokenizer.encode('hello', { addSpecialTokens: false }));
    expect(tokenizer.decode(ids)).toBe(text);
  });

  it('a conversation with a system message', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(chatmlFiles()));
    const text = tokenizer.formatChat(
      [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'hello' },
        { role: 'user', content: 'bye' },
      ],
      { addGenerationPrompt: false },
    );
    expect(text).toBe('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n');
  });
});

describe('template sources', () => {
  it('chat_template.jinja when tokenizer_config.json has none', async () => {
    const files = chatmlFiles();
    files.set('tokenizer_config.json', new Blob([JSON.stringify({ eos_token: '<|im_end|>' })]));
    files.set('chat_template.jinja', new Blob(['[{{ messages[0].content }}]']));
    const tokenizer = await ChatTokenizer.fromFolder(folder(files));
    expect(tokenizer.formatChat([{ role: 'user', content: 'q' }])).toBe('[q]');
  });

  it('a list of named templates picks "default"', async () => {
    const files = chatmlFiles();
    files.set(
      'tokenizer_config.json',
      new Blob([JSON.stringify({ chat_template: [{ name: 'tool_use', template: 'tools' }, { name: 'default', template: 'plain {{ messages[0].content }}' }] })]),
    );
    const tokenizer = await ChatTokenizer.fromFolder(folder(files));
    expect(tokenizer.formatChat([{ role: 'user', content: 'q' }])).toBe('plain q');
  });

  it('AddedToken objects and special_tokens_map.json', async () => {
    const files = llama3Files({ config: { bos_token: { __type: 'AddedToken', content: '<|begin_of_text|>', special: true }, eos_token: undefined } });
    files.set('special_tokens_map.json', new Blob([JSON.stringify({ eos_token: { content: '<|end_of_text|>' } })]));
    files.delete('generation_config.json');
    const tokenizer = await ChatTokenizer.fromFolder(folder(files), { modelConfig: { eosTokenIds: [] } });
    expect(tokenizer.bosTokenId).toBe(BOT);
    expect(tokenizer.eosToken).toBe('<|end_of_text|>');
    expect([...tokenizer.stopTokenIds]).toEqual([EOT_TEXT]);
  });
});

describe('errors name the file, in one line', () => {
  it('missing tokenizer.json', async () => {
    const files = llama3Files();
    files.delete('tokenizer.json');
    expect(await loadError(files)).toMatch(/^models\/t\/tokenizer\.json is missing/);
  });

  it('invalid JSON', async () => {
    const files = llama3Files();
    files.set('tokenizer_config.json', new Blob(['{ "bos_token": ']));
    expect(await loadError(files)).toMatch(/^models\/t\/tokenizer_config\.json: invalid JSON/);
  });

  it('a tokenizer that does not load', async () => {
    const files = llama3Files();
    const broken = tokenizerJson(LLAMA3_SPECIALS);
    broken.model = { type: 'SomethingElse' };
    files.set('tokenizer.json', new Blob([JSON.stringify(broken)]));
    expect(await loadError(files)).toBe('models/t/tokenizer.json: the tokenizer does not load (Unknown TokenizerModel type: SomethingElse)');
    files.set('tokenizer.json', new Blob(['[1, 2]']));
    expect(await loadError(files)).toMatch(/^models\/t\/tokenizer\.json: the tokenizer does not load/);
  });

  it('no chat template', async () => {
    const files = llama3Files({ config: { chat_template: undefined } });
    const tokenizer = await ChatTokenizer.fromFolder(folder(files));
    expect(tokenizer.hasChatTemplate).toBe(false);
    expect(tokenizer.encode('hello')).toHaveLength(2);
    expect(thrown(() => tokenizer.encodeChat('hello'))).toMatch(/^models\/t\/tokenizer_config\.json: no chat_template/);
  });

  it('a template that does not parse', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files({ config: { chat_template: '{% for m in messages %}{{ m.content }' } })));
    expect(thrown(() => tokenizer.formatChat([{ role: 'user', content: 'x' }]))).toMatch(/^models\/t\/tokenizer_config\.json: the chat template does not parse/);
  });

  it('a template that fails to render', async () => {
    const template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('Conversations must start with a system message') }}{% endif %}";
    const tokenizer = await ChatTokenizer.fromFolder(folder(llama3Files({ config: { chat_template: template } })));
    expect(thrown(() => tokenizer.encodeChat('x'))).toBe(
      'models/t/tokenizer_config.json: the chat template failed to render (Conversations must start with a system message)',
    );
  });
});

const TINY = join(import.meta.dirname, '..', '..', 'models', 'tiny-chat');

describe.skipIf(!existsSync(join(TINY, 'tokenizer.json')))('models/tiny-chat', () => {
  it('loads, formats a prompt and round-trips', async () => {
    const tokenizer = await ChatTokenizer.fromFolder(new NodeFolder(TINY));
    expect(tokenizer.vocabSize).toBeGreaterThan(0);
    expect(tokenizer.stopTokenIds.size).toBeGreaterThan(0);
    const text = tokenizer.formatChat([{ role: 'user', content: 'How do I bake bread?' }]);
    expect(text).toContain('How do I bake bread?');
    const ids = tokenizer.encodeChat('How do I bake bread?');
    expect(tokenizer.decode(ids)).toBe(text);
    if (tokenizer.bosTokenId !== undefined) {
      expect(ids.filter((id) => id === tokenizer.bosTokenId).length).toBeLessThanOrEqual(1);
      if (tokenizer.bosToken !== undefined && text.startsWith(tokenizer.bosToken)) expect(ids[0]).toBe(tokenizer.bosTokenId);
    }
    if (tokenizer.eosToken !== undefined) expect(tokenizer.stopTokenIds.has(tokenizer.tokenToId(tokenizer.eosToken)!)).toBe(true);
    for (const sample of ['Hello, world!', 'Tell me a story about a dragon.']) {
      expect(tokenizer.decode(tokenizer.encode(sample, { addSpecialTokens: false }))).toBe(sample);
    }
  });
});
