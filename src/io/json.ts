/**
 * Why `JSON.parse` failed, said without the text itself: V8 quotes the start of the input in some of
 * its messages ("Unexpected token 'r', "root:x:0:0"... is not valid JSON"), and a file reached
 * through a link may be anything. Positions become a line and column.
 */
export function jsonErrorReason(error: unknown, text: string): string {
  const message = error instanceof Error ? error.message : String(error);
  const at = / at position (\d+)/.exec(message);
  if (at) {
    const reason = message.slice(0, at.index).replace(/ in JSON$/, '');
    return `${lowerFirst(reason)} at ${lineAndColumn(text, Number(at[1]))}`;
  }
  if (/^Unexpected end of JSON input/.test(message)) return 'unexpected end of input';
  if (/^Unexpected token/.test(message)) return 'unexpected character';
  return 'not valid JSON';
}

function lowerFirst(text: string): string {
  return text.charAt(0).toLowerCase() + text.slice(1);
}

function lineAndColumn(text: string, position: number): string {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf('\n'); i !== -1 && i < position; i = text.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return `line ${line}, column ${position - lineStart + 1}`;
}
