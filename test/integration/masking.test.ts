// Inline masking of PostgreSQL results through the gateway, with real psql and the pg driver.
// The stored data never changes; what reaches the client is masked per policy.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql } from '../helpers/clients.ts';
import { openRawSession, types } from '../helpers/raw-pg.ts';
import { encode } from '../../src/protocols/postgres/codec.ts';

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
      - sql: [select, insert, copy]
    mask:
      - columns: ["customers.card_number"]
        with: last4
      - detect: [email, credit_card]
        with: redact
  - name: dba-clear
    subjects: [{ group: dba }]
    connections: [analytics]
    allow:
      - sql: [select]
`,
};

let db: TestDb;
let gw: TestGateway;
let ci: string;
let dba: string;

before(async () => {
  db = await createTestDb();
  await db.query(`CREATE UNIQUE INDEX customers_email ON customers (email);
    CREATE TABLE notes (id int, body text);
    INSERT INTO notes VALUES (1, 'paid with 4111 1111 1111 1111 ok'), (2, 'order 12345 shipped 2024-05-01');`);
  gw = await startTestGateway({ policies: POLICIES, connections: [{ name: 'analytics', url: db.url }] });
  ci = (await gw.token('ci-runner', ['ci'])).token;
  dba = (await gw.token('dba', ['dba'])).token;
});

after(async () => {
  await gw?.close();
  await db?.drop();
});

const CARD = '4111 1111 1111 1111';

test('psql: card numbers and emails come back masked for ci-runner, clear for dba; the stored data is unchanged', async () => {
  const masked = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT name, email, card_number FROM customers WHERE id = 1');
  assert.equal(masked.code, 0, masked.stderr);
  const [name, email, card] = masked.stdout.trim().split('|');
  assert.equal(name, 'Ada');
  assert.doesNotMatch(email, /ada@example\.com/);
  assert.notEqual(card, CARD);
  assert.match(card, /1111$/, 'last4 keeps the last four digits');
  const clear = await psql(gw.conninfo('analytics', 'dba'), dba, 'SELECT email, card_number FROM customers WHERE id = 1');
  assert.equal(clear.stdout.trim(), `ada@example.com|${CARD}`);
  assert.equal((await db.query('SELECT card_number FROM customers WHERE id = 1')).rows[0].card_number, CARD);
});

test('aliases, qualified stars and joins do not escape a column rule (rules match the real column)', async () => {
  for (const sql of [
    'SELECT card_number AS c FROM customers WHERE id = 2',
    'SELECT x.card_number FROM customers x WHERE x.id = 2',
    'SELECT k.* FROM (SELECT card_number FROM customers WHERE id = 2) k',
    'SELECT o.id, c.card_number AS pay FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.id = 2 LIMIT 1',
  ]) {
    const r = await psql(gw.conninfo('analytics', 'ci-runner'), ci, sql);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /5500 0000 0000 0004/, sql);
    assert.match(r.stdout, /0004/, sql);
  }
});

test('a card number inside free text is masked by the detector; other text passes', async () => {
  const r = await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT body FROM notes ORDER BY id');
  assert.equal(r.code, 0, r.stderr);
  const [paid, order] = r.stdout.trim().split('\n');
  assert.doesNotMatch(paid, /4111 1111 1111 1111/);
  assert.match(paid, /^paid with .+ ok$/);
  assert.equal(order, 'order 12345 shipped 2024-05-01');
});

test('pg driver (extended protocol, prepared statements): the same masking; computed columns are scanned too', async () => {
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port, database: 'analytics', user: 'ci-runner', password: ci });
  await c.connect();
  try {
    for (let i = 0; i < 2; i++) {
      const r = await c.query({ name: 'by-id', text: 'SELECT email, card_number FROM customers WHERE id = $1', values: [2] });
      assert.doesNotMatch(r.rows[0].email, /grace@example\.com/);
      assert.match(r.rows[0].card_number, /0004$/);
      assert.notEqual(r.rows[0].card_number, '5500 0000 0000 0004');
    }
    const computed = await c.query("SELECT upper(email) AS e, 'card: ' || card_number AS c FROM customers WHERE id = 3");
    assert.doesNotMatch(computed.rows[0].e, /ALAN@EXAMPLE\.ORG/i);
    assert.doesNotMatch(computed.rows[0].c, /3400 0000 0000 009/);
  } finally {
    await c.end();
  }
});

test('RETURNING rows and error messages are masked', async () => {
  const ret = await psql(gw.conninfo('analytics', 'ci-runner'), ci,
    "INSERT INTO customers (name, email, card_number) VALUES ('Bob', 'bob@example.com', '6011 0000 0000 0004') RETURNING email, card_number");
  assert.equal(ret.code, 0, ret.stderr);
  assert.doesNotMatch(ret.stdout, /bob@example\.com|6011 0000 0000 0004/);
  const dup = await psql(gw.conninfo('analytics', 'ci-runner'), ci,
    "INSERT INTO customers (name, email, card_number) VALUES ('Ada2', 'ada@example.com', '1')", ['-v', 'VERBOSITY=verbose']);
  assert.notEqual(dup.code, 0);
  assert.match(dup.stderr, /duplicate key value violates unique constraint/);
  assert.doesNotMatch(dup.stderr, /ada@example\.com/, 'the unique-violation detail does not leak the email');
});

test('the audit records which columns and how many values were masked, never the values', async () => {
  await psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT email, card_number FROM customers ORDER BY id LIMIT 3');
  await gw.gw.store.flush();
  const events = await gw.gw.store.listAudit({ type: 'statement', subject: 'ci-runner', limit: 200 });
  const e = events.findLast((x) => x.statement === 'SELECT email, card_number FROM customers ORDER BY id LIMIT 3');
  assert.ok(e, 'statement recorded');
  const masked = (e.detail as { masked?: { column: string; values: number }[] }).masked ?? [];
  const byColumn = Object.fromEntries(masked.map((m) => [m.column, m.values]));
  assert.equal(byColumn['public.customers.card_number'], 3);
  assert.equal(byColumn['public.customers.email'], 3);
  assert.doesNotMatch(JSON.stringify(e), /4111 1111 1111 1111|ada@example\.com/);
});

test('rows whose columns were never described cannot be masked: the session ends, no row leaves', async () => {
  const s = await openRawSession({ port: gw.port, user: 'ci-runner', database: 'analytics', token: ci });
  const r = await s.exchange(Buffer.concat([
    encode.parse('', 'SELECT card_number FROM customers WHERE id = 1'), encode.bind('', ''), encode.execute(''), encode.sync(),
  ]));
  assert.ok(!types(r.msgs).includes('D'), types(r.msgs));
  assert.ok(r.msgs.some((m) => m.type === 'E' && /cannot be masked/.test(m.text)), JSON.stringify(r.msgs));
  assert.ok(r.closed);
});
