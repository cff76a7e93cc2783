/**
 * Tokenizer and chat template of a Hugging Face model folder: `tokenizer.json` through
 * `@huggingface/tokenizers`, the Jinja chat template through `@huggingface/jinja`, and the stop
 * tokens from `generation_config.json`, `tokenizer_config.json` and `config.json`.
 */
import { Template } from '@huggingface/jinja';
import { DEFAULT_TEMPLATE_LIMITS, renderBounded, TemplateLimitError } from './templateLimits.ts';
import { Tokenizer } from '@huggingface/tokenizers';
import { MAX_TOKENIZER_BYTES, type FileFolder } from '../io/byteSource.ts';
import { jsonErrorReason } from '../io/json.ts';
import { describeFile, type ModelConfig } from './config.ts';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | (string & {});
  content: string;
}

export class TokenizerError extends Error {
  override name = 'TokenizerError';
}

/** The JSON files of a tokenizer, already parsed; `folderName` prefixes file names in messages. */
export interface TokenizerFiles {
  folderName?: string;
  tokenizer: unknown;
  tokenizerConfig?: Record<string, unknown>;
  generationConfig?: Record<string, unknown>;
  specialTokensMap?: Record<string, unknown>;
  /** A template from `chat_template.jinja` (used when tokenizer_config.json has none). */
  chatTemplateFile?: { name: string; template: string };
  /** The model config's ids (they join the stop tokens; bos is a fallback). */
  modelConfig?: Pick<ModelConfig, 'eosTokenIds' | 'bosTokenId'>;
}

type Json = Record<string, unknown>;

const isRecord = (x: unknown): x is Json => typeof x === 'object' && x !== null && !Array.isArray(x);
const isId = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/** A special token as tokenizer_config.json writes it: a string, or `{ content: "...", ... }` (AddedToken). */
function tokenText(x: unknown): string | undefined {
  if (typeof x === 'string') return x;
  if (isRecord(x) && typeof x.content === 'string') return x.content;
  return undefined;
}

function ids(x: unknown): number[] {
  if (isId(x)) return [x];
  if (Array.isArray(x)) return x.filter(isId);
  return [];
}

export class ChatTokenizer {
  /** Token id of the beginning-of-sequence token, if the model has one. */
  readonly bosTokenId: number | undefined;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly padTokenId: number | undefined;
  /** Number of token ids the tokenizer knows (highest id + 1, added tokens included). May be below the model's vocab_size. */
  readonly vocabSize: number;
  /** Ids that end generation: generation_config `eos_token_id`, tokenizer_config `eos_token`, config `eos_token_id`. */
  readonly stopTokenIds: ReadonlySet<number>;
  /** The chat template source, if the model has one. */
  readonly chatTemplate: string | undefined;

  private readonly tokenizer: Tokenizer;
  private readonly templateVariables: Json;
  private readonly templateSource: string;
  private readonly tokenizerSource: string;
  private template: Template | undefined;

  private constructor(files: TokenizerFiles) {
    const where = (file: string) => (files.folderName ? describeFile({ name: files.folderName }, file) : file);
    this.tokenizerSource = where('tokenizer.json');
    const config = files.tokenizerConfig ?? {};
    const special = files.specialTokensMap ?? {};
    const generation = files.generationConfig ?? {};

    if (!isRecord(files.tokenizer)) throw new TokenizerError(`${this.tokenizerSource}: the tokenizer does not load (not a JSON object)`);
    try {
      this.tokenizer = new Tokenizer(files.tokenizer, config);
    } catch (error) {
      throw new TokenizerError(`${this.tokenizerSource}: the tokenizer does not load (${(error as Error).message})`);
    }

    const vocab = this.tokenizer.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;

    const specialToken = (key: string) => tokenText(config[key]) ?? tokenText(special[key]);
    const idOf = (text: string | undefined) => (text === undefined ? undefined : this.tokenizer.token_to_id(text));

    this.bosToken = specialToken('bos_token');
    this.eosToken = specialToken('eos_token');
    const padToken = specialToken('pad_token');
    const unkToken = specialToken('unk_token');

    this.bosTokenId = idOf(this.bosToken) ?? ids(generation.bos_token_id)[0] ?? files.modelConfig?.bosTokenId;
    if (this.bosToken === undefined && this.bosTokenId !== undefined) this.bosToken = this.tokenizer.id_to_token(this.bosTokenId);
    this.padTokenId = idOf(padToken) ?? ids(generation.pad_token_id)[0];

    const stops = new Set<number>(ids(generation.eos_token_id));
    const eosId = idOf(this.eosToken);
    if (eosId !== undefined) stops.add(eosId);
    for (const id of files.modelConfig?.eosTokenIds ?? []) stops.add(id);
    this.stopTokenIds = stops;

    // tokenizer_config.json `chat_template`: a string, or a list of named templates (use "default").
    let template: string | undefined;
    let templateSource = where('tokenizer_config.json');
    const fromConfig = config.chat_template;
    if (typeof fromConfig === 'string') template = fromConfig;
    else if (Array.isArray(fromConfig)) {
      const named = fromConfig.filter(isRecord);
      const chosen = named.find((t) => t.name === 'default') ?? named[0];
      if (typeof chosen?.template === 'string') template = chosen.template;
    }
    if (template === undefined && files.chatTemplateFile) {
      template = files.chatTemplateFile.template;
      templateSource = where(files.chatTemplateFile.name);
    }
    this.chatTemplate = template;
    this.templateSource = templateSource;
    this.templateVariables = {
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      pad_token: padToken ?? null,
      unk_token: unkToken ?? null,
    };
  }

  /** Builds a tokenizer from already parsed files (tests, or files obtained another way). */
  static fromFiles(files: TokenizerFiles): ChatTokenizer {
    return new ChatTokenizer(files);
  }

  /**
   * Reads `tokenizer.json` (required), `tokenizer_config.json`, `generation_config.json`,
   * `special_tokens_map.json` and `chat_template.jinja` (each when present), and the model's
   * `config.json` for its eos ids unless `modelConfig` is given.
   */
  static async fromFolder(folder: FileFolder, options: { modelConfig?: Pick<ModelConfig, 'eosTokenIds' | 'bosTokenId'> } = {}): Promise<ChatTokenizer> {
    const readJson = async (file: string, required: boolean): Promise<unknown> => {
      if (!(await folder.has(file))) {
        if (required) throw new TokenizerError(`${describeFile(folder, file)} is missing: the model folder needs a tokenizer.json (Hugging Face fast tokenizer)`);
        return undefined;
      }
      const text = await folder.readText(file, file === 'tokenizer.json' ? MAX_TOKENIZER_BYTES : undefined);
      try {
        return JSON.parse(text);
      } catch (error) {
        throw new TokenizerError(`${describeFile(folder, file)}: invalid JSON (${jsonErrorReason(error, text)})`);
      }
    };
    const record = (file: string, value: unknown): Json | undefined => {
      if (value === undefined) return undefined;
      if (!isRecord(value)) throw new TokenizerError(`${describeFile(folder, file)}: expected a JSON object`);
      return value;
    };

    const files: TokenizerFiles = { folderName: folder.name, tokenizer: await readJson('tokenizer.json', true) };
    const tokenizerConfig = record('tokenizer_config.json', await readJson('tokenizer_config.json', false));
    if (tokenizerConfig) files.tokenizerConfig = tokenizerConfig;
    const generationConfig = record('generation_config.json', await readJson('generation_config.json', false));
    if (generationConfig) files.generationConfig = generationConfig;
    const specialTokensMap = record('special_tokens_map.json', await readJson('special_tokens_map.json', false));
    if (specialTokensMap) files.specialTokensMap = specialTokensMap;
    if (await folder.has('chat_template.jinja')) {
      files.chatTemplateFile = { name: 'chat_template.jinja', template: await folder.readText('chat_template.jinja') };
    } else if (await folder.has('chat_template.json')) {
      const json = record('chat_template.json', await readJson('chat_template.json', false));
      if (typeof json?.chat_template === 'string') files.chatTemplateFile = { name: 'chat_template.json', template: json.chat_template };
    }
    if (options.modelConfig) {
      files.modelConfig = options.modelConfig;
    } else if (await folder.has('config.json')) {
      // Only the eos/bos ids, read leniently: the full validation belongs to loadModelConfig.
      try {
        const config: unknown = JSON.parse(await folder.readText('config.json'));
        if (isRecord(config)) {
          const bos = ids(config.bos_token_id)[0];
          files.modelConfig = { eosTokenIds: ids(config.eos_token_id), ...(bos === undefined ? {} : { bosTokenId: bos }) };
        }
      } catch {
        // An unreadable config.json is reported by loadModelConfig.
      }
    }
    return new ChatTokenizer(files);
  }

  /** Token ids of `text`; `addSpecialTokens` (default true) lets the tokenizer's post-processor add BOS etc. */
  encode(text: string, { addSpecialTokens = true }: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /** Text of `ids`; ids the tokenizer does not know (a model's padded vocabulary) are dropped. */
  decode(ids: readonly number[], { skipSpecialTokens = false }: { skipSpecialTokens?: boolean } = {}): string {
    const known = ids.filter((id) => this.tokenizer.id_to_token(id) !== undefined);
    if (known.length === 0) return '';
    return this.tokenizer.decode(known, { skip_special_tokens: skipSpecialTokens });
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tokenizer.id_to_token(id);
  }

  /**
   * `enable_thinking` as passed to the chat template (Qwen3's templates read it): off by default,
   * so measured and evaluated prompts get the template's empty thinking block and the model answers
   * directly, as the reference abliteration tools do. Templates without the variable ignore it.
   */
  enableThinking = false;

  get hasChatTemplate(): boolean {
    return this.chatTemplate !== undefined;
  }

  /**
   * Renders the chat template. `variables` are passed to the template too (e.g. `date_string`);
   * `tools` and `documents` are null, as in transformers without tools.
   */
  formatChat(messages: readonly ChatMessage[], { addGenerationPrompt = true, variables = {} }: { addGenerationPrompt?: boolean; variables?: Json } = {}): string {
    const template = this.compiledTemplate();
    // The template's output holds the messages: long prompts get room beyond the default cap.
    const contentChars = messages.reduce((n, m) => n + m.content.length, 0);
    const limits = { ...DEFAULT_TEMPLATE_LIMITS, maxChars: Math.max(DEFAULT_TEMPLATE_LIMITS.maxChars, 4 * contentChars) };
    try {
      return renderBounded(
        template,
        {
          ...this.templateVariables,
          tools: null,
          documents: null,
          enable_thinking: this.enableThinking,
          ...variables,
          messages: messages.map((m) => ({ role: m.role, content: m.content })),
          add_generation_prompt: addGenerationPrompt,
        },
        limits,
      );
    } catch (error) {
      if (error instanceof TemplateLimitError) throw new TokenizerError(`${this.templateSource}: ${error.message}`);
      throw new TokenizerError(`${this.templateSource}: the chat template failed to render (${oneLine(error)})`);
    }
  }

  /**
   * Token ids of a chat prompt (one user message, or a conversation), generation prompt on.
   * Like transformers' `apply_chat_template(tokenize=True)`, the rendered text is encoded without
   * the tokenizer's special tokens: the template writes BOS itself when the model wants one, so it
   * is never doubled.
   */
  encodeChat(message: string | readonly ChatMessage[], options: { variables?: Json } = {}): number[] {
    const messages = typeof message === 'string' ? [{ role: 'user', content: message }] : message;
    const text = this.formatChat(messages, { addGenerationPrompt: true, ...options });
    const ids = this.encode(text, { addSpecialTokens: false });
    if (ids.length === 0) throw new TokenizerError(`${this.templateSource}: the chat template rendered no text for a prompt (does it read the messages' "content"?)`);
    return ids;
  }

  /**
   * `encodeChat`, but a prompt longer than `maxTokens` tokens has the end of its last message cut
   * until it fits, so that the template's own tokens (the generation prompt above all) stay whole.
   * `truncatedFrom` is the length before the cut, when there was one.
   */
  encodeChatWithin(message: string | readonly ChatMessage[], maxTokens: number, options: { variables?: Json } = {}): { ids: number[]; truncatedFrom?: number } {
    const messages = typeof message === 'string' ? [{ role: 'user', content: message }] : [...message];
    const ids = this.encodeChat(messages, options);
    if (ids.length <= maxTokens) return { ids };
    const last = messages.length - 1;
    const content = this.encode(messages[last]!.content, { addSpecialTokens: false });
    const withContent = (count: number) =>
      this.encodeChat([...messages.slice(0, last), { ...messages[last]!, content: this.decode(content.slice(0, count)) }], options);
    // Drop as many content tokens as the prompt is over, then more while re-tokenisation still overflows.
    let keep = content.length;
    let cut = ids;
    while (cut.length > maxTokens && keep > 0) {
      keep = Math.max(0, keep - (cut.length - maxTokens));
      cut = withContent(keep);
    }
    if (cut.length > maxTokens) {
      throw new TokenizerError(`${this.templateSource}: the chat template alone takes ${cut.length} tokens, more than the ${maxTokens} a prompt may have`);
    }
    return { ids: cut, truncatedFrom: ids.length };
  }

  private compiledTemplate(): Template {
    if (this.template) return this.template;
    if (this.chatTemplate === undefined) {
      throw new TokenizerError(`${this.templateSource}: no chat_template, so chat prompts cannot be formatted (is this a base model rather than an instruction-tuned one?)`);
    }
    try {
      this.template = new Template(this.chatTemplate);
    } catch (error) {
      throw new TokenizerError(`${this.templateSource}: the chat template does not parse (${oneLine(error)})`);
    }
    return this.template;
  }
}

function oneLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/\s*\n\s*/g, ' ');
}
