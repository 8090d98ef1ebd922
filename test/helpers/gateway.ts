// Starts a real gateway (in-process agent) on ephemeral ports with a temporary policy folder.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { buildConfig } from '../../src/config/config.ts';
import { startGateway, type Gateway } from '../../src/gateway/gateway.ts';
import { LocalAgent } from '../../src/agent/agent.ts';

export interface TestGateway {
  gw: Gateway;
  dir: string;
  port: number;
  /** Base URL of the API listener. */
  api: string;
  token(subject: string, groups: string[], ttlMs?: number): Promise<{ token: string; id: string }>;
  /** libpq connection string for `connection` as `user`. */
  conninfo(database: string, user?: string, extra?: string): string;
  writePolicy(file: string, yaml: string): void;
  close(): Promise<void>;
}

export async function startTestGateway(opts: {
  policies: Record<string, string>;
  connections: { name: string; url: string }[];
  issuers?: { issuer: string; audience: string | string[]; groups_claim?: string }[];
  /** More airlock.yaml keys (e.g. `approvals`). */
  config?: Record<string, unknown>;
}): Promise<TestGateway> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-gw-'));
  const policiesDir = path.join(dir, 'policies');
  fs.mkdirSync(policiesDir);
  for (const [file, text] of Object.entries(opts.policies)) fs.writeFileSync(path.join(policiesDir, file), text);
  const config = buildConfig({
    data_dir: dir,
    policies: policiesDir,
    listeners: { postgres: '127.0.0.1:0', api: '127.0.0.1:0' },
    identity: { issuers: opts.issuers ?? [] },
    agent: { connections: opts.connections },
    ...opts.config,
  }, dir);
  const gw = await startGateway(config, new LocalAgent(config.connections), { logger: pino({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }) });
  const port = gw.addresses.postgres.port;
  return {
    gw, dir, port,
    api: `http://127.0.0.1:${gw.addresses.api.port}`,
    async token(subject, groups, ttlMs = 3600_000) {
      const { token, record } = await gw.store.createToken({ subject, groups, ttlMs });
      return { token, id: record.id };
    },
    conninfo: (database, user = 'test', extra = '') =>
      `host=127.0.0.1 port=${port} dbname=${database} user=${user} ${extra}`.trim(),
    writePolicy(file, yaml) {
      fs.writeFileSync(path.join(policiesDir, file), yaml);
    },
    async close() {
      await gw.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
