// Custom detectors from the policy folder, through the real gateway with real psql: values they
// find are masked in results, the stored rows never change, and a reload takes a redefined
// detector into account.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql } from '../helpers/clients.ts';

const detectors = (words: string) => `
detectors:
  - name: employee_id
    regex: "EMP-[0-9]{6}"
  - name: codenames
    words: [${words}]
`;

const POLICIES = `
connections:
  - name: analytics
    type: postgres
policies:
  - name: ci-masked
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
    mask:
      - detect: [employee_id, codenames]
        with: redact
`;

let db: TestDb;
let gw: TestGateway;
let ci: string;

before(async () => {
  db = await createTestDb();
  await db.query(`CREATE TABLE staff (id int, badge text, note text);
    INSERT INTO staff VALUES (1, 'EMP-123456', 'ask Bluebird about EMP-654321, not nightjar');`);
  gw = await startTestGateway({
    policies: { 'detectors.yaml': detectors('bluebird'), 'p.yaml': POLICIES },
    connections: [{ name: 'analytics', url: db.url }],
  });
  ci = (await gw.token('ci-runner', ['ci'])).token;
});

after(async () => {
  await gw?.close();
  await db?.drop();
});

const select = () => psql(gw.conninfo('analytics', 'ci-runner'), ci, 'SELECT badge, note FROM staff WHERE id = 1');

test('psql: a custom regex detector and a word list mask values in a SELECT; the stored row is unchanged', async () => {
  const r = await select();
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), '[REDACTED]|ask [REDACTED] about [REDACTED], not nightjar');
  const stored = await db.query('SELECT badge, note FROM staff WHERE id = 1');
  assert.deepEqual(stored.rows[0], { badge: 'EMP-123456', note: 'ask Bluebird about EMP-654321, not nightjar' });
});

test('a reload that redefines a detector applies it; an invalid one keeps the last good definition', async () => {
  gw.writePolicy('detectors.yaml', detectors('nightjar'));
  assert.deepEqual(gw.gw.policies.reload().problems, []);
  let r = await select();
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), '[REDACTED]|ask Bluebird about [REDACTED], not [REDACTED]');

  gw.writePolicy('detectors.yaml', detectors('nightjar').replace('EMP-[0-9]{6}', '(?<=EMP-)[0-9]{6}'));
  const invalid = gw.gw.policies.reload().problems;
  assert.equal(invalid.length, 1);
  assert.match(invalid[0].message, /look-ahead and look-behind are not supported/);
  r = await select();
  assert.equal(r.stdout.trim(), '[REDACTED]|ask Bluebird about [REDACTED], not [REDACTED]');
});
