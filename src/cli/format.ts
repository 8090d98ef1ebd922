// Small helpers for the command line: durations, tables, the start-up banner, stop signals.
import { VERSION } from '../core/version.ts';

/** Parses durations such as 90s, 30m, 1h, 7d, 2w (a bare number is seconds). */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$/.exec(s.trim());
  if (!m) throw new Error(`invalid duration "${s}" (use e.g. 90s, 30m, 1h, 7d, 2w)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h' | 'd' | 'w'];
  const ms = Math.round(Number(m[1]) * unit);
  if (ms <= 0) throw new Error(`duration must be positive: "${s}"`);
  return ms;
}

/** Renders rows as an aligned text table. */
export function formatTable(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '(none)';
  const cols = Object.keys(rows[0]);
  const cells = rows.map((r) => cols.map((c) => String(r[c] ?? '')));
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i].length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd();
  return [line(cols.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n');
}

export function printBanner(addr: { api: { host: string; port: number; tls: boolean }; postgres: { host: string; port: number } },
  tls: { fingerprint: string; generated: boolean; certFile: string }, policyVersion: string, connections: string[]): void {
  console.log(`airlock ${VERSION} is up`);
  console.log(`  postgres  ${addr.postgres.host}:${addr.postgres.port}`);
  console.log(`  api       ${addr.api.tls ? 'https' : 'http'}://${addr.api.host}:${addr.api.port}`);
  console.log(`  tls       ${tls.generated ? 'self-signed (generated) ' : ''}${tls.certFile}`);
  console.log(`            sha256 ${tls.fingerprint}`);
  console.log(`  policies  version ${policyVersion}`);
  console.log(`  agent     serves ${connections.join(', ') || '(no connections)'}`);
}

/** Resolves on the first SIGINT/SIGTERM. */
export function waitForStop(): Promise<string> {
  return new Promise((resolve) => {
    const stop = (sig: string) => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve(sig);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

