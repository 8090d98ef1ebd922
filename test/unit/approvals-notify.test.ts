import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHmac } from 'node:crypto';
import { Notifier, verifyWebhookSignature, SLACK_STATEMENT_MAX, slackMessage, type ApprovalNotice } from '../../src/approvals/notify.ts';

const SECRET = 'whsec-test-0123456789abcdef';
const SLACK_PATH = '/services/T0000/B0000/slacksecretXYZ123';

interface Received {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  at: number;
}

/** A real HTTP receiver on 127.0.0.1; `respond` decides each reply (by attempt number), `hang` never answers. */
async function receiver(respond: (n: number, r: Received) => number | 'hang' = () => 200) {
  const got: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r: Received = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), at: Date.now() };
      got.push(r);
      const status = respond(got.length, r);
      if (status === 'hang') return;
      res.writeHead(status, { 'content-type': 'text/plain' }).end(status < 300 ? 'ok' : 'nope');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    got,
    base: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function captureLog() {
  const lines: { level: 'warn' | 'info'; o: Record<string, unknown>; msg?: string }[] = [];
  return {
    lines,
    text: () => lines.map((l) => JSON.stringify(l)).join('\n'),
    warns: () => lines.filter((l) => l.level === 'warn'),
    log: {
      warn: (o: object, msg?: string) => { lines.push({ level: 'warn', o: o as Record<string, unknown>, msg }); },
      info: (o: object, msg?: string) => { lines.push({ level: 'info', o: o as Record<string, unknown>, msg }); },
    },
  };
}

function notice(over: Partial<ApprovalNotice> = {}): ApprovalNotice {
  return {
    event: 'approval.requested',
    id: 'apr_3f9c2a0011223344aabb',
    requester: 'ci-runner',
    connection: 'prod-db',
    statement: 'DELETE FROM orders WHERE created_at < now() - interval \'1 year\'',
    reason: 'deletes on prod need a DBA',
    policy: 'prod-writes',
    rule: 'review[0]',
    approvers: ['group:dba', 'user:alice'],
    expiresAt: '2030-01-01T12:15:00.000Z',
    approveCommand: "airlock approvals approve apr_3f9c2a0011223344aabb --reason '...'",
    ...over,
  };
}

const FAST = { backoffMs: 10, timeoutMs: 2000 };

test('webhook: JSON body, headers, and a signature that verifies only with the right inputs', async () => {
  const rx = await receiver();
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/hooks/airlock`, secret: SECRET }] }, cap.log, FAST);
  const sent = notice({ url: 'https://gw.example.com:8080/api/approvals/apr_3f9c2a0011223344aabb' });
  n.notify(sent);
  await n.idle();
  await rx.close();

  assert.equal(rx.got.length, 1);
  const r = rx.got[0];
  assert.equal(r.method, 'POST');
  assert.equal(r.url, '/hooks/airlock');
  assert.equal(r.headers['content-type'], 'application/json');
  const ts = String(r.headers['x-airlock-timestamp']);
  const sig = String(r.headers['x-airlock-signature']);
  assert.match(ts, /^\d+$/);
  assert.ok(Math.abs(Number(ts) - Date.now() / 1000) < 60);
  assert.match(sig, /^v1=[0-9a-f]{64}$/);

  // The receiver's own copy of the secret, and an independent HMAC computation.
  assert.equal(sig, `v1=${createHmac('sha256', SECRET).update(`${ts}.${r.body}`).digest('hex')}`);
  assert.equal(verifyWebhookSignature(SECRET, ts, r.body, sig), true);
  assert.equal(verifyWebhookSignature('wrong-secret', ts, r.body, sig), false);
  assert.equal(verifyWebhookSignature(SECRET, ts, r.body.replace('prod-db', 'prod-dc'), sig), false);
  assert.equal(verifyWebhookSignature(SECRET, String(Number(ts) + 1), r.body, sig), false);
  assert.equal(verifyWebhookSignature(SECRET, ts, r.body, sig.toUpperCase().replace('V1=', 'v1=')), true, 'hex case does not matter');
  assert.equal(verifyWebhookSignature(SECRET, ts, r.body, sig.slice(0, -2)), false, 'short signature');
  assert.equal(verifyWebhookSignature(SECRET, ts, r.body, sig.slice(3)), false, 'missing v1= prefix');
  assert.equal(verifyWebhookSignature(SECRET, ts, r.body, ''), false);
  assert.equal(verifyWebhookSignature(SECRET, ts, r.body, `v2=abc, ${sig}`), true, 'a list with a v1 entry');
  assert.equal(verifyWebhookSignature('', ts, r.body, sig), false);
  // Moving the "." boundary: timestamp "1.2" + body "x" must not equal timestamp "1" + body "2.x".
  const odd = `v1=${createHmac('sha256', SECRET).update('1.2.x').digest('hex')}`;
  assert.equal(verifyWebhookSignature(SECRET, '1', '2.x', odd), true);
  assert.equal(verifyWebhookSignature(SECRET, '1.2', 'x', odd), false);

  const body = JSON.parse(r.body);
  assert.deepEqual(Object.keys(body).sort(), ['approval', 'sentAt', 'type']);
  assert.equal(body.type, 'approval.requested');
  assert.deepEqual(body.approval, sent);
  assert.ok(!Number.isNaN(Date.parse(body.sentAt)));
  assert.ok(!r.body.includes(SECRET));

  assert.equal(cap.warns().length, 0);
  const ok = cap.lines.find((l) => l.msg === 'approval notification delivered');
  assert.ok(ok);
  assert.equal(ok.o.approval, sent.id);
  assert.equal(ok.o.notifier, `webhook[0] ${rx.host}`);
});

test('retries after 500 then succeeds; also retries 429', async () => {
  const rx = await receiver((i) => (i === 1 ? 500 : i === 2 ? 429 : 200));
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }] }, cap.log, { ...FAST, attempts: 3 });
  n.notify(notice());
  await n.idle();
  await rx.close();
  assert.equal(rx.got.length, 3);
  // Every attempt is signed on its own and carries the same body.
  for (const r of rx.got) {
    assert.ok(verifyWebhookSignature(SECRET, String(r.headers['x-airlock-timestamp']), r.body, String(r.headers['x-airlock-signature'])));
    assert.equal(r.body, rx.got[0].body);
  }
  const fails = cap.lines.filter((l) => l.msg === 'approval notification attempt failed');
  assert.deepEqual(fails.map((l) => l.o.attempt), [1, 2]);
  assert.match(String(fails[0].o.error), /HTTP 500/);
  assert.match(String(fails[1].o.error), /HTTP 429/);
  const ok = cap.lines.find((l) => l.msg === 'approval notification delivered');
  assert.equal(ok?.o.attempt, 3);
  assert.ok(!cap.lines.some((l) => l.msg === 'approval notification given up'));
});

test('backoff doubles between attempts', async () => {
  const rx = await receiver(() => 503);
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }] }, cap.log, { backoffMs: 60, attempts: 3 });
  n.notify(notice());
  await n.idle();
  await rx.close();
  assert.equal(rx.got.length, 3);
  const gap1 = rx.got[1].at - rx.got[0].at;
  const gap2 = rx.got[2].at - rx.got[1].at;
  assert.ok(gap1 >= 55, `first gap ${gap1} ms`);
  assert.ok(gap2 >= 115, `second gap ${gap2} ms`);
});

test('no retry on 400', async () => {
  const rx = await receiver(() => 400);
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }] }, cap.log, { ...FAST, attempts: 5 });
  n.notify(notice());
  await n.idle();
  await rx.close();
  assert.equal(rx.got.length, 1);
  const gaveUp = cap.lines.find((l) => l.msg === 'approval notification given up');
  assert.ok(gaveUp);
  assert.equal(gaveUp.o.attempts, 1);
  assert.match(String(gaveUp.o.error), /HTTP 400/);
});

test('gives up after N attempts and logs each failure and the give-up', async () => {
  const rx = await receiver(() => 500);
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }] }, cap.log, { ...FAST, attempts: 4 });
  n.notify(notice());
  await n.idle();
  await rx.close();
  assert.equal(rx.got.length, 4);
  assert.equal(cap.lines.filter((l) => l.msg === 'approval notification attempt failed').length, 4);
  const gaveUp = cap.lines.filter((l) => l.msg === 'approval notification given up');
  assert.equal(gaveUp.length, 1);
  assert.equal(gaveUp[0].level, 'warn');
  assert.equal(gaveUp[0].o.attempts, 4);
  assert.equal(gaveUp[0].o.event, 'approval.requested');
  assert.ok(!cap.lines.some((l) => l.level === 'info'));
});

test('network errors are retried (nothing listening)', async () => {
  const rx = await receiver();
  const url = `${rx.base}/h`;
  await rx.close(); // the port is now closed: connection refused
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url, secret: SECRET }] }, cap.log, { ...FAST, attempts: 2 });
  n.notify(notice());
  await n.idle();
  const fails = cap.lines.filter((l) => l.msg === 'approval notification attempt failed');
  assert.equal(fails.length, 2);
  assert.match(String(fails[0].o.error), /ECONNREFUSED|fetch failed/);
  assert.ok(cap.lines.some((l) => l.msg === 'approval notification given up'));
});

test('a hanging receiver: notify() returns before the request even arrives, attempts time out', async () => {
  const order: string[] = [];
  const rx = await receiver(() => { order.push('received'); return 'hang'; });
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }], slack: [{ webhook_url: `${rx.base}${SLACK_PATH}` }] }, cap.log, {
    attempts: 2, backoffMs: 10, timeoutMs: 150,
  });
  const t0 = performance.now();
  n.notify(notice());
  const took = performance.now() - t0;
  order.push('returned');
  assert.ok(took < 50, `notify took ${took} ms`);
  await n.idle();
  await rx.close();
  assert.equal(order[0], 'returned');
  assert.equal(rx.got.length, 4, 'two targets, two attempts each');
  const fails = cap.lines.filter((l) => l.msg === 'approval notification attempt failed');
  assert.equal(fails.length, 4);
  for (const f of fails) assert.match(String(f.o.error), /timed out after 150 ms/);
  assert.equal(cap.lines.filter((l) => l.msg === 'approval notification given up').length, 2);
});

test('notify() never throws: unserializable notice, throwing logger', async () => {
  const rx = await receiver(() => 500);
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }] }, cap.log, FAST);
  const bad = { ...notice(), extra: 1n } as unknown as ApprovalNotice;
  assert.doesNotThrow(() => n.notify(bad));
  assert.ok(cap.lines.some((l) => l.msg === 'approval notification could not be prepared'));

  const throwing = { warn() { throw new Error('log down'); }, info() { throw new Error('log down'); } };
  const n2 = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }] }, throwing, { ...FAST, attempts: 2 });
  assert.doesNotThrow(() => n2.notify(notice()));
  assert.doesNotThrow(() => n2.notify(bad));
  await n2.idle();
  await n.idle();
  await rx.close();
  assert.equal(rx.got.length, 2, 'a throwing logger does not cut retries short');
});

test('idle() resolves at once with no targets or nothing started', async () => {
  const cap = captureLog();
  const n = new Notifier({}, cap.log);
  n.notify(notice());
  await n.idle();
  assert.equal(cap.lines.length, 0);
});

test('deliveries beyond maxPending are dropped with a warning', async () => {
  const rx = await receiver(() => 'hang');
  const cap = captureLog();
  const n = new Notifier({ webhooks: [{ url: `${rx.base}/h`, secret: SECRET }] }, cap.log, { attempts: 1, timeoutMs: 100, maxPending: 2 });
  for (let i = 0; i < 3; i++) n.notify(notice({ id: `apr_${i}` }));
  const dropped = cap.lines.filter((l) => l.msg?.startsWith('approval notification dropped'));
  assert.equal(dropped.length, 1);
  assert.equal(dropped[0].o.approval, 'apr_2');
  await n.idle();
  await rx.close();
});

test('slack: payload carries the statement, the approve command and the link; escapes user text', async () => {
  const rx = await receiver();
  const cap = captureLog();
  const n = new Notifier({ slack: [{ webhook_url: `${rx.base}${SLACK_PATH}` }] }, cap.log, FAST);
  const sent = notice({ url: 'https://gw.example.com:8080/api/approvals/apr_3f9c2a0011223344aabb?x=1&y=2' });
  n.notify(sent);
  await n.idle();
  await rx.close();
  assert.equal(rx.got.length, 1);
  const r = rx.got[0];
  assert.equal(r.url, SLACK_PATH);
  assert.equal(r.headers['x-airlock-signature'], undefined, 'Slack is not signed');
  const msg = JSON.parse(r.body) as { text: string; blocks: { type: string; text?: { text: string }; fields?: { text: string }[] }[] };
  assert.ok(msg.text.includes('ci-runner') && msg.text.includes('prod-db'));
  const all = JSON.stringify(msg.blocks);
  const texts = msg.blocks.flatMap((b) => [b.text?.text ?? '', ...(b.fields ?? []).map((f) => f.text)]).join('\n');
  assert.ok(texts.includes("```DELETE FROM orders WHERE created_at &lt; now() - interval '1 year'```"), 'statement in a code block, escaped');
  assert.ok(texts.includes(sent.approveCommand));
  assert.ok(texts.includes('<https://gw.example.com:8080/api/approvals/apr_3f9c2a0011223344aabb?x=1&amp;y=2|'), 'link');
  assert.ok(texts.includes('group:dba, user:alice'));
  assert.ok(texts.includes('deletes on prod need a DBA'));
  assert.ok(texts.includes('<!date^1893500100^'), 'expiry as a Slack date');
  assert.ok(!all.includes('Statement truncated'));
});

test('slack: long statements are truncated and say so; mentions and code fences cannot escape', () => {
  const long = `SELECT ${'x, '.repeat(2000)}1`;
  const m = slackMessage(notice({ statement: long }));
  const stmtBlock = m.blocks.find((b) => JSON.stringify(b).includes('```SELECT'))!;
  const text = (stmtBlock as { text: { text: string } }).text.text;
  assert.ok(text.length <= SLACK_STATEMENT_MAX + 6, `block text is ${text.length} chars`);
  assert.ok(JSON.stringify(m.blocks).includes(`Statement truncated (${long.length} characters)`));

  const evil = slackMessage(notice({ statement: 'select 1 -- <!channel> <https://evil.example|click> ``` *bold*', requester: '<!here>' }));
  const s = JSON.stringify(evil);
  assert.ok(!s.includes('<!channel>') && !s.includes('<!here>') && !s.includes('<https://evil'));
  assert.ok(s.includes('&lt;!channel&gt;'));
  const code = JSON.stringify(evil.blocks.find((b) => JSON.stringify(b).includes('```select')));
  assert.equal(code.split('```').length - 1, 2, 'only the opening and closing fences');

  // Escaping cannot push the block over the limit either.
  const lt = slackMessage(notice({ statement: '<'.repeat(5000) }));
  const ltText = (lt.blocks.find((b) => JSON.stringify(b).includes('```&lt;')) as { text: { text: string } }).text.text;
  assert.ok(ltText.length <= SLACK_STATEMENT_MAX + 6);
});

test('slack: short status messages for approved, rejected and expired', () => {
  const a = slackMessage(notice({ event: 'approval.approved', by: 'alice', decisionReason: 'ticket OPS-12', url: 'https://gw/x' }));
  assert.equal(a.blocks.length, 2);
  assert.match(a.text, /apr_3f9c2a0011223344aabb approved by alice/);
  assert.ok(JSON.stringify(a.blocks).includes('*Approved* by alice'));
  assert.ok(JSON.stringify(a.blocks).includes('ticket OPS-12'));
  assert.ok(JSON.stringify(a.blocks).includes('<https://gw/x|details>'));
  const r = slackMessage(notice({ event: 'approval.rejected', by: 'bob' }));
  assert.match(r.text, /rejected by bob/);
  const e = slackMessage(notice({ event: 'approval.expired' }));
  assert.match(e.text, /expired$/);
  assert.ok(JSON.stringify(e.blocks).includes('*Expired*'));
});

test('secrets never reach the log: webhook secret, Slack URL path, query tokens', async () => {
  const rx = await receiver(() => 500);
  const cap = captureLog();
  const n = new Notifier({
    webhooks: [{ url: `${rx.base}/hook/pathsecretABC?token=querysecretDEF`, secret: SECRET }],
    slack: [{ webhook_url: `${rx.base}${SLACK_PATH}` }],
  }, cap.log, { ...FAST, attempts: 2 });
  n.notify(notice());
  await n.idle();
  await rx.close();
  // Also the unreachable case, where the error text comes from fetch itself.
  const n2 = new Notifier({ slack: [{ webhook_url: `${rx.base}${SLACK_PATH}` }] }, cap.log, { ...FAST, attempts: 1 });
  n2.notify(notice());
  await n2.idle();

  const text = cap.text();
  assert.ok(cap.lines.length >= 6);
  for (const s of [SECRET, 'slacksecretXYZ123', 'pathsecretABC', 'querysecretDEF', SLACK_PATH]) {
    assert.ok(!text.includes(s), `log contains ${s}`);
  }
  assert.ok(text.includes(`slack[0] ${rx.host}`));
  assert.ok(text.includes(`webhook[0] ${rx.host}`));
});

test('bad configuration is refused without echoing the URL or secret', () => {
  const cap = captureLog();
  assert.throws(() => new Notifier({ webhooks: [{ url: 'http://127.0.0.1/h', secret: '' }] }, cap.log), /webhooks\[0\]\.secret/);
  assert.throws(() => new Notifier({ webhooks: [{ url: 'ftp://x/h', secret: 's' }] }, cap.log), /http\(s\)/);
  try {
    new Notifier({ slack: [{ webhook_url: 'not a url slacksecretXYZ123' }] }, cap.log);
    assert.fail('expected an error');
  } catch (e) {
    assert.match((e as Error).message, /slack\[0\]\.webhook_url: not a valid URL/);
    assert.ok(!(e as Error).message.includes('slacksecretXYZ123'));
  }
});
