import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import type { AuditEvent } from '../../src/core/types.ts';
import { ServiceTokenError } from '../../src/identity/service-tokens.ts';
import { openStore, sanitizeAuditEvent, serializeAuditEvent, TokenTtlTooLongError, type Store } from '../../src/store/store.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { durationMs, parseDuration } from '../../src/policy/schema.ts';

const root = mkdtempSync(join(tmpdir(), 'airlock-store-test-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const dbPath = () => join(root, `t${++n}`, 'nested', 'airlock.db');
const sqliteModule = fileURLToPath(new URL('../../src/store/sqlite.ts', import.meta.url));

async function withStore(fn: (s: Store, path: string) => Promise<void>): Promise<void> {
  const path = dbPath();
  const s = await openStore({ type: 'embedded', path });
  try {
    await fn(s, path);
  } finally {
    await s.close();
  }
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ServiceTokenError, `not a ServiceTokenError: ${String(err)}`);
    assert.ok(!/alk_[a-z2-7]{12}_[A-Za-z0-9_-]{10}/.test(err.message), 'message must not contain a token');
    return err.code;
  }
  return 'accepted';
}

const ev = (over: Partial<AuditEvent> = {}): AuditEvent => ({
  time: new Date().toISOString(),
  type: 'statement',
  ...over,
});

test('openStore creates parent dirs, a 0600 file, WAL mode', async () => {
  await withStore(async (_s, path) => {
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const raw = new Database(path, { readonly: true });
    assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
    raw.close();
  });
});

test('create, list, verify, revoke', async () => {
  await withStore(async (s) => {
    const before = Date.now();
    const { token, record } = await s.createToken({
      subject: 'ci-bot',
      groups: ['ci', 'readers', 'ci'],
      ttlMs: 3600_000,
      description: 'nightly build',
    });
    assert.match(token, new RegExp(`^alk_${record.id}_[A-Za-z0-9_-]{43}$`));
    assert.equal(record.subject, 'ci-bot');
    assert.deepEqual(record.groups, ['ci', 'readers']);
    assert.equal(record.description, 'nightly build');
    assert.equal(record.revokedAt, undefined);
    const exp = Date.parse(record.expiresAt);
    assert.ok(exp >= before + 3600_000 && exp <= Date.now() + 3600_000);

    const other = await s.createToken({ subject: 'svc', groups: [], ttlMs: 60_000 });
    assert.equal(other.record.description, undefined);

    const list = await s.listTokens();
    assert.deepEqual(list.map((r) => r.id), [record.id, other.record.id]);
    assert.deepEqual(list[0], record);

    const id = await s.verifyServiceToken(token);
    assert.deepEqual(id, {
      subject: 'ci-bot',
      kind: 'service-token',
      groups: ['ci', 'readers'],
      claims: { sub: 'ci-bot', groups: ['ci', 'readers'] },
      issuer: 'airlock',
      tokenId: record.id,
      expiresAt: exp,
    });
    assert.equal(await s.isTokenActive(record.id), true);

    assert.equal(await s.revokeToken(record.id), true);
    assert.equal(await s.revokeToken(record.id), false, 'already revoked');
    assert.equal(await s.revokeToken('abcdefgh2345'), false, 'unknown');
    assert.equal(await s.revokeToken('not an id'), false);
    assert.equal(await s.isTokenActive(record.id), false);
    assert.equal(await codeOf(s.verifyServiceToken(token)), 'revoked');

    assert.deepEqual((await s.listTokens()).map((r) => r.id), [other.record.id]);
    const all = await s.listTokens({ includeRevoked: true });
    assert.equal(all.length, 2);
    assert.ok(all[0]!.revokedAt && !Number.isNaN(Date.parse(all[0]!.revokedAt)));
    // other token unaffected
    assert.equal((await s.verifyServiceToken(other.token)).subject, 'svc');
  });
});

test('createToken validates its input', async () => {
  await withStore(async (s) => {
    await assert.rejects(s.createToken({ subject: '', groups: [], ttlMs: 1000 }));
    await assert.rejects(s.createToken({ subject: 'x', groups: [''], ttlMs: 1000 }));
    await assert.rejects(s.createToken({ subject: 'x', groups: [], ttlMs: 0 }));
    await assert.rejects(s.createToken({ subject: 'x', groups: [], ttlMs: 1e16 }), /too long/);
    await assert.rejects(s.createToken({ subject: 'x', groups: [], ttlMs: Number.NaN }));
    await assert.rejects(s.createToken({ subject: 'x', groups: [], ttlMs: Infinity }));
    // The CLI turns this error into its `--ttl ... is too long` message.
    await assert.rejects(s.createToken({ subject: 'x', groups: [], ttlMs: 1e16 }), TokenTtlTooLongError);
    await assert.rejects(s.createToken({ subject: 'x', groups: [], ttlMs: Infinity }), TokenTtlTooLongError);
    assert.deepEqual(await s.listTokens({ includeExpired: true, includeRevoked: true }), []);
  });
});

test('expired tokens are refused and hidden unless includeExpired', async () => {
  await withStore(async (s) => {
    const { token, record } = await s.createToken({ subject: 'short', groups: ['g'], ttlMs: 20 });
    await new Promise((r) => setTimeout(r, 40));
    assert.equal(await codeOf(s.verifyServiceToken(token)), 'expired');
    assert.equal(await s.isTokenActive(record.id), false);
    assert.deepEqual(await s.listTokens(), []);
    assert.deepEqual((await s.listTokens({ includeExpired: true })).map((r) => r.id), [record.id]);
    // revoking an expired token still works (and is then both)
    assert.equal(await s.revokeToken(record.id), true);
    assert.equal((await s.listTokens({ includeExpired: true })).length, 0);
    assert.equal((await s.listTokens({ includeExpired: true, includeRevoked: true })).length, 1);
  });
});

test('unknown id and wrong secret are both unknown_token', async () => {
  await withStore(async (s) => {
    const { token, record } = await s.createToken({ subject: 'a', groups: [], ttlMs: 60_000 });
    const secret = token.slice(`alk_${record.id}_`.length);
    const wrong = secret.slice(0, 10) + (secret[10] === 'A' ? 'B' : 'A') + secret.slice(11);
    assert.equal(await codeOf(s.verifyServiceToken(`alk_${record.id}_${wrong}`)), 'unknown_token');
    assert.equal(await codeOf(s.verifyServiceToken(`alk_abcdefgh2345_${secret}`)), 'unknown_token');
    // A revoked token presented with a wrong secret says nothing about its state.
    await s.revokeToken(record.id);
    assert.equal(await codeOf(s.verifyServiceToken(`alk_${record.id}_${wrong}`)), 'unknown_token');
  });
});

test('malformed tokens are refused with the coded error only', async () => {
  await withStore(async (s) => {
    const { token, record } = await s.createToken({ subject: 'a', groups: [], ttlMs: 60_000 });
    const secret = token.slice(`alk_${record.id}_`.length);
    const bad: unknown[] = [
      '',
      'Bearer ' + token,
      'alk_' + record.id,
      `alx_${record.id}_${secret}`,
      `alk_${record.id}_${secret.slice(0, 42)}+`,
      `alk_${record.id}_${secret.slice(0, 41)}==`,
      `alk_${record.id}_${secret}${secret}`,
      `alk_${record.id}_${'%'.repeat(43)}`,
      "alk_' OR 1=1 --",
      'alk_' + 'x'.repeat(5_000_000),
      'y'.repeat(5_000_000),
      null,
      undefined,
      123,
      { toString: () => token },
    ];
    for (const b of bad) {
      assert.equal(await codeOf(s.verifyServiceToken(b as string)), 'malformed', String(b).slice(0, 60));
    }
    assert.equal(await s.isTokenActive(''), false);
    assert.equal(await s.isTokenActive("' OR 1=1 --"), false);
    assert.equal(await s.isTokenActive(undefined as unknown as string), false);
  });
});

test('the database file never contains a token secret', async () => {
  const path = dbPath();
  const s = await openStore({ type: 'embedded', path });
  const tokens: string[] = [];
  for (let i = 0; i < 5; i++) tokens.push((await s.createToken({ subject: `s${i}`, groups: ['g'], ttlMs: 60_000 })).token);
  // A client pasting its token into SQL, a reason, an error, details...
  for (const t of tokens) {
    s.appendAudit(
      ev({
        statement: `SELECT '${t}'`,
        reason: `bad ${t}`,
        error: `password authentication failed for ${t}`,
        detail: { token: t, nested: { list: [t, { deep: `x${t}y` }] }, [t]: 1 },
        classification: { text: `SELECT '${t}'` },
      }),
    );
  }
  await s.flush();
  await s.close();
  const dir = join(path, '..');
  const files = readdirSync(dir).filter((f) => f.startsWith('airlock.db'));
  assert.ok(files.length >= 1);
  for (const f of files) {
    const bytes = readFileSync(join(dir, f));
    for (const t of tokens) {
      const secret = t.slice(17);
      assert.equal(bytes.includes(Buffer.from(secret)), false, `secret found in ${f}`);
      assert.equal(bytes.includes(Buffer.from(secret.slice(0, 20))), false, `secret prefix found in ${f}`);
      assert.equal(bytes.includes(Buffer.from(t.slice(0, 17))), true, `token id should be present in ${f}`);
    }
  }
  // And the tokens still verify after reopening (only the hash was needed).
  const s2 = await openStore({ type: 'embedded', path });
  assert.equal((await s2.verifyServiceToken(tokens[0]!)).subject, 's0');
  await s2.close();
});

test('a revocation by a second Store on the same file is seen immediately', async () => {
  const path = dbPath();
  const gateway = await openStore({ type: 'embedded', path });
  const cli = await openStore({ type: 'embedded', path });
  try {
    const { token, record } = await gateway.createToken({ subject: 'agent', groups: ['ai'], ttlMs: 3600_000 });
    // warm the prepared statements on the gateway side
    assert.equal(await gateway.isTokenActive(record.id), true);
    assert.equal((await gateway.verifyServiceToken(token)).tokenId, record.id);
    // the CLI sees the gateway's token too
    assert.deepEqual((await cli.listTokens()).map((r) => r.id), [record.id]);

    assert.equal(await cli.revokeToken(record.id), true);
    assert.equal(await gateway.isTokenActive(record.id), false);
    assert.equal(await codeOf(gateway.verifyServiceToken(token)), 'revoked');
  } finally {
    await cli.close();
    await gateway.close();
  }
});

test('a revocation from another PROCESS is seen immediately', async () => {
  const path = dbPath();
  const gateway = await openStore({ type: 'embedded', path });
  try {
    const { token, record } = await gateway.createToken({ subject: 'agent', groups: [], ttlMs: 3600_000 });
    assert.equal(await gateway.isTokenActive(record.id), true);
    const script = `
      import { SqliteStore } from ${JSON.stringify(sqliteModule)};
      const s = new SqliteStore(${JSON.stringify(path)});
      await s.migrate();
      const ok = await s.revokeToken(${JSON.stringify(record.id)});
      await s.close();
      process.stdout.write(String(ok));
    `;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
    });
    assert.equal(out, 'true');
    assert.equal(await gateway.isTokenActive(record.id), false);
    assert.equal(await codeOf(gateway.verifyServiceToken(token)), 'revoked');
  } finally {
    await gateway.close();
  }
});

test('isTokenActive is cheap', async () => {
  await withStore(async (s) => {
    const { record } = await s.createToken({ subject: 'a', groups: [], ttlMs: 60_000 });
    const N = 20_000;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) await s.isTokenActive(record.id);
    const perCallUs = Number(process.hrtime.bigint() - t0) / 1000 / N;
    assert.ok(perCallUs < 100, `isTokenActive took ${perCallUs.toFixed(1)} us per call`);
  });
});

test('audit: appends are buffered, written in batches, listed in order with filters', async () => {
  const path = dbPath();
  const s = (await openStore({ type: 'embedded', path })) as SqliteStore;
  const reader = new Database(path, { readonly: true });
  const count = () => (reader.prepare('SELECT count(*) FROM audit_events').pluck().get() as number);
  try {
    const N = 1234;
    const t0 = Date.parse('2030-01-01T00:00:00.000Z');
    for (let i = 0; i < N; i++) {
      s.appendAudit(
        ev({
          time: new Date(t0 + i * 1000).toISOString(),
          type: i % 10 === 0 ? 'session.start' : 'statement',
          sessionId: `sess-${i % 3}`,
          subject: i % 2 ? 'alice' : 'bob',
          connection: i % 4 === 0 ? 'analytics' : 'billing',
          decision: i % 5 === 0 ? 'deny' : 'allow',
          statement: `SELECT ${i}`,
          durationMs: i,
          detail: { i },
        }),
      );
    }
    // Nothing was written synchronously.
    assert.equal(s.pendingAuditEvents, N);
    assert.equal(count(), 0);
    await s.flush();
    assert.equal(s.pendingAuditEvents, 0);
    assert.equal(count(), N);

    // default: the latest 50, newest last
    const latest = await s.listAudit();
    assert.equal(latest.length, 50);
    assert.deepEqual(latest.map((e) => e.detail!.i), Array.from({ length: 50 }, (_, k) => N - 50 + k));
    for (let k = 1; k < latest.length; k++) assert.ok(latest[k]!.id! > latest[k - 1]!.id!);

    const limited = await s.listAudit({ limit: 3 });
    assert.deepEqual(limited.map((e) => e.statement), [`SELECT ${N - 3}`, `SELECT ${N - 2}`, `SELECT ${N - 1}`]);

    const all = await s.listAudit({ limit: 10_000 });
    assert.equal(all.length, N);
    // ids strictly increasing, event round-trips
    for (let k = 1; k < N; k++) assert.ok(all[k]!.id! > all[k - 1]!.id!);
    assert.equal(all[7]!.statement, 'SELECT 7');
    assert.equal(all[7]!.durationMs, 7);
    assert.equal(all[7]!.subject, 'alice');

    // filters
    const f = await s.listAudit({ subject: 'alice', decision: 'deny', connection: 'billing', limit: 10_000 });
    const expected = Array.from({ length: N }, (_, i) => i).filter((i) => i % 2 === 1 && i % 5 === 0 && i % 4 !== 0);
    assert.deepEqual(f.map((e) => e.detail!.i), expected);
    const starts = await s.listAudit({ type: 'session.start', limit: 10_000 });
    assert.equal(starts.length, Math.ceil(N / 10));
    assert.ok(starts.every((e) => e.type === 'session.start'));
    const sess = await s.listAudit({ sessionId: 'sess-2', limit: 5 });
    assert.deepEqual(
      sess.map((e) => e.detail!.i),
      Array.from({ length: N }, (_, i) => i).filter((i) => i % 3 === 2).slice(-5),
    );
    const since = await s.listAudit({ since: new Date(t0 + 1200 * 1000).toISOString(), limit: 10_000 });
    assert.equal(since.length, N - 1200);
    assert.equal(since[0]!.detail!.i, 1200);

    // sinceId pages forward without gaps
    const seen: number[] = [];
    let cursor = 0;
    for (;;) {
      const page = await s.listAudit({ sinceId: cursor, limit: 500 });
      if (page.length === 0) break;
      seen.push(...page.map((e) => e.detail!.i as number));
      cursor = page[page.length - 1]!.id!;
    }
    assert.deepEqual(seen, Array.from({ length: N }, (_, i) => i));
    const next = await s.listAudit({ sinceId: all[100]!.id, limit: 2, subject: 'bob' });
    assert.deepEqual(next.map((e) => e.detail!.i), [102, 104]);
  } finally {
    reader.close();
    await s.close();
  }
});

test('audit: background flush by time and by batch size; listAudit sees queued events', async () => {
  const path = dbPath();
  const s = (await openStore({ type: 'embedded', path })) as SqliteStore;
  const other = await openStore({ type: 'embedded', path });
  try {
    s.appendAudit(ev({ subject: 'timer' }));
    assert.equal(s.pendingAuditEvents, 1);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(s.pendingAuditEvents, 0, 'flushed by the ~50 ms timer');
    assert.deepEqual((await other.listAudit()).map((e) => e.subject), ['timer']);

    for (let i = 0; i < 500; i++) s.appendAudit(ev({ subject: 'batch' }));
    assert.equal(s.pendingAuditEvents, 500, 'never written inside appendAudit');
    await new Promise((r) => setImmediate(r));
    assert.equal(s.pendingAuditEvents, 0, 'a full batch is written on the next turn');

    // read-your-writes in the same process without an explicit flush
    s.appendAudit(ev({ subject: 'queued' }));
    const last = await s.listAudit({ limit: 1 });
    assert.equal(last[0]!.subject, 'queued');
  } finally {
    await other.close();
    await s.close();
  }
});

test('audit: ids are store-assigned and monotonic across two writers', async () => {
  const path = dbPath();
  const a = await openStore({ type: 'embedded', path });
  const b = await openStore({ type: 'embedded', path });
  try {
    a.appendAudit(ev({ id: 999_999, subject: 'a1' }));
    await a.flush();
    b.appendAudit(ev({ subject: 'b1' }));
    await b.flush();
    a.appendAudit(ev({ subject: 'a2' }));
    await a.flush();
    const list = await a.listAudit();
    assert.deepEqual(list.map((e) => e.subject), ['a1', 'b1', 'a2']);
    assert.deepEqual(list.map((e) => e.id), [1, 2, 3]);
  } finally {
    await a.close();
    await b.close();
  }
});

test('audit: tokens are scrubbed, statements otherwise stored exactly, caller object untouched', async () => {
  await withStore(async (s) => {
    const { token, record } = await s.createToken({ subject: 'a', groups: [], ttlMs: 60_000 });
    const masked = `alk_${record.id}_***`;
    const statement = `  SELECT 'héllo',\n\t$$${token}$$ , "alk_users"  -- ☃ ${token.slice(0, 40)}\n`;
    const e = ev({
      statement,
      reason: `because ${token}`,
      error: `auth failed: ${token}`,
      detail: { a: token, b: [1, { c: `(${token})` }], n: null, big: 10n as unknown, when: new Date(0) },
      classification: { statements: [{ text: token }] },
    });
    const snapshot = structuredClone(e);
    s.appendAudit(e);
    assert.deepEqual(e, snapshot);
    const [got] = await s.listAudit();
    assert.equal(
      got!.statement,
      `  SELECT 'héllo',\n\t$$${masked}$$ , "alk_users"  -- ☃ ${masked}\n`,
    );
    assert.equal(got!.reason, `because ${masked}`);
    assert.equal(got!.error, `auth failed: ${masked}`);
    assert.deepEqual(got!.detail, { a: masked, b: [1, { c: `(${masked})` }], n: null, big: '10', when: '1970-01-01T00:00:00.000Z' });
    assert.deepEqual(got!.classification, { statements: [{ text: masked }] });
    assert.ok(!JSON.stringify(got).includes(token.slice(17)));

    // statements without tokens are kept byte for byte
    const plain = "select  *  from alk_x_table where note = 'alk_'  ;";
    s.appendAudit(ev({ statement: plain }));
    assert.equal((await s.listAudit({ limit: 1 }))[0]!.statement, plain);
  });
});

test('audit: hostile detail values do not break a batch', async () => {
  await withStore(async (s) => {
    const cyclic: Record<string, unknown> = { name: 'loop' };
    cyclic.self = cyclic;
    s.appendAudit(ev({ subject: 'cyclic', detail: cyclic }));
    s.appendAudit(ev({ subject: 'fn', detail: { f: () => 1, buf: Buffer.from('secret'), err: new Error('boom') } }));
    s.appendAudit(ev({ subject: 'ok' }));
    const list = await s.listAudit();
    assert.deepEqual(list.map((e) => e.subject), ['cyclic', 'fn', 'ok']);
    assert.deepEqual(list[0]!.detail, { name: 'loop', self: '[circular]' });
    assert.deepEqual(list[1]!.detail, { buf: '[binary 6 bytes]', err: { name: 'Error', message: 'boom' } });
  });
});

test('serializeAuditEvent: one JSON text, as the sanitizing walk would write it, with matching columns', () => {
  const token = `alk_abcdefghijk2_${'A'.repeat(43)}`;
  const masked = 'alk_abcdefghijk2_***';
  const deep: Record<string, unknown> = {};
  let cur = deep;
  for (let i = 0; i < 40; i++) cur = (cur.d = {}) as Record<string, unknown>;
  const cases: [string, Record<string, unknown>, Record<string, unknown>][] = [
    ['plain', { statement: 'SELECT 1', rows: 2, detail: { a: [1, 'x', null, true] } },
      { statement: 'SELECT 1', rows: 2, detail: { a: [1, 'x', null, true] } }],
    ['tokens in values and keys', { subject: token, detail: { [token]: `x ${token}`, [`${token}B`]: 2 } },
      { subject: masked, detail: { [masked]: 2 } }],
    ['non-finite, bigint', { detail: { n: Infinity, m: NaN, b: 5n } }, { detail: { n: 'Infinity', m: 'NaN', b: '5' } }],
    ['Date, function, undefined', { detail: { d: new Date(0), bad: new Date(NaN), f: () => 1, u: undefined, a: [undefined, () => 1] } },
      { detail: { d: '1970-01-01T00:00:00.000Z', bad: null, a: [null, null] } }],
    ['Map, Set, Error, binary', { detail: { m: new Map([['k', 1]]), s: new Set([token]), e: new Error(token), u: new Uint8Array(3) } },
      { detail: { m: { k: 1 }, s: [masked], e: { name: 'Error', message: masked }, u: '[binary 3 bytes]' } }],
    ['toJSON', { detail: { toJSON: () => token } }, { detail: {} }],
    ['too deep', { detail: deep }, { detail: sanitizeAuditEvent({ detail: deep } as unknown as AuditEvent).detail as Record<string, unknown> }],
    ['chain names and id', { id: 7, hash: 'h', prev_hash: 'p', rows: 1 }, { rows: 1 }],
  ];
  for (const [what, extra, want] of cases) {
    const e: Record<string, unknown> = { time: '2030-01-31T10:00:00Z', type: 'statement', sessionId: 's', connection: 'c', decision: 'allow', ...extra };
    const out = serializeAuditEvent(e as unknown as AuditEvent);
    const parsed = JSON.parse(out.json) as Record<string, unknown>;
    assert.ok(!out.json.includes('A'.repeat(20)), what);
    assert.deepEqual(parsed, { time: '2030-01-31T10:00:00.000Z', type: 'statement', sessionId: 's', connection: 'c', decision: 'allow', ...want }, what);
    assert.equal(out.json, JSON.stringify(parsed), `${what}: the text is what JSON.stringify writes`);
    assert.deepEqual([out.time, out.type, out.sessionId, out.subject, out.connection, out.decision],
      [parsed.time, parsed.type, parsed.sessionId, (parsed as Record<string, unknown>).subject ?? null, parsed.connection, parsed.decision], what);
  }
  assert.match(JSON.stringify(sanitizeAuditEvent({ detail: deep } as unknown as AuditEvent)), /"\[too deep\]"/);
  // time: already normal, normalised, unparseable kept, missing is now
  for (const [t, want] of [['2030-01-02T03:04:05.678Z', '2030-01-02T03:04:05.678Z'], ['2030-02-30T00:00:00.000Z', '2030-03-02T00:00:00.000Z'],
    ['2030-01-01T24:00:00.000Z', '2030-01-02T00:00:00.000Z'], ['2030-01-01', '2030-01-01T00:00:00.000Z'], ['soon', 'soon']]) {
    assert.equal(serializeAuditEvent({ time: t, type: 'x' } as unknown as AuditEvent).time, want, t);
  }
  assert.match(serializeAuditEvent({ type: 'x' } as unknown as AuditEvent).time, /^\d{4}-\d\d-\d\dT/);
});

test('audit: appendAudit after close neither throws nor writes', async () => {
  const path = dbPath();
  const errors: unknown[] = [];
  const s = new SqliteStore(path, { onError: (e) => errors.push(e) });
  await s.migrate();
  s.appendAudit(ev({ subject: 'before' }));
  await s.close();
  await s.close(); // idempotent
  assert.doesNotThrow(() => s.appendAudit(ev({ subject: 'after' })));
  assert.equal(errors.length, 1);
  const s2 = await openStore({ type: 'embedded', path });
  assert.deepEqual((await s2.listAudit()).map((e) => e.subject), ['before'], 'close flushed');
  await s2.close();
});

test('openStore passes onError to the store (audit write failures go to the caller)', async () => {
  const errors: unknown[] = [];
  const s = await openStore({ type: 'embedded', path: dbPath() }, { onError: (e) => errors.push(e) });
  await s.close();
  s.appendAudit(ev({ subject: 'after close' }));
  assert.equal(errors.length, 1);
  assert.match(String(errors[0]), /appended after the store was closed/);
});

test('audit: past 200000 unwritten events the oldest are dropped in chunks of 20000, and counted', async () => {
  const errors: unknown[] = [];
  const s = new SqliteStore(':memory:', { onError: (e) => errors.push(e) });
  await s.migrate();
  try {
    // Synchronous appends: nothing is written in between.
    for (let i = 0; i < 200_000; i++) s.appendAudit(ev({ subject: `e${i}` }));
    assert.equal(s.pendingAuditEvents, 200_000);
    s.appendAudit(ev({ subject: 'e200000' }));
    assert.equal(s.pendingAuditEvents, 180_001, 'one chunk dropped');
    for (let i = 200_001; i < 220_000; i++) s.appendAudit(ev({ subject: `e${i}` }));
    assert.equal(s.pendingAuditEvents, 200_000, 'no drop until the cap is passed again');
    s.appendAudit(ev({ subject: 'e220000' }));
    assert.equal(s.pendingAuditEvents, 180_001);
    s.flushSync();
    assert.equal(errors.length, 1);
    assert.match(String(errors[0]), /40000 audit events were dropped/);
    const [first] = await s.listAudit({ sinceId: 0, limit: 1 });
    assert.equal(first!.subject, 'e40000', 'the oldest were dropped');
    assert.deepEqual((await s.listAudit({ limit: 1 })).map((e) => e.subject), ['e220000']);
  } finally {
    await s.close();
  }
});

test('audit: queued events are written if the process exits without close', async () => {
  const path = dbPath();
  const script = `
    import { openStore } from ${JSON.stringify(fileURLToPath(new URL('../../src/store/store.ts', import.meta.url)))};
    const s = await openStore({ type: 'embedded', path: ${JSON.stringify(path)} });
    for (let i = 0; i < 3; i++) s.appendAudit({ time: new Date().toISOString(), type: 'statement', subject: 'exit' + i });
    process.exit(0);
  `;
  execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script]);
  const s = await openStore({ type: 'embedded', path });
  assert.deepEqual((await s.listAudit()).map((e) => e.subject), ['exit0', 'exit1', 'exit2']);
  await s.close();
});

test('migrate is idempotent and records the schema version once per migration', async () => {
  const path = dbPath();
  const s = (await openStore({ type: 'embedded', path })) as SqliteStore;
  await s.migrate();
  await s.migrate();
  const { record } = await s.createToken({ subject: 'keep', groups: [], ttlMs: 60_000 });
  await s.close();
  const s2 = (await openStore({ type: 'embedded', path })) as SqliteStore;
  await s2.migrate();
  assert.deepEqual((await s2.listTokens()).map((r) => r.id), [record.id]);
  await s2.close();
  const raw = new Database(path, { readonly: true });
  assert.deepEqual(raw.prepare('SELECT version FROM schema_version').pluck().all(), [1, 2, 3]);
  raw.close();
});

test('a newer schema than this build is refused', async () => {
  const path = dbPath();
  const s = await openStore({ type: 'embedded', path });
  await s.close();
  const raw = new Database(path);
  raw.prepare('INSERT INTO schema_version (version) VALUES (99)').run();
  raw.close();
  await assert.rejects(openStore({ type: 'embedded', path }), /newer/);
});

test('token ttl durations (`token create --ttl`) use the policy duration parser', () => {
  assert.equal(durationMs('1h'), 3600_000);
  assert.equal(durationMs('30m'), 1800_000);
  assert.equal(durationMs('7d'), 7 * 86400_000);
  assert.equal(durationMs('90s'), 90_000);
  assert.equal(durationMs('2w'), 14 * 86400_000);
  assert.equal(durationMs('1w2d3h4m5s'), ((((7 + 2) * 24 + 3) * 60 + 4) * 60 + 5) * 1000);
  assert.equal(durationMs('90'), 90_000, 'a bare number is seconds');
  assert.equal(durationMs('0h'), 0);
  assert.equal(durationMs('0'), 0);
  assert.equal(parseDuration('0h'), undefined, 'policies need a positive duration');
  assert.equal(parseDuration('2w'), 14 * 86400_000);
  for (const bad of ['', 'soon', '-1h', '1.5h', '1 h', 'h', '1m1h', '1h1h', '1H']) assert.equal(durationMs(bad), undefined, bad);
});
