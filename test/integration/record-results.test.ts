// `record: results`: a policy can ask that the rows a client received (after masking) are kept
// in the session record, within a per-session budget. Real psql through a real gateway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql } from '../helpers/clients.ts';
import { MAX_RECORDED_RESULT_BYTES } from '../../src/protocols/postgres/adapter.ts';

const POLICIES = {
  'p.yaml': `
connections:
  - name: analytics
    type: postgres
policies:
  - name: recorded
    subjects: [{ group: audited }]
    connections: [analytics]
    record: results
    allow:
      - sql: [select]
    mask:
      - columns: ["customers.card_number"]
        with: last4
  - name: plain
    subjects: [{ group: plain }]
    connections: [analytics]
    allow:
      - sql: [select]
`,
};

let db: TestDb;
let gw: TestGateway;

before(async () => {
  db = await createTestDb();
  gw = await startTestGateway({ policies: POLICIES, connections: [{ name: 'analytics', url: db.url }] });
});

after(async () => {
  await gw?.close();
  await db?.drop();
});

interface Results { columns: string[]; rows: (string | null)[][]; truncated?: boolean }

async function lastStatement(subject: string, statement: string) {
  await gw.gw.store.flush();
  const events = await gw.gw.store.listAudit({ type: 'statement', subject, limit: 50 });
  const e = events.findLast((x) => x.statement === statement);
  assert.ok(e, `${statement} recorded`);
  return e;
}

test('record: results keeps the rows the client saw, masked, with NULLs; other policies record none', async () => {
  const token = (await gw.token('auditor-bot', ['audited'])).token;
  const sql = 'SELECT id, card_number, NULL::text AS nothing FROM customers ORDER BY id LIMIT 2';
  const r = await psql(gw.conninfo('analytics', 'auditor-bot'), token, sql);
  assert.equal(r.code, 0, r.stderr);
  const e = await lastStatement('auditor-bot', sql);
  const results = (e.detail as { results?: Results[] }).results;
  assert.deepEqual(results, [{ columns: ['id', 'card_number', 'nothing'], rows: [['1', '**** **** **** 1111', null], ['2', '**** **** **** 0004', null]] }]);
  assert.doesNotMatch(JSON.stringify(e), /4111 1111 1111 1111/, 'the record holds what the client saw, never the clear value');

  const plain = (await gw.token('plain-bot', ['plain'])).token;
  await psql(gw.conninfo('analytics', 'plain-bot'), plain, 'SELECT id FROM customers');
  const p = await lastStatement('plain-bot', 'SELECT id FROM customers');
  assert.equal((p.detail as { results?: unknown } | undefined)?.results, undefined);
});

test('the per-session budget caps what is recorded; the client still gets every row', async () => {
  const token = (await gw.token('auditor-big', ['audited'])).token;
  const rows = Math.ceil(MAX_RECORDED_RESULT_BYTES / 100) + 1000;
  const sql = `SELECT repeat('x', 100) AS filler FROM generate_series(1, ${rows})`;
  const r = await psql(gw.conninfo('analytics', 'auditor-big'), token, sql);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim().split('\n').length, rows, 'the client received all rows');
  const e = await lastStatement('auditor-big', sql);
  const [set] = (e.detail as { results: Results[] }).results;
  assert.equal(set.truncated, true);
  assert.ok(set.rows.length < rows && set.rows.length >= MAX_RECORDED_RESULT_BYTES / 100, `${set.rows.length} rows recorded`);
});
