// Just-in-time approvals end to end: real psql holds on a statement that a review rule matched,
// real `airlock approvals` commands decide it through the API, and the real database shows what
// ran and what did not.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { psql, run, type RunResult } from '../helpers/clients.ts';
import type { ApprovalRecord } from '../../src/core/types.ts';
import { verifyWebhookSignature } from '../../src/approvals/notify.ts';

const POLICY = (extraDeny = '') => `
connections:
  - name: analytics
    type: postgres
policies:
  - name: deploy-bot
    subjects: [{ group: deploy }]
    connections: [analytics]
    allow:
      - sql: [select]
    review:
      - name: order-deletes
        sql: [delete]
        tables: [orders]
        approvers: [group:dba]
        timeout: 60s
      - name: probe-deletes
        sql: [delete]
        tables: [audit_probe]
        approvers: [group:dba]
        timeout: 2s
      - name: customer-updates
        sql: [update]
        tables: [customers]
        approvers: [group:dba]
        grant: 5m
${extraDeny}
  - name: dba
    subjects: [{ group: dba }]
    connections: [analytics]
    allow:
      - sql: [select]
`;

let db: TestDb;
let gw: TestGateway;
let bot: string;
let dba: string;
let selfish: string;
/** What the webhook receiver got: the body and whether its signature verified. */
const deliveries: { type: string; approval: { id: string; statement: string }; signed: boolean }[] = [];
let receiver: http.Server;
const SECRET = 'webhook-secret-0123456789';

before(async () => {
  db = await createTestDb();
  await db.query('INSERT INTO audit_probe VALUES (1), (2)');
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const signed = verifyWebhookSignature(SECRET, String(req.headers['x-airlock-timestamp']), body, String(req.headers['x-airlock-signature']));
      deliveries.push({ ...JSON.parse(body), signed });
      res.end('ok');
    });
  });
  receiver.listen(0, '127.0.0.1');
  await new Promise((r) => receiver.once('listening', r));
  const hook = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
  gw = await startTestGateway({
    policies: { 'p.yaml': POLICY() }, connections: [{ name: 'analytics', url: db.url }],
    config: { approvals: { public_url: 'https://airlock.example.com:8080', notify: { webhooks: [{ url: hook, secret: SECRET }] } } },
  });
  bot = (await gw.token('deploy-bot', ['deploy'])).token;
  dba = (await gw.token('alice', ['dba'])).token;
  selfish = (await gw.token('ops-bot', ['deploy', 'dba'])).token;
});

after(async () => {
  await gw?.close();
  await db?.drop();
  receiver?.close();
});

const asBot = (sql: string, token = bot) => psql(gw.conninfo('analytics', 'deploy-bot'), token, sql);
const cli = (args: string[], token: string) =>
  run(process.execPath, ['bin/airlock.js', 'approvals', ...args, '--api', gw.api], { env: { AIRLOCK_TOKEN: token } });
const count = async (sql: string) => (await db.query(sql)).rows[0].n as number;

/** The pending request for `statement`, once the gateway has made it. */
async function pendingFor(statement: string): Promise<ApprovalRecord> {
  for (let i = 0; i < 200; i++) {
    const found = (await gw.gw.approvals.list(['pending'])).find((r) => r.statement === statement);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no pending approval for ${statement}`);
}

test('a DELETE is held (the row stays), approved through the CLI by a dba, then runs exactly once', async () => {
  const sql = 'DELETE FROM orders WHERE id = 1';
  const client = asBot(sql);
  const req = await pendingFor(sql);
  assert.equal(await count('SELECT count(*)::int AS n FROM orders WHERE id = 1'), 1, 'nothing ran while held');
  assert.deepEqual(req.terms.requirements.map((q) => q.approvers), [['group:dba']]);
  const show = await cli(['show', req.id], dba);
  assert.equal(show.code, 0, show.stderr);
  assert.match(show.stdout, /DELETE FROM orders WHERE id = 1/);
  const approve = await cli(['approve', req.id, '--reason', 'ticket OPS-1'], dba);
  assert.equal(approve.code, 0, approve.stderr);
  assert.match(approve.stdout, /approved apr_/);
  const r = await client;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /DELETE 1/);
  assert.match(r.stderr, new RegExp(`held for approval ${req.id}`), 'the client was told right away');
  assert.match(r.stderr, /airlock approvals approve apr_/);
  assert.equal(await count('SELECT count(*)::int AS n FROM orders WHERE id = 1'), 0);
  assert.equal((await gw.gw.approvals.get(req.id))?.status, 'used');
  // The same statement again is a new request: an approval runs one statement once.
  const again = asBot(sql);
  const second = await pendingFor(sql);
  assert.notEqual(second.id, req.id);
  assert.equal((await cli(['reject', second.id], dba)).code, 0);
  assert.notEqual((await again).code, 0);
});

test('a rejected DELETE fails with 42501 naming who rejected it and why; the row stays', async () => {
  const sql = 'DELETE FROM orders WHERE id = 2';
  const client = asBot(sql);
  const req = await pendingFor(sql);
  const reject = await cli(['reject', req.id, '--reason', 'wrong environment'], dba);
  assert.equal(reject.code, 0, reject.stderr);
  const r = await client;
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /ERROR: {2}airlock: approval apr_\w+ was rejected by alice: wrong environment/);
  assert.equal(await count('SELECT count(*)::int AS n FROM orders WHERE id = 2'), 1);
});

test('a request nobody decides times out: the statement fails and the rows stay', async () => {
  const r = await asBot('DELETE FROM audit_probe');
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /approval apr_\w+ timed out/);
  assert.equal(await count('SELECT count(*)::int AS n FROM audit_probe'), 2);
  const expired = await gw.gw.approvals.list(['expired']);
  assert.ok(expired.some((e) => e.statement === 'DELETE FROM audit_probe'));
});

test('a requester cannot approve its own request, even when it is in the approvers\' group', async () => {
  const sql = 'DELETE FROM orders WHERE id = 3';
  const client = asBot(sql, selfish);
  const req = await pendingFor(sql);
  const own = await cli(['approve', req.id], selfish);
  assert.equal(own.code, 1);
  assert.match(own.stderr, /cannot approve or reject its own request/);
  const outsider = await cli(['approve', req.id], bot);
  assert.equal(outsider.code, 1, 'deploy-bot is not an approver');
  assert.equal((await gw.gw.approvals.get(req.id))?.status, 'pending');
  assert.equal(await count('SELECT count(*)::int AS n FROM orders WHERE id = 3'), 1);
  await cli(['reject', req.id], dba);
  await client;
});

test('an approval binds the exact statement and parameters: another statement or other parameters ask again', async () => {
  // Extended protocol with a parameter (the pg driver): the approval covers id = 4 only.
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port, database: 'analytics', user: 'deploy-bot', password: bot });
  await c.connect();
  try {
    const sql = 'DELETE FROM orders WHERE id = $1';
    const first = c.query(sql, [4]);
    const req = await pendingFor(sql);
    await cli(['approve', req.id], dba);
    assert.equal((await first).rowCount, 1);
    const second = c.query(sql, [5]).then(() => 'ran', (e: Error) => e.message);
    const req2 = await pendingFor(sql);
    assert.notEqual(req2.id, req.id, 'other parameters are another request');
    assert.notEqual(req2.binding, req.binding);
    await cli(['reject', req2.id], dba);
    assert.match(await second, /rejected by alice/);
    assert.equal(await count('SELECT count(*)::int AS n FROM orders WHERE id = 5'), 1);
  } finally {
    await c.end();
  }
  // A used approval cannot be used again.
  const used = (await gw.gw.approvals.list(['used'])).at(0)!;
  assert.equal(await gw.gw.approvals.use(used.id, 'test'), false);
});

test('a grant window: after approval, matching statements run without asking until it closes', async () => {
  const first = asBot("UPDATE customers SET name = 'Ada L.' WHERE id = 1");
  const req = await pendingFor("UPDATE customers SET name = 'Ada L.' WHERE id = 1");
  await cli(['approve', req.id], dba);
  assert.equal((await first).code, 0);
  const grant = await gw.gw.approvals.get(req.id);
  assert.equal(grant?.status, 'approved');
  assert.ok(grant?.grantUntil && Date.parse(grant.grantUntil) > Date.now() + 4 * 60_000, 'open for about 5 minutes');
  const during = await asBot("UPDATE customers SET name = 'Grace H.' WHERE id = 2");
  assert.equal(during.code, 0, during.stderr);
  assert.doesNotMatch(during.stderr, /held for approval/);
  assert.equal((await db.query('SELECT name FROM customers WHERE id = 2')).rows[0].name, 'Grace H.');
  // The window closes (moved into the past in the store, as five minutes passing would).
  await gw.gw.store.updateApproval(req.id, (r) => ({ ...r, grantUntil: new Date(Date.now() - 1000).toISOString() }));
  const afterwards = asBot("UPDATE customers SET name = 'Alan T.' WHERE id = 3");
  const held = await pendingFor("UPDATE customers SET name = 'Alan T.' WHERE id = 3");
  await cli(['reject', held.id], dba);
  assert.notEqual((await afterwards).code, 0);
  assert.equal((await db.query('SELECT name FROM customers WHERE id = 3')).rows[0].name, 'Alan');
});

test('a policy change that denies the statement wins over its approval', async () => {
  const sql = 'DELETE FROM orders WHERE id = 6';
  const client = asBot(sql);
  const req = await pendingFor(sql);
  gw.writePolicy('p.yaml', POLICY(`    deny:\n      - sql: [delete]\n        message: deletes are frozen`));
  gw.gw.reloadPolicies();
  await cli(['approve', req.id], dba);
  const r = await client;
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /deletes are frozen/);
  assert.equal(await count('SELECT count(*)::int AS n FROM orders WHERE id = 6'), 1);
  gw.writePolicy('p.yaml', POLICY());
  gw.gw.reloadPolicies();
});

test('a client that disconnects while waiting cancels its request', async () => {
  const sql = 'DELETE FROM orders WHERE id = 7';
  const child = run('psql', ['-X', '-At', '-c', sql, gw.conninfo('analytics', 'deploy-bot')], { env: { PGPASSWORD: bot }, timeoutMs: 1500 });
  const req = await pendingFor(sql);
  const r: RunResult = await child; // killed by the timeout: the connection drops
  assert.equal(r.code, null);
  for (let i = 0; i < 100 && (await gw.gw.approvals.get(req.id))?.status === 'pending'; i++) await new Promise((res) => setTimeout(res, 50));
  assert.equal((await gw.gw.approvals.get(req.id))?.status, 'cancelled');
  const late = await cli(['approve', req.id], dba);
  assert.equal(late.code, 1);
  assert.match(late.stderr, /already cancelled/);
  assert.equal(await count('SELECT count(*)::int AS n FROM orders WHERE id = 7'), 1);
});

test('the API needs a token and shows a caller only the requests it made or may decide', async () => {
  const sql = 'DELETE FROM orders WHERE id = 8';
  const client = asBot(sql);
  const req = await pendingFor(sql);
  assert.equal((await fetch(`${gw.api}/api/approvals`)).status, 401);
  const get = (token: string) => fetch(`${gw.api}/api/approvals/${req.id}`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal((await get(dba)).status, 200);
  assert.equal((await get(bot)).status, 200, 'the requester sees its request');
  const stranger = (await gw.token('stranger', ['other'])).token;
  assert.equal((await get(stranger)).status, 404);
  const list = await cli(['list'], dba);
  assert.match(list.stdout, new RegExp(req.id));
  const post = await fetch(`${gw.api}/api/approvals/${req.id}/reject`, {
    method: 'POST', headers: { authorization: `Bearer ${dba}`, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'via API' }),
  });
  assert.equal(post.status, 200);
  assert.equal(((await post.json()) as { approval: ApprovalRecord }).approval.status, 'rejected');
  await client;
});

test('every approval event is in the audit log', async () => {
  await gw.gw.store.flush();
  const events = await gw.gw.store.listAudit({ limit: 1000 });
  const types = new Set(events.map((e) => e.type));
  for (const t of ['approval.requested', 'approval.approved', 'approval.rejected', 'approval.expired', 'approval.cancelled', 'approval.used']) {
    assert.ok(types.has(t as never), `${t} audited`);
  }
  const ran = events.find((e) => e.type === 'statement' && e.statement === 'DELETE FROM orders WHERE id = 1' && e.decision === 'allow');
  assert.ok(ran, 'the approved statement is audited as allowed');
  assert.match(String((ran.detail as { approval?: string }).approval), /^apr_/);
  assert.match(ran.reason ?? '', /approved by alice/);
});

test('the webhook heard of requests and decisions, signed', async () => {
  const approved = deliveries.find((d) => d.type === 'approval.approved' && d.approval.statement === 'DELETE FROM orders WHERE id = 1');
  const requested = deliveries.find((d) => d.type === 'approval.requested' && d.approval.statement === 'DELETE FROM orders WHERE id = 1');
  assert.ok(requested && approved, JSON.stringify(deliveries.map((d) => d.type)));
  assert.ok(deliveries.every((d) => d.signed), 'every delivery verifies with the shared secret');
  assert.match(JSON.stringify(requested), /https:\/\/airlock\.example\.com:8080\/api\/approvals\/apr_/);
});
