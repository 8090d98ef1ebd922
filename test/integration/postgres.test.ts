// The PostgreSQL data path end to end: real psql, pgbench and the pg driver, through the gateway,
// against the real PostgreSQL server. Refusals are checked by their effect on the target.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql, run } from '../helpers/clients.ts';
import { encode, message } from '../../src/protocols/postgres/codec.ts';
import { openRawSession, rawBytes, types } from '../helpers/raw-pg.ts';

const POLICIES = {
  'connections.yaml': `connections:\n  - name: analytics\n    type: postgres\n    tags: { env: test }\n  - name: unreachable\n    type: postgres\n`,
  'policies.yaml': `
policies:
  - name: ci-read
    subjects: [{ group: ci }]
    connections: [analytics, unreachable]
    allow:
      - sql: [select, show, explain, copy]
    deny:
      - sql: [drop, truncate]
        message: DDL is not allowed from CI
  - name: dba-write
    subjects: [{ group: dba }]
    connections: [analytics]
    allow:
      - sql: [select, show, explain, insert, update, delete, copy, create, drop]
      - functions: ["*"]
    deny:
      - sql: [update, delete]
        without_where: true
        message: UPDATE and DELETE need a WHERE clause
  - name: deployer
    subjects: [{ group: deploy }]
    connections: [analytics]
    allow:
      - sql: [select]
    review:
      - sql: [delete]
        approvers: [group:dba]
  - name: masked-reader
    subjects: [{ group: masked }]
    connections: [analytics]
    allow:
      - sql: [select]
    mask:
      - columns: ["customers.card_number"]
        with: last4
  - name: tuner
    subjects: [{ group: tuner }]
    connections: [analytics]
    allow:
      - sql: [select, set]
`,
};

let db: TestDb;
let gw: TestGateway;
let ci: string;
let dba: string;

before(async () => {
  db = await createTestDb();
  gw = await startTestGateway({ policies: POLICIES, connections: [
    { name: 'analytics', url: db.url },
    { name: 'unreachable', url: 'postgres://reader:agent-secret@127.0.0.1:1/x?sslmode=disable' },
  ] });
  ci = (await gw.token('ci-runner', ['ci'])).token;
  dba = (await gw.token('dba', ['dba'])).token;
});

after(async () => {
  await gw?.close();
  await db?.drop();
});

const customers = async () => Number((await db.query('SELECT count(*)::int AS n FROM customers')).rows[0].n);
const tableExists = async (t: string) => (await db.query('SELECT to_regclass($1) AS r', [t])).rows[0].r !== null;
const pgClient = (token: string) => new pg.Client({ host: '127.0.0.1', port: gw.port, database: 'analytics', user: 'driver', password: token });

test('psql: ci-runner can SELECT', async () => {
  const r = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT name FROM customers ORDER BY id');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['Ada', 'Grace', 'Alan']);
});

test("psql's \\dt and \\d work under a read-only policy (catalog queries are reads)", async () => {
  const dt = await psql(gw.conninfo('analytics', 'ci-runner'), ci, '\\dt');
  assert.equal(dt.code, 0, dt.stderr);
  assert.match(dt.stdout, /public\|customers\|table/);
  const d = await psql(gw.conninfo('analytics', 'ci-runner'), ci, '\\d customers');
  assert.equal(d.code, 0, d.stderr);
  assert.match(d.stdout, /card_number\|text/);
});

test('psql: DROP TABLE is refused with 42501 and the table is still there', async () => {
  const r = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'DROP TABLE customers', ['-v', 'VERBOSITY=verbose']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /42501/);
  assert.match(r.stderr, /DDL is not allowed from CI/);
  assert.match(r.stderr, /ci-read/);
  assert.ok(await tableExists('customers'));
});

test('psql: writes by ci are refused by default deny; the rows stay', async () => {
  const before = await customers();
  for (const sql of ['DELETE FROM customers WHERE id = 1', 'delete/**/from customers', 'WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d',
    'SELECT 1; DELETE FROM customers', 'UPDATE customers SET name = \'x\' WHERE id = 1', "SELECT set_config('role', 'postgres', false)"]) {
    const r = await psql(gw.conninfo('analytics', 'ci-runner'), ci, sql);
    assert.notEqual(r.code, 0, `should be refused: ${sql}`);
    assert.match(r.stderr, /airlock:/, sql);
  }
  assert.equal(await customers(), before);
  assert.equal((await db.query("SELECT name FROM customers WHERE id = 1")).rows[0].name, 'Ada');
});

test('psql: dba can write; UPDATE without WHERE is refused', async () => {
  let r = await psql(gw.conninfo('analytics', 'dba'), dba, "INSERT INTO audit_probe VALUES (41)");
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await db.query('SELECT count(*)::int AS n FROM audit_probe WHERE id = 41')).rows[0].n, 1);
  r = await psql(gw.conninfo('analytics', 'dba'), dba, "UPDATE customers SET name = 'nobody'");
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /UPDATE and DELETE need a WHERE clause/);
  assert.equal((await db.query("SELECT count(*)::int AS n FROM customers WHERE name = 'nobody'")).rows[0].n, 0);
});

test('a refusal inside a transaction aborts it, as PostgreSQL would', async () => {
  const r = await run('psql', ['-X', '-At', gw.conninfo('analytics', 'dba')], {
    env: { PGPASSWORD: dba },
    input: "BEGIN;\nINSERT INTO audit_probe VALUES (77);\nDELETE FROM orders;\nCOMMIT;\n",
  });
  assert.match(r.stderr, /UPDATE and DELETE need a WHERE clause/);
  assert.match(r.stdout + r.stderr, /ROLLBACK/);
  assert.equal((await db.query('SELECT count(*)::int AS n FROM audit_probe WHERE id = 77')).rows[0].n, 0);
  assert.equal((await db.query('SELECT count(*)::int AS n FROM orders')).rows[0].n, 30);
});

test('pg driver: extended protocol with parameters, prepared statements, refusals keep the session usable', async () => {
  const c = pgClient(ci);
  await c.connect();
  try {
    const r1 = await c.query('SELECT name FROM customers WHERE id = $1', [2]);
    assert.equal(r1.rows[0].name, 'Grace');
    const named = { name: 'by-id', text: 'SELECT email FROM customers WHERE id = $1' };
    assert.equal((await c.query({ ...named, values: [1] })).rows[0].email, 'ada@example.com');
    assert.equal((await c.query({ ...named, values: [3] })).rows[0].email, 'alan@example.org');
    await assert.rejects(c.query('DELETE FROM customers WHERE id = $1', [1]), (e: { code?: string; message: string }) => {
      assert.equal(e.code, '42501');
      assert.match(e.message, /^airlock: /);
      return true;
    });
    await assert.rejects(c.query({ name: 'evil', text: 'DROP TABLE orders' }), { code: '42501' });
    // The session still works after refusals.
    assert.equal((await c.query('SELECT count(*)::int AS n FROM orders')).rows[0].n, 30);
  } finally {
    await c.end();
  }
  assert.equal(await customers(), 3);
  assert.ok(await tableExists('orders'));
});

test('COPY both ways: ci copies out, dba copies in, ci cannot copy in', async () => {
  const out = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'COPY (SELECT id, name FROM customers ORDER BY id) TO STDOUT');
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stdout, '1\tAda\n2\tGrace\n3\tAlan\n');
  const inDba = await run('psql', ['-X', '-v', 'ON_ERROR_STOP=1', '-c', 'COPY audit_probe FROM STDIN', gw.conninfo('analytics', 'dba')],
    { env: { PGPASSWORD: dba }, input: '501\n502\n503\n' });
  assert.equal(inDba.code, 0, inDba.stderr);
  assert.equal((await db.query('SELECT count(*)::int AS n FROM audit_probe WHERE id > 500')).rows[0].n, 3);
  const inCi = await run('psql', ['-X', '-v', 'ON_ERROR_STOP=1', '-c', 'COPY audit_probe FROM STDIN', gw.conninfo('analytics', 'ci-runner')],
    { env: { PGPASSWORD: ci }, input: '601\n' });
  assert.notEqual(inCi.code, 0);
  assert.equal((await db.query('SELECT count(*)::int AS n FROM audit_probe WHERE id = 601')).rows[0].n, 0);
});

test('cancel: psql Ctrl-C cancels a running statement on the target', async () => {
  const { spawn } = await import('node:child_process');
  const started = Date.now();
  const child = spawn('psql', ['-X', '-c', 'SELECT pg_sleep(30)', gw.conninfo('analytics', 'dba')], { env: { ...process.env, PGPASSWORD: dba } });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  // Wait until the statement is running on the target, then interrupt psql (it sends a CancelRequest).
  for (let i = 0; i < 100; i++) {
    const r = await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'");
    if (r.rows[0].n > 0) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  child.kill('SIGINT');
  const code = await new Promise((res) => child.on('close', res));
  assert.notEqual(code, 0);
  assert.match(stderr, /canceling statement due to user request/);
  assert.ok(Date.now() - started < 15_000);
});

test('pgbench through the gateway: simple and prepared, no failures', async () => {
  const init = await run('pgbench', ['-i', '-s', '1', '-q', db.url.replace('?sslmode=disable', '')]);
  assert.equal(init.code, 0, init.stderr);
  await gw.gw.store.flush();
  for (const mode of ['simple', 'prepared']) {
    const r = await run('pgbench', ['-n', '-S', '-M', mode, '-c', '4', '-j', '2', '-t', '200', gw.conninfo('analytics', 'ci-runner')], { env: { PGPASSWORD: ci } });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /number of transactions actually processed: 800\/800/);
    assert.match(r.stdout, /number of failed transactions: 0/);
  }
});

test('revoking a token ends its open session at the next statement', async () => {
  const t = await gw.token('short-lived', ['ci']);
  const c = pgClient(t.token);
  await c.connect();
  c.on('error', () => {});
  assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
  assert.equal(await gw.gw.store.revokeToken(t.id), true);
  await assert.rejects(c.query('SELECT 1'), /revoked or has expired/);
  await c.end().catch(() => {});
  const again = pgClient(t.token);
  await assert.rejects(again.connect(), /authentication failed: .*revoked/);
});

test('TLS: psql with sslmode=verify-ca against the generated certificate', async () => {
  const r = await psql(gw.conninfo('analytics', 'ci-runner', `sslmode=verify-ca sslrootcert=${gw.gw.tls.certFile}`), ci,
    'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
  // The target connection is local without TLS; what matters is that the client side negotiated TLS.
  assert.equal(r.code, 0, r.stderr);
  const info = await psql(gw.conninfo('analytics', 'ci-runner', `sslmode=require`), ci, 'SELECT 1');
  assert.equal(info.code, 0, info.stderr);
});

test('bad credentials are refused cleanly and audited', async () => {
  const expired = await gw.gw.store.createToken({ subject: 'old', groups: ['ci'], ttlMs: 1 });
  await new Promise((r) => setTimeout(r, 5));
  for (const [password, pattern] of [
    ['not-a-token', /authentication failed/],
    ['alk_aaaaaaaaaaaa_' + 'A'.repeat(43), /authentication failed/],
    [expired.token, /authentication failed: .*expired/],
  ] as const) {
    const r = await psql(gw.conninfo('analytics', 'ci-runner'), password, 'SELECT 1');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, pattern);
  }
  const unknownDb = await psql(gw.conninfo('nosuchdb', 'ci-runner'), ci, 'SELECT 1');
  assert.match(unknownDb.stderr, /not declared/);
  const failures = await gw.gw.store.listAudit({ type: 'auth.failure', limit: 100 });
  assert.ok(failures.length >= 3);
  assert.ok(failures.every((e) => !JSON.stringify(e).includes(expired.token)));
});

const rawExchange = (bytes: Buffer, waitMs = 1500) => rawBytes(gw.port, bytes, waitMs);

test('garbage, truncated and oversized messages get a clean error; the gateway keeps serving', async () => {
  const garbage = await rawExchange(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  assert.equal(String.fromCharCode(garbage[0]), 'E');
  const huge = Buffer.alloc(8);
  huge.writeInt32BE(1 << 30);
  huge.writeInt32BE(196608, 4);
  const tooBig = await rawExchange(huge);
  assert.equal(String.fromCharCode(tooBig[0]), 'E');
  assert.match(tooBig.toString('latin1'), /exceeds the limit/);
  const truncated = await rawExchange(Buffer.from([0, 0, 0, 40, 0, 3, 0, 0]), 300); // promises 40 bytes, sends 8, then closes
  assert.equal(truncated.length, 0);
  const r = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT 42');
  assert.equal(r.stdout.trim(), '42');
  await gw.gw.store.flush();
  const errors = await gw.gw.store.listAudit({ type: 'protocol.error', limit: 20 });
  assert.ok(errors.some((e) => /exceeds the limit/.test(e.error ?? '')));
});

test('the audit log has every statement with its decision, policy and bundle version', async () => {
  await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT count(*) FROM orders');
  await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'DROP TABLE customers');
  await gw.gw.store.flush();
  const events = await gw.gw.store.listAudit({ type: 'statement', subject: 'ci-runner', limit: 500 });
  const select = events.findLast((e) => e.statement === 'SELECT count(*) FROM orders');
  const drop = events.findLast((e) => e.statement === 'DROP TABLE customers');
  assert.ok(select && drop);
  assert.equal(select.decision, 'allow');
  assert.equal(select.policy, 'ci-read');
  assert.equal(select.rows, 1);
  assert.equal(typeof select.durationMs, 'number');
  assert.equal(drop.decision, 'deny');
  assert.equal(drop.policy, 'ci-read');
  assert.match(drop.reason ?? '', /DDL is not allowed/);
  assert.equal(drop.bundleVersion, gw.gw.policies.current.version);
  const sessions = await gw.gw.store.listAudit({ type: 'session.start', subject: 'ci-runner', limit: 500 });
  assert.ok(sessions.length > 0);
});

test('policy hot reload: a new rule applies to the next statement; a broken file keeps the last good bundle', async () => {
  const oldVersion = gw.gw.policies.current.version;
  gw.writePolicy('extra.yaml', `
policies:
  - name: ci-no-orders
    subjects: [{ group: ci }]
    connections: [analytics]
    deny:
      - sql: [select]
        tables: [orders]
        message: orders are off limits today
`);
  gw.gw.reloadPolicies();
  assert.notEqual(gw.gw.policies.current.version, oldVersion);
  const r = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT count(*) FROM orders');
  assert.match(r.stderr, /orders are off limits today/);
  gw.writePolicy('extra.yaml', 'policies:\n  - name: broken\n    allow: [ { sql: [selec] } ]\n');
  gw.gw.reloadPolicies();
  const still = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT count(*) FROM orders');
  assert.match(still.stderr, /orders are off limits today/);
  gw.writePolicy('extra.yaml', '# nothing\n');
  gw.gw.reloadPolicies();
  const ok = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT count(*) FROM orders');
  assert.equal(ok.stdout.trim(), '30');
});

test('encodings and string syntax that could hide statements from the classifier end the session', async () => {
  const tuner = (await gw.token('tuner', ['tuner'])).token;
  // Refused at startup: a client-only encoding where a multi-byte character can end in a backslash.
  const sjis = await run('psql', ['-X', '-At', '-c', 'SELECT 1', gw.conninfo('analytics', 'tuner')], { env: { PGPASSWORD: tuner, PGCLIENTENCODING: 'SJIS' } });
  assert.notEqual(sjis.code, 0);
  assert.match(sjis.stderr, /client_encoding SJIS is not supported/);
  // Allowed by policy (kind set), but the session is ended once the target reports the change.
  for (const sql of ["SET client_encoding = 'SJIS'", 'SET standard_conforming_strings = off']) {
    const r = await run('psql', ['-X', '-At', gw.conninfo('analytics', 'tuner')], { env: { PGPASSWORD: tuner }, input: `${sql};\nSELECT 'still here';\n` });
    assert.doesNotMatch(r.stdout, /still here/, sql);
    assert.match(r.stderr, /not supported through Airlock|must stay on/, sql);
  }
  // The guard is not in the way of harmless settings.
  const ok = await psql(gw.conninfo('analytics', 'tuner'), tuner, "SET application_name = 'x'; SELECT current_setting('application_name')");
  assert.equal(ok.stdout.trim().split('\n').at(-1), 'x');
});

test('pipelined extended protocol: a statement right after a session-state change in the same batch is refused', async () => {
  const tuner = (await gw.token('tuner2', ['tuner'])).token;
  const session = await rawSession(tuner, 'tuner');
  try {
    // One write: SET search_path (kind set, not baseline) then a SELECT, with no Sync in between.
    const batch = Buffer.concat([
      encode.parse('', 'SET search_path = public'), encode.bind('', ''), encode.execute(''),
      encode.parse('', 'SELECT 2'), encode.bind('', ''), encode.execute(''), encode.sync(),
    ]);
    const reply = (await session.exchange(batch)).msgs;
    assert.equal(types(reply), '12CEZ');
    assert.match(reply[3].text, /42501/);
    assert.match(reply[3].text, /must be followed by Sync/);
    // With a Sync in between, both run.
    const ok = await session.exchange(Buffer.concat([
      encode.parse('', 'SET search_path = public'), encode.bind('', ''), encode.execute(''), encode.sync(),
      encode.parse('', 'SELECT 2'), encode.bind('', ''), encode.execute(''), encode.sync(),
    ]), 2);
    assert.equal(types(ok.msgs), '12CZ12DCZ');
  } finally {
    session.close();
  }
});

test('a fast-path FunctionCall is refused with its own ReadyForQuery; the session stays usable', async () => {
  const session = await rawSession(dba, 'dba');
  try {
    // FunctionCall for pg_terminate_backend's OID (2096) with one int4 argument: never judged, always refused.
    const arg = Buffer.alloc(4);
    arg.writeInt32BE(1);
    const oid = Buffer.alloc(4);
    oid.writeInt32BE(2096);
    const fcall = message('F', oid, [0, 0], [0, 1], [0, 0, 0, 4], arg, [0, 0]);
    const reply = (await session.exchange(fcall)).msgs;
    assert.equal(types(reply), 'EZ');
    assert.match(reply[0].text, /42501.*fast-path function calls are not allowed/);
    const after = await session.exchange(encode.query('SELECT 1'));
    assert.equal(types(after.msgs), 'TDCZ');
  } finally {
    session.close();
  }
});

const rawSession = (token: string, user: string) => openRawSession({ port: gw.port, user, database: 'analytics', token });

test('the API reports health and status (no secrets)', async () => {
  const base = `http://127.0.0.1:${gw.gw.addresses.api.port}`;
  assert.deepEqual(await (await fetch(`${base}/healthz`)).json(), { ok: true });
  const status = await (await fetch(`${base}/api/status`)).json() as { policyVersion: string; connections: { name: string; served: boolean }[] };
  assert.equal(status.policyVersion, gw.gw.policies.current.version);
  assert.deepEqual(status.connections.map((c) => [c.name, c.served]), [['analytics', true], ['unreachable', true]]);
  assert.ok(!JSON.stringify(status).includes(db.url), 'the target URL never leaves the agent');
});

test('a target the agent cannot reach: the client gets 08006 at once, no secret, the gateway keeps serving', async () => {
  const r = await psql(gw.conninfo('unreachable', 'ci-runner'), ci, 'SELECT 1');
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /airlock: cannot open connection "unreachable"; the gateway log has the details/);
  assert.doesNotMatch(r.stderr, /agent-secret|reader|127\.0\.0\.1:1\b/);
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port, database: 'unreachable', user: 'x', password: ci });
  await assert.rejects(c.connect(), { code: '08006' });
  const ok = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT 2');
  assert.equal(ok.stdout.trim(), '2');
  await gw.gw.store.flush();
  const [refused] = await gw.gw.store.listAudit({ type: 'session.end', connection: 'unreachable', limit: 1 });
  assert.match(refused.reason ?? '', /target unavailable: cannot reach target 127\.0\.0\.1:1/);
});

test('mask rules apply: the named column comes back masked, session statements work', async () => {
  const masked = (await gw.token('masked-bot', ['masked'])).token;
  const r = await psql(gw.conninfo('analytics', 'masked-bot'), masked, 'SELECT card_number FROM customers WHERE id = 1');
  assert.equal(r.code, 0, r.stderr);
  assert.notEqual(r.stdout.trim(), '4111 1111 1111 1111');
  assert.match(r.stdout.trim(), /1111$/);
  const tx = await psql(gw.conninfo('analytics', 'masked-bot'), masked, "BEGIN; SET application_name = 'm'; COMMIT");
  assert.equal(tx.code, 0, tx.stderr);
});
