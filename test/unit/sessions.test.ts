// src/audit/sessions.ts: audit events to sessions, the export format, replay steps, asciicast v2;
// with hand-made event lists (and an embedded store for the store-facing helpers).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { AuditEvent } from '../../src/core/types.ts';
import { openStore } from '../../src/store/store.ts';
import {
  asciicastSteps, buildSession, exportSessionLines, findSessions, formatCounts, formatCountsLong, formatDuration, formatStatementDuration,
  loadSession, normalizeEvent, parseSessionExport, renderResultSet, replaySteps, sortSessionEvents, summarizeClaims,
  summarizeSession, summarizeSessions,
} from '../../src/audit/sessions.ts';
import { parseSince, play, wrap } from '../../src/cli/sessions.ts';

const T0 = Date.parse('2025-03-01T10:00:00.000Z');
const at = (ms: number) => new Date(T0 + ms).toISOString();
const who = { subject: 'ci-runner', issuer: 'airlock', connection: 'analytics', source: '10.0.0.7' };

/** A closed session: three statements (one denied, one failed at the target) and a protocol error. */
function closedSession(id = 'pg-a'): AuditEvent[] {
  const base = { ...who, sessionId: id, bundleVersion: 'sha256:abc' };
  return [
    { ...base, id: 1, time: at(0), type: 'session.start',
      detail: { user: 'ci', tokenId: 'tok123', application: 'psql', tls: true, claims: { sub: 'ci-runner', groups: ['ci'] }, groups: ['ci'] } },
    { ...base, id: 2, time: at(120), type: 'statement', statement: 'SELECT id, card FROM customers', decision: 'allow',
      policy: 'ci-read', rule: 'allow[0]', reason: 'allowed', durationMs: 1.234, rows: 3,
      detail: { masked: [{ column: 'customers.card', strategy: 'last4', values: 3 }], approval: 'apr_1',
        results: [{ columns: ['id', 'card'], rows: [['1', '**** 1111'], ['2', null]], truncated: true }] } },
    { ...base, id: 3, time: at(300), type: 'statement', statement: 'DROP TABLE orders', decision: 'deny',
      policy: 'ci-read', rule: 'deny[0]', reason: 'DDL is not allowed from CI' },
    { ...base, id: 4, time: at(9300), type: 'statement', statement: 'SELECT * FROM nope', decision: 'allow',
      policy: 'ci-read', rule: 'allow[0]', reason: 'allowed', durationMs: 0.5, error: '42P01: relation "nope" does not exist' },
    { ...base, id: 5, time: at(9400), type: 'protocol.error', error: 'message too long', detail: { phase: 'ready' } },
    { ...base, id: 6, time: at(9500), type: 'session.end', durationMs: 9510, detail: { outcome: 'closed', statements: 3, denied: 1 } },
  ];
}

test('a closed session: identity from session.start, counts from statements, duration from session.end', () => {
  const s = summarizeSession('pg-a', [...closedSession()].reverse()); // any order in
  assert.deepEqual(s, {
    id: 'pg-a', start: at(0), firstTime: at(0), end: at(9500), lastTime: at(9500), durationMs: 9510, outcome: 'closed',
    startPruned: false, subject: 'ci-runner', issuer: 'airlock', connection: 'analytics', source: '10.0.0.7', user: 'ci',
    application: 'psql', tls: true, groups: ['ci'], claims: { sub: 'ci-runner', groups: ['ci'] }, tokenId: 'tok123',
    counts: { statements: 3, allowed: 2, denied: 1, review: 0, errors: 1 }, recordedCounts: { statements: 3, denied: 1 }, events: 6,
  });
  assert.equal(formatCounts(s.counts), '3: 2 allowed, 1 denied, 1 error');
  assert.equal(formatCountsLong(s.counts), '3 statements (2 allowed, 1 denied, 1 error)');
  assert.equal(formatCountsLong({ statements: 0, allowed: 0, denied: 0, review: 0, errors: 0 }), '0 statements');
});

test('buildSession: statements in order with offsets, masking, approval, results; other events as notes', () => {
  const s = buildSession('pg-a', closedSession());
  assert.deepEqual(s.statements.map((x) => [x.index, x.offsetMs, x.statement, x.decision]), [
    [1, 120, 'SELECT id, card FROM customers', 'allow'], [2, 300, 'DROP TABLE orders', 'deny'], [3, 9300, 'SELECT * FROM nope', 'allow'],
  ]);
  const [first, denied, failed] = s.statements;
  assert.deepEqual(first.masked, [{ column: 'customers.card', strategy: 'last4', values: 3 }]);
  assert.equal(first.approval, 'apr_1');
  assert.equal(first.rows, 3);
  assert.deepEqual(first.results, [{ columns: ['id', 'card'], rows: [['1', '**** 1111'], ['2', null]], truncated: true }]);
  assert.equal(denied.reason, 'DDL is not allowed from CI');
  assert.deepEqual(denied.masked, []);
  assert.equal(failed.error, '42P01: relation "nope" does not exist');
  assert.deepEqual(s.timeline.map((i) => (i.kind === 'note' ? `note:${i.note.type}:${i.note.text}` : `#${i.statement.index}`)),
    ['#1', '#2', '#3', 'note:protocol.error:message too long']);
  assert.equal(s.auditEvents.length, 6);
  assert.throws(() => buildSession('x', []), /no events/);
});

test('event order: by time, then id (a refusal written before an earlier statement completed)', () => {
  const events: AuditEvent[] = [
    { id: 11, time: at(5), type: 'statement', sessionId: 's', statement: 'B', decision: 'deny' },
    { id: 12, time: at(3), type: 'statement', sessionId: 's', statement: 'A', decision: 'allow' },
    { id: 10, time: at(0), type: 'session.start', sessionId: 's' },
    { id: 14, time: at(5), type: 'statement', sessionId: 's', statement: 'D', decision: 'allow' },
    { id: 13, time: at(5), type: 'statement', sessionId: 's', statement: 'C', decision: 'allow' },
  ];
  assert.deepEqual(sortSessionEvents(events).map((e) => e.statement ?? e.type), ['session.start', 'A', 'B', 'C', 'D']);
  assert.deepEqual(buildSession('s', events).statements.map((x) => x.statement), ['A', 'B', 'C', 'D']);
});

test('outcomes: open, start pruned, refused, auth failure, review', () => {
  const open = summarizeSession('o', closedSession('o').slice(0, 3));
  assert.equal(open.outcome, 'open');
  assert.equal(open.durationMs, undefined);
  assert.equal(open.end, undefined);

  const pruned = summarizeSession('p', closedSession('p').slice(2));
  assert.equal(pruned.startPruned, true);
  assert.equal(pruned.outcome, 'closed');
  assert.equal(pruned.start, undefined);
  assert.equal(pruned.firstTime, at(300));
  assert.equal(pruned.subject, 'ci-runner', 'identity from the events that remain');
  assert.deepEqual(pruned.counts, { statements: 2, allowed: 1, denied: 1, review: 0, errors: 1 });
  assert.equal(buildSession('p', closedSession('p').slice(2)).statements[0].offsetMs, 0, 'offsets from the first known event');

  const refused = summarizeSession('r', [{ ...who, time: at(0), type: 'session.end', sessionId: 'r', decision: 'deny',
    reason: 'no policy allows ci-runner on analytics', detail: { outcome: 'refused', user: 'ci' } }]);
  assert.equal(refused.outcome, 'refused');
  assert.equal(refused.startPruned, false);
  assert.equal(refused.reason, 'no policy allows ci-runner on analytics');
  assert.equal(refused.user, 'ci');

  const auth = summarizeSession('f', [{ time: at(0), type: 'auth.failure', sessionId: 'f', connection: 'analytics', source: '10.0.0.9',
    reason: 'token expired', detail: { user: 'bot', tokenId: 'tokX' } }]);
  assert.equal(auth.outcome, 'auth-failed');
  assert.equal(auth.startPruned, false);
  assert.equal(auth.reason, 'token expired');
  assert.equal(auth.tokenId, 'tokX');

  const review = summarizeSession('v', [
    { ...who, time: at(0), type: 'session.start', sessionId: 'v' },
    { ...who, time: at(1), type: 'statement', sessionId: 'v', statement: 'DELETE FROM t WHERE id = 1', decision: 'review', reason: 'needs approval' },
  ]);
  assert.deepEqual(review.counts, { statements: 1, allowed: 0, denied: 0, review: 1, errors: 0 });
  assert.equal(review.outcome, 'open');
});

test('summarizeSessions groups by session id, oldest first, ignoring events without one', () => {
  const later = closedSession('pg-b').map((e) => ({ ...e, time: at(Date.parse(e.time) - T0 + 60_000) }));
  const list = summarizeSessions([...later, ...closedSession('pg-a'), { time: at(1), type: 'token.create' }]);
  assert.deepEqual(list.map((s) => s.id), ['pg-a', 'pg-b']);
});

test('export: a header line, then the events in the documented field order; parse reads it back', () => {
  const s = buildSession('pg-a', closedSession());
  const lines = exportSessionLines(s, { generator: 'airlock test', exportedAt: '2025-03-02T00:00:00.000Z' });
  assert.equal(lines.length, 7);
  assert.deepEqual(JSON.parse(lines[0]), {
    format: 'airlock-session', version: 1, session: 'pg-a', exportedAt: '2025-03-02T00:00:00.000Z', generator: 'airlock test',
    events: 6, start: at(0), end: at(9500), subject: 'ci-runner', issuer: 'airlock', connection: 'analytics', source: '10.0.0.7',
    outcome: 'closed',
  });
  assert.deepEqual(Object.keys(JSON.parse(lines[2]) as object),
    ['id', 'time', 'type', 'sessionId', 'subject', 'issuer', 'connection', 'source', 'statement', 'decision', 'policy', 'rule', 'reason', 'bundleVersion', 'durationMs', 'rows', 'detail']);
  const back = parseSessionExport(lines.join('\n') + '\n');
  assert.equal(back.header.session, 'pg-a');
  assert.deepEqual(back.events, closedSession());
  assert.deepEqual(buildSession('pg-a', back.events).statements, s.statements);

  assert.deepEqual(Object.keys(normalizeEvent({ type: 'statement', extra: 1, time: 'x' } as unknown as AuditEvent)), ['time', 'type', 'extra']);
  assert.throws(() => parseSessionExport(''), /empty/);
  assert.throws(() => parseSessionExport('{"format":"asciicast"}'), /line 1: not an airlock-session export/);
  assert.throws(() => parseSessionExport('{"format":"airlock-session","version":2,"session":"x"}'), /unsupported airlock-session version 2/);
  assert.throws(() => parseSessionExport(`${lines[0]}\nnot json`), /line 2: not JSON/);
  assert.throws(() => parseSessionExport(`${lines[0]}\n{"time":"t","type":"statement","sessionId":"other"}`), /line 2: event of session "other"/);
  assert.throws(() => parseSessionExport(`${lines[0]}\n{"sessionId":"pg-a"}`), /line 2: an event needs "time" and "type"/);
});

test('replay steps: psql-like transcript, paced by event times and statement durations, long idle cut', () => {
  const s = buildSession('pg-a', closedSession());
  const steps = replaySteps(s);
  const text = steps.map((x) => x.text).join('');
  assert.equal(text, [
    '-- session pg-a: ci-runner@analytics from 10.0.0.7 (psql), started 2025-03-01T10:00:00.000Z',
    'analytics=> SELECT id, card FROM customers;',
    ' id |   card',
    '----+-----------',
    ' 1  | **** 1111',
    ' 2  |',
    '(2 rows recorded; later rows were not recorded)',
    '-- allow (policy ci-read rule allow[0]) 3 rows 1.2 ms',
    '-- approved by request apr_1',
    '-- masked: customers.card (last4, 3 values)',
    'analytics=> DROP TABLE orders;',
    '-- DENIED: DDL is not allowed from CI (policy ci-read rule deny[0])',
    '-- (idle 9.0s)',
    'analytics=> SELECT * FROM nope;',
    '-- allow (policy ci-read rule allow[0]) 0.50 ms',
    '-- ERROR: 42P01: relation "nope" does not exist',
    '-- protocol.error: message too long',
    '-- session closed after 9.5s: 3 statements (2 allowed, 1 denied, 1 error)',
    '',
  ].join('\n'));
  const waits = steps.map((x) => Math.round(x.waitMs * 1000) / 1000);
  // header, stmt1 at 120, its outcome 1.234 later, stmt2 at 300, its outcome, stmt3 after a 9 s gap cut to 5 s, ...
  assert.deepEqual(waits, [0, 120, 1.234, 178.766, 0, 5000, 0.5, 99.5, 100]);
  const real = replaySteps(s, { maxIdleMs: undefined });
  assert.equal(real[5].waitMs, 9000);
  assert.doesNotMatch(real.map((x) => x.text).join(''), /idle/);

  const paint = { deny: (x: string) => `<r>${x}</r>`, allow: (x: string) => `<g>${x}</g>`, dim: (x: string) => x, review: (x: string) => x };
  assert.match(replaySteps(s, { paint }).map((x) => x.text).join(''), /^<r>-- DENIED: DDL is not allowed from CI<\/r> \(policy/m);

  const multi = buildSession('m', [{ time: at(0), type: 'statement', sessionId: 'm', connection: 'db', statement: 'SELECT 1\nFROM t;', decision: 'allow' }]);
  assert.match(replaySteps(multi).map((x) => x.text).join(''), /^db=> SELECT 1\ndb-> FROM t;\n-- allow\n-- \(session still open/m);
});

test('renderResultSet: psql aligned output', () => {
  assert.deepEqual(renderResultSet({ columns: ['n'], rows: [['1']] }), [' n', '---', ' 1', '(1 row)']);
});

test('asciicast v2: output events with their gaps, idle limits, errors', () => {
  const cast = fs.readFileSync(path.resolve('test/fixtures/session-recording.cast'), 'utf8');
  const { header, steps } = asciicastSteps(cast);
  assert.equal(header.width, 80);
  assert.deepEqual(steps.map((s) => [Math.round(s.waitMs), s.text]), [
    [50, 'analytics=> '], [260, 'SELECT 1;\r\n'], [140, ' ?column? \r\n----------\r\n        1\r\n(1 row)\r\n\r\n'], [8550, 'analytics=> \\q\r\n'],
  ]);
  assert.equal(asciicastSteps(cast, { maxIdleMs: 1000 }).steps[3].waitMs, 1000);
  const limited = '{"version":2,"width":80,"height":24,"idle_time_limit":0.1}\n[0.5,"o","a"]\n';
  assert.equal(asciicastSteps(limited).steps[0].waitMs, 100);
  assert.equal(asciicastSteps(limited, { maxIdleMs: 50 }).steps[0].waitMs, 50);
  assert.equal(asciicastSteps(limited, { maxIdleMs: 50, realTime: true }).steps[0].waitMs, 500);
  assert.throws(() => asciicastSteps('{"version":1}'), /not an asciicast v2 recording/);
  assert.throws(() => asciicastSteps('nope'), /first line is not a JSON header/);
  assert.throws(() => asciicastSteps('{"version":2,"width":1,"height":1}\n["x"]'), /line 2: expected \[time, type, data\]/);
});

test('text helpers: durations, claims, wrapping, --since', () => {
  assert.deepEqual([850, 1234, 59_999, 130_000, 3_723_000, 90_000_000].map(formatDuration), ['850ms', '1.2s', '59.9s', '2m10s', '1h02m', '1d01h']);
  assert.deepEqual([0.42, 1.23, 35.2, 1500].map(formatStatementDuration), ['0.42 ms', '1.2 ms', '35 ms', '1.5 s']);
  assert.equal(summarizeClaims({ sub: 'bot', aud: ['a', 'b'], exp: 1_700_000_000, groups: ['x'], ctx: { a: 1 } }),
    'sub=bot, aud=a,b, exp=2023-11-14T22:13:20Z, ctx={…}');
  const many = Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`claim${i}`, `value${i}`]));
  assert.match(summarizeClaims(many, 60), /^claim0=value0, .*, \+\d+ more$/);
  assert.ok(summarizeClaims(many, 60).length <= 60);

  assert.deepEqual(wrap('SELECT a, b, c FROM table_one JOIN table_two USING (id)', 30, 4),
    ['    SELECT a, b, c FROM', '    table_one JOIN table_two', '    USING (id)']);
  assert.deepEqual(wrap('x'.repeat(50), 30, 4), ['    ' + 'x'.repeat(26), '    ' + 'x'.repeat(24)]);
  assert.deepEqual(wrap('SELECT 1\n  FROM t', 80, 2), ['  SELECT 1', '    FROM t']);

  const now = Date.parse('2025-03-01T12:00:00Z');
  assert.equal(parseSince('1h', now), '2025-03-01T11:00:00.000Z');
  assert.equal(parseSince('2025-02-01T00:00:00+01:00', now), '2025-01-31T23:00:00.000Z');
  assert.throws(() => parseSince('yesterday', now), /neither a duration/);
});

test('play: waits divided by speed; no waits with wait: false', async () => {
  const steps = [{ waitMs: 100, text: 'a' }, { waitMs: 100, text: 'b' }];
  let out = '';
  let began = performance.now();
  await play(steps, { speed: 2, wait: true, write: (s) => (out += s) });
  const paced = performance.now() - began;
  assert.equal(out, 'ab');
  assert.ok(paced >= 90 && paced < 1000, `paced ${paced} ms`);
  began = performance.now();
  await play(steps, { speed: 1, wait: false, write: () => {} });
  assert.ok(performance.now() - began < 50);
});

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-sessions-unit-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

test('store: loadSession reads every event of a session; findSessions finds the latest, pruned starts included', async () => {
  const store = await openStore({ type: 'embedded', path: path.join(root, 'airlock.db') });
  try {
    const strip = (e: AuditEvent): AuditEvent => ({ ...e, id: undefined });
    // pg-old: start pruned (only its later events remain); pg-a: complete; pg-r: refused; pg-o: open, another subject.
    for (const e of closedSession('pg-old').slice(2)) store.appendAudit({ ...strip(e), time: at(Date.parse(e.time) - T0 - 60_000) });
    for (const e of closedSession('pg-a')) store.appendAudit(strip(e));
    store.appendAudit({ ...who, time: at(20_000), type: 'session.end', sessionId: 'pg-r', decision: 'deny', reason: 'no', detail: { outcome: 'refused' } });
    store.appendAudit({ ...who, subject: 'other', time: at(30_000), type: 'session.start', sessionId: 'pg-o' });
    store.appendAudit({ time: at(30_001), type: 'token.create', subject: 'other' });
    for (let i = 0; i < 3; i++) {
      store.appendAudit({ ...who, subject: 'other', time: at(30_100 + i), type: 'statement', sessionId: 'pg-o', statement: `SELECT ${i}`, decision: 'allow' });
    }
    await store.flush();

    const s = await loadSession(store, 'pg-a');
    assert.ok(s);
    assert.deepEqual(s.auditEvents.map(strip), closedSession('pg-a').map(strip));
    assert.equal(await loadSession(store, 'pg-none'), undefined);

    const all = await findSessions(store);
    assert.deepEqual(all.map((x) => [x.id, x.outcome, x.startPruned, x.counts.statements]),
      [['pg-old', 'closed', true, 2], ['pg-a', 'closed', false, 3], ['pg-r', 'refused', false, 0], ['pg-o', 'open', false, 3]]);
    assert.deepEqual((await findSessions(store, { limit: 2 })).map((x) => x.id), ['pg-r', 'pg-o']);
    assert.deepEqual((await findSessions(store, { subject: 'other' })).map((x) => x.id), ['pg-o']);
    assert.deepEqual((await findSessions(store, { connection: 'elsewhere' })).map((x) => x.id), []);
    assert.deepEqual((await findSessions(store, { since: at(15_000) })).map((x) => x.id), ['pg-r', 'pg-o']);
  } finally {
    await store.close();
  }
});
