// The gateway <-> agent tunnel (src/agent/tunnel*.ts) against the real PostgreSQL server: agents in
// this process and in child processes, the handshake, revocation, heartbeats, and per-stream flow control.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { LocalAgent } from '../../src/agent/agent.ts';
import { AgentClient, AgentHub, backoffDelay, type AgentInfo } from '../../src/agent/tunnel.ts';
import { loadOrCreateTls, type TlsMaterial } from '../../src/gateway/tls.ts';
import { FrameReader, decodeBackendKey, decodeDataRow, decodeErrorFields, encode, type Frame } from '../../src/protocols/postgres/codec.ts';
import { TargetError, type TargetConnection } from '../../src/protocols/postgres/target.ts';
import type { AgentLink } from '../../src/agent/agent.ts';
import { buildConfig } from '../../src/config/config.ts';
import { startGateway } from '../../src/gateway/gateway.ts';
import pg from 'pg';
import pino from 'pino';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const HEARTBEAT_MS = 200;
const TOKENS: Record<string, { id: string; name: string }> = {
  'tok-alpha': { id: 'tk_alpha', name: 'alpha' },
  'tok-beta': { id: 'tk_beta', name: 'beta' },
  'tok-child': { id: 'tk_child', name: 'child' },
};

let db: TestDb;
let tmp: string;
let gwTls: TlsMaterial;
let hub: AgentHub;
let addr: { host: string; port: number };
let verifyCalls = 0;
const connectedEvents: AgentInfo[] = [];
const cleanups: (() => unknown)[] = [];

before(async () => {
  db = await createTestDb();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-tunnel-'));
  gwTls = await loadOrCreateTls(undefined, tmp);
  hub = new AgentHub({
    tls: { cert: gwTls.cert, key: gwTls.key },
    verifyAgentToken: async (token) => {
      verifyCalls++;
      return TOKENS[token];
    },
    heartbeatMs: HEARTBEAT_MS,
    maxMissedHeartbeats: 3,
  });
  hub.on('agent-connected', (a) => connectedEvents.push(a));
  addr = await hub.listen({ host: '127.0.0.1', port: 0 });
});

after(async () => {
  for (const c of cleanups.reverse()) await c();
  hub?.close();
  await db?.drop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// ---------- helpers ----------

function inProcessAgent(token: string, name: string, opts: { fingerprint?: string; connections?: { name: string; url: string }[] } = {}) {
  const local = new LocalAgent(opts.connections ?? [{ name: 'analytics', url: db.url }]);
  const client = new AgentClient({
    gateway: addr, token, name, agent: local,
    tls: { fingerprint: opts.fingerprint ?? gwTls.fingerprint },
    backoff: { initialMs: 50, maxMs: 500 },
  });
  const stop = async () => {
    await client.close();
    local.close();
  };
  cleanups.push(stop);
  return { client, local, stop };
}

/** Runs an AgentClient + LocalAgent in a child process (`node --import tsx`); resolves once it is connected. */
async function childAgent(name: string): Promise<{ child: ChildProcess; id: string; maxRss: () => number; lines: string[] }> {
  const mod = (p: string) => JSON.stringify(pathToFileURL(path.join(ROOT, p)).href);
  const code = `
    const { AgentClient } = await import(${mod('src/agent/tunnel.ts')});
    const { LocalAgent } = await import(${mod('src/agent/agent.ts')});
    const env = process.env;
    const agent = new LocalAgent([{ name: 'analytics', url: env.T_DB_URL }]);
    const client = new AgentClient({ gateway: { host: '127.0.0.1', port: Number(env.T_PORT) }, token: env.T_TOKEN, name: env.T_NAME,
      agent, tls: { fingerprint: env.T_FP }, backoff: { initialMs: 100, maxMs: 1000 } });
    client.on('connected', (e) => console.log('connected ' + e.id));
    client.on('disconnected', (e) => console.log('disconnected ' + e.reason));
    client.start();
    setInterval(() => console.log('rss ' + process.memoryUsage().rss), 200);
    process.on('SIGTERM', async () => { await client.close(); agent.close(); process.exit(0); });
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: ROOT,
    env: { ...process.env, T_DB_URL: db.url, T_PORT: String(addr.port), T_TOKEN: 'tok-child', T_NAME: name, T_FP: gwTls.fingerprint },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let maxRss = 0;
  const lines: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const id = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child agent did not connect: ${stderr}`)), 20_000);
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('rss ')) maxRss = Math.max(maxRss, Number(line.slice(4)));
        else lines.push(line);
        if (line.startsWith('connected ')) {
          clearTimeout(timer);
          resolve(line.slice(10));
        }
      }
    });
    child.once('exit', (c, s) => reject(new Error(`child agent exited (${c ?? s}): ${stderr}`)));
  });
  return { child, id, maxRss: () => maxRss, lines };
}

/** A minimal PostgreSQL client over a TargetConnection (simple queries), to drive the Duplex the hub returns. */
function pgOver(conn: TargetConnection) {
  const reader = new FrameReader({ typed: true });
  reader.push(conn.leftover);
  let wake: (() => void) | undefined;
  let closedAt: number | undefined;
  let error: Error | undefined;
  const socket = conn.socket;
  socket.on('data', (d: Buffer) => {
    reader.push(d);
    wake?.();
  });
  socket.on('error', (e) => {
    error = e;
    wake?.();
  });
  socket.on('close', () => {
    closedAt ??= Date.now();
    wake?.();
  });
  async function untilReady(onFrame: (f: Frame) => void): Promise<void> {
    for (;;) {
      for (let f = reader.next(); f; f = reader.next()) {
        onFrame(f);
        if (f.type === 'Z') return;
      }
      if (closedAt !== undefined) throw error ?? new Error('target stream closed');
      await new Promise<void>((r) => (wake = r));
      wake = undefined;
    }
  }
  let key: { processId: number; secretKey: number } | undefined;
  return {
    socket,
    get closedAt() { return closedAt; },
    get error() { return error; },
    get key() { return key; },
    startup: () => untilReady((f) => {
      if (f.type === 'K') key = decodeBackendKey(f.body);
    }),
    /** Rows as text; `count` keeps only the number of rows and bytes (large results). */
    async query(sql: string, opts: { count?: boolean } = {}): Promise<{ rows: (string | null)[][]; count: number; bytes: number; error?: Record<string, string> }> {
      const rows: (string | null)[][] = [];
      let count = 0, bytes = 0;
      let err: Record<string, string> | undefined;
      socket.write(encode.query(sql));
      await untilReady((f) => {
        if (f.type === 'D') {
          count++;
          bytes += f.body.length;
          if (!opts.count) rows.push(decodeDataRow(f.body).map((v) => (v === null ? null : v.toString('utf8'))));
        } else if (f.type === 'E') err = decodeErrorFields(f.body);
      });
      return { rows, count, bytes, error: err };
    },
  };
}

async function openPg(connection = 'analytics') {
  const conn = await hub.open(connection, { application_name: 'tunnel-test' });
  const c = pgOver(conn);
  await c.startup();
  return c;
}

/** Target backends opened through the tunnel tests (application_name tunnel-test). */
async function backends(): Promise<number> {
  return (await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tunnel-test'")).rows[0].n as number;
}

async function waitForAsync(what: string, cond: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<number> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return Date.now() - start;
}

// ---------- tests ----------

test('backoff doubles from the initial delay to the cap, with +-20% jitter', () => {
  const o = { initialMs: 500, maxMs: 30_000, jitter: 0.2 };
  assert.equal(backoffDelay(0, o, () => 0.5), 500);
  assert.equal(backoffDelay(3, o, () => 0.5), 4000);
  assert.equal(backoffDelay(20, o, () => 0.5), 30_000);
  assert.equal(backoffDelay(0, o, () => 0), 400);
  assert.equal(backoffDelay(0, o, () => 1), 600);
});

test('an in-process agent: open, query, cancel, catalog lookups, target errors with their fields, registry', async () => {
  // A fake target that refuses every login with its own error fields (before AuthenticationOk).
  const refusing = net.createServer((sock) => sock.once('data', () => sock.end(encode.errorResponse({ S: 'FATAL', C: '28P01', M: 'password authentication failed for user "x"' }))));
  await new Promise<void>((r) => refusing.listen(0, '127.0.0.1', r));
  cleanups.push(() => refusing.close());
  const broken = new URL(db.url);
  broken.port = String((refusing.address() as net.AddressInfo).port);
  const a = inProcessAgent('tok-alpha', 'alpha-host', { connections: [{ name: 'analytics', url: db.url }, { name: 'broken', url: broken.toString() }] });
  a.client.start();
  await once(a.client, 'connected');
  assert.deepEqual(hub.serves().sort(), ['analytics', 'broken']);
  const [info] = hub.agents();
  assert.equal(info.tokenId, 'tk_alpha');
  assert.equal(info.tokenName, 'alpha');
  assert.equal(info.name, 'alpha-host');
  assert.equal(info.healthy, true);
  assert.match(info.remoteAddress, /^127\.0\.0\.1:\d+$/);

  const c = await openPg();
  const r = await c.query('SELECT 1 + 1 AS two, current_setting(\'application_name\') AS app');
  assert.deepEqual(r.rows, [['2', 'tunnel-test']]);
  assert.equal(hub.agents()[0].sessions, 1);

  // Cancel through the hub (a new stream, maybe a different agent: same target).
  const sleeping = c.query('SELECT pg_sleep(30)');
  await new Promise((res) => setTimeout(res, 200));
  const t0 = Date.now();
  await hub.cancel('analytics', c.key!.processId, c.key!.secretKey);
  const s = await sleeping;
  assert.equal(s.error?.C, '57014');
  assert.ok(Date.now() - t0 < 5000);

  const oid = Number((await db.query("SELECT 'public.customers'::regclass::oid::int8 AS o")).rows[0].o);
  const names = await hub.tableNames('analytics', [oid, 4_000_000_000]);
  assert.deepEqual([...names.keys()], [oid]);
  assert.equal(names.get(oid)!.name, 'public.customers');
  assert.deepEqual([...names.get(oid)!.columns.values()], ['id', 'name', 'email', 'card_number']);

  // The target's refusal comes back as a TargetError carrying the target's own fields.
  await assert.rejects(hub.open('broken', {}), (e: Error) => {
    assert.ok(e instanceof TargetError, e.message);
    assert.equal((e as TargetError).fields?.C, '28P01');
    assert.match(e.message, /credentials were refused/);
    return true;
  });
  await assert.rejects(hub.open('nowhere', {}), /no agent is connected for connection "nowhere"/);

  // Terminate: the client's end() half-closes, the target closes, the stream closes.
  c.socket.end(encode.terminate());
  await waitFor('stream close after Terminate', () => c.closedAt !== undefined, 5000);
  await waitFor('session count back to 0', () => hub.agents()[0].sessions === 0, 2000);
  // A destroyed stream (the client went away) closes the target connection on the agent too.
  const gone = await openPg();
  assert.equal(await backends(), 1);
  gone.socket.destroy();
  await waitForAsync('target backends gone', async () => (await backends()) === 0, 3000);

  // Revocation kicks the agent at once; its open streams end.
  const c2 = await openPg();
  assert.equal(hub.disconnect('tk_alpha'), 1);
  assert.deepEqual(hub.agents(), []);
  await waitFor('stream closed on revocation', () => c2.closedAt !== undefined, 2000);
  await a.stop();
});

test('mTLS: a hub that asks for a client certificate; the agent verifies the gateway with a CA file', async () => {
  const clientTls = await loadOrCreateTls(undefined, path.join(tmp, 'client'));
  const strangerTls = await loadOrCreateTls(undefined, path.join(tmp, 'stranger'));
  const calls: string[] = [];
  const mtlsHub = new AgentHub({
    tls: { cert: gwTls.cert, key: gwTls.key, ca: clientTls.cert, requestCert: true, rejectUnauthorized: true },
    verifyAgentToken: async (t) => (calls.push(t), TOKENS[t]),
    heartbeatMs: HEARTBEAT_MS,
  });
  cleanups.push(() => mtlsHub.close());
  const at = await mtlsHub.listen({ host: '127.0.0.1', port: 0 });
  const local = new LocalAgent([{ name: 'analytics', url: db.url }]);
  cleanups.push(() => local.close());
  const make = (cert: TlsMaterial) => new AgentClient({ gateway: at, token: 'tok-beta', name: 'beta-host', agent: local,
    tls: { ca: gwTls.cert, cert: cert.cert, key: cert.key }, backoff: { initialMs: 50, maxMs: 200 } });

  const stranger = make(strangerTls);
  const refusedOnce = once(stranger, 'disconnected');
  stranger.start();
  await refusedOnce;
  await stranger.close();
  assert.deepEqual(calls, [], 'no token check without a valid client certificate');

  const good = make(clientTls);
  good.start();
  await once(good, 'connected');
  const conn = await mtlsHub.open('analytics', { application_name: 'tunnel-test' });
  const c = pgOver(conn);
  await c.startup();
  assert.deepEqual((await c.query('SELECT 7')).rows, [['7']]);
  c.socket.destroy();
  await good.close();
  mtlsHub.close();
});

test('a wrong token is refused and leaves nothing in the registry', async () => {
  const before = connectedEvents.length;
  const refusedAt: string[] = [];
  hub.once('agent-refused', (e) => refusedAt.push(e.reason));
  const a = inProcessAgent('tok-wrong', 'mallory');
  const refused = once(a.client, 'refused');
  a.client.start();
  const [{ reason }] = await refused as [{ reason: string }];
  assert.match(reason, /invalid agent token/);
  await a.stop();
  assert.deepEqual(hub.agents(), []);
  assert.equal(connectedEvents.length, before);
  assert.deepEqual(refusedAt, ['invalid agent token']);
});

test('a wrong pinned fingerprint: the agent hangs up before sending its token', async () => {
  const calls = verifyCalls;
  const a = inProcessAgent('tok-alpha', 'alpha-host', { fingerprint: 'AB:'.repeat(31) + 'AB' });
  const refused = once(a.client, 'refused');
  a.client.start();
  const [{ reason }] = await refused as [{ reason: string }];
  assert.match(reason, /does not match the pinned fingerprint/);
  await a.stop();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(verifyCalls, calls, 'the hub never saw a token');
  assert.deepEqual(hub.agents(), []);
});

test('an agent in a child process: query, SIGKILL mid-session, restart, two agents, heartbeats', async () => {
  const first = await childAgent('child-1');
  await waitFor('child registered', () => hub.agents().some((a) => a.id === first.id));
  const c = await openPg();
  assert.deepEqual((await c.query('SELECT count(*) FROM customers')).rows, [['3']]);

  // SIGKILL mid-session (a long query running): the open stream ends promptly.
  const pending = c.query('SELECT pg_sleep(20)').catch((e: Error) => e);
  await new Promise((r) => setTimeout(r, 200));
  const killedAt = Date.now();
  first.child.kill('SIGKILL');
  await waitFor('stream close after SIGKILL', () => c.closedAt !== undefined, 5000);
  const lostAfter = c.closedAt! - killedAt;
  assert.ok(await pending instanceof Error);
  await waitFor('agent removed', () => hub.agents().length === 0, 5000);
  await assert.rejects(hub.open('analytics', {}), /no agent is connected for connection "analytics"/);

  // Restart: same hub, new opens work.
  const second = await childAgent('child-2');
  const c2 = await openPg();
  assert.deepEqual((await c2.query('SELECT 42')).rows, [['42']]);

  // Two agents for one connection: sessions are spread; stopping one keeps opens working.
  const third = await childAgent('child-3');
  await waitFor('two agents', () => hub.agents().length === 2);
  const spread = [await openPg(), await openPg(), await openPg()];
  assert.deepEqual(hub.agents().map((a) => a.sessions), [2, 2], 'least-sessions: new sessions go to the less busy agent');
  third.child.kill('SIGTERM');
  await once(third.child, 'exit');
  await waitFor('one agent left', () => hub.agents().length === 1, 5000);
  for (let i = 0; i < 5; i++) {
    const x = await openPg();
    assert.deepEqual((await x.query('SELECT 1')).rows, [['1']]);
    x.socket.end(encode.terminate());
  }
  // The sessions the stopped agent carried ended; the others still work.
  const alive = spread.filter((s) => s.closedAt === undefined);
  assert.equal(alive.length, 1);
  assert.deepEqual((await alive[0].query('SELECT 2')).rows, [['2']]);

  // A frozen agent (SIGSTOP: the TCP connection stays up) misses heartbeats and is dropped.
  const stoppedAt = Date.now();
  second.child.kill('SIGSTOP');
  await waitFor('frozen agent dropped', () => hub.agents().length === 0, 5000);
  const droppedAfter = Date.now() - stoppedAt;
  await waitFor('its stream ended', () => c2.closedAt !== undefined && alive[0].closedAt !== undefined, 2000);
  // Thawed, it notices the connection is gone and reconnects.
  second.child.kill('SIGCONT');
  await waitFor('frozen agent reconnected', () => hub.agents().length === 1, 10_000);
  const c3 = await openPg();
  assert.deepEqual((await c3.query('SELECT 3')).rows, [['3']]);
  console.log(`# stream lost ${lostAfter} ms after SIGKILL; frozen agent dropped after ${droppedAfter} ms (heartbeat ${HEARTBEAT_MS} ms x 3)`);
  second.child.kill('SIGTERM');
  await once(second.child, 'exit');
});

test('flow control: a paused large result does not slow another stream; gateway memory stays bounded', async () => {
  const agent = await childAgent('child-flow');
  await waitFor('flow agent', () => hub.agents().length === 1);
  const fast = await openPg();
  const slow = await openPg();

  const roundTrips = async (n: number) => {
    const t = Date.now();
    for (let i = 0; i < n; i++) assert.deepEqual((await fast.query('SELECT 1')).rows, [['1']]);
    return Date.now() - t;
  };
  await roundTrips(20); // warm-up
  const baseline = await roundTrips(20);

  global.gc?.();
  const rss0 = process.memoryUsage().rss;
  let rssMax = rss0;
  let peakDetail = '';
  const sampler = setInterval(() => {
    const m = process.memoryUsage();
    if (m.rss > rssMax) {
      rssMax = m.rss;
      peakDetail = `heap ${(m.heapUsed / 2 ** 20).toFixed(0)} MiB, external+buffers ${((m.external) / 2 ** 20).toFixed(0)} MiB`;
    }
  }, 20);
  try {
    // ~200 MB of rows; nobody reads them for a while.
    const ROWS = 200_000;
    slow.socket.pause();
    const big = slow.query(`SELECT repeat('x', 1000) FROM generate_series(1, ${ROWS})`, { count: true });
    slow.socket.pause();
    await new Promise((r) => setTimeout(r, 1500)); // let the windows fill
    const buffered = slow.socket.readableLength;
    const paused = await roundTrips(20);

    // Then a slow reader (~2 MB/s) for a while.
    let budget = 0, slowBytes = 0;
    const onData = (d: Buffer) => {
      slowBytes += d.length;
      if ((budget -= d.length) <= 0) slow.socket.pause();
    };
    slow.socket.on('data', onData);
    const throttle = setInterval(() => {
      budget = 40_000;
      slow.socket.resume();
    }, 20);
    const slowStart = Date.now();
    const reading = await roundTrips(20);
    await new Promise((r) => setTimeout(r, 2000));
    clearInterval(throttle);
    slow.socket.off('data', onData);
    const slowRate = slowBytes / 1e6 / ((Date.now() - slowStart) / 1000);
    const rssSlow = rssMax;
    const agentRssSlow = agent.maxRss();

    // Then read the rest at full speed.
    const t = Date.now();
    slow.socket.resume();
    const result = await big;
    const drainMs = Date.now() - t;
    assert.equal(result.count, ROWS);
    assert.equal(result.error, undefined);
    const mb = result.bytes / 1e6;

    const growthSlow = (rssSlow - rss0) / 2 ** 20;
    const growth = (rssMax - rss0) / 2 ** 20;
    console.log(`# 20 x SELECT 1 on one stream: ${baseline} ms idle; ${paused} ms while another stream holds a paused ~200 MB result ` +
      `(${(buffered / 1024).toFixed(0)} KiB buffered on it); ${reading} ms while that stream is read at ${slowRate.toFixed(1)} MB/s`);
    console.log(`# then drained ${mb.toFixed(0)} MB of row data in ${drainMs} ms (${(mb / (drainMs / 1000)).toFixed(0)} MB/s)`);
    console.log(`# gateway RSS growth: ${growthSlow.toFixed(1)} MiB while paused/slow; ${growth.toFixed(1)} MiB peak during the full-speed drain ` +
      `(${peakDetail}: garbage the GC had not collected yet); agent child RSS ${(agentRssSlow / 2 ** 20).toFixed(0)} MiB paused/slow, ` +
      `${(agent.maxRss() / 2 ** 20).toFixed(0)} MiB peak`);
    assert.ok(paused < Math.max(2000, 10 * baseline), `round trips took ${paused} ms with the other stream paused (baseline ${baseline} ms)`);
    assert.ok(reading < Math.max(2000, 10 * baseline), `round trips took ${reading} ms with the other stream read slowly (baseline ${baseline} ms)`);
    assert.ok(buffered <= 2 * 1024 * 1024, `the paused stream buffered ${buffered} bytes`);
    assert.ok(growthSlow < 64, `gateway RSS grew by ${growthSlow.toFixed(1)} MiB while the large result was read slowly`);
    assert.ok(growth < 160, `gateway RSS grew by ${growth.toFixed(1)} MiB during the full-speed drain`);
  } finally {
    clearInterval(sampler);
  }
  agent.child.kill('SIGTERM');
  await once(agent.child, 'exit');
});

test('end to end: the gateway (PostgreSQL adapter) over the hub; masking lookups; an agent killed mid-query gives the client 08006 promptly', async () => {
  const agent = await childAgent('child-e2e');
  await waitFor('e2e agent', () => hub.agents().length === 1);
  const dir = fs.mkdtempSync(path.join(tmp, 'gw-'));
  const policiesDir = path.join(dir, 'policies');
  fs.mkdirSync(policiesDir);
  fs.writeFileSync(path.join(policiesDir, 'connections.yaml'), 'connections:\n  - name: analytics\n    type: postgres\n');
  fs.writeFileSync(path.join(policiesDir, 'policies.yaml'), `
policies:
  - name: reader
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
      - functions: ["*"]
    mask:
      - columns: ["customers.card_number"]
        with: last4
`);
  const config = buildConfig({ data_dir: dir, policies: policiesDir, listeners: { postgres: '127.0.0.1:0', api: '127.0.0.1:0' }, identity: { issuers: [] } }, dir);
  // The hub is shared by the other tests: the gateway must not close it.
  const link: AgentLink = {
    serves: () => hub.serves(), open: (c, p) => hub.open(c, p), cancel: (c, p, k) => hub.cancel(c, p, k), tableNames: (c, o) => hub.tableNames(c, o), close() {},
  };
  const gw = await startGateway(config, link, { logger: pino({ level: process.env.AIRLOCK_TEST_LOG ?? 'silent' }) });
  cleanups.push(() => gw.close());
  const { token } = await gw.store.createToken({ subject: 'ci-runner', groups: ['ci'], ttlMs: 3600_000 });
  const client = new pg.Client({ host: '127.0.0.1', port: gw.addresses.postgres.port, database: 'analytics', user: 'ci', password: token });
  await client.connect();
  const cards = (await client.query('SELECT card_number FROM customers ORDER BY id')).rows.map((r) => r.card_number as string);
  assert.equal(cards.length, 3);
  assert.ok(cards[0].endsWith('1111') && !cards[0].startsWith('4111'), `masked through the agent's catalog: ${cards[0]}`);
  assert.deepEqual((await client.query("SELECT count(*)::int AS n FROM generate_series(1, 100000)")).rows, [{ n: 100000 }]);

  client.on('error', () => {});
  const sleeping = client.query('SELECT pg_sleep(20)').then(() => undefined, (e: Error & { code?: string }) => e);
  await new Promise((r) => setTimeout(r, 300));
  const t = Date.now();
  agent.child.kill('SIGKILL');
  const err = await sleeping;
  const ms = Date.now() - t;
  assert.equal(err?.code, '08006');
  assert.match(err!.message, /connection to the target was lost/);
  assert.ok(ms < 3000, `the client learned it after ${ms} ms`);
  console.log(`# end to end: the client got 08006 ${ms} ms after the agent was killed`);
  await client.end().catch(() => {});
});
