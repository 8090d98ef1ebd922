// What the pgbench benchmarks in this folder share: one pgbench -S run, and the gateway they measure.
import { spawn } from 'node:child_process';
import { createTestDb } from '../test/helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../test/helpers/gateway.ts';

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

/**
 * A test database with pgbench tables, an in-process gateway (in-process agent, full enforcement)
 * with an allow/deny policy for it, and a token: what the pgbench benchmarks run against.
 */
export async function startBenchGateway(scale: string): Promise<{
  gw: TestGateway; token: string; direct: string; airlock: string; close(): Promise<void>;
}> {
  const db = await createTestDb('airlock_bench');
  const gw = await startTestGateway({
    policies: {
      'bench.yaml': `
connections:
  - name: bench
    type: postgres
policies:
  - name: bench-read
    subjects: [{ group: bench }]
    connections: [bench]
    allow:
      - sql: [select]
    deny:
      - sql: [drop, truncate]
`,
    },
    connections: [{ name: 'bench', url: db.url }],
  });
  const directUrl = db.url.replace(/\?.*$/, '');
  console.error(`initialising pgbench tables (scale ${scale}) in ${db.name}...`);
  const init = spawn('pgbench', ['-i', '-q', '-s', scale, directUrl], { stdio: 'ignore' });
  await new Promise((r) => init.on('close', r));
  const { token } = await gw.token('bench', ['bench']);
  return {
    gw, token,
    direct: `${directUrl.replace('postgres://', 'postgresql://')}?sslmode=disable`,
    airlock: gw.conninfo('bench', 'bench', 'sslmode=disable'),
    async close() {
      await gw.close();
      await db.drop();
    },
  };
}
