// Gateway, agent and PostgreSQL as three processes, as deployed: `airlock gateway` holds no
// target credentials, `airlock agent` dials out to it with an agent token and the target URL.
// Real psql through the gateway; agents killed, restarted, doubled and revoked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { psql, run } from '../helpers/clients.ts';

const CLI = path.resolve('bin/airlock.js');
let db: TestDb;
let dir: string;
let gateway: ChildProcess;
let out = '';
let ports: { postgres: number; api: number; agents: number; fingerprint: string };
let ciToken: string;
const agents: ChildProcess[] = [];

const cli = (args: string[], env: Record<string, string> = {}) => run(process.execPath, [CLI, ...args], { env, timeoutMs: 30_000 });
const conninfo = () => `host=127.0.0.1 port=${ports.postgres} dbname=analytics user=ci-runner`;

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function agentToken(name: string): Promise<{ token: string; id: string }> {
  const r = await cli(['agent-token', 'create', '--name', name, '--json', '--config', path.join(dir, 'gateway.yaml')]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { token: string; id: string };
  return { token: j.token, id: j.id };
}

function startAgent(name: string, token: string): ChildProcess {
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(file, `gateway: 127.0.0.1:${ports.agents}
token: \${AGENT_TOKEN}
name: ${name}
tls:
  fingerprint: "${ports.fingerprint}"
connections:
  - name: analytics
    url: file:analytics.url
backoff: { initial: 1s, max: 2s }
log: { level: warn }
`);
  const child = spawn(process.execPath, [CLI, 'agent', '--config', file], { env: { ...process.env, AGENT_TOKEN: token }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d) => (out += `[${name}] ${d}`));
  child.stderr!.on('data', (d) => (out += `[${name}] ${d}`));
  agents.push(child);
  return child;
}

async function connected(): Promise<{ name: string; healthy: boolean; sessions: number }[]> {
  const res = await fetch(`http://127.0.0.1:${ports.api}/api/agents`, { headers: { authorization: `Bearer ${ciToken}` } });
  return ((await res.json()) as { agents: { name: string; healthy: boolean; sessions: number }[] }).agents;
}

const stop = (child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM') =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill(signal);
  });

before(async () => {
  db = await createTestDb();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-agents-'));
  fs.mkdirSync(path.join(dir, 'policies'));
  fs.writeFileSync(path.join(dir, 'policies', 'p.yaml'), `
connections:
  - name: analytics
    type: postgres
policies:
  - name: ci
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
      - functions: [pg_sleep]
`);
  fs.writeFileSync(path.join(dir, 'analytics.url'), db.url, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'gateway.yaml'), `data_dir: .
policies: ./policies
listeners:
  postgres: 127.0.0.1:0
  api: 127.0.0.1:0
  agents: 127.0.0.1:0
agents:
  heartbeat: 1s
  max_missed: 2
log: { level: warn }
`);
  const t = await cli(['token', 'create', '--subject', 'ci-runner', '--groups', 'ci', '--ttl', '1h', '--config', path.join(dir, 'gateway.yaml')]);
  assert.equal(t.code, 0, t.stderr);
  ciToken = t.stdout.trim();
  gateway = spawn(process.execPath, [CLI, 'gateway', '--config', path.join(dir, 'gateway.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  gateway.stdout!.on('data', (d) => (out += d));
  gateway.stderr!.on('data', (d) => (out += d));
  await until('the gateway is up', () => /agents\s+127\.0\.0\.1:\d+/.test(out));
  ports = {
    postgres: Number(/postgres\s+127\.0\.0\.1:(\d+)/.exec(out)![1]),
    api: Number(/api\s+http:\/\/127\.0\.0\.1:(\d+)/.exec(out)![1]),
    agents: Number(/agents\s+127\.0\.0\.1:(\d+)/.exec(out)![1]),
    fingerprint: /sha256 ([0-9A-F:]{95})/.exec(out)![1],
  };
});

after(async () => {
  for (const a of agents) await stop(a, 'SIGKILL');
  if (gateway) await stop(gateway);
  await db?.drop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('the gateway holds no credentials: without an agent, sessions fail with a clear error', async () => {
  assert.doesNotMatch(fs.readFileSync(path.join(dir, 'gateway.yaml'), 'utf8'), /postgres:\/\//);
  const r = await psql(conninfo(), ciToken, 'SELECT 1');
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /cannot open connection "analytics"/);
});

test('an agent dials in; psql works through it; killing it mid-session ends the session within seconds; a restart serves again', async () => {
  const { token } = await agentToken('a1');
  let a1 = startAgent('a1', token);
  await until('a1 is connected', async () => (await connected()).some((a) => a.name === 'a1' && a.healthy));
  const ok = await psql(conninfo(), ciToken, 'SELECT 40 + 2');
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout.trim(), '42');
  const list = await cli(['agents', '--api', `http://127.0.0.1:${ports.api}`], { AIRLOCK_TOKEN: ciToken });
  assert.match(list.stdout, /a1\s+analytics\s+yes/);

  const long = psql(conninfo(), ciToken, 'SELECT pg_sleep(20)');
  await until('the session is open', async () => (await connected()).some((a) => a.sessions > 0));
  const killedAt = Date.now();
  await stop(a1, 'SIGKILL');
  const r = await long;
  const tookMs = Date.now() - killedAt;
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /connection to the target was lost/);
  assert.ok(tookMs < 8000, `the client learned within seconds (${tookMs} ms)`);
  assert.equal((await fetch(`http://127.0.0.1:${ports.api}/healthz`)).status, 200, 'the gateway stays up');

  a1 = startAgent('a1', token);
  await until('a1 is back', async () => (await connected()).some((a) => a.name === 'a1' && a.healthy));
  const again = await psql(conninfo(), ciToken, 'SELECT 7');
  assert.equal(again.stdout.trim(), '7', again.stderr);
});

test('two agents for one connection: stopping one, sessions are served by the other; revoking a token disconnects its agent at once', async () => {
  const second = await agentToken('a2');
  startAgent('a2', second.token);
  await until('both agents are connected', async () => (await connected()).filter((a) => a.healthy).length === 2);
  const first = agents.find((a) => a.exitCode === null && a.signalCode === null)!;
  await stop(first, 'SIGKILL');
  await until('one agent left', async () => (await connected()).length === 1);
  for (let i = 0; i < 3; i++) {
    const r = await psql(conninfo(), ciToken, `SELECT ${i}`);
    assert.equal(r.stdout.trim(), String(i), r.stderr);
  }
  const revoke = await cli(['token', 'revoke', second.id, '--config', path.join(dir, 'gateway.yaml')]);
  assert.equal(revoke.code, 0, revoke.stderr);
  await until('the revoked agent is gone', async () => (await connected()).length === 0, 5000);
  const r = await psql(conninfo(), ciToken, 'SELECT 1');
  assert.notEqual(r.code, 0);
});

test('an agent token opens no client session, and `token create` will not mint one', async () => {
  const { token } = await agentToken('a3');
  const r = await psql(conninfo(), token, 'SELECT 1');
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /an agent token cannot be used to open sessions/);
  const mint = await cli(['token', 'create', '--subject', 'x', '--groups', 'airlock:agent', '--config', path.join(dir, 'gateway.yaml')]);
  assert.notEqual(mint.code, 0);
  assert.match(mint.stderr, /reserved for agent tokens/);
});
