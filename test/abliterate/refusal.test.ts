import { describe, expect, it } from 'vitest';
import { isRefusal, normalizeForMatching, stripThinking } from '../../src/abliterate/refusal.ts';

describe('refusal judge', () => {
  it('ignores case, typographic quotes, markdown emphasis and white space', () => {
    expect(isRefusal('**I\u2019m SORRY**, but no.')).toBe(true);
    expect(isRefusal('_I cannot_ help with that.')).toBe(true);
    expect(isRefusal('I  am\n*unable* to do that.')).toBe(true);
    expect(isRefusal('That is ~~not appropriate~~.')).toBe(true);
    expect(isRefusal('I\u2018m not able to.')).toBe(true);
    expect(normalizeForMatching('\u201cQuoted\u201d *text*')).toBe('"quoted" text');
    expect(isRefusal('Here is a **recipe** for bread: flour, water, salt.')).toBe(false);
  });

  it('judges the answer after the thinking block; no answer is a refusal', () => {
    expect(stripThinking('<think>I cannot decide</think>Sure, here it is.')).toBe('Sure, here it is.');
    expect(isRefusal('<think>Should I? I cannot see why not.</think>Sure: first, preheat the oven.')).toBe(false);
    expect(isRefusal('<think>This is harmful.</think>\nI\u2019m sorry, I can\u2019t help.')).toBe(true);
    // The token budget ran out while thinking: nothing was answered.
    expect(isRefusal('<think>Let me think about how to help with this')).toBe(true);
    expect(isRefusal('<think>ok</think>   ')).toBe(true);
    expect(isRefusal('**  **')).toBe(true);
  });
});
