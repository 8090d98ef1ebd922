// Workload JWTs from a real OIDC issuer (oidc-provider, in-process) as psql passwords.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { startOidcIssuer } from '../helpers/oidc-issuer.ts';
import { psql } from '../helpers/clients.ts';

let db: TestDb;
let gw: TestGateway;
let idp: Awaited<ReturnType<typeof startOidcIssuer>>;

before(async () => {
  db = await createTestDb();
  idp = await startOidcIssuer();
  gw = await startTestGateway({
    policies: {
      'all.yaml': `
connections:
  - name: analytics
    type: postgres
policies:
  - name: gha-main-reads
    subjects:
      - claims: { repository: "acme/*", ref: refs/heads/main }
    connections: [analytics]
    allow:
      - sql: [select]
`,
    },
    connections: [{ name: 'analytics', url: db.url }],
    issuers: [{ issuer: idp.issuer, audience: 'airlock' }],
  });
});

after(async () => {
  await gw?.close();
  await idp?.close();
  await db?.drop();
});

test('a GitHub-Actions-like JWT whose claims match the policy can read', async () => {
  const jwt = await idp.mintToken({ sub: 'repo:acme/api:ref:refs/heads/main', aud: 'airlock', repository: 'acme/api', ref: 'refs/heads/main' });
  const r = await psql(gw.conninfo('analytics', 'gha'), jwt, 'SELECT count(*) FROM customers');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), '3');
  await gw.gw.store.flush();
  const [start] = await gw.gw.store.listAudit({ type: 'session.start', subject: 'repo:acme/api:ref:refs/heads/main', limit: 1 });
  assert.equal(start.issuer, idp.issuer);
});

test('claims that do not match any policy: the connection is refused', async () => {
  const jwt = await idp.mintToken({ sub: 'repo:acme/api:ref:refs/heads/feature', aud: 'airlock', repository: 'acme/api', ref: 'refs/heads/feature' });
  const r = await psql(gw.conninfo('analytics', 'gha'), jwt, 'SELECT 1');
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /no policy grants/);
});

test('a token for another audience, an expired token and a forged token are refused', async () => {
  const otherAud = await idp.mintToken({ sub: 'x', aud: 'someone-else', repository: 'acme/api', ref: 'refs/heads/main' });
  const expired = await idp.mintToken({ sub: 'x', aud: 'airlock', repository: 'acme/api', ref: 'refs/heads/main' }, { expiresIn: -60 });
  const good = await idp.mintToken({ sub: 'x', aud: 'airlock', repository: 'acme/api', ref: 'refs/heads/main' });
  const [h, p, s] = good.split('.');
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString());
  payload.repository = 'acme/other';
  const forged = [h, Buffer.from(JSON.stringify(payload)).toString('base64url'), s].join('.');
  for (const [token, why] of [[otherAud, /audience/], [expired, /expired/], [forged, /signature/]] as const) {
    const r = await psql(gw.conninfo('analytics', 'gha'), token, 'SELECT 1');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /authentication failed/);
    assert.match(r.stderr, why);
  }
  await gw.gw.store.flush();
  const failures = await gw.gw.store.listAudit({ type: 'auth.failure', limit: 10 });
  // psql retries without TLS after a failure under sslmode=prefer: each attempt is recorded.
  for (const why of [/audience/, /expired/, /signature/]) assert.ok(failures.some((e) => why.test(e.reason ?? '')), String(why));
  assert.ok(failures.every((e) => !JSON.stringify(e).includes(good.slice(-20))), 'no token material in the audit log');
});
