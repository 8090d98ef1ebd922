// The `airlock` command line as an operator uses it: every command runs as a child process of
// the real CLI (bin/airlock.js), `airlock up` serves real psql against the real PostgreSQL on
// 127.0.0.1:5432, and the audit log is read back with `airlock audit list`.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { run, psql, type RunResult } from '../helpers/clients.ts';

const CLI = path.resolve('bin/airlock.js');
const cli = (args: string[], env?: Record<string, string>): Promise<RunResult> =>
  run(process.execPath, [CLI, ...args], { env, timeoutMs: 30_000 });
const esc = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const show = (r: RunResult) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

const TOKEN_RE = /^alk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$/;
const UNSET_VAR = `AIRLOCK_CLI_TEST_UNSET_${process.pid}`;

/** The version `policy check` reports for CONNECTIONS_YAML + CI_READ_YAML (a content hash). */
let checkedVersion = '';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-cli-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function writeFiles(dir: string, files: Record<string, string>): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  return dir;
}

/** Replaces a file in one step (rename), so that the gateway's file watcher never sees it half written. */
function replaceFile(file: string, content: string): void {
  const tmpFile = path.join(path.dirname(file), `.${path.basename(file)}.tmp`); // dotfiles are not policy files
  fs.writeFileSync(tmpFile, content);
  fs.renameSync(tmpFile, file);
}

const CONNECTIONS_YAML = `connections:
  - name: pgmain
    type: postgres
    tags: { env: test }
`;
const CI_READ_YAML = `policies:
  - name: ci-read
    subjects:
      - group: ci
    connections: [pgmain]
    allow:
      - sql: [select]
`;
const CI_PAUSED_YAML = `${CI_READ_YAML}    deny:
      - sql: [select]
        message: reads are paused for maintenance
`;

// A folder with three problems in three files; line numbers are those of the offending text.
const BAD_FILES = {
  'connections.yaml': 'connections:\n  - name: pgmain\n    type: postgres\n    url: postgres://svc:hunter2@db.internal:5432/app\n',
  'kinds.yaml': 'policies:\n  - name: ci-read\n    subjects:\n      - group: ci\n    connections: [pgmain]\n    allow:\n      - sql: [select, selec]\n',
  'syntax.yaml': 'policies:\n  - name: broken\n    subjects:\n      - group: ci\n     connections: [pgmain]\n',
};

test('--help at every level names the commands and flags; unknown commands fail helpfully', { timeout: 30_000 }, async () => {
  const [top, tok, create, check, unknown, typo] = await Promise.all([
    cli(['--help']), cli(['token', '--help']), cli(['token', 'create', '--help']), cli(['policy', 'check', '--help']),
    cli(['frobnicate']), cli(['tokn']),
  ]);
  assert.equal(top.code, 0, show(top));
  assert.match(top.stdout, /^Usage: airlock \[options\] \[command\]$/m);
  for (const cmd of ['up', 'demo', 'token', 'policy', 'audit']) assert.match(top.stdout, new RegExp(`^  ${cmd}\\b`, 'm'), cmd);
  assert.equal(top.stderr, '');

  assert.equal(tok.code, 0, show(tok));
  assert.match(tok.stdout, /^Usage: airlock token \[options\] \[command\]$/m);
  for (const sub of ['create', 'list', 'revoke']) assert.match(tok.stdout, new RegExp(`^  ${sub}\\b`, 'm'), sub);

  assert.equal(create.code, 0, show(create));
  for (const flag of ['--subject <name>', '--groups <a,b>', '--ttl <duration>', '--description <text>', '--json', '--config <file>']) {
    assert.ok(create.stdout.includes(flag), `token create --help mentions ${flag}`);
  }

  assert.equal(check.code, 0, show(check));
  assert.match(check.stdout, /^Usage: airlock policy check \[options\] \[dir\]$/m);
  assert.match(check.stdout, /file:line/);
  assert.match(check.stdout, /dir\s+policy folder \(default: "policies"\)/);

  assert.equal(unknown.code, 1, show(unknown));
  assert.equal(unknown.stdout, '');
  assert.match(unknown.stderr, /^error: unknown command 'frobnicate'$/m);
  assert.match(unknown.stderr, /Usage: airlock/, 'the usage follows the error');
  assert.equal(typo.code, 1);
  assert.match(typo.stderr, /unknown command 'tokn'\n\(Did you mean token\?\)/);
});

test('policy check: ok line for a valid folder; file:line:col per problem, exit 1, for an invalid or missing one', { timeout: 30_000 }, async () => {
  const good = writeFiles(path.join(tmp, 'check-good'), { 'connections.yaml': CONNECTIONS_YAML, 'ci.yaml': CI_READ_YAML });
  const bad = writeFiles(path.join(tmp, 'check-bad'), BAD_FILES);
  const missing = path.join(tmp, 'no-such-folder');
  const [ok, invalid, gone] = await Promise.all([good, bad, missing].map((d) => cli(['policy', 'check', d])));

  assert.equal(ok.code, 0, show(ok));
  const vm = /^ok: 1 policies, 1 connections in 2 files \(version (sha256:[0-9a-f]{16})\)\n$/.exec(ok.stdout);
  assert.ok(vm, show(ok));
  checkedVersion = vm[1];
  assert.equal(ok.stderr, '');

  assert.equal(invalid.code, 1, show(invalid));
  assert.equal(invalid.stdout, '');
  const lines = invalid.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 4, show(invalid));
  assert.equal(lines[0], `${bad}/connections.yaml:4:5: "url" is not allowed in connection "pgmain": the policy folder must not contain `
    + `credentials or addresses (they live in the agent's configuration); a connection has only name, type, tags, description`);
  assert.match(lines[1], new RegExp(`^${esc(bad)}/kinds\\.yaml:7:23: unknown SQL kind "selec" \\(valid: select, insert, update, delete, `));
  assert.match(lines[2], new RegExp(`^${esc(bad)}/syntax\\.yaml:5:\\d+: YAML syntax error: \\S`));
  assert.equal(lines[3], `3 problem(s) in ${bad}`);
  assert.ok(!invalid.stderr.includes('hunter2'), 'the credential in the rejected URL is not echoed');

  assert.equal(gone.code, 1, show(gone));
  assert.match(gone.stderr, new RegExp(`^${esc(missing)}: policy directory ${esc(missing)} does not exist\n1 problem\\(s\\) in ${esc(missing)}\n$`));
});

test('token create / list / revoke against a store created on demand', { timeout: 30_000 }, async () => {
  const dir = writeFiles(path.join(tmp, 'tokens'), {
    // The agent's secrets are not needed to manage tokens: the unset variable must not matter here.
    'airlock.yaml': `data_dir: .\nagent:\n  connections:\n    - name: pgmain\n      url: postgres://svc:\${${UNSET_VAR}}@127.0.0.1:5432/postgres\n`,
  });
  const cfg = path.join(dir, 'airlock.yaml');
  const before = Date.now();
  const created = await cli(['token', 'create', '--subject', 's', '--groups', 'a,b', '--ttl', '1h', '--config', cfg]);
  assert.equal(created.code, 0, show(created));
  const lines = created.stdout.split('\n');
  assert.equal(lines.length, 2, 'exactly one line on stdout');
  assert.equal(lines[1], '');
  const m = TOKEN_RE.exec(lines[0]);
  assert.ok(m, `a service token on stdout: ${lines[0]}`);
  const [, id1, secret1] = m;
  // The first command on a new store also says once that it generated the audit signing key.
  assert.match(created.stderr, /^(generated the audit signing key .+\n)?token /);
  const em = /^token ([a-z2-7]{12}) for s \(groups: a,b\) expires (\S+)\n$/m.exec(created.stderr);
  assert.ok(em, show(created));
  assert.equal(em[1], id1);
  const expires = Date.parse(em[2]);
  assert.ok(expires >= before + 3_600_000 && expires <= Date.now() + 3_600_000, em[2]);
  assert.ok(fs.existsSync(path.join(dir, 'airlock.db')), 'the store is created on demand in data_dir');

  const json = await cli(['token', 'create', '--subject', 'nightly', '--groups', 'etl', '--ttl', '2w', '--description', 'nightly export', '--json', '--config', cfg]);
  assert.equal(json.code, 0, show(json));
  const rec = JSON.parse(json.stdout);
  assert.deepEqual(Object.keys(rec).sort(), ['createdAt', 'description', 'expiresAt', 'groups', 'id', 'subject', 'token']);
  assert.match(rec.token, TOKEN_RE);
  assert.equal(rec.token.slice(4, 16), rec.id);
  assert.equal(rec.subject, 'nightly');
  assert.deepEqual(rec.groups, ['etl']);
  assert.equal(rec.description, 'nightly export');
  assert.equal(Date.parse(rec.expiresAt) - Date.parse(rec.createdAt), 14 * 86_400_000);
  const secret2 = rec.token.slice(17);

  const [list, ttl0, ttlBad, ttlHuge] = await Promise.all([
    cli(['token', 'list', '--config', cfg]),
    cli(['token', 'create', '--subject', 's', '--ttl', '0', '--config', cfg]),
    cli(['token', 'create', '--subject', 's', '--ttl', 'nonsense', '--config', cfg]),
    cli(['token', 'create', '--subject', 's', '--ttl', '999999999d', '--config', cfg]),
  ]);
  assert.equal(list.code, 0, show(list));
  const rows = list.stdout.trimEnd().split('\n');
  assert.match(rows[0], /^ID\s+SUBJECT\s+GROUPS\s+CREATED\s+EXPIRES\s+STATUS\s+DESCRIPTION$/);
  assert.equal(rows.length, 3, list.stdout);
  assert.match(list.stdout, new RegExp(`^${id1}\\s+s\\s+a,b\\s+\\S+\\s+\\S+\\s+active$`, 'm'));
  assert.match(list.stdout, new RegExp(`^${rec.id}\\s+nightly\\s+etl\\s+\\S+\\s+\\S+\\s+active\\s+nightly export$`, 'm'));
  assert.ok(!list.stdout.includes(secret1) && !list.stdout.includes(secret2), 'token list never shows a secret');
  const db = Buffer.concat(['airlock.db', 'airlock.db-wal'].filter((f) => fs.existsSync(path.join(dir, f)))
    .map((f) => fs.readFileSync(path.join(dir, f)))).toString('latin1');
  assert.ok(!db.includes(secret1) && !db.includes(secret2), 'the store holds no secret');

  assert.equal(ttl0.code, 1, show(ttl0));
  assert.equal(ttl0.stderr, 'airlock: --ttl: duration must be positive: "0"\n');
  assert.equal(ttlBad.code, 1, show(ttlBad));
  assert.equal(ttlBad.stderr, 'airlock: --ttl: invalid duration "nonsense" (use e.g. 90s, 30m, 1h, 7d, 2w)\n');
  assert.equal(ttlHuge.code, 1, show(ttlHuge));
  assert.equal(ttlHuge.stderr, 'airlock: --ttl: duration "999999999d" is too long\n');
  for (const r of [ttl0, ttlBad, ttlHuge]) assert.equal(r.stdout, '', 'no token printed');

  const [revoked, unknown] = await Promise.all([
    cli(['token', 'revoke', id1, '--config', cfg]), cli(['token', 'revoke', 'zzzzzzzzzzzz', '--config', cfg]),
  ]);
  assert.equal(revoked.code, 0, show(revoked));
  assert.equal(revoked.stdout, `revoked ${id1}\n`);
  assert.equal(unknown.code, 1, show(unknown));
  assert.equal(unknown.stdout, '');
  assert.equal(unknown.stderr, 'airlock: no active token with id zzzzzzzzzzzz\n');
  const [active, all] = await Promise.all([cli(['token', 'list', '--config', cfg]), cli(['token', 'list', '--all', '--json', '--config', cfg])]);
  assert.ok(!active.stdout.includes(id1), `a revoked token is not listed as active:\n${active.stdout}`);
  assert.match(active.stdout, new RegExp(`^${rec.id}\\s`, 'm'));
  const records = JSON.parse(all.stdout) as Record<string, unknown>[];
  assert.deepEqual(records.map((r) => r.id), [id1, rec.id], 'the failed creates stored nothing; --all keeps the revoked one');
  assert.match(String(records[0].revokedAt), /^\d{4}-\d\d-\d\dT/);
  assert.equal(records[1].revokedAt, undefined);
  for (const r of records) {
    assert.deepEqual(Object.keys(r).filter((k) => !['id', 'subject', 'groups', 'createdAt', 'expiresAt', 'revokedAt', 'description'].includes(k)), []);
  }
  assert.ok(!all.stdout.includes(secret1) && !all.stdout.includes(secret2));
});

test('up refuses to start: an invalid policy folder (file:line: problem), an unset ${VAR} (named, no secret shown)', { timeout: 30_000 }, async () => {
  const bad = writeFiles(path.join(tmp, 'up-bad', 'policies'), BAD_FILES);
  const badCfg = path.join(tmp, 'up-bad', 'airlock.yaml');
  fs.writeFileSync(badCfg, `data_dir: .\nlisteners: { postgres: 127.0.0.1:0, api: 127.0.0.1:0 }\n`
    + `agent:\n  connections:\n    - name: pgmain\n      url: postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable\n`);
  const envDir = writeFiles(path.join(tmp, 'up-env'), {});
  writeFiles(path.join(envDir, 'policies'), { 'connections.yaml': CONNECTIONS_YAML, 'ci.yaml': CI_READ_YAML });
  const envCfg = path.join(envDir, 'airlock.yaml');
  fs.writeFileSync(envCfg, `data_dir: .\nlisteners: { postgres: 127.0.0.1:0, api: 127.0.0.1:0 }\nagent:\n  connections:\n`
    + `    - name: pgmain\n      url: postgres://svc:\${AIRLOCK_CLI_TEST_PW}@127.0.0.1:5432/\${${UNSET_VAR}}?x=literal-hunter2\n`);
  const [r, e] = await Promise.all([
    cli(['up', '--config', badCfg]),
    cli(['up', '--config', envCfg], { AIRLOCK_CLI_TEST_PW: 'resolved-s3cret-value' }),
  ]);

  assert.equal(r.code, 1, show(r));
  assert.equal(r.stdout, '', 'no banner');
  assert.match(r.stderr, new RegExp(`^airlock: the policy folder ${esc(bad)} is invalid:$`, 'm'));
  assert.match(r.stderr, new RegExp(`^${esc(bad)}/kinds\\.yaml:7:23: unknown SQL kind "selec"`, 'm'));
  assert.match(r.stderr, new RegExp(`^${esc(bad)}/connections\\.yaml:4:5: "url" is not allowed in connection "pgmain"`, 'm'));
  assert.match(r.stderr, new RegExp(`^${esc(bad)}/syntax\\.yaml:5:\\d+: YAML syntax error`, 'm'));

  assert.equal(e.code, 1, show(e));
  assert.equal(e.stdout, '');
  assert.equal(e.stderr, `airlock: ${envCfg}: agent.connections[0].url: environment variable ${UNSET_VAR} is not set\n`);
  assert.ok(!e.stderr.includes('resolved-s3cret-value') && !e.stderr.includes('hunter2'));
});

describe('a running gateway: airlock up, tokens from the CLI, real psql, policy reload, SIGTERM, audit', () => {
  const dir = path.join(tmp, 'gw');
  const policies = path.join(dir, 'policies');
  const cfg = path.join(dir, 'airlock.yaml');
  // Trust authentication never asks for it, so a fake password checks that it never leaks.
  const PG_PASSWORD = 'never-shown-pg-password-7d1f';
  const env = { AIRLOCK_CLI_TEST_PGPASS: PG_PASSWORD };
  let child: ChildProcess | undefined;
  let exited: Promise<number | null>;
  let out = '';
  let err = '';
  let port = 0;
  let apiPort = 0;
  let initialVersion = '';
  let pausedVersion = '';
  const tokens: Record<string, { token: string; id: string }> = {};
  const conninfo = () => `host=127.0.0.1 port=${port} dbname=pgmain user=x`;
  const status = async () => (await (await fetch(`http://127.0.0.1:${apiPort}/api/status`)).json()) as { policyVersion: string };
  const until = async (what: string, cond: () => boolean | Promise<boolean>, ms = 5000) => {
    const deadline = Date.now() + ms;
    while (!(await cond())) {
      assert.ok(Date.now() < deadline, `timed out waiting for ${what}\n--- stdout\n${out}\n--- stderr\n${err}`);
      assert.equal(child?.exitCode, null, `airlock up exited early\n${out}\n${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const newToken = async (subject: string, groups: string) => {
    const r = await cli(['token', 'create', '--subject', subject, '--groups', groups, '--ttl', '10m', '--config', cfg]);
    assert.equal(r.code, 0, show(r));
    const token = r.stdout.trim();
    assert.match(token, TOKEN_RE);
    tokens[subject] = { token, id: token.slice(4, 16) };
    return token;
  };
  const auditJson = async (...args: string[]) => {
    const r = await cli(['audit', 'list', '--json', '--limit', '1000', '--config', cfg, ...args]);
    assert.equal(r.code, 0, show(r));
    return r.stdout.trim() ? r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>) : [];
  };

  before(() => {
    writeFiles(policies, { 'connections.yaml': CONNECTIONS_YAML, 'ci.yaml': CI_READ_YAML });
    fs.writeFileSync(cfg, `data_dir: ./data
policies: ./policies
listeners: { postgres: 127.0.0.1:0, api: 127.0.0.1:0 }
agent:
  connections:
    - name: pgmain
      url: postgres://postgres:\${AIRLOCK_CLI_TEST_PGPASS}@127.0.0.1:5432/postgres?sslmode=disable
`);
  });
  after(() => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });

  test('up prints the banner: listen address, TLS fingerprint, policy version', { timeout: 30_000 }, async () => {
    child = spawn(process.execPath, [CLI, 'up', '--config', cfg], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    exited = new Promise((resolve) => child!.on('close', resolve));
    await until('the banner', () => out.includes('  agent     serves pgmain\n'), 20_000);

    const cert = path.join(dir, 'data', 'tls', 'gateway.crt');
    const lines = out.split('\n');
    assert.equal(lines[0], 'airlock 0.1.0 is up');
    const pm = /^ {2}postgres {2}127\.0\.0\.1:(\d+)$/.exec(lines[1]);
    const am = /^ {2}api {7}http:\/\/127\.0\.0\.1:(\d+)$/.exec(lines[2]);
    assert.ok(pm && am, out);
    port = Number(pm[1]);
    apiPort = Number(am[1]);
    assert.ok(port > 0 && apiPort > 0 && port !== apiPort);
    assert.equal(lines[3], `  tls       self-signed (generated) ${cert}`);
    assert.equal(lines[4], `            sha256 ${new X509Certificate(fs.readFileSync(cert)).fingerprint256}`);
    const vm = /^ {2}policies {2}version (sha256:[0-9a-f]{16})$/.exec(lines[5]);
    assert.ok(vm, out);
    initialVersion = vm[1];
    if (checkedVersion) assert.equal(initialVersion, checkedVersion, 'the version `policy check` reported for the same files');
    assert.equal(lines[6], '  agent     serves pgmain');
    assert.equal(lines.length, 8, 'nothing else on stdout');
    assert.equal((await status()).policyVersion, initialVersion);
  });

  test('a token from `token create` works through real psql, also over TLS pinned to the printed certificate', { timeout: 20_000 }, async () => {
    assert.ok(port, 'gateway is up');
    const ci = await newToken('ci-bot', 'ci');
    const other = await newToken('other-bot', 'ci,reporting');
    const r = await psql(conninfo(), ci, 'select 1');
    assert.equal(r.code, 0, show(r));
    assert.equal(r.stdout, '1\n');
    const pinned = await psql(`${conninfo()} sslmode=verify-ca sslrootcert=${path.join(dir, 'data', 'tls', 'gateway.crt')}`, other, "select 'other'");
    assert.equal(pinned.code, 0, show(pinned));
    assert.equal(pinned.stdout, 'other\n');

    const create = await psql(conninfo(), ci, 'create table airlock_cli_should_not_exist (x int)', ['-v', 'VERBOSITY=verbose']);
    assert.equal(create.code, 1, show(create));
    assert.match(create.stderr, /ERROR:\s+42501: airlock: .*create.* is not allowed by any policy/);

    // sslmode=require: one attempt (with the default "prefer", psql retries in plain text after a refusal over TLS).
    const forged = await psql(`${conninfo()} sslmode=require`, `alk_${'a'.repeat(12)}_${'b'.repeat(42)}A`, 'select 1');
    assert.equal(forged.code, 2, show(forged));
    assert.match(forged.stderr, /authentication failed/);
  });

  test('editing the policy file and SIGHUP changes decisions; an invalid edit keeps the last good version', { timeout: 20_000 }, async () => {
    assert.ok(port, 'gateway is up');
    const ciFile = path.join(policies, 'ci.yaml');
    fs.writeFileSync(ciFile, CI_PAUSED_YAML);
    child!.kill('SIGHUP');
    await until('the new policy version', async () => (await status()).policyVersion !== initialVersion);
    pausedVersion = (await status()).policyVersion;
    assert.match(pausedVersion, /^sha256:[0-9a-f]{16}$/);
    const denied = await psql(conninfo(), tokens['ci-bot'].token, 'select 2', ['-v', 'VERBOSITY=verbose']);
    assert.equal(denied.code, 1, show(denied));
    assert.match(denied.stderr, /ERROR:\s+42501: airlock: reads are paused for maintenance\n/);
    assert.match(denied.stderr, new RegExp(`DETAIL:\\s+Refused by policy "ci-read", rule deny\\[0\\] \\(statement: select\\)\\. Policy version ${pausedVersion}`));

    fs.writeFileSync(ciFile, `${CI_READ_YAML}    deny: [\n`);
    child!.kill('SIGHUP');
    await until('the reload failure on stderr', () => err.includes('policy reload failed'));
    assert.equal((await status()).policyVersion, pausedVersion, 'the last good bundle stays in force');
    const still = await psql(conninfo(), tokens['ci-bot'].token, 'select 3');
    assert.equal(still.code, 1);
    assert.match(still.stderr, /reads are paused for maintenance/);

    fs.writeFileSync(ciFile, CI_READ_YAML); // no SIGHUP: picked up by the file watch alone
    await until('the original version again', async () => (await status()).policyVersion === initialVersion);
    const back = await psql(conninfo(), tokens['ci-bot'].token, 'select 4');
    assert.equal(back.code, 0, show(back));
    assert.equal(back.stdout, '4\n');
  });

  test('token revoke on the CLI refuses the next connection at once', { timeout: 20_000 }, async () => {
    assert.ok(port, 'gateway is up');
    const r = await cli(['token', 'revoke', tokens['other-bot'].id, '--config', cfg]);
    assert.equal(r.code, 0, show(r));
    const refused = await psql(`${conninfo()} sslmode=require`, tokens['other-bot'].token, 'select 1');
    assert.equal(refused.code, 2, show(refused));
    assert.match(refused.stderr, /FATAL:\s+authentication failed: service token has been revoked/);
  });

  // Node 20's recursive fs.watch on Linux follows the file's inode: once a policy file has been
  // replaced by a rename (editors' atomic save, git checkout, ConfigMap updates), it misses later
  // changes to it. The holder's stat poll must catch them without a SIGHUP.
  test('the file watch keeps seeing a policy file after it was replaced by rename', {
    timeout: 20_000,
  }, async () => {
    assert.ok(port, 'gateway is up');
    const ciFile = path.join(policies, 'ci.yaml');
    try {
      replaceFile(ciFile, CI_PAUSED_YAML);
      await until('the renamed file to be loaded', async () => (await status()).policyVersion === pausedVersion);
      fs.writeFileSync(ciFile, CI_READ_YAML);
      await until('the next edit to be loaded', async () => (await status()).policyVersion === initialVersion, 3000);
    } finally {
      fs.writeFileSync(ciFile, CI_READ_YAML);
      child!.kill('SIGHUP');
      await until('SIGHUP to restore the original version', async () => (await status()).policyVersion === initialVersion);
    }
  });

  test('SIGTERM stops it with exit status 0', { timeout: 20_000 }, async () => {
    assert.ok(child, 'gateway was started');
    child!.kill('SIGTERM');
    assert.equal(await exited, 0, err);
    assert.match(out, /\nstopping \(SIGTERM\)\n$/);
    for (const text of [out, err]) assert.ok(!text.includes(PG_PASSWORD), 'the connection password never appears in the output');
  });

  test('audit list --json shows the statements, policy.load/policy.error and the session events', { timeout: 20_000 }, async () => {
    const events = await auditJson();
    const raw = JSON.stringify(events);
    for (const t of Object.values(tokens)) assert.ok(!raw.includes(t.token.slice(17)), 'no token secret in the audit log');
    assert.ok(!raw.includes(PG_PASSWORD));

    const loads = events.filter((e) => e.type === 'policy.load');
    assert.equal(loads[0]?.bundleVersion, initialVersion);
    assert.deepEqual(loads[0]?.detail?.files, ['ci.yaml', 'connections.yaml']);
    assert.ok(loads.some((e) => e.bundleVersion === pausedVersion), 'the reload is recorded');
    assert.equal(loads.at(-1)?.bundleVersion, initialVersion);
    const perr = events.find((e) => e.type === 'policy.error');
    assert.equal(perr?.bundleVersion, pausedVersion, 'a failed reload names the version still in force');
    assert.match(perr?.error ?? '', /^ci\.yaml:\d+:\d+: YAML syntax error/);

    const stmt = (s: string) => events.filter((e) => e.type === 'statement' && e.statement === s);
    const [sel1] = stmt('select 1');
    assert.equal(sel1?.subject, 'ci-bot');
    assert.equal(sel1?.connection, 'pgmain');
    assert.equal(sel1?.decision, 'allow');
    assert.equal(sel1?.policy, 'ci-read');
    assert.equal(sel1?.rule, 'allow[0]');
    assert.equal(sel1?.bundleVersion, initialVersion);
    const [sel2] = stmt('select 2');
    assert.equal(sel2?.decision, 'deny');
    assert.equal(sel2?.rule, 'deny[0]');
    assert.equal(sel2?.reason, 'reads are paused for maintenance');
    assert.equal(sel2?.bundleVersion, pausedVersion);
    assert.equal(stmt('select 3')[0]?.bundleVersion, pausedVersion);
    assert.equal(stmt('select 4')[0]?.decision, 'allow');
    assert.equal(stmt("select 'other'")[0]?.subject, 'other-bot');
    assert.equal(stmt('create table airlock_cli_should_not_exist (x int)')[0]?.decision, 'deny');

    const starts = events.filter((e) => e.type === 'session.start');
    const ends = events.filter((e) => e.type === 'session.end');
    assert.equal(starts.length, 6, 'one session per psql run that authenticated');
    assert.deepEqual(ends.map((e) => e.sessionId).sort(), starts.map((e) => e.sessionId).sort());
    const sel1Start = starts.find((e) => e.sessionId === sel1.sessionId);
    assert.equal(sel1Start?.subject, 'ci-bot');
    assert.equal(sel1Start?.connection, 'pgmain');
    const failures = events.filter((e) => e.type === 'auth.failure');
    assert.deepEqual(failures.map((e) => [e.connection, e.reason]), [['pgmain', 'unknown service token'], ['pgmain', 'service token has been revoked']]);
    assert.equal(events.filter((e) => e.type === 'token.create').length, 2);
    assert.deepEqual(events.filter((e) => e.type === 'token.revoke').map((e) => e.detail?.tokenId), [tokens['other-bot'].id]);
  });

  test('audit list filters: --decision, --subject, --type, --limit return only matching events', { timeout: 20_000 }, async () => {
    const [all, deny, other, ciAllow, last2] = await Promise.all([
      auditJson(), auditJson('--decision', 'deny'), auditJson('--subject', 'other-bot'),
      auditJson('--subject', 'ci-bot', '--decision', 'allow'), auditJson('--type', 'statement', '--limit', '2'),
    ]);
    const ids = (es: Record<string, any>[]) => es.map((e) => e.id);
    assert.deepEqual(ids(deny), ids(all.filter((e) => e.decision === 'deny')));
    assert.deepEqual(deny.map((e) => e.statement), ['create table airlock_cli_should_not_exist (x int)', 'select 2', 'select 3']);
    assert.ok(other.length > 0);
    assert.deepEqual(ids(other), ids(all.filter((e) => e.subject === 'other-bot')));
    assert.ok(other.some((e) => e.type === 'session.start') && other.some((e) => e.statement === "select 'other'"));
    assert.deepEqual(ciAllow.map((e) => e.statement), ['select 1', 'select 4']);
    assert.deepEqual(ids(last2), ids(all.filter((e) => e.type === 'statement').slice(-2)), 'the latest two, oldest first');

    const [table, bad] = await Promise.all([
      cli(['audit', 'list', '--subject', 'other-bot', '--config', cfg]), cli(['audit', 'list', '--decision', 'maybe', '--config', cfg]),
    ]);
    assert.equal(table.code, 0, show(table));
    const rows = table.stdout.trimEnd().split('\n');
    assert.match(rows[0], /^ID\s+TIME\s+TYPE\s+SUBJECT\s+CONNECTION\s+DECISION\s+STATEMENT\s+REASON$/);
    assert.equal(rows.length - 1, other.length);
    for (const row of rows.slice(1)) assert.match(row, /^\d+\s+\S+\s+\S+\s+other-bot(\s|$)/);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /argument 'maybe' is invalid\. Allowed choices are allow, deny, review/);
  });
});
