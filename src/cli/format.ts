// Small helpers for the command line: tables, the start-up banner, stop signals.
import { VERSION } from '../core/version.ts';

/** Renders rows as an aligned text table. */
export function formatTable(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '(none)';
  const cols = Object.keys(rows[0]);
  const cells = rows.map((r) => cols.map((c) => String(r[c] ?? '')));
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i].length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd();
  return [line(cols.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n');
}

export function printBanner(addr: { api: { host: string; port: number; tls: boolean }; postgres: { host: string; port: number }; agents?: { host: string; port: number } },
  tls: { fingerprint: string; generated: boolean; certFile: string }, policyVersion: string, connections: string[]): void {
  console.log(`airlock ${VERSION} is up`);
  console.log(`  postgres  ${addr.postgres.host}:${addr.postgres.port}`);
  console.log(`  api       ${addr.api.tls ? 'https' : 'http'}://${addr.api.host}:${addr.api.port}`);
  console.log(`  tls       ${tls.generated ? 'self-signed (generated) ' : ''}${tls.certFile}`);
  console.log(`            sha256 ${tls.fingerprint}`);
  console.log(`  policies  version ${policyVersion}`);
  console.log(`  agent     serves ${connections.join(', ') || '(no connections)'}`);
  if (addr.agents) console.log(`  agents    ${addr.agents.host}:${addr.agents.port} (TLS; agents pin sha256 ${tls.fingerprint})`);
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


/** One line of at most `max` characters (whitespace runs collapsed), for table cells. */
export function oneLine(s: string, max = 80): string {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}
