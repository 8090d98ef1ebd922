// `airlock exec` without a gateway: the approval notice contract, the status line, the table
// format, the gateway address and the TLS plan.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import {
  ApprovalStatus, ExecUsageError, checkPinnedCertificate, commandOfTag, formatDuration, formatResultTable, formatResultsText,
  formatStatusLine, normalizeFingerprint, parseHeldNotice, planTls, resolveGateway, resultDocument, rowKeys,
} from '../../src/cli/exec.ts';

const ID = 'apr_0123456789abcdef';
const HELD = {
  severity: 'NOTICE',
  code: '01AL0',
  message: `airlock: statement held for approval ${ID}: deletes need a second DBA`,
  detail: `approve with: airlock approvals approve ${ID}`,
  hint: 'expires at 2030-01-02T03:04:05.000Z',
};

test('parseHeldNotice: the gateway\'s held notice, with and without URL and expiry', () => {
  assert.deepEqual(parseHeldNotice(HELD), {
    id: ID, reason: 'deletes need a second DBA', approveCommand: `airlock approvals approve ${ID}`,
    expiresAt: new Date('2030-01-02T03:04:05.000Z'), otherDetail: [],
  });
  const long = `apr_${'ab12'.repeat(8)}`;
  const withUrl = parseHeldNotice({
    ...HELD, message: `airlock: statement held for approval ${long}: DROP: needs approval: of two`,
    detail: `approve with: airlock approvals approve ${long}\nor: POST https://airlock.example/api/approvals/${long}/approve`, hint: undefined,
  });
  assert.equal(withUrl?.id, long);
  assert.equal(withUrl?.reason, 'DROP: needs approval: of two', 'only the first ": " separates id and reason');
  assert.equal(withUrl?.approveCommand, `airlock approvals approve ${long}`);
  assert.equal(withUrl?.url, `https://airlock.example/api/approvals/${long}/approve`);
  assert.deepEqual(withUrl?.otherDetail, [`or: POST https://airlock.example/api/approvals/${long}/approve`]);
  assert.equal(withUrl?.expiresAt, undefined);
  assert.ok(!('expiresAt' in withUrl!), 'no expiresAt key without a hint');

  const bare = parseHeldNotice({ code: '01AL0', message: `airlock: statement held for approval ${ID}: r` });
  assert.equal(bare?.approveCommand, `airlock approvals approve ${ID}`, 'the approve command is known without a detail');
  assert.equal(parseHeldNotice({ ...HELD, hint: 'expires at soon' })?.expiresAt, undefined, 'an unreadable expiry is left out');
});

test('parseHeldNotice: anything else is not a held notice', () => {
  assert.equal(parseHeldNotice(undefined), undefined);
  assert.equal(parseHeldNotice({ ...HELD, code: '00000' }), undefined, 'another SQLSTATE');
  assert.equal(parseHeldNotice({ ...HELD, code: undefined }), undefined);
  assert.equal(parseHeldNotice({ ...HELD, message: 'airlock: statement held for approval apr_0123: short id' }), undefined);
  assert.equal(parseHeldNotice({ ...HELD, message: `statement held for approval ${ID}: no prefix` }), undefined);
  assert.equal(parseHeldNotice({ ...HELD, message: `airlock: statement held for approval APR_0123456789ABCDEF: upper` }), undefined);
  assert.equal(parseHeldNotice({ severity: 'NOTICE', code: '01AL0', message: undefined }), undefined);
});

test('formatDuration', () => {
  assert.deepEqual([0, 999, 12_000, 59_999, 60_000, 65_000, 588_000, 3_599_000, 3_600_000, 7_500_000, 47 * 3600_000, 50 * 3600_000, -5000]
    .map(formatDuration), ['0s', '0s', '12s', '59s', '1m00s', '1m05s', '9m48s', '59m59s', '1h00m', '2h05m', '47h00m', '2d02h', '0s']);
});

test('formatStatusLine: waited, expiry, approve command (and URL)', () => {
  const held = parseHeldNotice(HELD)!;
  const now = held.expiresAt!.getTime() - 588_000;
  assert.equal(formatStatusLine(held, 12_000, now),
    `waiting for approval ${ID} (12s, expires in 9m48s) — approve: airlock approvals approve ${ID}`);
  assert.equal(formatStatusLine(held, 700_000, held.expiresAt!.getTime() + 1), `waiting for approval ${ID} (11m40s, expired) — approve: airlock approvals approve ${ID}`);
  assert.equal(formatStatusLine({ ...held, expiresAt: undefined, url: 'https://a.example/x', otherDetail: ['or: POST https://a.example/x'] }, 1000, now),
    `waiting for approval ${ID} (1s) — approve: airlock approvals approve ${ID}`, 'the URL line is shown once, not in the status line');
  assert.equal(formatStatusLine({ ...held, approveCommand: 'run\x1b[2J\nthis' }, 0, now).includes('\x1b'), false, 'no control characters');
});

function fakeStream(isTTY: boolean, columns?: number) {
  const writes: string[] = [];
  return { writes, text: () => writes.join(''), write: (s: string) => writes.push(s), isTTY, columns };
}

test('ApprovalStatus in a log (not a TTY): a line at the start, one per tick, a closing line', () => {
  let now = Date.parse('2030-01-02T02:54:05.000Z'); // 10 minutes before expiry
  const out = fakeStream(false);
  const status = new ApprovalStatus(out, () => now);
  status.hold(parseHeldNotice({ ...HELD, detail: `${HELD.detail}\nor: POST https://gw.example/api/approvals/${ID}/approve` })!);
  status.hold(parseHeldNotice(HELD)!); // repeated: ignored
  now += 30_000;
  status.tick();
  status.print('NOTICE: something else');
  now += 12_000;
  status.finish('completed');
  assert.equal(out.text(), [
    `airlock: statement held for approval ${ID}: deletes need a second DBA`,
    `airlock: or: POST https://gw.example/api/approvals/${ID}/approve`,
    `waiting for approval ${ID} (0s, expires in 10m00s) — approve: airlock approvals approve ${ID}`,
    `waiting for approval ${ID} (30s, expires in 9m30s) — approve: airlock approvals approve ${ID}`,
    'NOTICE: something else',
    `airlock: ${ID} was approved; the statement ran after 42s`,
    '',
  ].join('\n'));
  assert.ok(!out.text().includes('\r'), 'no terminal control in logs');
  assert.equal(status.held?.id, ID);
});

test('ApprovalStatus on a terminal: one line rewritten in place, cleared at the end', () => {
  let now = Date.parse('2030-01-02T02:54:05.000Z');
  const out = fakeStream(true, 200);
  const status = new ApprovalStatus(out, () => now);
  status.hold(parseHeldNotice(HELD)!);
  assert.equal(out.writes[0], `airlock: statement held for approval ${ID}: deletes need a second DBA\n`);
  assert.equal(out.writes[1], `\r\x1b[2Kwaiting for approval ${ID} (0s, expires in 10m00s) — approve: airlock approvals approve ${ID}`);
  now += 1000;
  status.tick();
  assert.equal(out.writes[2], `\r\x1b[2Kwaiting for approval ${ID} (1s, expires in 9m59s) — approve: airlock approvals approve ${ID}`);
  status.print('NOTICE: hello');
  assert.deepEqual(out.writes.slice(3, 5), ['\r\x1b[2K', 'NOTICE: hello\n'], 'cleared before another line is printed');
  assert.equal(out.writes[5], out.writes[2], 'and drawn again after it');
  status.finish('failed');
  assert.deepEqual(out.writes.slice(6), ['\r\x1b[2K'], 'a failure only clears the line (the error follows)');
  status.finish('failed');
  assert.equal(out.writes.length, 7, 'finishing twice writes nothing');

  const narrow = fakeStream(true, 60);
  new ApprovalStatus(narrow, () => now).hold(parseHeldNotice(HELD)!);
  assert.equal(narrow.writes[1], `\r\x1b[2Kwaiting for approval ${ID} (0s, expires in …`);
  assert.equal([...narrow.writes[1].slice(5)].length, 59, 'shortened to the terminal width, so that it never wraps');

  const idle = fakeStream(true);
  new ApprovalStatus(idle).finish('completed');
  assert.deepEqual(idle.writes, [], 'nothing when nothing was held');
});

test('formatResultTable: psql\'s aligned format', () => {
  const fields = [{ name: 'id', dataTypeID: 23 }, { name: 'name', dataTypeID: 25 }, { name: 'amount', dataTypeID: 1700 }, { name: 'note', dataTypeID: 25 }];
  assert.equal(formatResultTable(fields, [['1', 'Ada', '1.50', null], ['20', 'Grace\nHopper', '100.00', 'x']]), [
    ' id |  name  | amount | note',
    '----+--------+--------+------',
    '  1 | Ada    |   1.50 |',
    ' 20 | Grace +| 100.00 | x',
    '    | Hopper |        |',
    '(2 rows)',
  ].join('\n'));
  assert.equal(formatResultTable([{ name: 'x', dataTypeID: 25 }], [['y']]), ' x\n---\n y\n(1 row)');
  assert.equal(formatResultTable([{ name: 'abc', dataTypeID: 25 }], []), ' abc\n-----\n(0 rows)');
  assert.equal(formatResultTable([], [[]]), '--\n(1 row)');
  assert.equal(formatResultTable([{ name: 'a', dataTypeID: 25 }, { name: 'b', dataTypeID: 25 }], [['1\n2', 'x\ny\nz']]),
    ' a | b\n---+---\n 1+| x+\n 2 | y+\n   | z\n(1 row)');
});

test('results as text and as JSON documents', () => {
  const select = { tag: 'SELECT 2', rowCount: 2, fields: [{ name: 'a', dataTypeID: 23 }, { name: 'a', dataTypeID: 25 }], rows: [['1', null], ['2', 'x']] };
  assert.deepEqual(resultDocument(select), {
    command: 'SELECT', tag: 'SELECT 2', rowCount: 2, fields: [{ name: 'a', dataTypeID: 23 }, { name: 'a', dataTypeID: 25 }],
    rows: [{ a: '1', a_2: null }, { a: '2', a_2: 'x' }],
  });
  assert.deepEqual(rowKeys([{ name: 'a', dataTypeID: 0 }, { name: 'a_2', dataTypeID: 0 }, { name: 'a', dataTypeID: 0 }]), ['a', 'a_2', 'a_3']);
  assert.deepEqual(['SELECT 3', 'INSERT 0 1', 'CREATE TABLE', 'DELETE 0', 'COPY 5'].map(commandOfTag), ['SELECT', 'INSERT', 'CREATE TABLE', 'DELETE', 'COPY']);
  const del = { tag: 'DELETE 3', rowCount: 3, fields: [], rows: [] };
  assert.equal(formatResultsText([del]), 'DELETE 3');
  assert.equal(formatResultsText([{ tag: 'BEGIN', rowCount: null, fields: [], rows: [] }, del, { tag: 'COMMIT', rowCount: null, fields: [], rows: [] }]), 'BEGIN\nDELETE 3\nCOMMIT');
  const returning = { tag: 'INSERT 0 1', rowCount: 1, fields: [{ name: 'id', dataTypeID: 23 }], rows: [['7']] };
  assert.equal(formatResultsText([returning, del]), ' id\n----\n  7\n(1 row)\nINSERT 0 1\n\nDELETE 3');
});

test('planTls: plain text only to loopback without TLS options; remote gateways need --ca or --tls-fingerprint', () => {
  for (const host of ['127.0.0.1', '127.1.2.3', '::1', 'localhost']) assert.deepEqual(planTls(host, {}), { mode: 'plain' }, host);
  for (const host of ['192.0.2.10', 'db.example.com', '0.0.0.0', '::', '127.evil.example']) {
    assert.throws(() => planTls(host, {}), (err: Error) => err instanceof ExecUsageError
      && /is not on this host, so TLS is required.*--ca FILE.*--tls-fingerprint SHA256/.test(err.message), host);
  }
  const fp = 'ab:cd:'.repeat(15) + 'ab:cd';
  assert.deepEqual(planTls('db.example.com', { tlsFingerprint: fp }),
    { mode: 'tls', ca: undefined, caFile: undefined, fingerprint: fp.toUpperCase() });
  assert.equal((planTls('127.0.0.1', { tlsFingerprint: fp }) as { mode: string }).mode, 'tls', 'TLS also to loopback when asked for');
  assert.throws(() => planTls('db.example.com', { ca: '/nonexistent/ca.pem' }), /--ca: cannot read \/nonexistent\/ca\.pem: ENOENT/);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-exec-unit-'));
  try {
    fs.writeFileSync(path.join(tmp, 'bad.pem'), 'not a certificate');
    assert.throws(() => planTls('db.example.com', { ca: path.join(tmp, 'bad.pem') }), /holds no PEM certificate/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('normalizeFingerprint and checkPinnedCertificate', () => {
  const hex = '0123456789abcdef'.repeat(4);
  const colon = hex.toUpperCase().match(/../g)!.join(':');
  for (const form of [colon, colon.toLowerCase(), hex, `sha256 ${colon}`, `SHA256:${colon}`]) assert.equal(normalizeFingerprint(form), colon, form);
  for (const bad of ['', 'AB:CD', `${colon}:00`, 'zz'.repeat(32)]) assert.throws(() => normalizeFingerprint(bad), ExecUsageError, bad);
  assert.equal(checkPinnedCertificate({ fingerprint256: colon }, colon), undefined);
  assert.match(checkPinnedCertificate({ fingerprint256: colon.replace('01', 'FF') }, colon)!.message, /has fingerprint FF:23.*not the expected 01:23/);
  assert.ok(checkPinnedCertificate(undefined, colon));
  assert.ok(X509Certificate, 'node:crypto fingerprints use the same colon-hex form');
});

test('resolveGateway: --gateway, then AIRLOCK_GATEWAY, then --config, then the default', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-exec-unit-'));
  try {
    const cfg = path.join(tmp, 'airlock.yaml');
    fs.writeFileSync(cfg, 'listeners:\n  postgres: 0.0.0.0:25432\nagent:\n  connections:\n    - name: x\n      url: postgres://u:${AIRLOCK_EXEC_TEST_UNSET}@h/db\n');
    assert.deepEqual(resolveGateway({ gateway: 'gw.example:1' }, { AIRLOCK_GATEWAY: 'env.example:2' }), { host: 'gw.example', port: 1, source: '--gateway' });
    assert.deepEqual(resolveGateway({ config: cfg }, { AIRLOCK_GATEWAY: '[::1]:2' }), { host: '::1', port: 2, source: 'AIRLOCK_GATEWAY' });
    assert.deepEqual(resolveGateway({ config: cfg }, {}), { host: '127.0.0.1', port: 25432, source: `listeners.postgres in ${cfg}` },
      'a wildcard listener means this host; the agent\'s secrets are not needed');
    assert.throws(() => resolveGateway({ config: path.join(tmp, 'missing.yaml') }, {}), /cannot read config file/);
    assert.throws(() => resolveGateway({ gateway: 'no-port' }, {}), /--gateway: expected HOST:PORT/);
    assert.throws(() => resolveGateway({ gateway: 'h:70000' }, {}), /port out of range/);
    assert.throws(() => resolveGateway({}, { AIRLOCK_GATEWAY: 'h:' }), /AIRLOCK_GATEWAY: expected HOST:PORT/);
    const cwd = process.cwd();
    process.chdir(tmp);
    try {
      assert.equal(resolveGateway({}, {}).port, 25432, './airlock.yaml is read when present');
      fs.rmSync(cfg);
      assert.deepEqual(resolveGateway({}, {}), { host: '127.0.0.1', port: 15432, source: 'default' });
    } finally {
      process.chdir(cwd);
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
