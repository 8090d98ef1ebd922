// Attacks on the PostgreSQL gateway by a caller whose policy is read-only (select, show, explain).
// Every attack checks its effect on the real target afterwards, and that the gateway still serves
// a fresh client. Tests marked BYPASS / HANG / DESYNC / LEAK in their names fail today: they
// demonstrate a real weakness (see the comment above each).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { randomInt } from 'node:crypto';
import pg from 'pg';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { FrameReader, decodeErrorFields, encode, message } from '../../src/protocols/postgres/codec.ts';

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

interface Msg { type: string; text: string; fields?: Record<string, string>; cols?: (string | null)[] }

/** A protocol-level client with exact control over batching; every read has a deadline. */
async function rawSession(token = ro, params: Record<string, string> = {}) {
  const sock = net.connect(gw.port, '127.0.0.1');
  const reader = new FrameReader({ typed: true });
  const waiters: (() => void)[] = [];
  let closed = false;
  sock.on('data', (d) => { reader.push(d); waiters.splice(0).forEach((w) => w()); });
  sock.on('error', () => {});
  sock.on('close', () => { closed = true; waiters.splice(0).forEach((w) => w()); });
  const msgs: Msg[] = [];
  const pump = () => {
    for (let f = reader.next(); f; f = reader.next()) {
      const m: Msg = { type: f.type, text: '' };
      if (f.type === 'E' || f.type === 'N') { m.fields = decodeErrorFields(f.body); m.text = Object.values(m.fields).join(' '); }
      if (f.type === 'D') {
        const n = f.body.readInt16BE(0);
        let off = 2;
        m.cols = [];
        for (let i = 0; i < n; i++) {
          const len = f.body.readInt32BE(off);
          off += 4;
          if (len < 0) m.cols.push(null);
          else { m.cols.push(f.body.toString('utf8', off, off + len)); off += len; }
        }
      }
      msgs.push(m);
    }
  };
  /** Reads until `readies` ReadyForQuery messages arrived, the socket closed, or the deadline passed. */
  const read = async (readies = 1, timeoutMs = 3000) => {
    const out: Msg[] = [];
    let seen = 0;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      pump();
      while (msgs.length) {
        const m = msgs.shift()!;
        out.push(m);
        if (m.type === 'Z' && ++seen === readies) return { msgs: out, timedOut: false, closed };
      }
      if (closed) return { msgs: out, timedOut: false, closed };
      const left = deadline - Date.now();
      if (left <= 0) return { msgs: out, timedOut: true, closed };
      await new Promise<void>((r) => { const t = setTimeout(r, left); waiters.push(() => { clearTimeout(t); r(); }); });
    }
  };
  await new Promise((r) => sock.once('connect', r));
  sock.write(encode.startup({ user: 'mallory', database: 'analytics', ...params }));
  await sleep(30);
  sock.write(encode.password(token));
  const hello = await read();
  assert.ok(!hello.msgs.some((m) => m.type === 'E'), JSON.stringify(hello));
  return {
    sock,
    read,
    exchange: (bytes: Buffer, readies = 1, timeoutMs = 3000) => { sock.write(bytes); return read(readies, timeoutMs); },
    query: (sql: string, timeoutMs = 3000) => { sock.write(encode.query(sql)); return read(1, timeoutMs); },
    get closed() { return closed; },
    close: () => { if (!closed) sock.end(encode.terminate()); },
  };
}

const types = (msgs: Msg[]) => msgs.map((m) => m.type).join('');
const errors = (msgs: Msg[]) => msgs.filter((m) => m.type === 'E');
const rows = (msgs: Msg[]) => msgs.filter((m) => m.type === 'D').map((m) => m.cols);

/** Raw bytes to the gateway on a new socket; resolves with everything received until close or `waitMs`. */
function rawExchange(bytes: Buffer | Buffer[], waitMs = 1000): Promise<Buffer> {
  return new Promise((resolve) => {
    const s = net.connect(gw.port, '127.0.0.1');
    const got: Buffer[] = [];
    s.on('data', (d) => got.push(d));
    s.on('error', () => {});
    const done = () => resolve(Buffer.concat(got));
    s.on('close', done);
    s.on('connect', () => { for (const b of [bytes].flat()) s.write(b); });
    setTimeout(() => { s.destroy(); }, waitMs);
  });
}

/** The worst time a fresh client needed for connect + SELECT 1, sampled repeatedly for `windowMs`. */
async function worstLatencyDuring(windowMs: number): Promise<number> {
  let worst = 0;
  const end = Date.now() + windowMs;
  while (Date.now() < end) worst = Math.max(worst, await latencyOfFreshSelect());
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
// so classify.ts never judges the function: the statement is a plain, read-only SELECT.

test('BYPASS: (regclass).nextval advances a sequence through a read-only policy', async () => {
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

test('BYPASS: (text).lo_import writes a large object from a server file, (text).pg_read_file reads server files', async () => {
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

test('BYPASS: (pid).pg_terminate_backend kills another session', async () => {
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

// HANG: PostgreSQL answers every FunctionCall with ReadyForQuery. The gateway replaces a refused
// FunctionCall with a poison *Execute*, after which the target sends no ReadyForQuery (an extended-
// protocol error waits for Sync) and silently ignores every following Query until a Sync. A client
// using fast-path (libpq PQfn, e.g. psql \lo_import / lo_* client calls) waits forever.
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

// DESYNC: the gateway records `statements[name] = text` when it forwards an allowed Parse, before
// the target accepted it. Parse of a name that already exists fails on the target ("prepared
// statement already exists") and the target keeps the OLD statement, while the gateway now judges
// every Bind/Execute of that name against the NEW text (and audits the new text).
test('DESYNC: re-Parse of an existing statement name: Execute runs a statement other than the one judged', async () => {
  const s = await rawSession();
  try {
    await s.exchange(Buffer.concat([encode.parse('s1', "SELECT 'first' AS v"), encode.sync()]));
    const re = await s.exchange(Buffer.concat([encode.parse('s1', "SELECT 'second' AS v"), encode.sync()]));
    assert.ok(errors(re.msgs).some((m) => /already exists/.test(m.text)));
    const r = await s.exchange(Buffer.concat([encode.bind('p', 's1'), encode.execute('p'), encode.sync()]));
    await gw.gw.store.flush();
    const audited = (await gw.gw.store.listAudit({ type: 'statement', subject: 'mallory', limit: 50 }))
      .filter((e) => /'(first|second)'/.test(e.statement ?? '')).map((e) => e.statement);
    // What ran must be what was judged and audited.
    assert.deepEqual(rows(r.msgs), [['second']], `the target ran ${JSON.stringify(rows(r.msgs))}; the audit says ${JSON.stringify(audited.at(-1))}`);
  } finally {
    s.close();
  }
});

test('BYPASS/DESYNC: a DELETE prepared while allowed still runs after the policy became read-only', async () => {
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

// HANG: the gateway counts one ReadyForQuery per Query and per Sync. After an extended-protocol
// error the target silently ignores a Query until Sync (no ReadyForQuery for it), so the count
// stays one ahead for the rest of the session. The "wait for ReadyForQuery after a session-state
// change" barrier is released only when nothing is in flight, which now never happens: the next
// statement after any allowed SET waits forever (the whole session is wedged, Sync included).
test('HANG: a Query ignored after an extended-protocol error wedges the session at the next SET', async () => {
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

// HANG: FrameReader.push() does Buffer.concat(pending, chunk) for every socket chunk, so a message
// of N bytes costs O(N^2 / chunk) copying on the event loop. Untyped startup packets accept the
// same 64 MiB limit as queries (PostgreSQL caps them at 10,000 bytes), so ONE unauthenticated TCP
// connection trickling a large startup packet stalls every session of the gateway for seconds.
test('HANG: an unauthenticated oversized startup packet stalls the gateway for everyone', async () => {
  const size = 28 * 1024 * 1024;
  const sock = net.connect(gw.port, '127.0.0.1');
  sock.on('error', () => {});
  await new Promise((r) => sock.once('connect', r));
  const header = Buffer.alloc(8);
  header.writeInt32BE(size + 8);
  header.writeInt32BE(196608, 4);
  sock.write(header);
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  for (let sent = 0; sent < size - chunk.length; sent += chunk.length) sock.write(chunk);
  await sleep(300);
  try {
    const ms = await worstLatencyDuring(3000);
    console.log("latency", ms);
    assert.ok(ms < 1000, `a fresh client needed ${Math.round(ms)} ms while one unauthenticated socket sent a ${size >> 20} MiB startup packet`);
  } finally {
    sock.destroy();
  }
});

test('HANG: a startup packet larger than PostgreSQL allows (10,000 bytes) is refused at once', async () => {
  const header = Buffer.alloc(8);
  header.writeInt32BE(1024 * 1024);
  header.writeInt32BE(196608, 4);
  const started = Date.now();
  const got = await rawExchange(header, 1500);
  assert.ok(got.length > 0 && String.fromCharCode(got[0]) === 'E', 'the gateway waits for 1 MiB of startup packet instead of refusing it');
  assert.ok(Date.now() - started < 1000);
});

// HANG: the same quadratic buffering on the target side. A read-only caller asks for one large
// value (allowed: a plain SELECT); every 64 KiB chunk the target sends re-copies the whole
// partial DataRow, on the event loop shared by all sessions.
test('HANG: one allowed SELECT returning a large value stalls the gateway for everyone', async () => {
  const c = client();
  await c.connect();
  const big = c.query("SELECT repeat('x', 40 * 1024 * 1024) AS v").then((r) => r.rows[0].v.length, (e: Error) => e.message);
  await sleep(400);
  try {
    const ms = await worstLatencyDuring(3000);
    console.log("latency", ms);
    assert.ok(ms < 1000, `a fresh client needed ${Math.round(ms)} ms while another session read a 40 MiB value`);
  } finally {
    await big;
    await c.end().catch(() => {});
  }
});

// HANG: classification is synchronous on the event loop with no bound on the text other than the
// 64 MiB message limit; a read-only caller sends one Query of ~200k trivial statements and every
// other session waits while libpg-query parses it and the walker classifies it.
test('HANG: one huge multi-statement Query stalls the gateway for everyone', async () => {
  const s = await rawSession();
  s.sock.write(encode.query('SELECT 1;'.repeat(200_000)));
  await sleep(100);
  try {
    const ms = await worstLatencyDuring(3000);
    console.log("latency", ms);
    assert.ok(ms < 1000, `a fresh client needed ${Math.round(ms)} ms while another session sent a 1.8 MB Query`);
  } finally {
    await s.read(1, 30_000);
    s.close();
  }
});
