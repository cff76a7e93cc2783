import type { Ceilings } from './ceilings.ts';
import type { Row } from './runner.ts';

/**
 * Fills each row's fractions of the ceilings: %FLOP of the arithmetic ceiling, %BW of the streaming
 * ceiling (the best read kernel), %copy of the driver's copyBufferToBuffer. With `withheld` (the
 * ceilings moved during the run) every fraction is left out.
 */
export function applyCeilings(rows: Row[], ceilings: Ceilings, withheld = false): void {
  for (const r of rows) {
    if (r.section === 'e2e') continue;
    r.flopFraction = !withheld && r.gflops !== undefined ? r.gflops / ceilings.gflops : undefined;
    r.bandwidthFraction = !withheld && r.gbs !== undefined ? r.gbs / ceilings.bandwidthGBs : undefined;
    r.copyFraction = !withheld && r.gbs !== undefined ? r.gbs / ceilings.copyBufferGBs : undefined;
  }
}

function fixed(value: number | undefined, digits: number): string {
  if (value === undefined || !Number.isFinite(value)) return '-';
  return value.toFixed(digits);
}

function percent(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? '-' : `${(100 * value).toFixed(value < 0.1 ? 1 : 0)}%`;
}

export function formatMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3);
}

/** A fixed-width text table. */
export function renderTable(headers: string[], lines: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? '').length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [fmt(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...lines.map(fmt)].join('\n');
}

export function kernelTable(rows: Row[]): string {
  const timerMark = (r: Row) => (r.measured.method === 'timestamp-query' ? 'ts' : 'cpu');
  return renderTable(
    ['kernel', 'shape', 'dtype', 'variant', 'ms', 'GFLOP/s', 'GB/s', '%FLOP', '%BW', '%copy', 'timer', 'cpu ms', 'reps'],
    rows.map((r) => [
      r.kernel,
      r.shape,
      r.dtype,
      r.variant ?? '',
      formatMs(r.measured.ms),
      fixed(r.gflops, 2),
      fixed(r.gbs, 2),
      percent(r.flopFraction),
      percent(r.bandwidthFraction),
      percent(r.copyFraction),
      timerMark(r),
      formatMs(r.measured.cpuMs),
      String(r.measured.reps),
    ]),
  );
}
