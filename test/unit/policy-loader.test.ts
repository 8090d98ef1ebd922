import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { contentVersion, formatProblems, loadPolicyDir, loadPolicyFiles, type PolicyProblem } from '../../src/policy/loader.ts';

const roots: string[] = [];
after(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

function folder(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-policy-'));
  roots.push(dir);
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  return dir;
}

const CONNECTIONS = `connections:
  - name: analytics
    type: postgres
    tags: { env: prod }
    description: the warehouse
  - name: app
    type: postgres
`;

const CI = `policies:
  - name: ci-read-analytics
    description: CI may read analytics
    subjects:
      - group: ci
      - claims: { repository: "acme/*", ref: refs/heads/main }
    connections: [analytics, "prod-*", { tags: { env: prod } }]
    allow:
      - sql: [select, show, explain]
        tables: ["public.*", orders]
      - functions: [nextval]
    review:
      - sql: [insert, update, delete]
        approvers: [group:dba]
        timeout: 10m
        min_approvals: 1
        grant: 30m
    deny:
      - sql: [drop, truncate]
        message: DDL is not allowed from CI
      - sql: [update, delete]
        without_where: true
      - functions: ["pg_read_*"]
    mask:
      - columns: ["customers.card_number"]
        with: last4
      - detect: [credit_card, email]
        with: redact
    when:
      days: [mon, tue, wed, thu, fri]
      hours: "06:00-22:00"
      timezone: UTC
      source: [10.0.0.0/8, "127.0.0.1/32", "::1/128"]
`;

/** Loads and returns the only problem, asserting there is exactly one. */
function oneProblem(files: Record<string, string>): PolicyProblem {
  const r = loadPolicyDir(folder(files));
  assert.equal(r.bundle, undefined);
  assert.equal(r.problems.length, 1, formatProblems(r.problems));
  return r.problems[0];
}

describe('loadPolicyDir', () => {
  test('loads a valid folder recursively, skipping dotfiles and tests/', () => {
    const dir = folder({
      'connections.yaml': CONNECTIONS,
      'policies/ci.yml': CI,
      'policies/tests/ci-test.yaml': 'this: [is not valid',
      '.hidden.yaml': 'nope: [',
      '.github/workflow.yaml': 'on: [push',
      'README.md': '# policies',
    });
    const r = loadPolicyDir(dir);
    assert.deepEqual(r.problems, []);
    const b = r.bundle!;
    assert.equal(b.dir, dir);
    assert.deepEqual(b.files, ['connections.yaml', 'policies/ci.yml']);
    assert.deepEqual(b.connections, [
      { name: 'analytics', type: 'postgres', tags: { env: 'prod' } },
      { name: 'app', type: 'postgres', tags: {} },
    ]);
    assert.equal(b.policies.length, 1);
    assert.equal(b.policies[0].name, 'ci-read-analytics');
    assert.equal(b.policies[0].review?.[0].approvers[0], 'group:dba');
    assert.match(b.version, /^sha256:[0-9a-f]{16}$/);
    assert.deepEqual(b.origins?.['policy:ci-read-analytics'], { file: 'policies/ci.yml', line: 2, column: 11 });
  });

  test('YAML syntax error with its line', () => {
    const p = oneProblem({
      'c.yaml': CONNECTIONS,
      'p.yaml': 'policies:\n  - name: x\n    connections: [app]]\n    subjects: [{ group: a }]\n',
    });
    assert.deepEqual([p.file, p.line, p.column], ['p.yaml', 3, 23]);
    assert.match(p.message, /^YAML syntax error: Unexpected flow-seq-end/);
  });

  test('duplicate key is a YAML error at the second key', () => {
    const p = oneProblem({
      'c.yaml': CONNECTIONS,
      'p.yaml': 'policies:\n  - name: x\n    subjects: [{ group: a }]\n    connections: [app]\n    name: y\n',
    });
    assert.equal(p.file, 'p.yaml');
    assert.equal(p.line, 5);
    assert.match(p.message, /YAML syntax error: .*(duplicate|unique)/i);
  });

  test('unknown SQL kind names the kind and lists valid ones, at the exact place', () => {
    const dir = folder({
      'connections.yaml': CONNECTIONS,
      'policies/ci.yaml': 'policies:\n  - name: x\n    subjects: [{ group: ci }]\n    connections: [app]\n    allow:\n      - sql: [select, selec]\n',
    });
    const r = loadPolicyDir(dir);
    assert.equal(r.problems.length, 1);
    assert.deepEqual({ ...r.problems[0], message: '' }, { file: 'policies/ci.yaml', line: 6, column: 23, message: '' });
    assert.match(r.problems[0].message, /^unknown SQL kind "selec" \(valid: select, insert, update, delete, .*, other\)$/);
    assert.match(formatProblems(r.problems), /^policies\/ci\.yaml:6:23: unknown SQL kind "selec" \(valid: select, insert, /);
    assert.match(formatProblems(r.problems, 'repo'), /^repo\/policies\/ci\.yaml:6:23: /);
  });

  test('unknown key (typo) is an error at the key, with a suggestion', () => {
    const p = oneProblem({
      'c.yaml': CONNECTIONS,
      'p.yaml': 'policies:\n  - name: x\n    subjects: [{ group: ci }]\n    connections: [app]\n    deny:\n      - sql: [select]\n        tabels: [secrets]\n',
    });
    assert.deepEqual([p.file, p.line, p.column], ['p.yaml', 7, 9]);
    assert.match(p.message, /unknown key "tabels"; did you mean "tables"\?/);
  });

  test('missing required key points at the object', () => {
    const p = oneProblem({
      'c.yaml': CONNECTIONS,
      'p.yaml': 'policies:\n  - name: x\n    connections: [app]\n',
    });
    assert.deepEqual([p.line, p.column, p.message], [2, 5, 'missing required key "subjects"']);
  });

  test('wrong type: scalar where a list is expected', () => {
    const p = oneProblem({
      'c.yaml': CONNECTIONS,
      'p.yaml': 'policies:\n  - name: x\n    subjects: [{ group: ci }]\n    connections: [app]\n    deny:\n      - sql: drop\n',
    });
    assert.deepEqual([p.line, p.column], [6, 14]);
    assert.match(p.message, /sql: expected a list, got the string "drop"/);
  });

  test('credentials in a connection are rejected', () => {
    for (const key of ['password', 'url', 'host']) {
      const p = oneProblem({
        'c.yaml': `connections:\n  - name: app\n    type: postgres\n    ${key}: secret\n`,
        'p.yaml': 'policies:\n  - name: x\n    subjects: [{ group: ci }]\n    connections: [app]\n',
      });
      assert.deepEqual([p.file, p.line, p.column], ['c.yaml', 4, 5]);
      assert.match(p.message, new RegExp(`"${key}" is not allowed in connection "app": the policy folder must not contain credentials`));
    }
  });

  test('invalid values: time zone, CIDR, hours, days, mask strategy, detector, approver, duration', () => {
    const base = 'policies:\n  - name: x\n    subjects: [{ group: ci }]\n    connections: [app]\n';
    const cases: [string, number, RegExp][] = [
      ['    when: { timezone: Mars/Olympus }\n', 5, /unknown time zone "Mars\/Olympus"/],
      ['    when: { source: [10.0.0.0/33] }\n', 5, /invalid address range "10\.0\.0\.0\/33"/],
      ['    when: { hours: "25:00-01:00" }\n', 5, /hours must look like "HH:MM-HH:MM"/],
      ['    when: { days: [monday] }\n', 5, /unknown day "monday" \(valid: sun, mon/],
      ['    mask:\n      - columns: [a.b]\n        with: blur\n', 7, /unknown mask strategy "blur" \(valid: redact, partial, last4, hash, null, format\)/],
      ['    mask:\n      - detect: [creditcard]\n        with: redact\n', 6, /unknown detector "creditcard" \(valid: credit_card,/],
      ['    review:\n      - sql: [update]\n        approvers: [dba]\n', 7, /invalid approver "dba"/],
      ['    review:\n      - sql: [update]\n        approvers: [group:dba]\n        timeout: soon\n', 8, /timeout "soon" is not a duration/],
      ['    review:\n      - sql: [update]\n', 6, /missing required key "approvers"/],
      ['    allow:\n      - message: hi\n', 6, /a rule needs at least one of sql, tables, functions/],
    ];
    for (const [extra, line, re] of cases) {
      const p = oneProblem({ 'c.yaml': CONNECTIONS, 'p.yaml': base + extra });
      assert.equal(p.line, line, `${extra}: ${p.line}:${p.column} ${p.message}`);
      assert.match(p.message, re);
    }
  });

  test('duplicate policy names point at the second one', () => {
    const pol = (n: string) => `policies:\n  - name: ${n}\n    subjects: [{ group: ci }]\n    connections: [app]\n`;
    const p = oneProblem({ 'a.yaml': CONNECTIONS + pol('dup'), 'b.yaml': '# second\n' + pol('dup') });
    assert.deepEqual([p.file, p.line, p.column], ['b.yaml', 3, 11]);
    assert.equal(p.message, 'duplicate policy name "dup" (first defined at a.yaml:9:11)');
  });

  test('duplicate connection names point at the second one', () => {
    const p = oneProblem({
      'a.yaml': CONNECTIONS,
      'b.yaml': 'connections:\n  - name: app\n    type: postgres\npolicies:\n  - name: x\n    subjects: [{ group: ci }]\n    connections: [app]\n',
    });
    assert.deepEqual([p.file, p.line, p.column], ['b.yaml', 2, 11]);
    assert.match(p.message, /^duplicate connection name "app" \(first declared at a\.yaml:6:11\)$/);
  });

  test('a policy naming an undeclared connection is a problem; globs and tags are not', () => {
    const p = oneProblem({
      'c.yaml': CONNECTIONS,
      'p.yaml': 'policies:\n  - name: x\n    subjects: [{ group: ci }]\n    connections:\n      - "staging-*"\n      - { tags: { env: dev } }\n      - warehouse\n',
    });
    assert.deepEqual([p.file, p.line, p.column], ['p.yaml', 7, 9]);
    assert.equal(p.message, 'policy "x" refers to unknown connection "warehouse" (declared: analytics, app)');
  });

  test('missing folder, empty folder, folder without policies', () => {
    const missing = loadPolicyDir(join(tmpdir(), 'airlock-does-not-exist-' + process.pid));
    assert.equal(missing.bundle, undefined);
    assert.match(missing.problems[0].message, /does not exist/);
    assert.equal(missing.problems[0].file, '.');

    const empty = loadPolicyDir(folder({ 'README.md': 'hi' }));
    assert.equal(empty.problems.length, 1);
    assert.match(empty.problems[0].message, /no policy files \(\*\.yaml, \*\.yml\)/);

    const onlyConns = loadPolicyDir(folder({ 'c.yaml': CONNECTIONS, 'empty.yaml': '' }));
    assert.equal(onlyConns.problems.length, 1);
    assert.match(onlyConns.problems[0].message, /no policies found/);
    assert.match(formatProblems(onlyConns.problems), /^\.: no policies found/);
  });

  test('several problems in several files are all reported, sorted', () => {
    const r = loadPolicyDir(folder({
      'a.yaml': 'connections:\n  - name: app\n    type: mysql\n',
      'b.yaml': 'policies:\n  - name: x\n    subjects: [{ grup: ci }]\n    connections: [app]\n',
    }));
    assert.deepEqual(r.problems.map((p) => `${p.file}:${p.line}`), ['a.yaml:3', 'b.yaml:3']);
    assert.match(r.problems[0].message, /unknown connection type "mysql" \(valid: postgres\)/);
    assert.match(r.problems[1].message, /unknown key "grup"; did you mean "group"\?/);
  });
});

describe('bundle version', () => {
  test('content hash: stable, and changes with content or paths', () => {
    const a = contentVersion([{ path: 'a.yaml', content: 'x' }, { path: 'b.yaml', content: 'y' }]);
    assert.equal(a, contentVersion([{ path: 'b.yaml', content: 'y' }, { path: 'a.yaml', content: 'x' }]));
    assert.notEqual(a, contentVersion([{ path: 'a.yaml', content: 'x' }, { path: 'b.yaml', content: 'z' }]));
    assert.notEqual(a, contentVersion([{ path: 'a.yaml', content: 'x' }, { path: 'c.yaml', content: 'y' }]));
    const files = { 'c.yaml': CONNECTIONS, 'p.yaml': CI };
    assert.equal(loadPolicyDir(folder(files)).bundle!.version, loadPolicyDir(folder(files)).bundle!.version);
  });

  let hasGit = true;
  try {
    execFileSync('git', ['--version'], { stdio: 'ignore' });
  } catch {
    hasGit = false;
  }

  test('git commit when clean, content hash when dirty', { skip: !hasGit && 'git not installed' }, () => {
    const repo = folder({ 'README.md': '# policy repo\n', 'policies/c.yaml': CONNECTIONS, 'policies/p.yaml': CI });
    const git = (...args: string[]) =>
      execFileSync('git', ['-C', repo, '-c', 'user.name=t', '-c', 'user.email=t@example.com', '-c', 'commit.gpgsign=false', ...args], { encoding: 'utf8' }).trim();
    git('init', '-q');
    git('add', '.');
    git('commit', '-q', '-m', 'init');
    const sha = git('rev-parse', 'HEAD');
    const dir = join(repo, 'policies');
    assert.equal(loadPolicyDir(dir).bundle!.version, `git:${sha}`);

    // A change outside the policy folder does not matter.
    writeFileSync(join(repo, 'README.md'), 'changed\n');
    assert.equal(loadPolicyDir(dir).bundle!.version, `git:${sha}`);

    // An uncommitted change under it does.
    writeFileSync(join(dir, 'p.yaml'), CI + '# edited\n');
    const dirty = loadPolicyDir(dir).bundle!.version;
    assert.match(dirty, /^sha256:[0-9a-f]{16}$/);
    git('checkout', '--', 'policies/p.yaml');
    assert.equal(loadPolicyDir(dir).bundle!.version, `git:${sha}`);

    // So does an untracked file.
    writeFileSync(join(dir, 'new.yaml'), '');
    assert.match(loadPolicyDir(dir).bundle!.version, /^sha256:/);
    rmSync(join(dir, 'new.yaml'));

    // And an ignored policy file (loaded but not in the commit).
    writeFileSync(join(repo, '.gitignore'), 'policies/local.yaml\n');
    git('add', '.gitignore');
    git('commit', '-q', '-m', 'ignore');
    writeFileSync(join(dir, 'local.yaml'), '');
    assert.match(loadPolicyDir(dir).bundle!.version, /^sha256:/);
    rmSync(join(dir, 'local.yaml'));
    assert.equal(loadPolicyDir(dir).bundle!.version, `git:${git('rev-parse', 'HEAD')}`);
  });

  test('loadPolicyFiles works in memory with an explicit version', () => {
    const r = loadPolicyFiles([{ path: 'p.yaml', content: CONNECTIONS + CI }], { version: 'test:1' });
    assert.deepEqual(r.problems, []);
    assert.equal(r.bundle!.version, 'test:1');
  });
});
