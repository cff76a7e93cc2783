// Checks models/tiny-chat's tokenizer and chat template with the npm packages the engine uses,
// against the reference written by training/make_tokenizer.py (training/tokenizer_ids.json.gz):
//  - @huggingface/tokenizers encodes every case to exactly the Python ids and decodes them back;
//  - @huggingface/jinja renders the chat template to exactly the Python prompt string.
// Run from the repository root:  node training/check_tokenizer.mjs
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';

const dir = new URL('../models/tiny-chat/', import.meta.url);
const read = (u) => JSON.parse(readFileSync(u, 'utf8'));
const tokenizerJson = read(new URL('tokenizer.json', dir));
const tokenizerConfig = read(new URL('tokenizer_config.json', dir));
const ref = JSON.parse(gunzipSync(readFileSync(new URL('tokenizer_ids.json.gz', import.meta.url))).toString('utf8'));

const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
let failures = 0;
const fail = (msg) => {
  failures += 1;
  if (failures <= 10) console.error(msg);
};

for (const c of ref.cases) {
  const { ids } = tokenizer.encode(c.text);
  if (ids.length !== c.ids.length || ids.some((v, i) => v !== c.ids[i])) {
    fail(`encode mismatch for ${JSON.stringify(c.text)}\n  js:     ${ids}\n  python: ${c.ids}`);
    continue;
  }
  if (ids.length > 0) {
    const back = tokenizer.decode(ids);
    if (back !== c.text) fail(`decode mismatch: ${JSON.stringify(back)} != ${JSON.stringify(c.text)}`);
  }
}

const template = new Template(tokenizerConfig.chat_template);
for (const c of ref.chats) {
  const out = template.render({
    messages: c.messages,
    add_generation_prompt: true,
    bos_token: tokenizerConfig.bos_token,
    eos_token: tokenizerConfig.eos_token,
  });
  if (out !== c.expected) fail(`template mismatch:\n  js:     ${JSON.stringify(out)}\n  python: ${JSON.stringify(c.expected)}`);
}

// Special tokens are single ids and the tokenizer adds no BOS/EOS of its own.
const bosId = tokenizer.encode(tokenizerConfig.bos_token).ids;
if (bosId.length !== 1) fail(`bos_token is not one token: ${bosId}`);
if (tokenizer.encode('hello').ids.includes(bosId[0])) fail('tokenizer adds BOS by itself');

if (failures > 0) {
  console.error(`FAIL: ${failures} mismatches (${ref.cases.length} tokenizer cases, ${ref.chats.length} chat cases)`);
  process.exit(1);
}
console.log(`OK: ${ref.cases.length} tokenizer cases and ${ref.chats.length} chat-template cases match Python exactly`);
