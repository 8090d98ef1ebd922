// The audit store goes away during a session (another process holds the database's write lock):
// no event is lost (they wait in the spool, then reach the database in order, chained), and when
// the spool is full new sessions are refused. Real psql through a real gateway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql } from '../helpers/clients.ts';

const POLICIES = {
  'p.yaml': `
connections:
  - name: analytics
    type: postgres
policies:
  - name: reader
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
`,
};

let db: TestDb;
let gw: TestGateway;
let token: string;

before(async () => {
  db = await createTestDb();
  gw = await startTestGateway({
    policies: POLICIES, connections: [{ name: 'analytics', url: db.url }],
    config: { audit: { spool_max_mb: 1 } },
  });
  token = (await gw.token('ci-runner', ['ci'])).token;
});

after(async () => {
  await gw?.close();
  await db?.drop();
});

/** Another process's write lock on the gateway's database: the store cannot write until released. */
function lockStore(): () => void {
  const other = new Database(gw.gw.config.storePath);
  other.exec('BEGIN EXCLUSIVE');
  return () => {
    other.exec('COMMIT');
    other.close();
  };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('a store outage during a session loses no event: spooled, then written in order and chained', async () => {
  const release = lockStore();
  const statements = Array.from({ length: 12 }, (_, i) => `SELECT ${i + 1} AS n`);
  let r;
  try {
    r = await psql(gw.conninfo('analytics', 'ci-runner'), token, statements[0], statements.slice(1).flatMap((s) => ['-c', s]));
    assert.equal(r.code, 0, r.stderr);
    await until('events are spooled', () => gw.gw.store.auditHealth().spooled > 0);
    assert.equal(gw.gw.store.auditHealth().ok, true, 'a spool with room left is healthy');
  } finally {
    release();
  }
  await until('the spool is drained', () => gw.gw.store.auditHealth().spooled === 0);
  const events = await gw.gw.store.listAudit({ type: 'statement', subject: 'ci-runner', limit: 100 });
  const seen = events.map((e) => e.statement).filter((s) => s?.startsWith('SELECT '));
  // psql runs the -c commands in the order given: the first one last in the argument list.
  assert.deepEqual([...seen].sort(), [...statements].sort(), 'every statement is recorded once');
  const report = await gw.gw.store.verifyAudit();
  assert.equal(report.ok, true, JSON.stringify(report));
});

test('while the spool is full, new sessions are refused (fail closed); they work again once it drains', async () => {
  const release = lockStore();
  try {
    // Big events fill the 1 MiB spool fast.
    for (let i = 0; i < 4; i++) {
      gw.gw.store.appendAudit({ time: new Date().toISOString(), type: 'policy.load', detail: { filler: 'x'.repeat(400_000), i } });
    }
    await until('the spool is full', () => !gw.gw.store.auditHealth().ok);
    const refused = await psql(gw.conninfo('analytics', 'ci-runner'), token, 'SELECT 1');
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /new sessions are refused while the audit log cannot be written/);
  } finally {
    release();
  }
  await until('the store is healthy again', () => gw.gw.store.auditHealth().ok && gw.gw.store.auditHealth().spooled === 0);
  const ok = await psql(gw.conninfo('analytics', 'ci-runner'), token, 'SELECT 42');
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout.trim(), '42');
  const fillers = await gw.gw.store.listAudit({ type: 'policy.load', limit: 100 });
  assert.equal(fillers.filter((e) => (e.detail as { filler?: string })?.filler).length, 4, 'the events kept in memory were not lost either');
  assert.equal((await gw.gw.store.verifyAudit()).ok, true);
});
