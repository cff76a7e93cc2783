import { Command, CommanderError } from 'commander';
import { GpuOutOfMemoryError, MEMORY_BUDGET_ENV } from '../index.ts';
import { registerCut } from './cut.ts';
import { registerDetect } from './detect.ts';
import { registerEval } from './eval.ts';
import { registerGenerate } from './generate.ts';
import { registerInspect } from './inspect.ts';
import { registerMeasure } from './measure.ts';
import { registerProbe } from './probe.ts';
import { registerOptimize } from './optimize.ts';
import { registerRun } from './run.ts';
import { registerSteer } from './steer.ts';
import { registerTaps } from './taps.ts';

const program = new Command('abliterate')
  .description('Transformer inference and abliteration on WebGPU')
  .exitOverride()
  .configureOutput({ writeErr: (text) => process.stderr.write(text) });

registerInspect(program);
registerRun(program);
registerOptimize(program);
registerMeasure(program);
registerCut(program);
registerDetect(program);
registerEval(program);
registerProbe(program);
registerSteer(program);
registerGenerate(program);
registerTaps(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Commander already printed its message (usage errors, --help, --version).
    process.exitCode = error.exitCode;
  } else {
    let message = (error instanceof Error ? error.message : String(error)).split('\n')[0];
    const budget = process.env[MEMORY_BUDGET_ENV];
    if (error instanceof GpuOutOfMemoryError && budget) message += ` (${MEMORY_BUDGET_ENV}=${budget})`;
    process.stderr.write(`abliterate: ${message}\n`);
    if (process.env.ABLITERATE_DEBUG && error instanceof Error) process.stderr.write(`${error.stack}\n`);
    process.exitCode = 1;
  }
}
