// COPY ... TO STDOUT through the gateway while masking applies: the gateway describes the COPY's
// query on the session itself before it runs, then masks every row of its text or CSV output.
// Real psql (COPY and \copy) against real PostgreSQL; the stored data never changes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql, run } from '../helpers/clients.ts';

const POLICIES = {
  'p.yaml': `
connections:
  - name: analytics
    type: postgres
policies:
  - name: ci-masked
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select, insert, copy, set, create, drop]
    mask:
      - columns: ["customers.card_number"]
        with: last4
      - detect: [email]
        with: redact
  - name: dba-clear
    subjects: [{ group: dba }]
    connections: [analytics]
    allow:
      - sql: [select, copy]
`,
};

let db: TestDb;
let gw: TestGateway;
let ci: string;
let dba: string;
let dir: string;

before(async () => {
  db = await createTestDb();
  // A second `customers` with its columns in another order: which one a name means depends on
  // the session's search_path, which only the session itself knows.
  await db.query(`CREATE SCHEMA shadow;
    CREATE TABLE shadow.customers (card_number text, note text, id int);
    INSERT INTO shadow.customers VALUES ('6011 0000 0000 0004', E'tab\\there, quote " and back\\\\slash', 7);
    CREATE TABLE inbox (id int, body text);`);
  gw = await startTestGateway({ policies: POLICIES, connections: [{ name: 'analytics', url: db.url }] });
  ci = (await gw.token('ci-runner', ['ci'])).token;
  dba = (await gw.token('dba', ['dba'])).token;
  dir = mkdtempSync(path.join(tmpdir(), 'airlock-copy-'));
});

after(async () => {
  await gw?.close();
  await db?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const asCi = (sql: string, extra: string[] = []) => psql(gw.conninfo('analytics', 'ci-runner'), ci, sql, extra);
const CARDS = /4111 1111 1111 1111|5500 0000 0000 0004|3400 0000 0000 009|6011 0000 0000 0004/;
const EMAILS = /ada@example\.com|grace@example\.com|alan@example\.org/;

test('COPY table TO STDOUT (text): card numbers and emails masked for ci-runner, clear for dba; rows and columns intact', async () => {
  const masked = await asCi('COPY customers TO STDOUT');
  assert.equal(masked.code, 0, masked.stderr);
  assert.doesNotMatch(masked.stdout, CARDS);
  assert.doesNotMatch(masked.stdout, EMAILS);
  const rows = masked.stdout.trim().split('\n').map((l) => l.split('\t'));
  assert.equal(rows.length, 3);
  assert.deepEqual(rows[0], ['1', 'Ada', '[REDACTED]', '**** **** **** 1111']);
  const clear = await psql(gw.conninfo('analytics', 'dba'), dba, 'COPY customers TO STDOUT');
  const direct = await run('psql', ['-X', '-At', '-c', 'COPY customers TO STDOUT', db.url]);
  assert.equal(clear.stdout, direct.stdout, 'unmasked COPY output is byte for byte what PostgreSQL sends');
  assert.match(clear.stdout, /ada@example\.com\t4111 1111 1111 1111/);
});

test('COPY (query) TO STDOUT as CSV with a header: aliases and joins do not escape the column rule', async () => {
  const r = await asCi(`COPY (SELECT o.id, c.card_number AS pay, c.email AS "e,mail" FROM orders o JOIN customers c ON c.id = o.customer_id
    WHERE o.id <= 3 ORDER BY o.id) TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE (pay))`);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines[0], 'id,pay,"e,mail"', 'the header line passes unchanged');
  assert.equal(lines.length, 4);
  assert.doesNotMatch(r.stdout, CARDS);
  assert.doesNotMatch(r.stdout, EMAILS);
  assert.match(lines[1], /^1,"\*\*\*\* \*\*\*\* \*\*\*\* 0004",\[REDACTED\]$/, 'FORCE_QUOTE is kept for the masked column');
});

test('psql \\copy to a local file writes masked rows; the stored rows are unchanged', async () => {
  const file = path.join(dir, 'out.csv');
  const r = await asCi(`\\copy (SELECT name, email, card_number FROM customers ORDER BY id) TO '${file}' WITH (FORMAT csv)`);
  assert.equal(r.code, 0, r.stderr);
  const out = readFileSync(file, 'utf8');
  assert.doesNotMatch(out, CARDS);
  assert.match(out, /^Ada,\[REDACTED\],\*\*\*\* \*\*\*\* \*\*\*\* 1111$/m);
  const stored = await db.query('SELECT email, card_number FROM customers WHERE id = 1');
  assert.deepEqual(stored.rows[0], { email: 'ada@example.com', card_number: '4111 1111 1111 1111' });
});

test('the COPY is described in the session itself: search_path picks the table, escapes survive re-encoding', async () => {
  const r = await asCi('COPY customers TO STDOUT', ['-q', '-c', 'SET search_path TO shadow, public']);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, CARDS);
  // shadow.customers has card_number first; the note keeps its escaped tab, quote and backslash.
  assert.equal(r.stdout, '**** **** **** 0004\ttab\\there, quote " and back\\\\slash\t7\n');
});

test('COPY that cannot be masked is refused with a reason and the session goes on', async () => {
  for (const [sql, reason] of [
    ['COPY customers TO STDOUT (FORMAT binary)', /binary COPY output cannot be masked/],
    ['SELECT 1; COPY customers TO STDOUT', /COPY output is masked only for a single COPY/],
    ['COPY (SELECT no_such_column FROM customers) TO STDOUT', /cannot be described/],
  ] as const) {
    const r = await asCi(sql, ['-c', 'SELECT 41 + 1']);
    assert.notEqual(r.code, 0, sql);
    assert.match(r.stderr, reason, sql);
    assert.doesNotMatch(r.stdout, CARDS, sql);
  }
  // After a refused COPY the same session still works.
  const after = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT 41 + 1', ['-v', 'ON_ERROR_STOP=0', '-c', 'COPY customers TO STDOUT (FORMAT binary)']);
  assert.match(after.stdout, /^42$/m);
});

test('COPY FROM STDIN still works while masks apply (it sends the client no rows)', async () => {
  const r = await run('psql', ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-c', 'COPY inbox FROM STDIN', gw.conninfo('analytics', 'ci-runner')],
    { env: { PGPASSWORD: ci }, input: '1\thello\n2\tworld\n' });
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await db.query('SELECT count(*)::int AS n FROM inbox')).rows[0].n, 2);
});

test('the audit records the masked COPY columns and counts, never the values', async () => {
  await asCi('COPY customers TO STDOUT');
  await gw.gw.store.flush();
  const events = await gw.gw.store.listAudit({ type: 'statement', subject: 'ci-runner', limit: 200 });
  const copy = events.findLast((e) => e.statement === 'COPY customers TO STDOUT' && e.decision === 'allow');
  assert.ok(copy, 'the COPY is audited');
  const masked = (copy.detail as { masked?: { column: string; values: number }[] }).masked ?? [];
  assert.deepEqual(masked.map((m) => [m.column, m.values]).sort(), [['public.customers.card_number', 3], ['public.customers.email', 3]]);
  assert.doesNotMatch(JSON.stringify(copy), CARDS);
});
