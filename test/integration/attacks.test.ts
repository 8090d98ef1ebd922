// Attacks on the PostgreSQL gateway by a caller whose policy is read-only (select, show, explain).
// Every attack checks its effect on the real target afterwards, and that the gateway still serves
// a fresh client. The comments marked "Was a BYPASS/HANG/DESYNC" describe weaknesses these tests
// found in an earlier version and the fix that stopped them; the tests keep them stopped.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { randomInt } from 'node:crypto';
import pg from 'pg';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { FrameReader, encode, message } from '../../src/protocols/postgres/codec.ts';
import { openRawSession, rawBytes, types, errors, rows } from '../helpers/raw-pg.ts';

const POLICIES = {
  'connections.yaml': `connections:\n  - name: analytics\n    type: postgres\n`,
  'policies.yaml': `
policies:
  - name: read-only
    subjects: [{ group: ro }]
    connections: [analytics]
    allow:
      - sql: [select, show, explain]
  - name: tuner
    subjects: [{ group: tuner }]
    connections: [analytics]
    allow:
      - sql: [select, set]
`,
};

let db: TestDb;
let gw: TestGateway;
let ro: string;

before(async () => {
  db = await createTestDb('airlock_atk');
  gw = await startTestGateway({ policies: POLICIES, connections: [{ name: 'analytics', url: db.url }] });
  ro = (await gw.token('mallory', ['ro'])).token;
});

after(async () => {
  await gw?.close();
  await db?.drop();
});

// ---------------------------------------------------------------------------------------------
// helpers

const one = async <T = unknown>(sql: string, params?: unknown[]): Promise<T> => Object.values((await db.query(sql, params)).rows[0])[0] as T;
const customers = () => one<number>('SELECT count(*)::int FROM customers');
const seqValue = () => one<string>('SELECT last_value::text FROM ticket_seq');
const largeObjects = () => one<number>('SELECT count(*)::int FROM pg_largeobject_metadata');
const tableExists = async (t: string) => (await one<string | null>('SELECT to_regclass($1)::text', [t])) !== null;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function client(token = ro, extra: Partial<pg.ClientConfig> = {}): pg.Client {
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port, database: 'analytics', user: 'mallory', password: token, ...extra });
  c.on('error', () => {});
  return c;
}

/** A fresh client can still connect and read: the gateway survived. */
async function gatewayServes(): Promise<void> {
  const c = client();
  await c.connect();
  try {
    const r = await c.query('SELECT current_user AS u, count(*)::int AS n FROM customers');
    assert.equal(r.rows[0].n, 3);
  } finally {
    await c.end();
  }
}

/** Runs `sql` as the read-only caller and expects an airlock refusal (42501). */
async function refused(sql: string): Promise<void> {
  const c = client();
  await c.connect();
  try {
    await assert.rejects(c.query(sql), (e: { code?: string; message: string }) => {
      assert.equal(e.code, '42501', `${sql}: ${e.message}`);
      assert.match(e.message, /^airlock: /);
      return true;
    }, sql);
  } finally {
    await c.end().catch(() => {});
  }
}

/** A protocol-level session as the read-only caller. */
const rawSession = (token = ro, params: Record<string, string> = {}) =>
  openRawSession({ port: gw.port, user: 'mallory', database: 'analytics', token, params });
const rawExchange = (bytes: Buffer | Buffer[], waitMs = 1000) => rawBytes(gw.port, bytes, waitMs);

/**
 * Worst delay seen while `attack` runs and for `windowMs` after: the longest stall of the event loop
 * (which the in-process gateway shares with every session, sampled by a 10 ms timer) or the longest
 * connect + SELECT 1 of fresh clients opened back to back.
 */
async function worstStallDuring(windowMs: number, attack: () => unknown): Promise<number> {
  let last = performance.now();
  let worst = 0;
  const timer = setInterval(() => { const now = performance.now(); worst = Math.max(worst, now - last); last = now; }, 10);
  try {
    await attack();
    const end = Date.now() + windowMs;
    while (Date.now() < end) worst = Math.max(worst, await latencyOfFreshSelect());
  } finally {
    clearInterval(timer);
  }
  return worst;
}

/** Milliseconds a fresh client needs for a trivial statement (measures whether the gateway's event loop is stalled). */
async function latencyOfFreshSelect(): Promise<number> {
  const started = performance.now();
  const c = client();
  await c.connect();
  await c.query('SELECT 1');
  await c.end();
  return performance.now() - started;
}

// =============================================================================================
// 1. Classifier: function calls written as field selection
//
// PostgreSQL reads `(x).f` as the call `f(x)` when `x` has no field `f`, for ANY one-argument
// function (not only for composite arguments). The grammar produces A_Indirection, not FuncCall,
// Was a BYPASS: classify.ts did not judge these as calls; it now judges each field name as one.

test('stopped: (regclass).nextval (a call written as field selection) cannot advance a sequence', async () => {
  const before = await seqValue();
  const c = client();
  await c.connect();
  try {
    await c.query("SELECT ('ticket_seq'::regclass).nextval").catch(() => {});
    await c.query("SELECT x FROM (SELECT (array['ticket_seq'::regclass])[1].nextval AS x) s").catch(() => {});
  } finally {
    await c.end();
  }
  assert.equal(await seqValue(), before, 'the sequence must not advance');
  await gatewayServes();
});

test('stopped: (text).lo_import and (text).pg_read_file cannot reach server files', async () => {
  const before = await largeObjects();
  const c = client();
  await c.connect();
  let leaked: string | undefined;
  try {
    await c.query("SELECT ('/etc/hostname'::text).lo_import").catch(() => {});
    leaked = (await c.query("SELECT ('/etc/hostname'::text).pg_read_file AS f").catch(() => undefined))?.rows[0]?.f;
  } finally {
    await c.end();
  }
  const after = await largeObjects();
  if (after > before) await db.query('SELECT lo_unlink(oid) FROM pg_largeobject_metadata');
  assert.equal(after, before, 'no large object may be created');
  assert.equal(leaked, undefined, 'server files must not be readable');
  await gatewayServes();
});

test('stopped: (pid).pg_terminate_backend cannot kill another session', async () => {
  const victim = client(ro, { application_name: 'atk-victim' });
  await victim.connect();
  let victimError: Error | undefined;
  victim.on('error', (e) => (victimError = e));
  const c = client();
  await c.connect();
  try {
    await c.query("SELECT (pid).pg_terminate_backend FROM pg_stat_activity WHERE application_name = 'atk-victim'").catch(() => {});
    await sleep(100);
    const alive = await victim.query('SELECT 1 AS one').then(() => true, () => false);
    assert.equal(victimError, undefined);
    assert.ok(alive, 'the victim session must survive');
  } finally {
    await c.end();
    await victim.end().catch(() => {});
  }
  await gatewayServes();
});

// =============================================================================================
// 2. Protocol state machine

const i32 = (n: number) => { const b = Buffer.alloc(4); b.writeInt32BE(n); return b; };
const i16 = (n: number) => { const b = Buffer.alloc(2); b.writeInt16BE(n); return b; };

/** FunctionCall: nextval(regclass) (OID 1574) with a text-format argument. */
const functionCallNextval = () => message('F', i32(1574), i16(0), i16(1), i32(10), Buffer.from('ticket_seq'), i16(0));

// PostgreSQL answers every FunctionCall with ReadyForQuery. A refused FunctionCall used to be
// replaced by a poison Execute (no ReadyForQuery, following Queries ignored until Sync: a hang for
// libpq PQfn callers); since 9f87795 it is replaced by a poison Query. Kept as a regression test.
test('stopped: a refused FunctionCall is followed by ReadyForQuery and the session keeps working', async () => {
  const before = await seqValue();
  const s = await rawSession();
  try {
    const r = await s.exchange(functionCallNextval(), 1, 1500);
    assert.equal(await seqValue(), before, 'fast-path nextval must not run');
    assert.match(errors(r.msgs)[0]?.text ?? '', /fast-path function calls are not allowed/);
    assert.equal(r.timedOut, false, `no ReadyForQuery after the refused FunctionCall: ${types(r.msgs)}`);
    const q = await s.query('SELECT 7', 1500);
    assert.deepEqual(rows(q.msgs), [['7']], `the next Query got no answer: ${types(q.msgs)}`);
  } finally {
    s.close();
  }
  await gatewayServes();
});

test('stopped: FunctionCall inside an extended batch is refused; Sync recovers the session', async () => {
  const before = await seqValue();
  const s = await rawSession();
  try {
    const r = await s.exchange(Buffer.concat([functionCallNextval(), encode.sync()]), 2);
    assert.match(errors(r.msgs)[0]?.text ?? '', /42501/);
    assert.deepEqual(rows((await s.query('SELECT 8')).msgs), [['8']]);
  } finally {
    s.close();
  }
  assert.equal(await seqValue(), before);
});

// Formerly a DESYNC: the gateway recorded `statements[name] = text` when it forwarded a Parse,
// before the target accepted it. Parse of a name that already exists fails on the target
// ("prepared statement already exists") and the target keeps the OLD statement; the gateway must
// keep judging (and auditing) the old text too, as it now applies Parse only on ParseComplete.
test('stopped: re-Parse of an existing statement name: what runs is what was judged and audited', async () => {
  const s = await rawSession();
  try {
    await s.exchange(Buffer.concat([encode.parse('s1', "SELECT 'first' AS v"), encode.sync()]));
    const re = await s.exchange(Buffer.concat([encode.parse('s1', "SELECT 'second' AS v"), encode.sync()]));
    assert.ok(errors(re.msgs).some((m) => /already exists/.test(m.text)));
    const r = await s.exchange(Buffer.concat([encode.bind('p', 's1'), encode.execute('p'), encode.sync()]));
    await gw.gw.store.flush();
    const audited = (await gw.gw.store.listAudit({ type: 'statement', subject: 'mallory', limit: 50 }))
      .filter((e) => /'(first|second)'/.test(e.statement ?? '')).map((e) => e.statement);
    // What ran must be what was judged and audited: the target kept the first statement.
    assert.deepEqual(rows(r.msgs), [['first']]);
    assert.equal(audited.at(-1), "SELECT 'first' AS v");
  } finally {
    s.close();
  }
});

test('stopped: a DELETE prepared while allowed does not run after the policy became read-only', async () => {
  const writerPolicy = `
policies:
  - name: shift-writer
    subjects: [{ group: shift }]
    connections: [analytics]
    allow:
      - sql: [select, delete]
`;
  const readerPolicy = writerPolicy.replace('[select, delete]', '[select]');
  gw.writePolicy('shift.yaml', writerPolicy);
  gw.gw.reloadPolicies();
  const shift = (await gw.token('shift-worker', ['shift'])).token;
  await db.query('CREATE TABLE IF NOT EXISTS shift_probe (id int)');
  await db.query('INSERT INTO shift_probe VALUES (1), (2), (3)');
  const s = await rawSession(shift);
  try {
    // While deletes are allowed: prepare a DELETE (allowed), do not run it.
    const p = await s.exchange(Buffer.concat([encode.parse('w', 'DELETE FROM shift_probe WHERE id > 0'), encode.sync()]));
    assert.equal(errors(p.msgs).length, 0);
    // The shift ends: the policy is now read-only for this identity.
    gw.writePolicy('shift.yaml', readerPolicy);
    gw.gw.reloadPolicies();
    const direct = await s.exchange(Buffer.concat([encode.bind('', 'w'), encode.execute(''), encode.sync()]));
    assert.match(errors(direct.msgs)[0]?.text ?? '', /42501/, 'the prepared DELETE is refused under the new policy (as documented)');
    // ...but re-Parse the same name with an allowed SELECT: the target keeps the DELETE.
    await s.exchange(Buffer.concat([encode.parse('w', 'SELECT 1'), encode.sync()]));
    await s.exchange(Buffer.concat([encode.bind('', 'w'), encode.execute(''), encode.sync()]));
  } finally {
    s.close();
    gw.writePolicy('shift.yaml', '# removed\n');
    gw.gw.reloadPolicies();
  }
  const left = await one<number>('SELECT count(*)::int FROM shift_probe');
  await db.query('DROP TABLE shift_probe');
  assert.equal(left, 3, 'the DELETE must not run once the policy forbids it');
  await gatewayServes();
});

// Was a HANG: the gateway counts one ReadyForQuery per Query and per Sync. After an extended-protocol
// error the target silently ignores a Query until Sync (no ReadyForQuery for it), so the count
// stays one ahead for the rest of the session. The "wait for ReadyForQuery after a session-state
// change" barrier is released only when nothing is in flight, which now never happens: the next
// statement after any allowed SET waits forever (the whole session is wedged, Sync included).
test('stopped: a Query ignored after an extended-protocol error does not wedge the session at the next SET', async () => {
  const tuner = (await gw.token('tuner', ['tuner'])).token;
  const s = await rawSession(tuner);
  try {
    // Parse error on the target (unknown table) -> target skips until Sync, including the Query.
    const r1 = await s.exchange(Buffer.concat([encode.parse('', 'SELECT * FROM no_such_table'), encode.query('SELECT 1'), encode.sync()]));
    assert.ok(errors(r1.msgs).some((m) => /does not exist/.test(m.text)));
    const set = await s.query("SET work_mem = '8MB'");
    assert.equal(errors(set.msgs).length, 0, JSON.stringify(set.msgs));
    const next = await s.query('SELECT 42', 2000);
    assert.deepEqual(rows(next.msgs), [['42']], `no answer to the statement after SET (timed out: ${next.timedOut})`);
  } finally {
    s.close();
  }
  await gatewayServes();
});

// =============================================================================================
// 3. Denial of service against the whole gateway (one event loop serves every session)

// Was a HANG: FrameReader.push() does Buffer.concat(pending, chunk) for every socket chunk, so a message
// of N bytes costs O(N^2 / chunk) copying on the event loop. Untyped startup packets accept the
// same 64 MiB limit as queries (PostgreSQL caps them at 10,000 bytes), so one unauthenticated TCP
// connection costs the gateway's only thread ~1 s of CPU for 24 MiB (~20 s for 60 MiB); a handful
// of such connections stalls every session.
test('stopped: an unauthenticated 24 MiB startup packet is refused without burning the gateway\'s CPU', async () => {
  const size = 24 * 1024 * 1024;
  const sock = net.connect(gw.port, '127.0.0.1');
  sock.on('error', () => {});
  await new Promise((r) => sock.once('connect', r));
  const closed = new Promise((r) => sock.once('close', r));
  const header = Buffer.alloc(8);
  header.writeInt32BE(size + 8);
  header.writeInt32BE(196608, 4);
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const cpu = process.cpuUsage();
  sock.write(header);
  for (let sent = 0; sent < size - chunk.length; sent += chunk.length) sock.write(chunk);
  await Promise.race([closed, new Promise<void>((r) => sock.once('drain', () => setTimeout(r, 300)))]);
  const used = process.cpuUsage(cpu);
  sock.destroy();
  const ms = (used.user + used.system) / 1000;
  assert.ok(ms < 300, `the gateway (and this test process, which shares its thread) used ${Math.round(ms)} ms of CPU on one unauthenticated startup packet`);
  await gatewayServes();
});

test('stopped: a startup packet larger than PostgreSQL allows (10,000 bytes) is refused at once', async () => {
  const header = Buffer.alloc(8);
  header.writeInt32BE(1024 * 1024);
  header.writeInt32BE(196608, 4);
  const started = Date.now();
  const got = await rawExchange(header, 1500);
  assert.ok(got.length > 0 && String.fromCharCode(got[0]) === 'E', 'the gateway waits for 1 MiB of startup packet instead of refusing it');
  assert.ok(Date.now() - started < 1000);
});

// Was a HANG: the same quadratic buffering on the target side. A read-only caller asks for one large
// value (allowed: a plain SELECT); every 64 KiB chunk the target sends re-copies the whole
// partial DataRow, on the event loop shared by all sessions.
test('stopped: one allowed SELECT returning a large value does not stall the gateway for everyone', async () => {
  const c = client();
  await c.connect();
  let big: Promise<unknown> = Promise.resolve();
  try {
    const ms = await worstStallDuring(3000, () => {
      big = c.query("SELECT repeat('x', 28 * 1024 * 1024) AS v").then((r) => r.rows[0].v.length, (e: Error) => e.message);
    });
    assert.ok(ms < 1000, `the gateway stalled for ${Math.round(ms)} ms while another session read a 28 MiB value`);
  } finally {
    await big;
    await c.end().catch(() => {});
  }
});

// Was a HANG: classification is synchronous on the event loop with no bound on the text other than the
// 64 MiB message limit; a read-only caller sends one Query of ~200k trivial statements and every
// other session waits while libpg-query parses it and the walker classifies it.
test('stopped: one huge multi-statement Query does not stall the gateway for everyone', async () => {
  const s = await rawSession();
  try {
    const ms = await worstStallDuring(3000, () => s.sock.write(encode.query('SELECT 1;'.repeat(150_000))));
    assert.ok(ms < 1000, `the gateway stalled for ${Math.round(ms)} ms while another session sent a 1.3 MB Query`);
  } finally {
    s.sock.destroy();
  }
});

// =============================================================================================
// 4. Connection setup

// The gateway answers SSLRequest with 'S' and wraps the socket in TLS, but bytes the client sent
// in plaintext right after the SSLRequest are still in the frame reader and are processed as if
// they had arrived over TLS (the server-side half of CVE-2021-23214). PostgreSQL refuses such
// bytes ("received unencrypted data after SSL request"). Here a plaintext startup, password and
// Query run in a session the gateway records as TLS; a man-in-the-middle can prepend plaintext
// to a victim's TLS connection, and requireTlsForRemote is defeated.
test('stopped: plaintext bytes after SSLRequest are refused, as PostgreSQL does', async () => {
  const sock = net.connect(gw.port, '127.0.0.1');
  sock.on('error', () => {});
  await new Promise((r) => sock.once('connect', r));
  const answer = new Promise<Buffer>((r) => sock.once('data', r));
  sock.write(Buffer.concat([encode.sslRequest(), encode.startup({ user: 'mallory', database: 'analytics' }),
    encode.password(ro), encode.query("SELECT 'ran-in-plaintext' AS v")]));
  const first = await answer;
  // PostgreSQL answers "received unencrypted data after SSL request" (FATAL 08P01), not 'S'.
  assert.equal(first.toString('latin1', 0, 1), 'E');
  assert.match(first.toString('latin1'), /received unencrypted data after SSL request/);
  const secure = tls.connect({ socket: sock, rejectUnauthorized: false });
  const got: Buffer[] = [];
  secure.on('data', (d) => got.push(d));
  secure.on('error', () => {});
  await sleep(800);
  secure.destroy();
  const reader = new FrameReader({ typed: true });
  reader.push(Buffer.concat(got));
  const seen: string[] = [];
  try {
    for (let f = reader.next(); f; f = reader.next()) seen.push(f.type === 'D' ? `D:${f.body.toString('latin1').replace(/[^ -~]/g, '')}` : f.type);
  } catch { /* partial */ }
  assert.ok(!seen.some((t) => t.includes('ran-in-plaintext')), `the plaintext Query ran: ${seen.join(' ')}`);
  await gatewayServes();
});

// The startup check normalises encoding names by removing "-", "_" and spaces only; PostgreSQL
// ignores every non-alphanumeric character, so "S.JIS" passes the gateway and the target runs in
// SJIS. The ParameterStatus guard then ends the session before the pipelined statement is judged
// (stopped today, by the second layer only).
test('stopped (second layer): client_encoding "S.JIS" at startup with a pipelined SJIS string smuggle', async () => {
  await db.query('CREATE TABLE IF NOT EXISTS sjis_probe (id int); INSERT INTO sjis_probe VALUES (1)');
  const smuggle = Buffer.concat([Buffer.from("SELECT E'"), Buffer.from([0x81]), Buffer.from("\\'; DELETE FROM sjis_probe; --'")]);
  const query = message('Q', Buffer.concat([smuggle, Buffer.from([0])]));
  const got = await rawExchange([Buffer.concat([encode.startup({ user: 'mallory', database: 'analytics', client_encoding: 'S.JIS' }),
    encode.password(ro), query])], 1500);
  const left = await one<number>('SELECT count(*)::int FROM sjis_probe');
  await db.query('DROP TABLE sjis_probe');
  assert.equal(left, 1, 'the smuggled DELETE must not run');
  assert.match(got.toString('latin1'), /client_encoding SJIS is not supported|client_encoding S\.JIS is not supported/);
  await gatewayServes();
});

// Every caller of a connection shares the agent's target role, and PostgreSQL shows a role the
// text of the current/last statement of all its sessions. Reading pg_stat_activity (and the like)
// therefore needs an explicit `functions: [pg_stat_activity]` permission; a read-only caller is refused.
test('stopped: a read-only caller cannot read another identity\'s statement text from pg_stat_activity', async () => {
  const alice = client((await gw.token('alice', ['ro'])).token, { application_name: 'alice-app' });
  await alice.connect();
  try {
    await alice.query("SELECT 'alice-secret-4242' AS s");
    const c = client();
    await c.connect();
    try {
      await assert.rejects(c.query("SELECT query FROM pg_stat_activity WHERE query LIKE '%alice-secret-' || '4242%' AND pid <> pg_backend_pid()"),
        (e: { code?: string; message: string }) => {
          assert.equal(e.code, '42501');
          assert.match(e.message, /pg_stat_activity/);
          return true;
        });
      await assert.rejects(c.query('SELECT (s).query FROM pg_stat_get_activity(NULL) s'), { code: '42501' });
    } finally {
      await c.end();
    }
  } finally {
    await alice.end();
  }
});

// =============================================================================================
// 5. Regression: attacks that are stopped today (effects checked on the target)

const REFUSED_SQL = [
  // writes and DDL, plain and hidden
  'DELETE FROM customers WHERE id = 1',
  'delete/**/from customers',
  'WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING *) SELECT * FROM d',
  'SELECT 1; DELETE FROM customers WHERE id = 1',
  'SELECT * INTO atk_into FROM customers',
  'CREATE TEMP TABLE atk_tmp AS SELECT 1',
  'CREATE TABLE atk_t (id int)',
  'DECLARE c CURSOR FOR WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d',
  'SELECT * FROM customers FOR UPDATE',
  'SELECT * FROM (SELECT * FROM customers FOR SHARE) s',
  'LOCK customers',
  'TRUNCATE orders',
  'VACUUM customers', 'ANALYZE customers', 'CHECKPOINT',
  "ALTER SYSTEM SET work_mem = '1MB'",
  'DO $$BEGIN DELETE FROM audit_probe; END$$',
  "PREPARE TRANSACTION 'atk'",
  // COPY to/from the server and from the client
  "COPY (SELECT 1) TO PROGRAM 'touch /tmp/airlock_atk_program'",
  "COPY customers TO '/tmp/airlock_atk_file'",
  'COPY audit_probe FROM STDIN',
  // SQL-level prepared statements
  'PREPARE atk_p AS DELETE FROM customers',
  'PREPARE atk_q AS SELECT 1',
  'EXECUTE atk_q',
  // EXPLAIN that executes
  'EXPLAIN ANALYZE DELETE FROM customers WHERE id = 1',
  'EXPLAIN (ANALYSE) DELETE FROM customers WHERE id = 1',
  "EXPLAIN (ANALYZE 'on') DELETE FROM customers WHERE id = 1",
  'EXPLAIN (ANALYZE 1, FORMAT JSON) DELETE FROM customers WHERE id = 1',
  'EXPLAIN (ANALYZE false, ANALYZE) DELETE FROM customers WHERE id = 1',
  // side-effect functions, however they are spelled
  "SELECT nextval('ticket_seq')", `SELECT "nextval"('ticket_seq')`, "SELECT pg_catalog.nextval('ticket_seq')",
  `SELECT U&"\\006Eextval"('ticket_seq')`, "SELECT * FROM nextval('ticket_seq')", "SELECT (SELECT nextval('ticket_seq'))",
  "VALUES (nextval('ticket_seq'))", "SELECT 1 FROM customers ORDER BY nextval('ticket_seq')",
  "SELECT * FROM customers TABLESAMPLE BERNOULLI (nextval('ticket_seq'))",
  "SELECT 1 LIMIT (SELECT nextval('ticket_seq'))",
  "SELECT setval('ticket_seq', 100)", 'SELECT txid_current()',
  "SELECT lo_import('/etc/hostname')", "SELECT pg_read_file('/etc/hostname')", 'SELECT pg_sleep(0.1)',
  'SELECT pg_terminate_backend(pg_backend_pid())', 'SELECT pg_reload_conf()',
  "SELECT query_to_xml('DELETE FROM customers RETURNING 1', true, true, '')",
  "SELECT ts_stat('SELECT to_tsvector(name) FROM customers')",
  'SELECT public.lower(name) FROM customers', 'SELECT name OPERATOR(public.+) 1 FROM customers',
  // notifications
  'LISTEN atk', 'NOTIFY atk', "SELECT pg_notify('atk', 'x')",
  // session state and identity
  'SET ROLE pg_read_server_files', 'RESET ROLE', 'SET SESSION AUTHORIZATION DEFAULT', 'RESET SESSION AUTHORIZATION',
  'SET search_path = pg_temp, public', 'SET SCHEMA \'pg_temp\'',
  "SELECT set_config('search_path', 'evil', false)", "SELECT pg_catalog.set_config('role', 'pg_monitor', false)",
  'SET standard_conforming_strings = off', "SET client_encoding = 'SJIS'", "SET NAMES 'BIG5'", "SET client_encoding = 'S.JIS'",
  'SET LOCAL standard_conforming_strings = off', 'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE',
  'DISCARD ALL', 'DISCARD TEMP', 'DISCARD PLANS', 'SET work_mem = \'1GB\'', "SET my.custom = 'x'",
  // string syntax: the classifier sees the second statement exactly as the server does
  "SELECT 'a\\'; DELETE FROM customers WHERE id = 1; --'",
  "SELECT E'a\\\\'; DELETE FROM customers WHERE id = 1; --'",
  "SELECT $$'$$; DELETE FROM customers WHERE id = 1; --",
  "SELECT $a$ $b$ $a$; DELETE FROM customers WHERE id = 1",
  "SELECT U&'\\0027'; DELETE FROM customers WHERE id = 1; --'",
  'SELECT 1 /* a */; DELETE FROM customers WHERE id = 1',
  // parser limits: fail closed
  'SELECT ' + '('.repeat(20000) + '1' + ')'.repeat(20000),
  'SELECT 1' + '+1'.repeat(300000),
  'SELEC 1',
];

test('stopped: writes, DDL, COPY, side effects and session-state changes are refused with 42501; nothing changed', async () => {
  const seq = await seqValue();
  const los = await largeObjects();
  for (const sql of REFUSED_SQL) await refused(sql);
  assert.equal(await customers(), 3);
  assert.equal(await one<string>('SELECT name FROM customers WHERE id = 1'), 'Ada');
  assert.equal(await one<number>('SELECT count(*)::int FROM orders'), 30);
  assert.equal(await one<number>('SELECT count(*)::int FROM audit_probe'), 0);
  assert.equal(await seqValue(), seq);
  assert.equal(await largeObjects(), los);
  for (const t of ['atk_into', 'atk_t']) assert.equal(await tableExists(t), false, t);
  assert.equal(await one<number>("SELECT count(*)::int FROM pg_prepared_xacts WHERE gid = 'atk'"), 0);
  assert.equal(await one<string>("SELECT setting FROM pg_settings WHERE name = 'work_mem'"), await one<string>("SELECT boot_val FROM pg_settings WHERE name = 'work_mem'"));
  assert.equal(await one<boolean>("SELECT count(*) = 0 FROM pg_stat_file('/tmp/airlock_atk_program', true) f WHERE f.size IS NOT NULL"), true);
  assert.equal(await one<boolean>("SELECT count(*) = 0 FROM pg_stat_file('/tmp/airlock_atk_file', true) f WHERE f.size IS NOT NULL"), true);
  await gatewayServes();
});

test('stopped: refused session changes leave the session as it was (role, user, search_path, encoding)', async () => {
  const c = client();
  await c.connect();
  try {
    const before = (await c.query("SELECT current_user AS u, session_user AS s, current_setting('search_path') AS p, current_setting('standard_conforming_strings') AS scs")).rows[0];
    for (const sql of ['SET ROLE pg_monitor', "SET SESSION AUTHORIZATION 'pg_monitor'", 'SET search_path = pg_temp',
      "SELECT set_config('role', 'pg_monitor', false)", 'SET standard_conforming_strings = off', 'DISCARD ALL']) {
      await c.query(sql).then(() => assert.fail(`${sql} ran`), (e: { code?: string }) => assert.equal(e.code, '42501', sql));
    }
    // Baseline statements that are allowed must not change identity or parsing either.
    for (const sql of ['RESET ALL', 'SET standard_conforming_strings TO DEFAULT', 'RESET client_encoding', 'SET NAMES DEFAULT',
      'BEGIN READ WRITE', 'COMMIT', 'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE', "SET application_name = 'x'", 'DEALLOCATE ALL']) {
      await c.query(sql);
    }
    const after = (await c.query("SELECT current_user AS u, session_user AS s, current_setting('search_path') AS p, current_setting('standard_conforming_strings') AS scs")).rows[0];
    assert.deepEqual(after, before);
    assert.equal((await c.query('SHOW client_encoding')).rows[0].client_encoding, 'UTF8');
  } finally {
    await c.end();
  }
});

test('stopped: comments and strings that only look like statement boundaries run as the server reads them', async () => {
  const c = client();
  await c.connect();
  try {
    // Nested comments: everything after the SELECT is a comment for the classifier and the server.
    await c.query('SELECT 1 /* /* */ ; DELETE FROM customers WHERE id = 1; -- */');
    await c.query("SELECT E'\\'; DELETE FROM customers WHERE id = 1; --'");
    await c.query("SELECT $x$; DELETE FROM customers WHERE id = 1; $x$");
    await c.query(`SELECT U&'d\\0061t\\+000061' AS v, 'a''; DELETE FROM customers' AS w`);
  } finally {
    await c.end();
  }
  assert.equal(await customers(), 3);
});

test('stopped: NUL bytes inside Query and Parse text', async () => {
  const s = await rawSession();
  try {
    const q = await s.exchange(message('Q', Buffer.from('SELECT 1\0DELETE FROM customers WHERE id = 1\0')));
    assert.ok(errors(q.msgs).length > 0, types(q.msgs));
    const p = await s.exchange(Buffer.concat([
      message('P', Buffer.from('n1\0SELECT 1\0DELETE FROM customers WHERE id = 1\0'), i16(0)),
      encode.bind('', 'n1'), encode.execute(''), encode.sync()]));
    assert.ok(errors(p.msgs).length > 0, types(p.msgs));
  } finally {
    s.close();
  }
  assert.equal(await customers(), 3);
  await gatewayServes();
});

test('stopped: extended-protocol sequences around a refused Parse never run the write', async () => {
  const s = await rawSession();
  try {
    // Unnamed statement reuse after a refused Parse: the refused Parse never reached the target, which
    // still has the old SELECT; the gateway judges a later Bind/Execute of it as that SELECT.
    let r = await s.exchange(Buffer.concat([encode.parse('', 'SELECT 1'), encode.sync()]));
    r = await s.exchange(Buffer.concat([encode.parse('', 'DELETE FROM customers WHERE id = 1'), encode.bind('', ''), encode.execute(''), encode.sync()]));
    assert.match(errors(r.msgs)[0]?.text ?? '', /42501/);
    r = await s.exchange(Buffer.concat([encode.bind('', ''), encode.execute(''), encode.sync()]));
    assert.deepEqual(errors(r.msgs), []);
    assert.deepEqual(rows(r.msgs), [['1']]);
    // Execute without Bind, Bind of a statement that was refused under another name.
    r = await s.exchange(Buffer.concat([encode.execute('nobody'), encode.sync()]));
    assert.match(errors(r.msgs)[0]?.text ?? '', /was not bound from a statement Airlock allowed/);
    r = await s.exchange(Buffer.concat([encode.parse('a', 'SELECT 2'), encode.parse('b', 'DELETE FROM customers WHERE id = 1'),
      encode.bind('pb', 'b'), encode.execute('pb'), encode.sync()]));
    assert.ok(errors(r.msgs).length > 0);
    r = await s.exchange(Buffer.concat([encode.bind('pb', 'b'), encode.execute('pb'), encode.sync()]));
    assert.ok(errors(r.msgs).length > 0, types(r.msgs));
    // Pipelined writes right after a refused statement in the same batch, and after the Sync.
    r = await s.exchange(Buffer.concat([
      encode.parse('', 'DELETE FROM customers WHERE id = 2'), encode.bind('', ''), encode.execute(''),
      encode.parse('', 'SELECT 3'), encode.bind('', ''), encode.execute(''),
      encode.parse('', 'UPDATE customers SET name = \'x\''), encode.bind('', ''), encode.execute(''), encode.sync(),
      encode.query('DELETE FROM customers WHERE id = 3')]), 2);
    assert.equal(errors(r.msgs).length, 2, types(r.msgs));
    // Close a statement, then Bind/Execute it: refused by the gateway, unknown to the target.
    r = await s.exchange(Buffer.concat([encode.parse('c', 'SELECT 4'), encode.close('S', 'c'), encode.bind('pc', 'c'), encode.execute('pc'), encode.sync()]));
    assert.ok(errors(r.msgs).length > 0);
    // Describe interleavings do not execute anything.
    r = await s.exchange(Buffer.concat([encode.parse('d', 'SELECT 5'), encode.describe('S', 'd'), encode.bind('pd', 'd'),
      encode.describe('P', 'pd'), encode.close('P', 'pd'), encode.execute('pd'), encode.sync()]));
    assert.match(errors(r.msgs)[0]?.text ?? '', /not bound/);
    // Execute with maxRows, PortalSuspended, then continue the same portal (inside a transaction).
    r = await s.exchange(Buffer.concat([encode.query('BEGIN')]));
    r = await s.exchange(Buffer.concat([encode.parse('m', 'SELECT id FROM customers ORDER BY id'), encode.bind('pm', 'm'),
      encode.execute('pm', 1), encode.execute('pm', 1), encode.execute('pm', 0), encode.sync()]));
    assert.deepEqual(rows(r.msgs), [['1'], ['2'], ['3']]);
    assert.equal(r.msgs.filter((m) => m.type === 's').length, 2);
    await s.query('COMMIT');
    // Parse without Sync, then Flush: the ParseComplete arrives; the session continues.
    s.sock.write(Buffer.concat([encode.parse('f', 'SELECT 6'), encode.flush()]));
    const flushed = await s.read(1, 500);
    assert.ok(flushed.msgs.some((m) => m.type === '1'));
    r = await s.exchange(Buffer.concat([encode.bind('', 'f'), encode.execute(''), encode.sync()]));
    assert.deepEqual(rows(r.msgs), [['6']]);
    // CopyData / CopyDone / CopyFail outside COPY are ignored by the target.
    s.sock.write(Buffer.concat([encode.copyData(Buffer.from('4\tEve\te\tc\n')), encode.copyDone(), encode.copyFail('x')]));
    assert.deepEqual(rows((await s.query('SELECT 7')).msgs), [['7']]);
  } finally {
    s.close();
  }
  assert.equal(await customers(), 3);
  assert.equal(await one<number>("SELECT count(*)::int FROM customers WHERE name = 'x'"), 0);
  await gatewayServes();
});

test('stopped: SQL cursors and DEALLOCATE cannot put a write behind a name the gateway allowed', async () => {
  const s = await rawSession();
  try {
    await s.query('BEGIN');
    // A cursor is a portal on the target; the gateway does not know it, so Execute is refused...
    let r = await s.query('DECLARE cur CURSOR FOR SELECT id FROM customers');
    r = await s.exchange(Buffer.concat([encode.execute('cur'), encode.sync()]));
    assert.match(errors(r.msgs)[0]?.text ?? '', /not bound/);
    await s.query('ROLLBACK');
    // ...and PostgreSQL refuses a data-modifying cursor (the classifier refuses it first anyway).
    r = await s.query('BEGIN; DECLARE cur2 CURSOR FOR WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d');
    assert.match(errors(r.msgs)[0]?.text ?? '', /42501/);
    await s.query('ROLLBACK');
    r = await s.exchange(Buffer.concat([encode.parse('dd', 'SELECT 8'), encode.sync()]));
    r = await s.query('DEALLOCATE ALL');
    r = await s.exchange(Buffer.concat([encode.bind('', 'dd'), encode.execute(''), encode.sync()]));
    assert.ok(errors(r.msgs).some((m) => /does not exist/.test(m.text)));
  } finally {
    s.close();
  }
  assert.equal(await customers(), 3);
});

test('stopped: messages after Terminate are never run', async () => {
  const s = await rawSession();
  s.sock.write(Buffer.concat([encode.terminate(), encode.query('DELETE FROM customers WHERE id = 1')]));
  await sleep(300);
  assert.equal(await customers(), 3);
  await gatewayServes();
});

test('stopped: malformed frames after authentication end only that session', async () => {
  for (const bytes of [
    Buffer.from([0x51, 0xff, 0xff, 0xff, 0xf0]), // negative length
    Buffer.from([0x51, 0x7f, 0xff, 0xff, 0xff]), // 2 GiB length
    Buffer.from([0x51, 0, 0, 0, 2]), // shorter than its own length field
    Buffer.concat([Buffer.from('W'), i32(4)]), // unknown message type
    message('B', Buffer.from('p\0s\0'), i16(5)), // Bind shorter than its fields
    message('D', Buffer.from('Xname\0')), // Describe of neither S nor P
  ]) {
    const s = await rawSession();
    const r = await s.exchange(bytes, 1, 1000);
    assert.ok(r.closed || r.msgs.some((m) => m.fields?.S === 'FATAL'), `${bytes.toString('hex')}: ${types(r.msgs)}`);
    s.close();
  }
  await gatewayServes();
});

test('stopped: startup options, replication, protocol versions, SSL/GSS requests', async () => {
  // options=-c ... is not forwarded: role, search_path and read-only-ness are the target's defaults.
  const c = client(ro, { options: '-c role=pg_monitor -c search_path=pg_temp -c default_transaction_read_only=on' } as Partial<pg.ClientConfig>);
  await c.connect();
  const r = (await c.query("SELECT current_user AS u, current_setting('search_path') AS p")).rows[0];
  await c.end();
  assert.deepEqual(r, { u: 'postgres', p: '"$user", public' });
  // replication connections are refused.
  for (const replication of ['database', 'true', '1', 'on']) {
    const got = await rawExchange(Buffer.concat([encode.startup({ user: 'mallory', database: 'analytics', replication }), encode.password(ro)]), 600);
    assert.match(got.toString('latin1'), /replication connections are not supported/, replication);
  }
  // Protocol 3.2 (PostgreSQL 18) and 2.0 / 4.0.
  const v32 = Buffer.concat([i32(0), i32((3 << 16) | 2), Buffer.from('user\0mallory\0database\0analytics\0_pq_.x\0y\0\0')]);
  v32.writeInt32BE(v32.length);
  const got32 = await rawExchange([v32, encode.password(ro), encode.query('SELECT 1')], 800);
  // Served as 3.0: NegotiateProtocolVersion says so first and names the unsupported _pq_.x option.
  assert.equal(got32.toString('latin1', 0, 1), 'v');
  assert.equal(got32.readInt32BE(5), 0, 'newest minor version: 0');
  assert.equal(got32.readInt32BE(9), 1, 'one unsupported option');
  assert.equal(got32.toString('latin1', 13, 19), '_pq_.x');
  assert.doesNotMatch(got32.toString('latin1'), /FATAL/);
  assert.match(got32.toString('latin1'), /SELECT 1/);
  for (const major of [2, 4]) {
    const v = Buffer.concat([i32(8), i32(major << 16)]);
    assert.match((await rawExchange(v, 500)).toString('latin1'), /unsupported protocol version/);
  }
  // GSSENCRequest is declined; then a plain startup works.
  const gss = Buffer.concat([i32(8), i32(80877104)]);
  const gotGss = await rawExchange([gss, encode.startup({ user: 'mallory', database: 'analytics' })], 500);
  assert.equal(gotGss.toString('latin1', 0, 1), 'N');
  // SSLRequest twice: the second one (inside TLS) is declined, the session then works over TLS.
  const sock = net.connect(gw.port, '127.0.0.1');
  await new Promise((res) => sock.once('connect', res));
  const first = new Promise<Buffer>((res) => sock.once('data', res));
  sock.write(encode.sslRequest());
  assert.equal((await first).toString(), 'S');
  const secure = tls.connect({ socket: sock, rejectUnauthorized: false });
  await new Promise((res) => secure.once('secureConnect', res));
  const second = new Promise<Buffer>((res) => secure.once('data', res));
  secure.write(encode.sslRequest());
  assert.equal((await second).toString(), 'N');
  secure.destroy();
  await gatewayServes();
});

test('stopped: CancelRequest with guessed keys cancels nothing; unauthenticated idle sockets do not block others', async () => {
  const victim = client();
  await victim.connect();
  const running = victim.query('SELECT count(*)::int AS n FROM generate_series(1, 3000000)');
  for (let i = 0; i < 50; i++) {
    const s = net.connect(gw.port, '127.0.0.1');
    s.on('error', () => {});
    s.on('connect', () => s.end(encode.cancelRequest(randomInt(1, 2 ** 31 - 1), randomInt(-(2 ** 31), 2 ** 31 - 1))));
  }
  const idle = Array.from({ length: 20 }, () => { const s = net.connect(gw.port, '127.0.0.1'); s.on('error', () => {}); return s; });
  try {
    assert.equal((await running).rows[0].n, 3000000);
    await gatewayServes();
  } finally {
    idle.forEach((s) => s.destroy());
    await victim.end();
  }
});
