// Runs pgbench -S once and returns its TPS (shared by the benchmarks in this folder).
import { spawn } from 'node:child_process';

export interface PgbenchOptions {
  clients: string;
  seconds: string;
  /** simple (default) or prepared. */
  mode?: string;
  password?: string;
}

export function pgbench(conninfo: string, opts: PgbenchOptions): Promise<number> {
  const argv = ['-n', '-S', '-M', opts.mode ?? 'simple', '-c', opts.clients, '-j', '2', '-T', opts.seconds, conninfo];
  return new Promise((resolve, reject) => {
    const child = spawn('pgbench', argv, { env: { ...process.env, ...(opts.password ? { PGPASSWORD: opts.password } : {}) } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => {
      const tps = /tps = ([0-9.]+)/.exec(out)?.[1];
      if (code !== 0 || !tps) reject(new Error(`pgbench failed (${code}):\n${out}`));
      else resolve(Number(tps));
    });
  });
}
