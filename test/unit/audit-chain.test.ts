// The tamper-evident audit log: hash chain, signed checkpoints, verify, retention, spool.
// Real SQLite files in temp dirs; tampering is done with a separate better-sqlite3 connection.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import Database from 'better-sqlite3';
import type { AuditEvent } from '../../src/core/types.ts';
import { openStore, type AuditStoreOptions, type Store } from '../../src/store/store.ts';
import type { SqliteStore } from '../../src/store/sqlite.ts';
import { canonicalJson, eventHash, GENESIS_HASH, sha256Hex } from '../../src/audit/canonical.ts';
import { loadOrCreateSigningKeyFile, signerFromPem } from '../../src/audit/signing.ts';
import { parseSince } from '../../src/audit/config.ts';
import { durationMs } from '../../src/policy/schema.ts';

const root = mkdtempSync(join(tmpdir(), 'airlock-audit-chain-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const dbPath = () => join(root, `t${++n}`, 'airlock.db');

const newSigner = () => signerFromPem(generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
const signer = newSigner();
const notices: string[] = [];

async function open(path: string, audit: AuditStoreOptions = {}): Promise<SqliteStore> {
  return (await openStore({ type: 'embedded', path }, {
    onError: () => {},
    audit: { signer, checkpointEvery: 5, onNotice: (m) => notices.push(m), ...audit },
  })) as SqliteStore;
}

const ev = (i: number, over: Partial<AuditEvent> = {}): AuditEvent => ({
  time: new Date(Date.UTC(2030, 0, 1) + i * 1000).toISOString(),
  type: 'statement',
  subject: `user${i % 3}`,
  sessionId: `s${i % 2}`,
  connection: 'main',
  decision: 'allow',
  statement: `SELECT ${i}`,
  detail: { i, nested: { z: 1, a: [i, 'x'] } },
  ...over,
});

/** A closed store file with `count` events (checkpoints every 5 and one at close). */
async function fixture(count = 20, audit: AuditStoreOptions = {}): Promise<string> {
  const path = dbPath();
  const s = await open(path, audit);
  for (let i = 1; i <= count; i++) s.appendAudit(ev(i));
  await s.close();
  return path;
}

function tamper(path: string, sql: string, ...params: unknown[]): void {
  const raw = new Database(path);
  raw.prepare(sql).run(...params);
  raw.close();
}

/** Verifies without a signer (so that closing writes no checkpoint over tampered data). */
async function verifyReadOnly(path: string, opts: Parameters<Store['verifyAudit']>[0] = {}) {
  const s = (await openStore({ type: 'embedded', path }, { onError: () => {}, audit: { onNotice: () => {} } })) as SqliteStore;
  try {
    return await s.verifyAudit(opts);
  } finally {
    await s.close();
  }
}

test('canonical JSON (what checkpoint signatures cover): sorted keys at every level, no whitespace, JSON escapes', () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [3, { y: true, x: null }], c: 'é\n"' }, u: undefined }),
    '{"a":{"c":"é\\n\\"","d":[3,{"x":null,"y":true}]},"b":1}');
  assert.equal(canonicalJson([undefined, 1.5, -0]), '[null,1.5,0]');
  assert.throws(() => canonicalJson({ n: Infinity }));
  const a = canonicalJson({ x: 1, y: 2 });
  assert.equal(a, canonicalJson({ y: 2, x: 1 }), 'key order does not matter');
  assert.equal(GENESIS_HASH, '0'.repeat(64));
});

test('--since accepts durations back from now and ISO times', () => {
  const now = Date.parse('2030-01-02T00:00:00.000Z');
  assert.equal(parseSince('1h', durationMs, now), '2030-01-01T23:00:00.000Z');
  assert.equal(parseSince('30m', durationMs, now), '2030-01-01T23:30:00.000Z');
  assert.equal(parseSince('2d', durationMs, now), '2029-12-31T00:00:00.000Z');
  assert.equal(parseSince('2030-01-01T10:00:00Z', durationMs, now), '2030-01-01T10:00:00.000Z');
  assert.equal(parseSince('2030-01-01', durationMs, now), '2030-01-01T00:00:00.000Z');
  for (const bad of ['soon', '', '12', 'yesterday']) assert.equal(parseSince(bad, durationMs, now), undefined, bad);
});

test('chain links across batches and across two store instances on one file; verify passes', async () => {
  const path = dbPath();
  const a = await open(path, { checkpointEvery: 300 });
  const b = await open(path, { checkpointEvery: 300 });
  try {
    let i = 0;
    for (let k = 0; k < 1200; k++) a.appendAudit(ev(i++, { subject: 'a' })); // three batches of 500 or less
    await a.flush();
    b.appendAudit(ev(i++, { subject: 'b' }));
    a.appendAudit(ev(i++, { subject: 'a' }));
    await b.flush();
    await a.flush();
    for (let k = 0; k < 10; k++) {
      (k % 2 ? a : b).appendAudit(ev(i++, { subject: k % 2 ? 'a' : 'b' }));
      await (k % 2 ? a : b).flush();
    }
    const report = await a.verifyAudit();
    assert.equal(report.ok, true, JSON.stringify(report.break));
    assert.equal(report.events, 1212);
    assert.equal(report.firstId, 1);
    assert.equal(report.lastId, 1212);
    assert.ok(report.checkpoints >= 4, `checkpoints: ${report.checkpoints}`);
    assert.deepEqual(report.keyIds, [signer.keyId]);

    // The rows themselves: genesis, links, and the documented formula.
    const raw = new Database(path, { readonly: true });
    const rows = raw.prepare('SELECT id, event_json, prev_hash, hash FROM audit_events ORDER BY id').all() as
      { id: number; event_json: string; prev_hash: string; hash: string }[];
    raw.close();
    assert.equal(rows[0]!.prev_hash, GENESIS_HASH);
    for (let k = 0; k < rows.length; k++) {
      const r = rows[k]!;
      if (k > 0) assert.equal(r.prev_hash, rows[k - 1]!.hash, `link at ${r.id}`);
      assert.equal(r.hash, sha256Hex(`${r.prev_hash}\n${r.id}\n${r.event_json}`));
    }
    assert.deepEqual(rows.slice(1200, 1202).map((r) => (JSON.parse(r.event_json) as AuditEvent).subject), ['b', 'a']);
  } finally {
    await a.close();
    await b.close();
  }
});

test('export lines carry id, prev_hash and hash; the hash is recomputable from the line', async () => {
  const path = await fixture(12);
  const s = await open(path);
  try {
    const texts: string[] = [];
    for await (const e of s.exportAudit()) texts.push(JSON.stringify(e)); // what `audit export` writes
    assert.equal(texts.length, 12);
    let prev = GENESIS_HASH;
    for (const text of texts) {
      // docs/audit.md#export, in JavaScript
      const { id, hash, prev_hash, ...event } = JSON.parse(text) as Record<string, unknown>;
      assert.equal(prev_hash, prev);
      assert.equal(hash, sha256Hex(`${prev_hash as string}\n${id as number}\n${JSON.stringify(event)}`));
      // ...and as bytes: the stored event text is the line without its id prefix and hash suffix
      const prefix = `{"id":${id as number},`;
      const suffix = `,"prev_hash":"${prev_hash as string}","hash":"${hash as string}"}`;
      assert.ok(text.startsWith(prefix) && text.endsWith(suffix));
      assert.equal(hash, eventHash(prev_hash as string, id as number, `{${text.slice(prefix.length, -suffix.length)}}`));
      prev = hash as string;
    }
    const since = [];
    for await (const e of s.exportAudit({ since: ev(10).time })) since.push(e.id);
    assert.deepEqual(since, [10, 11, 12]);
  } finally {
    await s.close();
  }
});

test('editing any stored event is caught at the right id', async () => {
  const cases: [string, string, number][] = [
    ['statement in event_json', `UPDATE audit_events SET event_json = json_set(event_json, '$.statement', 'DROP TABLE x') WHERE id = ?`, 7],
    ['nested detail value', `UPDATE audit_events SET event_json = json_set(event_json, '$.detail.nested.z', 2) WHERE id = ?`, 3],
    ['added field', `UPDATE audit_events SET event_json = json_set(event_json, '$.extra', 1) WHERE id = ?`, 12],
    ['one byte of event_json, same JSON value', `UPDATE audit_events SET event_json = event_json || ' ' WHERE id = ?`, 5],
    ['key order of event_json', `UPDATE audit_events SET event_json = json_set(json_remove(event_json, '$.time'), '$.time', json_extract(event_json, '$.time')) WHERE id = ?`, 6],
    ['subject column', `UPDATE audit_events SET subject = 'someone-else' WHERE id = ?`, 9],
    ['decision column', `UPDATE audit_events SET decision = 'deny' WHERE id = ?`, 1],
    ['time column', `UPDATE audit_events SET time = '2020-01-01T00:00:00.000Z' WHERE id = ?`, 20],
    ['hash column', `UPDATE audit_events SET hash = '${'a'.repeat(64)}' WHERE id = ?`, 15],
    ['prev_hash column', `UPDATE audit_events SET prev_hash = '${'b'.repeat(64)}' WHERE id = ?`, 4],
  ];
  for (const [what, sql, id] of cases) {
    const path = await fixture(20);
    tamper(path, sql, id);
    const r = await verifyReadOnly(path);
    assert.equal(r.ok, false, what);
    assert.equal(r.break!.kind, 'edited', `${what}: ${r.break!.message}`);
    assert.equal(r.break!.eventId, id, what);
    assert.equal(r.break!.index, id - 1, what);
    assert.equal(r.events, id - 1, `${what}: counts what verified before the break`);
  }
});

test('an edit with every later hash recomputed is caught by the signed checkpoint', async () => {
  const path = await fixture(20);
  const raw = new Database(path);
  raw.prepare(`UPDATE audit_events SET event_json = json_set(event_json, '$.statement', 'forged') WHERE id = 8`).run();
  // Re-chain from 8 on, as an attacker without the signing key could.
  const rows = raw.prepare('SELECT id, event_json, prev_hash FROM audit_events WHERE id >= 8 ORDER BY id').all() as
    { id: number; event_json: string; prev_hash: string }[];
  let prev = rows[0]!.prev_hash;
  for (const r of rows) {
    const h = eventHash(prev, r.id, r.event_json);
    raw.prepare('UPDATE audit_events SET prev_hash = ?, hash = ? WHERE id = ?').run(prev, h, r.id);
    prev = h;
  }
  raw.prepare('UPDATE audit_chain SET last_hash = ?').run(prev);
  raw.close();
  const r = await verifyReadOnly(path);
  assert.equal(r.break?.kind, 'edited');
  assert.equal(r.break!.eventId, 10, 'the first checkpoint after the edit (every 5 events)');
  assert.ok(r.break!.checkpointId !== undefined);
});

test('deleting a middle event is caught', async () => {
  const path = await fixture(20);
  tamper(path, 'DELETE FROM audit_events WHERE id = ?', 11);
  const r = await verifyReadOnly(path);
  assert.equal(r.break?.kind, 'deleted');
  assert.equal(r.break!.eventId, 11);
  assert.equal(r.break!.index, 10);

  const path2 = await fixture(20);
  tamper(path2, 'DELETE FROM audit_events WHERE id IN (1, 2)');
  const r2 = await verifyReadOnly(path2);
  assert.equal(r2.break?.kind, 'deleted', 'the first events');
  assert.equal(r2.break!.eventId, 1);
});

test('deleting the last events is caught via the checkpoint (even with the chain head rolled back)', async () => {
  const path = await fixture(18); // checkpoints at 5, 10, 15 and at close (18)
  const raw = new Database(path);
  raw.prepare('DELETE FROM audit_events WHERE id > 16').run();
  const last = raw.prepare('SELECT hash FROM audit_events WHERE id = 16').pluck().get() as string;
  raw.prepare('UPDATE audit_chain SET last_id = 16, last_hash = ?').run(last);
  raw.close();
  const r = await verifyReadOnly(path);
  assert.equal(r.break?.kind, 'deleted');
  assert.equal(r.break!.eventId, 17);
  assert.ok(r.break!.checkpointId !== undefined, r.break!.message);

  // Without touching the head, the head alone also tells.
  const path2 = await fixture(18);
  tamper(path2, 'DELETE FROM audit_checkpoints WHERE upto_id > 15');
  tamper(path2, 'DELETE FROM audit_events WHERE id > 16');
  const r2 = await verifyReadOnly(path2);
  assert.equal(r2.break?.kind, 'deleted');
  assert.equal(r2.break!.eventId, 17);
});

test('swapping two rows\' event_json is caught as reordered', async () => {
  const path = await fixture(20);
  const raw = new Database(path);
  const a = raw.prepare('SELECT event_json FROM audit_events WHERE id = 6').pluck().get();
  const b = raw.prepare('SELECT event_json FROM audit_events WHERE id = 9').pluck().get();
  raw.prepare('UPDATE audit_events SET event_json = ? WHERE id = 6').run(b);
  raw.prepare('UPDATE audit_events SET event_json = ? WHERE id = 9').run(a);
  raw.close();
  const r = await verifyReadOnly(path);
  assert.equal(r.break?.kind, 'reordered', r.break?.message);
  assert.equal(r.break!.eventId, 6);
  assert.match(r.break!.message, /stored at id 9/);

  // Whole rows (content, prev_hash and hash) swapped between ids.
  const path2 = await fixture(20);
  const raw2 = new Database(path2);
  const cols = 'time, type, session_id, subject, connection, decision, event_json, prev_hash, hash';
  const r12 = raw2.prepare(`SELECT ${cols} FROM audit_events WHERE id = 12`).raw().get() as unknown[];
  const r13 = raw2.prepare(`SELECT ${cols} FROM audit_events WHERE id = 13`).raw().get() as unknown[];
  const set = raw2.prepare(`UPDATE audit_events SET (${cols}) = (?, ?, ?, ?, ?, ?, ?, ?, ?) WHERE id = ?`);
  set.run(...r13, 12);
  set.run(...r12, 13);
  raw2.close();
  const rr = await verifyReadOnly(path2);
  assert.equal(rr.break?.kind, 'reordered', rr.break?.message);
  assert.equal(rr.break!.eventId, 12);
});

test('a tampered checkpoint signature, or another key than the pinned one, is caught', async () => {
  const path = await fixture(20);
  const raw = new Database(path);
  const cp = raw.prepare(`SELECT id, upto_id, signature FROM audit_checkpoints WHERE upto_id = 10`).get() as { id: number; upto_id: number; signature: string };
  const sig = Buffer.from(cp.signature, 'base64');
  sig[3] ^= 1;
  raw.prepare('UPDATE audit_checkpoints SET signature = ? WHERE id = ?').run(sig.toString('base64'), cp.id);
  raw.close();
  const r = await verifyReadOnly(path);
  assert.equal(r.break?.kind, 'bad-signature');
  assert.equal(r.break!.eventId, 10);
  assert.equal(r.break!.checkpointId, cp.id);

  // A checkpoint whose signed content was changed (upto_hash) is a bad signature too.
  const path2 = await fixture(20);
  tamper(path2, `UPDATE audit_checkpoints SET detail_json = '{"previous_upto_id":0}' WHERE upto_id = 15`);
  assert.equal((await verifyReadOnly(path2)).break?.kind, 'bad-signature');

  // Pinning: the right key passes, another key fails.
  const path3 = await fixture(10);
  assert.equal((await verifyReadOnly(path3, { publicKey: signer.publicKeyPem })).ok, true);
  const other = newSigner();
  const pinned = await verifyReadOnly(path3, { publicKey: other.publicKeyPem });
  assert.equal(pinned.break?.kind, 'bad-signature');
  assert.match(pinned.break!.message, new RegExp(`expected ${other.keyId}`));
});

test('retention deletes old events, writes a signed checkpoint, and verify still passes', async () => {
  const path = dbPath();
  const s = await open(path, { checkpointEvery: 7 });
  try {
    const day = 86_400_000;
    const now = Date.now();
    for (let i = 0; i < 30; i++) s.appendAudit(ev(i, { time: new Date(now - 200 * day + i * 1000).toISOString() }));
    for (let i = 30; i < 40; i++) s.appendAudit(ev(i, { time: new Date(now - i * 1000).toISOString() }));
    await s.flush();
    const r = await s.applyRetention(90 * day);
    assert.deepEqual(r, { deleted: 30, fromId: 1, toId: 30, checkpoints: 1 });
    const v = await s.verifyAudit();
    assert.equal(v.ok, true, JSON.stringify(v.break));
    assert.equal(v.prunedUpTo, 30);
    assert.equal(v.events, 10);
    assert.equal(v.firstId, 31);
    assert.equal(v.retentionCheckpoints, 1);
    assert.ok(v.prunedCheckpoints >= 4);
    assert.deepEqual((await s.applyRetention(90 * day)).deleted, 0, 'nothing more to prune');

    // The chain continues; pruning everything keeps it verifiable, and writing goes on from the head.
    s.appendAudit(ev(40, { time: new Date(Date.now() - 5000).toISOString() }));
    await s.flush();
    assert.equal((await s.applyRetention(1000)).deleted, 11);
    assert.equal((await s.verifyAudit()).ok, true);
    s.appendAudit(ev(41));
    await s.flush();
    const after = await s.verifyAudit();
    assert.equal(after.ok, true, JSON.stringify(after.break));
    assert.equal(after.firstId, 42);

    const raw = new Database(path, { readonly: true });
    const cps = raw.prepare(`SELECT detail_json FROM audit_checkpoints WHERE kind = 'retention' ORDER BY id`).pluck().all() as string[];
    raw.close();
    assert.deepEqual(cps.map((d) => { const o = JSON.parse(d); return [o.from_id, o.to_id, o.count]; }), [[1, 30, 30], [31, 41, 11]]);
  } finally {
    await s.close();
  }
  // Deleting the first remaining event after a retention is still caught.
  tamper(path, 'DELETE FROM audit_events WHERE id = 42');
  tamper(path, 'UPDATE audit_chain SET last_id = 41');
  const v = await verifyReadOnly(path);
  assert.equal(v.break?.kind, 'deleted');
});

test('rows without a hash (written by an older Airlock) are chained at the next open', async () => {
  const path = await fixture(3);
  const raw = new Database(path);
  raw.prepare(`INSERT INTO audit_events (time, type, subject, event_json) VALUES (?, 'statement', 'old', ?)`)
    .run('2030-01-01T00:00:00.000Z', JSON.stringify({ time: '2030-01-01T00:00:00Z', type: 'statement', subject: 'old' }));
  raw.close();
  const s = await open(path);
  try {
    const r = await s.verifyAudit();
    assert.equal(r.ok, true, JSON.stringify(r.break));
    assert.equal(r.events, 4);
    const [e] = await s.listAudit({ limit: 1 });
    assert.equal(e!.time, '2030-01-01T00:00:00.000Z', 'the stored time is the normalised one');
  } finally {
    await s.close();
  }
});

test('spool: while the database is locked, events go to the spool file; nothing is lost; order and chain kept', async () => {
  const path = dbPath();
  const s = await open(path, { writeBusyTimeoutMs: 20, retryMinMs: 10, retryMaxMs: 50, checkpointEvery: 100 });
  const locker = new Database(path);
  try {
    for (let i = 0; i < 10; i++) s.appendAudit(ev(i, { subject: `e${i}` }));
    await s.flush();
    locker.exec('BEGIN EXCLUSIVE');
    for (let i = 10; i < 1210; i++) s.appendAudit(ev(i, { subject: `e${i}` }));
    await s.flush(); // does not throw: the events are durable in the spool
    assert.equal(s.pendingAuditEvents, 0);
    const file = s.spoolFile!;
    assert.equal(dirname(file), dirname(path));
    assert.match(file, /audit-spool\.jsonl$/);
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    assert.equal(lines.length, 1201, 'a header and 1200 events');
    assert.deepEqual(lines.slice(1, 4).map((l) => (JSON.parse(l) as AuditEvent).subject), ['e10', 'e11', 'e12']);
    const health = s.auditHealth();
    assert.equal(health.ok, true);
    assert.equal(health.spooled, 1200);
    assert.match(health.reason!, /spooling/);
    assert.equal(locker.prepare('SELECT count(*) FROM audit_events').pluck().get(), 10);

    // Background flushes keep spooling (and retrying) while locked.
    for (let i = 1210; i < 1220; i++) s.appendAudit(ev(i, { subject: `e${i}` }));
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(s.pendingAuditEvents, 0);
    assert.equal(s.auditHealth().spooled, 1210);

    locker.exec('COMMIT');
    await new Promise((r) => setTimeout(r, 300)); // the retry drains the spool by itself
    assert.equal(s.auditHealth().spooled, 0);
    assert.deepEqual(s.auditHealth(), { ok: true, spooled: 0 });
    assert.equal(existsSync(file), false, 'the drained spool file is removed');
    const all = await s.listAudit({ limit: 10_000 });
    assert.deepEqual(all.map((e) => e.subject), Array.from({ length: 1220 }, (_, i) => `e${i}`));
    const r = await s.verifyAudit();
    assert.equal(r.ok, true, JSON.stringify(r.break));
    assert.equal(r.events, 1220);
  } finally {
    if (locker.inTransaction) locker.exec('ROLLBACK');
    locker.close();
    await s.close();
  }
});

test('spool: full -> auditHealth().ok is false, events kept in memory, all written once the database is back', async () => {
  const path = dbPath();
  const s = await open(path, { writeBusyTimeoutMs: 10, retryMinMs: 10_000, spoolMaxBytes: 4096 });
  const locker = new Database(path);
  try {
    locker.exec('BEGIN EXCLUSIVE');
    for (let i = 0; i < 100; i++) s.appendAudit(ev(i, { subject: `e${i}` }));
    await assert.rejects(s.flush(), /AUDIT LOG DEGRADED: audit spool full/);
    const h = s.auditHealth();
    assert.equal(h.ok, false);
    assert.match(h.reason!, /spool full/);
    assert.ok(h.spooled > 0 && h.spooled < 100, `spooled ${h.spooled}`);
    assert.equal(s.pendingAuditEvents + h.spooled, 100, 'nothing lost');
    locker.exec('COMMIT');
    await s.flush();
    assert.equal(s.auditHealth().ok, true);
    assert.deepEqual((await s.listAudit({ limit: 1000 })).map((e) => e.subject), Array.from({ length: 100 }, (_, i) => `e${i}`));
    assert.equal((await s.verifyAudit()).ok, true);
  } finally {
    if (locker.inTransaction) locker.exec('ROLLBACK');
    locker.close();
    await s.close();
  }
});

test('spool: a spool left at close is drained first by the next store that opens the database', async () => {
  const path = dbPath();
  const s = await open(path, { writeBusyTimeoutMs: 10 });
  const locker = new Database(path);
  s.appendAudit(ev(0, { subject: 'before' }));
  await s.flush();
  locker.exec('BEGIN EXCLUSIVE');
  for (let i = 1; i <= 5; i++) s.appendAudit(ev(i, { subject: `spooled${i}` }));
  await s.close(); // the database is locked: the events stay in the spool
  locker.exec('COMMIT');
  locker.close();
  assert.ok(readdirSync(dirname(path)).some((f) => /^audit-spool\..*\.jsonl$/.test(f)), 'a released spool file');
  const s2 = await open(path);
  try {
    s2.appendAudit(ev(6, { subject: 'after' }));
    const all = await s2.listAudit();
    assert.deepEqual(all.map((e) => e.subject), ['before', 'spooled1', 'spooled2', 'spooled3', 'spooled4', 'spooled5', 'after']);
    assert.equal((await s2.verifyAudit()).ok, true);
    assert.ok(!readdirSync(dirname(path)).some((f) => f.startsWith('audit-spool')), 'spool files removed');
  } finally {
    await s2.close();
  }
});

test('the signing key file is generated once, 0600, and reused', () => {
  const file = join(root, 'keys', 'audit-signing.key');
  const a = loadOrCreateSigningKeyFile(file);
  assert.equal(a.generated, true);
  const b = loadOrCreateSigningKeyFile(file);
  assert.equal(b.generated, false);
  assert.equal(a.signer.keyId, b.signer.keyId);
  assert.match(a.signer.keyId, /^[0-9a-f]{16}$/);
  assert.equal((readFileSync(file, 'utf8').match(/BEGIN PRIVATE KEY/) ?? []).length, 1);
});
