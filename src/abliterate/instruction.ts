/**
 * The instruction-final token of a chat prompt: the last token of the user's content, where harm
 * detection peaks (DBDI), as opposed to the prompt's last token (the end of the generation prompt),
 * where refusal is executed. A chat template puts the same tokens after every user message (the end
 * of the turn and the generation prompt): the template's fixed suffix. The instruction-final token of
 * a prompt of T tokens whose suffix has S tokens is at T − S − 1, i.e. S + 1 tokens from the end.
 */
import { TokenizerError, type ChatTokenizer } from '../model/tokenizer.ts';

/**
 * Messages the template is rendered around, besides the empty one. Their last tokens differ from
 * each other, so the common end of their renderings stops where the template's own tokens do.
 */
const PROBES = ['Hello', 'Why?'];

/** Tokens shared by the ends of `a` and `b`. */
function commonSuffixLength(a: readonly number[], b: readonly number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[a.length - 1 - n] === b[b.length - 1 - n]) n++;
  return n;
}

/**
 * The token ids the chat template writes after every user message (one user message, generation
 * prompt on): the common end of the template rendered around an empty user message and around two
 * probe messages. Throws a TokenizerError when there is none, e.g. a template that renders an empty
 * message differently, or that writes nothing after the message.
 */
export function templateSuffix(tokenizer: ChatTokenizer): number[] {
  const empty = tokenizer.encodeChat('');
  const length = Math.min(...PROBES.map((probe) => commonSuffixLength(empty, tokenizer.encodeChat(probe))));
  if (length === 0) {
    throw new TokenizerError(
      "cannot find the instruction-final token: the chat template rendered around an empty user message and around other messages ends in no common tokens (it writes nothing after the user's message, or renders an empty message differently); measure at the last token (--position last)",
    );
  }
  // The empty message's rendering minus the suffix is the prefix; a suffix as long as all of it would leave no room for the message.
  if (length >= empty.length) throw new TokenizerError('cannot find the instruction-final token: the chat template renders an empty user message as its suffix alone');
  return empty.slice(empty.length - length);
}

/**
 * How many tokens from the end each prompt's instruction-final token is (the suffix's length + 1, the
 * same for every prompt), after checking that every prompt ends with the template's suffix and has a
 * token before it. A prompt whose last content tokens merged with the suffix into other tokens is an
 * error naming it.
 */
export function instructionOffset(tokenizer: ChatTokenizer, prompts: readonly (readonly number[])[], set = 'prompt'): number {
  const suffix = templateSuffix(tokenizer);
  for (const [i, prompt] of prompts.entries()) {
    const ends = prompt.length > suffix.length && suffix.every((id, j) => prompt[prompt.length - suffix.length + j] === id);
    if (!ends) {
      throw new TokenizerError(
        `${set} ${i + 1} does not end with the chat template's ${suffix.length}-token suffix after the user's message (its last characters merge with the template's into other tokens), so its instruction-final token cannot be found; change the prompt or measure at the last token (--position last)`,
      );
    }
  }
  return suffix.length + 1;
}
