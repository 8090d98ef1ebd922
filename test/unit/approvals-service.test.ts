// The approval service over a real (SQLite) store: requirements, persistence across a restart,
// joining a request already made, grant windows, expiry.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStore, type Store } from '../../src/store/store.ts';
import { Approvals, ApprovalError, bindingOf, type ApprovalRequest } from '../../src/approvals/service.ts';
import type { ApprovalTerms, AuditEvent, Decision, Identity } from '../../src/core/types.ts';
import type { ApprovalNotice } from '../../src/approvals/notify.ts';

const who = (subject: string, groups: string[]): Identity => ({ subject, groups, kind: 'service-token', issuer: 'airlock', claims: {} });
const bot = who('deploy-bot', ['deploy']);
const alice = who('alice', ['dba']);
const bob = who('bob', ['dba', 'security']);
const carol = who('carol', ['security']);

function decision(terms: Partial<ApprovalTerms> = {}): Decision {
  return {
    action: 'review', policy: 'p', rule: 'review[0]', reason: 'DELETE on orders requires approval by group:dba', bundleVersion: 'v1', masks: [],
    approvers: ['group:dba'],
    approval: { requirements: [{ policy: 'p', rule: 'review[0]', approvers: ['group:dba'], minApprovals: 1 }], timeoutMs: 60_000, ...terms },
  };
}

const request = (d = decision(), statement = 'DELETE FROM orders WHERE id = 1'): ApprovalRequest =>
  ({ identity: bot, connection: 'prod', statement, normalized: statement.toLowerCase(), decision: d });

async function withStore(fn: (store: Store, dir: string) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-apr-'));
  const store = await openStore({ type: 'embedded', path: path.join(dir, 'a.db') });
  try {
    await fn(store, dir);
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function service(store: Store, now?: () => number) {
  const audit: AuditEvent[] = [];
  const notices: ApprovalNotice[] = [];
  const s = new Approvals({ store, audit: (e) => audit.push(e), notify: (n) => notices.push(n), log: { warn() {} }, publicUrl: 'https://gw.example:8080/', now });
  return { s, audit, notices };
}

test('two requirements: each needs its own approvers; one approver can satisfy both if eligible for both', async () => {
  await withStore(async (store) => {
    const { s } = service(store);
    const d = decision({ requirements: [
      { policy: 'p', rule: 'a', approvers: ['group:dba'], minApprovals: 2 },
      { policy: 'q', rule: 'b', approvers: ['group:security'], minApprovals: 1 },
    ] });
    const held = await s.request(request(d));
    let r = await s.decide(held.record.id, alice, 'approve');
    assert.equal(r.status, 'pending', 'dba needs two');
    await assert.rejects(s.decide(held.record.id, alice, 'approve'), (e: ApprovalError) => e.status === 409, 'no double vote');
    await assert.rejects(s.decide(held.record.id, who('mallory', ['dev']), 'approve'), (e: ApprovalError) => e.status === 403);
    r = await s.decide(held.record.id, bob, 'approve');
    assert.equal(r.status, 'approved', 'bob is dba and security: both requirements are met');
    assert.equal((await held.outcome).status, 'approved');
    await assert.rejects(s.decide(held.record.id, carol, 'approve'), /already approved/);
  });
});

test('requests survive a restart: a new service re-arms expiry, and the same request joins the one already made', async () => {
  await withStore(async (store) => {
    const first = service(store);
    const held = await first.s.request(request());
    first.s.stop();
    const second = service(store);
    await second.s.start();
    const again = await second.s.request(request());
    assert.equal(again.joined, true);
    assert.equal(again.record.id, held.record.id);
    assert.equal(second.notices.length, 0, 'joining does not notify again');
    await second.s.decide(held.record.id, alice, 'approve', 'ok');
    assert.equal((await again.outcome).status, 'approved');
    assert.equal(await second.s.use(held.record.id, 's1'), true);
    assert.equal(await second.s.use(held.record.id, 's2'), false, 'single use');
    const other = await second.s.request(request(decision(), 'DELETE FROM orders WHERE id = 2'));
    assert.notEqual(other.record.id, held.record.id, 'another statement is another request');
    second.s.stop();
  });
});

test('a pending request past its expiry is expired when the service starts; waiters hear it', async () => {
  await withStore(async (store) => {
    let clock = Date.parse('2026-01-01T00:00:00Z');
    const a = service(store, () => clock);
    const held = await a.s.request(request(decision({ timeoutMs: 1000 })));
    a.s.stop();
    clock += 5000;
    const b = service(store, () => clock);
    await b.s.start();
    const joined = b.s.request(request(decision({ timeoutMs: 1000 })));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal((await b.s.get(held.record.id))?.status, 'expired');
    assert.equal((await joined).record.id === held.record.id, false, 'an expired request is not joined');
    assert.ok(b.audit.some((e) => e.type === 'approval.expired'));
    assert.ok(b.notices.some((n) => n.event === 'approval.expired' && n.url === `https://gw.example:8080/api/approvals/${held.record.id}`));
    b.s.stop();
  });
});

test('grant windows cover only the rules they were approved for, for the same requester and connection', async () => {
  await withStore(async (store) => {
    const { s } = service(store);
    const d = decision({ grantMs: 300_000 });
    const held = await s.request(request(d));
    await s.decide(held.record.id, alice, 'approve');
    assert.ok((await s.grantFor(bot, 'prod', d))?.id === held.record.id);
    assert.equal(await s.grantFor(bot, 'staging', d), undefined, 'another connection');
    assert.equal(await s.grantFor(who('deploy-bot', ['deploy']), 'prod', d) !== undefined, true, 'same subject and issuer');
    assert.equal(await s.grantFor(alice, 'prod', d), undefined, 'another requester');
    const other = decision({ requirements: [{ policy: 'p', rule: 'review[1]', approvers: ['group:dba'], minApprovals: 1 }] });
    assert.equal(await s.grantFor(bot, 'prod', other), undefined, 'another rule');
    assert.equal(await s.use(held.record.id, 's'), true);
    assert.equal(await s.use(held.record.id, 's'), true, 'a grant is not consumed');
  });
});

test('the binding depends on requester, connection, statement meaning and parameters', () => {
  const base = { identity: bot, connection: 'prod', normalized: 'x' };
  const b = bindingOf(base);
  assert.equal(bindingOf({ ...base }), b);
  assert.notEqual(bindingOf({ ...base, identity: alice }), b);
  assert.notEqual(bindingOf({ ...base, connection: 'staging' }), b);
  assert.notEqual(bindingOf({ ...base, normalized: 'y' }), b);
  assert.notEqual(bindingOf({ ...base, paramsHash: 'abc' }), b);
});
