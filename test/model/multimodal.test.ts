/**
 * Gemma 3's multimodal checkpoints (Gemma3ForConditionalGeneration, the 4B and larger models): the
 * config's text_config is the model, the text decoder's tensors are under a prefix, the vision tower
 * and projector are left alone. A tiny random model in both layouts seen in the wild runs as the same
 * model written as a causal LM, is cut, and is exported under its own tensor names.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { applyCut, orthonormalize } from '../../src/abliterate/cut.ts';
import { BlobFolder } from '../../src/io/byteSource.ts';
import { SafetensorsModel } from '../../src/io/safetensors.ts';
import { LlamaModel } from '../../src/model/model.ts';
import { encode, randomModel, toSafetensors, type RandomTensor } from '../reference/randomModel.ts';
import { testGpu } from '../helpers/gpu.ts';
import { exportedFolder } from '../helpers/models.ts';
import { Random } from '../helpers/random.ts';
import { tapEverything } from '../helpers/taps.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});
afterAll(() => gpu?.dispose());

const LAYOUTS: [string, { decoder: string; lmHead: string }][] = [
  ['as published (language_model.model.*)', { decoder: 'language_model.model.', lmHead: 'language_model.lm_head.weight' }],
  ['as newer transformers save it (model.language_model.*)', { decoder: 'model.language_model.', lmHead: 'lm_head.weight' }],
];

function folder(name: string, files: Record<string, Uint8Array | string>): BlobFolder {
  return new BlobFolder(name, new Map(Object.entries(files).map(([file, content]) => [file, new Blob([content as Uint8Array<ArrayBuffer>])])));
}


describe("Gemma 3's multimodal checkpoints", () => {
  it.each(LAYOUTS)('%s: the text decoder runs as the causal LM, is cut, and is exported under the files’ names with the vision tower unchanged', async (_, layout) => {
    const random = randomModel({ architecture: 'gemma3_text', hiddenSize: 64, intermediateSize: 128, numLayers: 2, vocabSize: 200, tieWordEmbeddings: false, slidingWindow: 4, slidingWindowPattern: 2, dtype: 'BF16' });
    const rng = new Random(random.seed);
    const rename = (t: RandomTensor): RandomTensor => ({ ...t, name: t.name === 'lm_head.weight' ? layout.lmHead : t.name.replace(/^model\./, layout.decoder) });
    const vision = [
      { name: 'vision_tower.vision_model.embeddings.patch_embedding.weight', shape: [8, 3, 2, 2] },
      { name: 'multi_modal_projector.mm_input_projection_weight', shape: [8, 64] },
    ].map(({ name, shape }) => ({ name: layout.decoder.startsWith('model.') ? `model.${name}` : name, dtype: 'BF16' as const, shape, bytes: encode(rng.normals(shape.reduce((a, b) => a * b)), 'BF16').bytes }));
    const { architectures: _classes, model_type: _type, torch_dtype: dtype, eos_token_id: eos, bos_token_id: bos, pad_token_id: pad, ...text } = random.configJson;
    const config = { model_type: 'gemma3', architectures: ['Gemma3ForConditionalGeneration'], torch_dtype: dtype, eos_token_id: eos, bos_token_id: bos, pad_token_id: pad, text_config: { ...text, model_type: 'gemma3_text' }, vision_config: { model_type: 'siglip_vision_model', hidden_size: 8 } };
    const tensors = [...random.tensors.map(rename), ...vision];
    const multimodal = folder('gemma-3-multimodal', { 'config.json': JSON.stringify(config), 'model.safetensors': toSafetensors(tensors) });
    const causal = folder('gemma-3-text', { 'config.json': JSON.stringify(random.configJson), 'model.safetensors': toSafetensors(random.tensors) });

    const prompts = [Array.from({ length: 7 }, () => rng.int(0, 199))];
    const model = await LlamaModel.load(gpu, multimodal);
    const reference = await LlamaModel.load(gpu, causal);
    try {
      expect(model.tensors.textDecoderPrefix).toBe(layout.decoder);
      expect(model.config).toEqual(reference.config);
      const logits = (await tapEverything(gpu, model, prompts)).logits;
      expect(logits).toEqual((await tapEverything(gpu, reference, prompts)).logits);

      const direction = orthonormalize([Float32Array.from(rng.normals(64))]);
      await applyCut(model, { basis: direction, embedding: true });
      const cut = (await tapEverything(gpu, model, prompts)).logits;
      expect(cut).not.toEqual(logits);
      const out = await exportedFolder(model);
      const files = await SafetensorsModel.open(out);
      const input = await SafetensorsModel.open(multimodal);
      expect(files.textDecoderPrefix).toBe(layout.decoder);
      expect([...files.allTensors.keys()].map((n) => files.fileName(n)).sort()).toEqual(tensors.map((t) => t.name).sort());
      for (const t of vision) expect(Buffer.compare(Buffer.from(await files.read(t.name)), Buffer.from(t.bytes)), t.name).toBe(0);
      // The cut changed the embedding and the writers, under their names in the files.
      const changed: string[] = [];
      for (const name of input.allTensors.keys()) if (Buffer.compare(Buffer.from(await input.read(name)), Buffer.from(await files.read(name))) !== 0) changed.push(input.fileName(name));
      expect(changed.sort()).toEqual([`${layout.decoder}embed_tokens.weight`, ...[0, 1].flatMap((l) => [`${layout.decoder}layers.${l}.mlp.down_proj.weight`, `${layout.decoder}layers.${l}.self_attn.o_proj.weight`])].sort());
      const reloaded = await LlamaModel.load(gpu, out);
      try {
        expect((await tapEverything(gpu, reloaded, prompts)).logits).toEqual(cut);
      } finally {
        reloaded.dispose();
      }
    } finally {
      model.dispose();
      reference.dispose();
    }
  });
});
