import { Command, CommanderError } from 'commander';
import { registerGenerate } from './generate.ts';
import { registerInspect } from './inspect.ts';
import { registerRun } from './run.ts';
import { registerSteps } from './steps.ts';
import { registerTaps } from './taps.ts';

const program = new Command('abliterate')
  .description('Transformer inference and abliteration on WebGPU')
  .exitOverride()
  .configureOutput({ writeErr: (text) => process.stderr.write(text) });

registerInspect(program);
registerRun(program);
registerSteps(program);
registerGenerate(program);
registerTaps(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Commander already printed its message (usage errors, --help, --version).
    process.exitCode = error.exitCode;
  } else {
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`abliterate: ${message.split('\n')[0]}\n`);
    if (process.env.ABLITERATE_DEBUG && error instanceof Error) process.stderr.write(`${error.stack}\n`);
    process.exitCode = 1;
  }
}
