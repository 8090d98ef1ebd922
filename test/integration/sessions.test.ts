// `airlock sessions list|show|export|replay` against the store of a real gateway that served a
// real psql session (several statements, one of them denied) on the real PostgreSQL server.
// The commands run as child processes of the real CLI (bin/airlock.js), reading the gateway's
// data directory through a small airlock.yaml.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql, run, type RunResult } from '../helpers/clients.ts';
import type { AuditEvent } from '../../src/core/types.ts';
import type { SessionSummary } from '../../src/audit/sessions.ts';

const ENTRY = path.resolve('bin/airlock.js');
const FIXTURE_CAST = path.resolve('test/fixtures/session-recording.cast');
const show = (r: RunResult) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

const POLICIES = {
  'p.yaml': `
connections:
  - name: analytics
    type: postgres
policies:
  - name: ci-read
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
    deny:
      - sql: [drop, truncate]
        message: DDL is not allowed from CI
    mask:
      - columns: ["customers.card_number"]
        with: last4
`,
};

const STATEMENTS = [
  'SELECT 1',
  'SELECT id, card_number FROM customers ORDER BY id',
  'SELECT count(*) FROM orders',
  'DROP TABLE orders', // denied: psql stops here (ON_ERROR_STOP)
];

let db: TestDb;
let gw: TestGateway;
let tmp: string;
let configFile: string;
let sessionId: string;
let storeEvents: AuditEvent[];

const cli = (args: string[], env: Record<string, string> = {}) =>
  run(process.execPath, [ENTRY, 'sessions', ...args, '-c', configFile], { env: { NO_COLOR: '', ...env }, timeoutMs: 30_000 });

before(async () => {
  db = await createTestDb();
  gw = await startTestGateway({ policies: POLICIES, connections: [{ name: 'analytics', url: db.url }] });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-sessions-'));
  configFile = path.join(tmp, 'airlock.yaml');
  fs.writeFileSync(configFile, `data_dir: ${JSON.stringify(gw.dir)}\n`);

  const { token } = await gw.token('ci-runner', ['ci']);
  const [last, ...first] = [...STATEMENTS].reverse();
  const extra = first.reverse().flatMap((s) => ['-c', s]);
  const r = await psql(gw.conninfo('analytics', 'ci-runner', 'application_name=sessions-test'), token, last, extra);
  assert.equal(r.code, 1, `psql stops at the denied statement\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stderr, /DDL is not allowed from CI/);

  const start = (await gw.gw.store.listAudit({ type: 'session.start', subject: 'ci-runner' }));
  assert.equal(start.length, 1);
  sessionId = start[0].sessionId!;
  // The gateway records session.end when it sees the client go.
  for (let i = 0; i < 100; i++) {
    storeEvents = await gw.gw.store.listAudit({ sessionId, limit: 1000 });
    if (storeEvents.some((e) => e.type === 'session.end')) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  assert.ok(storeEvents.some((e) => e.type === 'session.end'), 'session.end recorded');
});

after(async () => {
  await gw?.close();
  await db?.drop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('sessions list: the session with its identity, counts and outcome', { timeout: 60_000 }, async () => {
  const [table, json, other, since] = await Promise.all([
    cli(['list']), cli(['list', '--json', '--subject', 'ci-runner']), cli(['list', '--subject', 'nobody']), cli(['list', '--since', '1h', '--json']),
  ]);
  assert.equal(table.code, 0, show(table));
  const lines = table.stdout.trimEnd().split('\n');
  assert.match(lines[0], /^SESSION\s+START\s+DURATION\s+SUBJECT\s+CONNECTION\s+SOURCE\s+STATEMENTS\s+ALLOWED\s+DENIED\s+REVIEW\s+OUTCOME$/);
  const row = lines.find((l) => l.startsWith(sessionId));
  assert.ok(row, show(table));
  assert.match(row, /\bci-runner\s+analytics\s+127\.0\.0\.1\s+4\s+3\s+1\s+0\s+closed$/);

  assert.equal(json.code, 0, show(json));
  const list = JSON.parse(json.stdout) as SessionSummary[];
  assert.equal(list.length, 1);
  const s = list[0];
  assert.equal(s.id, sessionId);
  assert.equal(s.subject, 'ci-runner');
  assert.equal(s.issuer, 'airlock');
  assert.equal(s.connection, 'analytics');
  assert.equal(s.application, 'sessions-test');
  assert.deepEqual(s.groups, ['ci']);
  assert.equal(s.outcome, 'closed');
  assert.equal(s.startPruned, false);
  assert.deepEqual(s.counts, { statements: 4, allowed: 3, denied: 1, review: 0, errors: 0 });
  assert.deepEqual(s.recordedCounts, { statements: 4, denied: 1 });
  assert.ok(typeof s.durationMs === 'number' && s.durationMs >= 0);

  assert.equal(other.code, 0, show(other));
  assert.equal(other.stdout.trim(), '(none)');
  assert.equal(since.code, 0, show(since));
  assert.deepEqual((JSON.parse(since.stdout) as SessionSummary[]).map((x) => x.id), [sessionId]);

  const bad = await cli(['list', '--since', 'yesterday']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--since: "yesterday" is neither a duration/);
});

test('sessions show: the header, then every statement in order with its decision', { timeout: 60_000 }, async () => {
  const r = await cli(['show', sessionId]);
  assert.equal(r.code, 0, show(r));
  const out = r.stdout;
  assert.doesNotMatch(out, /\x1b\[/, 'no colors when stdout is not a terminal');
  assert.match(out, new RegExp(`^session ${sessionId}  closed$`, 'm'));
  assert.match(out, /^  subject\s+ci-runner  issuer airlock  token \w+$/m);
  assert.match(out, /^  groups\s+ci$/m);
  assert.match(out, /^  source\s+127\.0\.0\.1$/m);
  assert.match(out, /^  connection\s+analytics  user ci-runner$/m);
  assert.match(out, /^  application\s+sessions-test$/m);
  assert.match(out, /^  tls\s+(yes|no)$/m);
  assert.match(out, /^  statements\s+4: 3 allowed, 1 denied$/m);

  const heads = [...out.matchAll(/^ +#(\d+) \+(\d+\.\d{3})s  (ALLOW |DENIED|REVIEW)  (.*)\n {6}(.*)$/gm)];
  assert.deepEqual(heads.map((m) => m[5]), STATEMENTS, out);
  assert.deepEqual(heads.map((m) => m[1]), ['1', '2', '3', '4']);
  assert.deepEqual(heads.map((m) => m[3].trim()), ['ALLOW', 'ALLOW', 'ALLOW', 'DENIED']);
  const offsets = heads.map((m) => Number(m[2]));
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), 'relative times increase');
  assert.match(heads[0][4], /^1 row  \d+(\.\d+)? ms  policy ci-read rule allow\[0\]$/);
  assert.match(heads[1][4], /^3 rows /);
  assert.match(out, /^ {6}masked: (public\.)?customers\.card_number \(last4, 3 values\)$/m);
  assert.match(heads[3][4], /^policy ci-read rule deny\[0\]$/);
  assert.match(out, /^ {6}DROP TABLE orders\n {6}reason: DDL is not allowed from CI$/m);

  const json = await cli(['show', sessionId, '--json']);
  assert.equal(json.code, 0, show(json));
  const s = JSON.parse(json.stdout) as { statements: { statement: string; decision: string; rows?: number }[] };
  assert.deepEqual(s.statements.map((x) => [x.statement, x.decision, x.rows]),
    [['SELECT 1', 'allow', 1], [STATEMENTS[1], 'allow', 3], [STATEMENTS[2], 'allow', 1], ['DROP TABLE orders', 'deny', undefined]]);

  // Colors only for a terminal, and never with NO_COLOR: a child's stdout is a pipe, so no colors either way.
  const nc = await cli(['show', sessionId], { NO_COLOR: '1' });
  assert.equal(nc.stdout, out);
});

test('sessions export: JSON lines in the airlock-session format, matching the store', { timeout: 60_000 }, async () => {
  const r = await cli(['export', sessionId]);
  assert.equal(r.code, 0, show(r));
  assert.ok(r.stdout.endsWith('\n'));
  const lines = r.stdout.trimEnd().split('\n');
  const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const header = parsed[0];
  assert.deepEqual(Object.keys(header).slice(0, 3), ['format', 'version', 'session']);
  assert.equal(header.format, 'airlock-session');
  assert.equal(header.version, 1);
  assert.equal(header.session, sessionId);
  assert.equal(header.events, storeEvents.length);
  assert.equal(header.outcome, 'closed');
  assert.equal(header.subject, 'ci-runner');
  assert.ok(!Number.isNaN(Date.parse(header.exportedAt as string)));
  assert.deepEqual(parsed.slice(1), storeEvents, 'every event, as stored, in order');
  assert.deepEqual(parsed.slice(1).map((e) => e.type), ['session.start', 'statement', 'statement', 'statement', 'statement', 'session.end']);
  assert.deepEqual(Object.keys(parsed[2]).slice(0, 4), ['id', 'time', 'type', 'sessionId'], 'stable field order');

  const file = path.join(tmp, 'session.jsonl');
  const w = await cli(['export', sessionId, '--output', file]);
  assert.equal(w.code, 0, show(w));
  assert.equal(w.stdout, '');
  assert.match(w.stderr, new RegExp(`wrote session ${sessionId} \\(6 events\\) to `));
  const written = fs.readFileSync(file, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as unknown);
  assert.deepEqual(written.slice(1), parsed.slice(1));

  // The export is replayable and showable on its own, without the store.
  const [fromFile, fromStore] = await Promise.all([cli(['show', file]), cli(['show', sessionId])]);
  assert.equal(fromFile.code, 0, show(fromFile));
  assert.equal(fromFile.stdout, fromStore.stdout);
});

test('sessions replay: the statements in order, with their outcomes, paced by --speed', { timeout: 60_000 }, async () => {
  const r = await cli(['replay', sessionId, '--speed', '1000']);
  assert.equal(r.code, 0, show(r));
  const lines = r.stdout.trimEnd().split('\n');
  assert.match(lines[0], new RegExp(`^-- session ${sessionId}: ci-runner@analytics from 127\\.0\\.0\\.1 \\(sessions-test\\), started `));
  const prompts = lines.filter((l) => l.startsWith('analytics=> '));
  assert.deepEqual(prompts, STATEMENTS.map((s) => `analytics=> ${s};`));
  const afterPrompt = (s: string) => lines.slice(lines.indexOf(`analytics=> ${s};`) + 1);
  assert.match(afterPrompt('SELECT 1')[0], /^-- allow \(policy ci-read rule allow\[0\]\) 1 row \d+(\.\d+)? ms$/);
  const masked = afterPrompt(STATEMENTS[1]);
  assert.match(masked[0], /^-- allow \(policy ci-read rule allow\[0\]\) 3 rows /);
  assert.match(masked[1], /^-- masked: (public\.)?customers\.card_number \(last4, 3 values\)$/);
  assert.equal(afterPrompt('DROP TABLE orders')[0], '-- DENIED: DDL is not allowed from CI (policy ci-read rule deny[0])');
  assert.match(lines.at(-1)!, /^-- session closed after \S+: 4 statements \(3 allowed, 1 denied\)$/);

  const [noWait, fromExport] = await Promise.all([
    cli(['replay', sessionId, '--no-wait']),
    (async () => {
      const file = path.join(tmp, 'replay.jsonl');
      const w = await cli(['export', sessionId, '-o', file]);
      assert.equal(w.code, 0, show(w));
      return cli(['replay', file, '--no-wait']);
    })(),
  ]);
  assert.equal(noWait.code, 0, show(noWait));
  assert.equal(noWait.stdout, r.stdout);
  assert.equal(fromExport.stdout, r.stdout);
});

test('sessions replay plays a terminal recording (asciicast v2) when the session has one', { timeout: 60_000 }, async () => {
  const id = 'pg-recording-test';
  const base = { sessionId: id, subject: 'human', issuer: 'airlock', connection: 'analytics', source: '127.0.0.1' };
  const t0 = Date.now();
  gw.gw.store.appendAudit({ ...base, time: new Date(t0).toISOString(), type: 'session.start', detail: { recording: FIXTURE_CAST, groups: [] } });
  gw.gw.store.appendAudit({ ...base, time: new Date(t0 + 1000).toISOString(), type: 'session.end', durationMs: 1000, detail: { outcome: 'closed', statements: 0, denied: 0 } });
  await gw.gw.store.flush();

  const expected = 'analytics=> SELECT 1;\r\n ?column? \r\n----------\r\n        1\r\n(1 row)\r\n\r\nanalytics=> \\q\r\n';
  const began = Date.now();
  const r = await cli(['replay', id, '--speed', '10']);
  const took = Date.now() - began;
  assert.equal(r.code, 0, show(r));
  assert.equal(r.stdout, expected, 'only the output ("o") events, in order');
  // 0.45 s of output, then an 8.55 s idle gap cut to 5 s: about 0.55 s at 10x (plus process start).
  assert.ok(took >= 500, `paced: took ${took} ms`);

  const sql = await cli(['replay', id, '--sql', '--no-wait']);
  assert.equal(sql.code, 0, show(sql));
  assert.match(sql.stdout, /^-- session pg-recording-test: human@analytics from 127\.0\.0\.1, started /);
  const shown = await cli(['show', id]);
  assert.match(shown.stdout, new RegExp(`^  recording\\s+${FIXTURE_CAST.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
});

test('an unknown session id: exit status 1 and a clear message', { timeout: 60_000 }, async () => {
  for (const cmd of ['show', 'export', 'replay']) {
    const r = await cli([cmd, 'pg-no-such-session']);
    assert.equal(r.code, 1, `${cmd}: ${show(r)}`);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^airlock: no session with id pg-no-such-session in the audit log/);
  }
});
