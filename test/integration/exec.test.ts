// `airlock exec` as CI jobs and agents use it: the real CLI (bin/airlock.js) as a child process,
// through a real gateway, against a real PostgreSQL database.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { run, psql, type RunResult } from '../helpers/clients.ts';

const CLI = path.resolve('bin/airlock.js');
const show = (r: RunResult) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

let db: TestDb;
let gw: TestGateway;
let ci: string;
let dba: string;
let tmp: string;

before(async () => {
  db = await createTestDb();
  gw = await startTestGateway({
    policies: {
      'p.yaml': `
connections:
  - name: analytics
    type: postgres
policies:
  - name: ci-read
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
      - functions: [say_hello, held_then, pg_sleep]
    review:
      - sql: [delete]
        tables: [orders]
        approvers: [group:dba]
    deny:
      - sql: [drop, truncate]
        message: DDL is not allowed from CI
  - name: dba-write
    subjects: [{ group: dba }]
    connections: [analytics]
    allow:
      - sql: [select, insert, update, delete]
`,
    },
    connections: [{ name: 'analytics', url: db.url }],
  });
  ci = (await gw.token('ci-bot', ['ci'])).token;
  dba = (await gw.token('dba-bot', ['dba'])).token;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-exec-'));
  // Functions on the target that send notices: an ordinary one, and one that imitates the
  // gateway's held notice (the gateway must not let it pass as one).
  await db.query(`
    CREATE FUNCTION say_hello() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN RAISE NOTICE 'hello from plpgsql'; RETURN 1; END $$;
    CREATE FUNCTION held_then() RETURNS text LANGUAGE plpgsql AS $$
    BEGIN
      RAISE NOTICE USING ERRCODE = '01AL0',
        MESSAGE = 'airlock: statement held for approval apr_00112233445566778899: deletes need a second DBA',
        DETAIL = 'approve with: airlock approvals approve apr_00112233445566778899';
      RETURN 'ran';
    END $$;`);
});

after(async () => {
  await gw?.close();
  await db?.drop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** `airlock exec ARGS` with the gateway and token in the environment (as in CI). */
function exec(args: string[], opts: { token?: string; env?: Record<string, string>; input?: string } = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, 'exec', ...args], {
    env: { AIRLOCK_GATEWAY: `127.0.0.1:${gw.port}`, AIRLOCK_TOKEN: opts.token ?? ci, ...opts.env },
    input: opts.input, timeoutMs: 30_000,
  });
}

const trimLines = (text: string) => text.split('\n').map((l) => l.trimEnd()).join('\n').replace(/\n+$/, '\n');

test('SELECT prints the table psql prints, on stdout only', { timeout: 30_000 }, async () => {
  const sql = "SELECT c.id, c.name, sum(o.amount) AS total, NULL::text AS note, CASE WHEN c.id = 2 THEN E'two\\nlines' END AS multi "
    + 'FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY c.id';
  const [r, viaPsql] = await Promise.all([exec(['analytics', '-c', sql]), psql(gw.conninfo('analytics'), ci, sql, ['-P', 'format=aligned', '-P', 'tuples_only=off'])]);
  assert.equal(r.code, 0, show(r));
  assert.equal(r.stderr, '');
  assert.equal(r.stdout, [
    ' id | name  | total  | note | multi',
    '----+-------+--------+------+-------',
    '  1 | Ada   | 247.50 |      |',
    '  2 | Grace | 217.50 |      | two  +',
    '    |       |        |      | lines',
    '  3 | Alan  | 232.50 |      |',
    '(3 rows)',
    '',
  ].join('\n'));
  assert.equal(viaPsql.code, 0, show(viaPsql));
  assert.equal(r.stdout, trimLines(viaPsql.stdout), 'the same as psql\'s default output, without trailing blanks');
});

test('--json: one document, values as PostgreSQL sent them, NULL as null', { timeout: 30_000 }, async () => {
  const r = await exec(['analytics', '--json', '-c',
    "SELECT id, name, NULL::text AS note, 1.50::numeric AS amount, id > 1 AS later, '{\"a\":1}'::jsonb AS j, "
    + "'2024-01-02'::date AS day, 9007199254740993::int8 AS big FROM customers ORDER BY id"]);
  assert.equal(r.code, 0, show(r));
  assert.equal(r.stderr, '');
  assert.equal(r.stdout.split('\n').length, 2, 'one line');
  const doc = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(doc), ['command', 'tag', 'rowCount', 'fields', 'rows']);
  assert.equal(doc.command, 'SELECT');
  assert.equal(doc.tag, 'SELECT 3');
  assert.equal(doc.rowCount, 3);
  assert.deepEqual(doc.fields, [
    { name: 'id', dataTypeID: 23 }, { name: 'name', dataTypeID: 25 }, { name: 'note', dataTypeID: 25 }, { name: 'amount', dataTypeID: 1700 },
    { name: 'later', dataTypeID: 16 }, { name: 'j', dataTypeID: 3802 }, { name: 'day', dataTypeID: 1082 }, { name: 'big', dataTypeID: 20 },
  ]);
  assert.deepEqual(doc.rows[0], { id: '1', name: 'Ada', note: null, amount: '1.50', later: 'f', j: '{"a": 1}', day: '2024-01-02', big: '9007199254740993' });
  assert.deepEqual(doc.rows.map((row: Record<string, string>) => row.name), ['Ada', 'Grace', 'Alan']);

  const empty = await exec(['analytics', '--json', '-c', 'SELECT id FROM customers WHERE false']);
  assert.equal(empty.code, 0, show(empty));
  assert.deepEqual(JSON.parse(empty.stdout), { command: 'SELECT', tag: 'SELECT 0', rowCount: 0, fields: [{ name: 'id', dataTypeID: 23 }], rows: [] });
});

test('statements without rows print their command tag; RETURNING prints rows and the tag', { timeout: 30_000 }, async () => {
  const [upd, updJson, ins] = await Promise.all([
    exec(['analytics', '-c', 'UPDATE orders SET amount = amount WHERE customer_id = 3'], { token: dba }),
    exec(['analytics', '--json', '-c', 'UPDATE orders SET amount = amount WHERE customer_id = 2'], { token: dba }),
    exec(['analytics', '-c', 'INSERT INTO audit_probe VALUES (7), (8) RETURNING id'], { token: dba }),
  ]);
  assert.equal(upd.code, 0, show(upd));
  assert.equal(upd.stdout, 'UPDATE 10\n');
  assert.equal(updJson.code, 0, show(updJson));
  assert.deepEqual(JSON.parse(updJson.stdout), { command: 'UPDATE', tag: 'UPDATE 10', rowCount: 10, fields: [], rows: [] });
  assert.equal(ins.code, 0, show(ins));
  assert.equal(ins.stdout, ' id\n----\n  7\n  8\n(2 rows)\nINSERT 0 2\n');
  assert.deepEqual((await db.query('SELECT id FROM audit_probe ORDER BY id')).rows, [{ id: 7 }, { id: 8 }]);
});

test('a refused DROP: exit 1, the gateway\'s reason on stderr (and as JSON), the table is still there', { timeout: 30_000 }, async () => {
  const [r, j] = await Promise.all([
    exec(['analytics', '-c', 'DROP TABLE customers']),
    exec(['analytics', '--json', '-c', 'DROP TABLE orders']),
  ]);
  assert.equal(r.code, 1, show(r));
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines[0], 'ERROR: airlock: DDL is not allowed from CI');
  assert.match(lines[1], /^DETAIL: Refused by policy "ci-read", rule deny\[0\] \(statement: drop\)\. Policy version sha256:[0-9a-f]+/);
  assert.match(lines[2], /^HINT: \S/);
  assert.equal(lines.length, 3, show(r));

  assert.equal(j.code, 1, show(j));
  const doc = JSON.parse(j.stdout);
  assert.deepEqual(Object.keys(doc), ['error']);
  assert.equal(doc.error.code, '42501');
  assert.equal(doc.error.message, 'airlock: DDL is not allowed from CI');
  assert.match(doc.error.detail, /^Refused by policy "ci-read"/);
  assert.equal(typeof doc.error.hint, 'string');
  assert.match(j.stderr, /^ERROR: airlock: DDL is not allowed from CI\n/);

  const tables = await db.query("SELECT to_regclass('customers') AS c, to_regclass('orders') AS o");
  assert.deepEqual(tables.rows[0], { c: 'customers', o: 'orders' });
  assert.equal((await db.query('SELECT count(*)::int AS n FROM customers')).rows[0].n, 3);
});

test('a statement PostgreSQL rejects: exit 1 with its SQLSTATE; a bad token or connection: exit 3', { timeout: 30_000 }, async () => {
  const revoked = await gw.token('revoked-bot', ['ci']);
  await gw.gw.store.revokeToken(revoked.id);
  const [syntax, badToken, badTokenJson, unknownConn] = await Promise.all([
    exec(['analytics', '--json', '-c', 'SELECT nope FROM customers']),
    exec(['analytics', '-c', 'SELECT 1'], { token: revoked.token }),
    exec(['analytics', '--json', '-c', 'SELECT 1'], { token: 'not-a-token' }),
    exec(['warehouse', '-c', 'SELECT 1']),
  ]);
  assert.equal(syntax.code, 1, show(syntax));
  assert.equal(JSON.parse(syntax.stdout).error.code, '42703');
  assert.match(syntax.stderr, /^ERROR: column "nope" does not exist\n/);

  assert.equal(badToken.code, 3, show(badToken));
  assert.equal(badToken.stdout, '');
  assert.equal(badToken.stderr, `airlock: cannot connect to "analytics" through the gateway at 127.0.0.1:${gw.port}: authentication failed: service token has been revoked\n`);
  assert.ok(!badToken.stderr.includes(revoked.token.slice(17)), 'the token is not echoed');

  assert.equal(badTokenJson.code, 3, show(badTokenJson));
  const err = JSON.parse(badTokenJson.stdout).error;
  assert.equal(err.code, '28P01');
  assert.match(err.message, /^authentication failed: the password must be an Airlock token or a JWT/);

  assert.equal(unknownConn.code, 3, show(unknownConn));
  assert.match(unknownConn.stderr, /cannot connect to "warehouse" .*: connection "warehouse" is not declared in the policy folder\n$/);
});

test('no gateway listening: exit 3 with a hint where the address came from', { timeout: 30_000 }, async () => {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const closedPort = (probe.address() as net.AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
  const r = await exec(['analytics', '--json', '-c', 'SELECT 1'], { env: { AIRLOCK_GATEWAY: `127.0.0.1:${closedPort}` } });
  assert.equal(r.code, 3, show(r));
  assert.match(r.stderr, new RegExp(`^airlock: cannot connect to "analytics" through the gateway at 127\\.0\\.0\\.1:${closedPort}: connect ECONNREFUSED`));
  assert.match(r.stderr, /\nHINT: is the gateway running at .* \(from AIRLOCK_GATEWAY\)\? Set it with --gateway or AIRLOCK_GATEWAY\n$/);
  assert.equal(JSON.parse(r.stdout).error.code, null);
});

test('usage errors exit 2 and never connect', { timeout: 30_000 }, async () => {
  const sessions = async () => (await gw.gw.store.listAudit({ limit: 10_000 })).filter((e) => e.type === 'session.start' || e.type === 'auth.failure').length;
  const before = await sessions();
  const results = await Promise.all([
    exec(['analytics']),
    exec(['analytics', '-c', '   ']),
    exec(['analytics', '-c', 'SELECT 1', '-f', 'x.sql']),
    exec(['analytics', '-f', path.join(os.tmpdir(), 'airlock-exec-no-such-file.sql')]),
    exec(['-c', 'SELECT 1']),
    exec(['analytics', '-c', 'SELECT 1', '--bogus']),
    exec(['analytics', '-c', 'SELECT 1', '--timeout', 'soon']),
    exec(['analytics', '-c', 'SELECT 1', '--gateway', 'no-port']),
    exec(['analytics', '-c', 'SELECT 1'], { env: { AIRLOCK_TOKEN: '' } }),
    exec(['analytics', '-c', 'SELECT 1', '--tls-fingerprint', 'AB:CD']),
  ]);
  const expected = [
    /^error: no SQL given: use -c "SQL", -f FILE, or -f - to read it from stdin\n/,
    /^error: the SQL of -c is empty\n/,
    /^error: give the SQL either with -c or with -f, not both\n/,
    /^error: -f: cannot read \S+airlock-exec-no-such-file\.sql: ENOENT\n/,
    /^error: missing required argument 'connection'\n/,
    /^error: unknown option '--bogus'\n/,
    /^error: option '--timeout <duration>' argument 'soon' is invalid\. invalid duration "soon"/,
    /^error: --gateway: expected HOST:PORT/,
    /^error: no token: set AIRLOCK_TOKEN \(preferred\) or pass --token\n/,
    /^error: --tls-fingerprint: expected a SHA-256 fingerprint/,
  ];
  results.forEach((r, i) => {
    assert.equal(r.code, 2, `${expected[i]}\n${show(r)}`);
    assert.match(r.stderr, expected[i]);
    assert.match(r.stderr, /\(airlock exec --help shows the options, exit statuses and examples\)\n$/);
    assert.equal(r.stdout, '');
  });
  assert.equal(await sessions(), before, 'no session was opened or attempted');

  const help = await exec(['--help']);
  assert.equal(help.code, 0, show(help));
  for (const text of ['-c, --command <sql>', '-f, --file <file>', '--json', '--gateway <host:port>', '--token <token>', '--user <name>',
    '--ca <file>', '--tls-fingerprint <sha256>', '--timeout <duration>', 'AIRLOCK_TOKEN', 'AIRLOCK_GATEWAY', 'Exit status:', '124', 'Examples:']) {
    assert.ok(help.stdout.includes(text), `--help mentions ${text}`);
  }
});

test('a gateway on another host needs --ca or --tls-fingerprint: refused before connecting', { timeout: 30_000 }, async () => {
  const started = Date.now();
  // 192.0.2.0/24 is TEST-NET-1: a connection attempt would hang, not fail fast.
  const r = await exec(['analytics', '-c', 'SELECT 1', '--gateway', '192.0.2.10:15432']);
  assert.equal(r.code, 2, show(r));
  assert.match(r.stderr, /^error: the gateway 192\.0\.2\.10 is not on this host, so TLS is required and must be verified: pass --ca FILE .* or --tls-fingerprint SHA256/);
  assert.ok(Date.now() - started < 15_000, 'no connection attempt');
});

test('TLS: pinned fingerprint and --ca work over loopback; a wrong pin fails before the token is sent', { timeout: 30_000 }, async () => {
  const fingerprint = gw.gw.tls.fingerprint;
  const wrong = fingerprint.replace(/^../, fingerprint.startsWith('00') ? '11' : '00');
  const [pinned, lower, ca, bad] = await Promise.all([
    exec(['analytics', '-c', "SELECT 'pinned'", '--tls-fingerprint', fingerprint, '--user', 'pin-ok']),
    exec(['analytics', '-c', "SELECT 'lower'", '--tls-fingerprint', fingerprint.toLowerCase().replace(/:/g, '')]),
    exec(['analytics', '-c', "SELECT 'ca'", '--ca', gw.gw.tls.certFile]),
    exec(['analytics', '-c', 'SELECT 1', '--tls-fingerprint', wrong, '--user', 'pin-wrong']),
  ]);
  assert.equal(pinned.code, 0, show(pinned));
  assert.match(pinned.stdout, /^ \?column\?\n-+\n pinned\n\(1 row\)\n$/);
  assert.equal(lower.code, 0, show(lower));
  assert.equal(ca.code, 0, show(ca));
  assert.match(ca.stdout, / ca\n/);
  assert.equal(bad.code, 3, show(bad));
  assert.match(bad.stderr, new RegExp(`cannot connect to "analytics" .*: the gateway's TLS certificate has fingerprint ${fingerprint}, not the expected ${wrong}`));

  const events = await gw.gw.store.listAudit({ limit: 1000 });
  const users = (type: string) => events.filter((e) => e.type === type).map((e) => (e.detail as { user?: string } | undefined)?.user);
  assert.ok(users('session.start').includes('pin-ok'), 'the pinned session is in the audit with its --user');
  assert.ok(!users('session.start').includes('pin-wrong') && !users('auth.failure').includes('pin-wrong'),
    'with a wrong pin the gateway never saw a password');
  const tlsOk = events.find((e) => e.type === 'session.start' && (e.detail as { user?: string })?.user === 'pin-ok');
  assert.equal((tlsOk?.detail as { tls?: boolean })?.tls, true);
});

test('-f FILE, -f - (stdin), and the gateway address from --config', { timeout: 30_000 }, async () => {
  const file = path.join(tmp, 'q.sql');
  fs.writeFileSync(file, '-- count the customers\nSELECT count(*) AS n\n  FROM customers;\n');
  const cfg = path.join(tmp, 'airlock.yaml');
  fs.writeFileSync(cfg, `listeners:\n  postgres: 127.0.0.1:${gw.port}\n`);
  const [fromFile, fromStdin, fromConfig] = await Promise.all([
    exec(['analytics', '-f', file]),
    exec(['analytics', '--json', '-f', '-'], { input: "SELECT name FROM customers WHERE id = 2" }),
    exec(['analytics', '-c', 'SELECT 42 AS answer', '--config', cfg], { env: { AIRLOCK_GATEWAY: '' } }),
  ]);
  assert.equal(fromFile.code, 0, show(fromFile));
  assert.equal(fromFile.stdout, ' n\n---\n 3\n(1 row)\n');
  assert.equal(fromStdin.code, 0, show(fromStdin));
  assert.deepEqual(JSON.parse(fromStdin.stdout).rows, [{ name: 'Grace' }]);
  assert.equal(fromConfig.code, 0, show(fromConfig));
  assert.equal(fromConfig.stdout, ' answer\n--------\n     42\n(1 row)\n');
});

test('notices go to stderr; a target cannot fake the gateway\'s held notice', { timeout: 30_000 }, async () => {
  const [hello, spoof] = await Promise.all([
    exec(['analytics', '-c', 'SELECT say_hello() AS x']),
    exec(['analytics', '-c', 'SELECT held_then() AS outcome']),
  ]);
  assert.equal(hello.code, 0, show(hello));
  assert.equal(hello.stderr, 'NOTICE: hello from plpgsql\n');
  assert.equal(hello.stdout, ' x\n---\n 1\n(1 row)\n');
  assert.equal(spoof.code, 0, show(spoof));
  assert.match(spoof.stderr, /^NOTICE: airlock: statement held for approval apr_00112233445566778899/);
  assert.doesNotMatch(spoof.stderr, /waiting for approval/, 'a notice from the target is an ordinary notice');
});

/** The pending approval request for `statement`, once the gateway has made it. */
async function pendingFor(statement: string) {
  for (let i = 0; i < 200; i++) {
    const found = (await gw.gw.approvals.list(['pending'])).find((r) => r.statement === statement);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no pending approval for ${statement}`);
}

test('a held statement: status line while waiting, then the result (0), or exit 4 when rejected', { timeout: 60_000 }, async () => {
  const approver = await gw.gw.store.verifyServiceToken(dba);
  const approvedRun = exec(['analytics', '-c', 'DELETE FROM orders WHERE id = 1']);
  const held = await pendingFor('DELETE FROM orders WHERE id = 1');
  assert.equal((await db.query('SELECT count(*)::int AS n FROM orders WHERE id = 1')).rows[0].n, 1, 'held, not run');
  await gw.gw.approvals.decide(held.id, approver, 'approve');
  const approved = await approvedRun;
  assert.equal(approved.code, 0, show(approved));
  assert.equal(approved.stdout, 'DELETE 1\n');
  const lines = approved.stderr.trimEnd().split('\n');
  assert.match(lines[0], new RegExp(`^airlock: statement held for approval ${held.id}: `));
  assert.ok(lines.some((l) => new RegExp(`^waiting for approval ${held.id} \\(\\d+s, expires in \\d+m\\d\\ds\\) — approve: airlock approvals approve ${held.id}$`).test(l)), show(approved));
  assert.match(lines.at(-1)!, new RegExp(`^airlock: ${held.id} was approved; the statement ran after \\d+s$`));
  assert.ok(!approved.stderr.includes('\r'), 'stderr is not a terminal: no rewriting');
  assert.equal((await db.query('SELECT count(*)::int AS n FROM orders WHERE id = 1')).rows[0].n, 0);

  const rejectedRun = exec(['analytics', '--json', '-c', 'DELETE FROM orders WHERE id = 2']);
  const held2 = await pendingFor('DELETE FROM orders WHERE id = 2');
  await gw.gw.approvals.decide(held2.id, approver, 'reject', 'not during business hours');
  const rejected = await rejectedRun;
  assert.equal(rejected.code, 4, show(rejected));
  const doc = JSON.parse(rejected.stdout);
  assert.equal(doc.error.code, '42501');
  assert.equal(doc.error.message, `airlock: approval ${held2.id} was rejected by dba-bot: not during business hours`);
  assert.equal(doc.approval.id, held2.id);
  assert.equal((await db.query('SELECT count(*)::int AS n FROM orders WHERE id = 2')).rows[0].n, 1);
});

test('--timeout: exit 124 and the statement is cancelled on the server', { timeout: 30_000 }, async () => {
  const started = Date.now();
  const r = await exec(['analytics', '--json', '--timeout', '1s', '-c', 'SELECT pg_sleep(20), 1 AS airlock_exec_timeout_probe']);
  assert.equal(r.code, 124, show(r));
  assert.ok(Date.now() - started < 10_000, 'stopped long before the statement would have ended');
  assert.match(r.stderr, /^airlock: timed out after 1s \(--timeout 1s\); the statement was cancelled\n$/);
  assert.deepEqual(JSON.parse(r.stdout).error, { code: null, message: 'timed out after 1s (--timeout 1s); the statement was cancelled', detail: null, hint: null });
  const running = await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%airlock_exec_timeout_probe%' AND state = 'active' AND pid <> pg_backend_pid()");
  assert.equal(running.rows[0].n, 0, 'the sleep is no longer running');
});
