// The agent's catalog lookups: table OIDs to schema-qualified names, over its own target connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { LocalAgent } from '../../src/agent/agent.ts';

let db: TestDb;
let agent: LocalAgent;

before(async () => {
  db = await createTestDb();
  await db.query('CREATE SCHEMA sales; CREATE TABLE sales."Leads" (id int)');
  agent = new LocalAgent([{ name: 'analytics', url: db.url }]);
});

after(async () => {
  agent?.close();
  await db?.drop();
});

test('table OIDs resolve to schema.table (quoted names as stored), unknown OIDs are left out, lookups are cached', async () => {
  const oid = async (t: string) => Number((await db.query('SELECT $1::regclass::oid::int8 AS o', [t])).rows[0].o);
  const customers = await oid('public.customers');
  const leads = await oid('sales."Leads"');
  const names = await agent.tableNames('analytics', [customers, leads, 4_000_000_000]);
  assert.deepEqual([...names.entries()].map(([o, t]) => [o, t.name]).sort(), [[customers, 'public.customers'], [leads, 'sales.Leads']].sort());
  assert.deepEqual([...names.get(customers)!.columns.values()], ['id', 'name', 'email', 'card_number']);
  // Cached: answered even while the catalog connection is busy with nothing, and concurrent lookups queue.
  const [a, b] = await Promise.all([agent.tableNames('analytics', [customers]), agent.tableNames('analytics', [leads])]);
  assert.equal(a.get(customers)?.name, 'public.customers');
  assert.equal(b.get(leads)?.name, 'sales.Leads');
});
