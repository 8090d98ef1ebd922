import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ConnectionInfo, Identity, Operation, Request, SqlKind, StatementInfo } from '../../src/core/types.ts';
import { evaluate, globMatch, localTime, sourceMatches } from '../../src/policy/evaluate.ts';
import { formatProblems, loadPolicyFiles, type PolicyBundle } from '../../src/policy/loader.ts';
import { parseCidr } from '../../src/policy/schema.ts';

const CONNECTIONS = `connections:
  - name: analytics
    type: postgres
    tags: { env: prod, team: data }
  - name: app
    type: postgres
    tags: { env: staging }
  - name: prod-billing
    type: postgres
    tags: { env: prod }
`;

function bundle(policies: string): PolicyBundle {
  const r = loadPolicyFiles([
    { path: 'connections.yaml', content: CONNECTIONS },
    { path: 'policies.yaml', content: policies },
  ], { version: 'test:1' });
  assert.deepEqual(r.problems, [], formatProblems(r.problems));
  return r.bundle!;
}

function conn(b: PolicyBundle, name: string): ConnectionInfo {
  return b.connections.find((c) => c.name === name)!;
}

function identity(over: Partial<Identity> = {}): Identity {
  return { subject: 'ci-bot', kind: 'service-token', groups: ['ci'], claims: {}, issuer: 'airlock', ...over };
}

const sqlOp = (kind: SqlKind, tables: string[] = [], whereless?: boolean): Operation =>
  ({ type: 'sql', kind, tables, ...(whereless !== undefined ? { whereless } : {}) });
const fnOp = (name: string, effect: 'safe' | 'side-effect' | 'unknown' = 'safe', reason?: string): Operation =>
  ({ type: 'function', name, effect, ...(reason ? { reason } : {}) });

function stmt(kind: SqlKind, operations: Operation[] = [sqlOp(kind)], over: Partial<StatementInfo> = {}): StatementInfo {
  return {
    text: `${kind} ...`, kind, operations, tablesRead: [], tablesWritten: [], functions: [],
    readOnly: kind === 'select', baseline: false, notes: [], ...over,
  };
}

// Monday 2024-01-15 12:00 UTC
const MONDAY_NOON = new Date('2024-01-15T12:00:00Z');

function request(b: PolicyBundle, statements: StatementInfo[] | undefined, over: Partial<Request> & { conn?: string } = {}): Request {
  const { conn: name = 'analytics', ...rest } = over;
  return {
    connection: conn(b, name), source: '10.1.2.3', time: MONDAY_NOON,
    ...(statements ? { sql: { text: statements.map((s) => s.text).join('; '), statements } } : {}),
    ...rest,
  };
}

const BASIC = `policies:
  - name: ci-read
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select, show]
      - functions: [nextval]
        name: sequences
    review:
      - sql: [insert, update]
        approvers: [group:dba]
    deny:
      - sql: [drop, truncate]
        message: DDL is not allowed from CI
      - sql: [delete]
      - functions: ["pg_read_*", dblink*]
    mask:
      - columns: [customers.card_number]
        with: last4
`;

describe('evaluate: applicability', () => {
  const b = bundle(BASIC);

  test('default deny: no policy applies to the subject', () => {
    const d = evaluate(b, identity({ subject: 'intruder', groups: ['web'] }), request(b, [stmt('select')]));
    assert.equal(d.action, 'deny');
    assert.equal(d.reason, 'no policy grants intruder access to connection analytics');
    assert.equal(d.policy, undefined);
    assert.equal(d.bundleVersion, 'test:1');
    assert.deepEqual(d.masks, []);
  });

  test('default deny: no policy applies to the connection', () => {
    const d = evaluate(b, identity(), request(b, [stmt('select')], { conn: 'app' }));
    assert.equal(d.action, 'deny');
    assert.equal(d.reason, 'no policy grants ci-bot access to connection app');
  });

  test('allow names the policy and rule and carries masks', () => {
    const d = evaluate(b, identity(), request(b, [stmt('select', [sqlOp('select', ['public.orders'])])]));
    assert.equal(d.action, 'allow');
    assert.equal(d.policy, 'ci-read');
    assert.equal(d.rule, 'allow[0]');
    assert.equal(d.reason, 'select on table public.orders allowed by policy ci-read rule allow[0]');
    assert.deepEqual(d.masks, [{ policy: 'ci-read', columns: ['customers.card_number'], with: 'last4' }]);
  });

  test('a request without SQL (session start) is allowed when a policy applies', () => {
    const d = evaluate(b, identity(), request(b, undefined));
    assert.equal(d.action, 'allow');
    assert.equal(d.policy, 'ci-read');
  });

  test('statement kinds not covered are denied by default', () => {
    const d = evaluate(b, identity(), request(b, [stmt('create', [sqlOp('create', ['t'])])]));
    assert.equal(d.action, 'deny');
    assert.equal(d.reason, 'create on table t is not allowed by any policy');
    const d2 = evaluate(b, identity(), request(b, [stmt('vacuum')]));
    assert.equal(d2.reason, 'statement kind vacuum is not allowed by any policy');
  });

  test('parse errors are denied (fail closed)', () => {
    const r = request(b, []);
    r.sql = { text: 'SELEC 1', statements: [], parseError: 'syntax error at or near "SELEC"' };
    const d = evaluate(b, identity(), r);
    assert.equal(d.action, 'deny');
    assert.match(d.reason, /could not be parsed \(syntax error at or near "SELEC"\)/);
    assert.deepEqual(d.masks, []);
  });
});

describe('evaluate: rules', () => {
  const b = bundle(BASIC);

  test('deny with message', () => {
    const d = evaluate(b, identity(), request(b, [stmt('drop', [sqlOp('drop', ['orders'])])]));
    assert.deepEqual([d.action, d.policy, d.rule, d.reason], ['deny', 'ci-read', 'deny[0]', 'DDL is not allowed from CI']);
  });

  test('deny without message gets a generated reason', () => {
    const d = evaluate(b, identity(), request(b, [stmt('delete', [sqlOp('delete', ['orders'])])]));
    assert.deepEqual([d.action, d.rule, d.reason], ['deny', 'deny[1]', 'delete on table orders is denied']);
  });

  test('review beats allow; approvers come from the rule', () => {
    const d = evaluate(b, identity(), request(b, [stmt('update', [sqlOp('update', ['orders'])])]));
    assert.equal(d.action, 'review');
    assert.equal(d.rule, 'review[0]');
    assert.deepEqual(d.approvers, ['group:dba']);
    assert.equal(d.reason, 'update on table orders requires approval by group:dba');
    assert.equal(d.masks.length, 1);
  });

  test('deny beats review and allow across statements and policies', () => {
    const b2 = bundle(BASIC + `
  - name: ci-wide
    subjects: [{ subject: "ci-*" }]
    connections: ["*"]
    allow:
      - sql: [drop, delete, update, insert, select]
`);
    // allowed by ci-wide, but denied by ci-read
    const d = evaluate(b2, identity(), request(b2, [stmt('select', [sqlOp('select', ['a'])]), stmt('drop', [sqlOp('drop', ['a'])])]));
    assert.deepEqual([d.action, d.policy, d.rule], ['deny', 'ci-read', 'deny[0]']);
    assert.equal(d.reason, 'statement 2: DDL is not allowed from CI');
    // update: allowed by ci-wide, review by ci-read -> review
    const d2 = evaluate(b2, identity(), request(b2, [stmt('update', [sqlOp('update', ['a'])])]));
    assert.equal(d2.action, 'review');
    // on another connection only ci-wide applies
    const d3 = evaluate(b2, identity(), request(b2, [stmt('drop', [sqlOp('drop', ['a'])])], { conn: 'app' }));
    assert.deepEqual([d3.action, d3.policy], ['allow', 'ci-wide']);
    assert.deepEqual(d3.masks, []);
  });

  test('review plus allow in one request is review; an uncovered op is deny', () => {
    const d = evaluate(b, identity(), request(b, [stmt('select', [sqlOp('select', ['a'])]), stmt('insert', [sqlOp('insert', ['a'])])]));
    assert.equal(d.action, 'review');
    const d2 = evaluate(b, identity(), request(b, [stmt('insert', [sqlOp('insert', ['a'])]), stmt('create', [sqlOp('create', ['b'])])]));
    assert.equal(d2.action, 'deny');
    assert.equal(d2.reason, 'statement 2: create on table b is not allowed by any policy');
  });

  test('nested operations need permission too (DELETE inside a CTE)', () => {
    const d = evaluate(b, identity(), request(b, [stmt('select', [sqlOp('select', ['a']), sqlOp('delete', ['a'])])]));
    assert.deepEqual([d.action, d.rule], ['deny', 'deny[1]']);
  });

  test('functions: safe need nothing, side effects need allow, deny applies to any effect', () => {
    const sel = (f: Operation) => request(b, [stmt('select', [sqlOp('select'), f])]);
    assert.equal(evaluate(b, identity(), sel(fnOp('now'))).action, 'allow');
    const sleep = evaluate(b, identity(), sel(fnOp('pg_sleep', 'side-effect', 'sleeps')));
    assert.equal(sleep.action, 'deny');
    assert.equal(sleep.reason, 'function pg_sleep (side effect: sleeps) is not allowed by any policy');
    const unknown = evaluate(b, identity(), sel(fnOp('my_func', 'unknown')));
    assert.equal(unknown.reason, 'function my_func (not known to be free of side effects) is not allowed by any policy');
    const next = evaluate(b, identity(), request(b, [stmt('select', [fnOp('nextval', 'side-effect', 'advances a sequence'), sqlOp('select')])]));
    assert.deepEqual([next.action, next.rule], ['allow', 'allow[0]']); // primary op is the select
    const onlyFn = evaluate(b, identity(), request(b, [stmt('call', [fnOp('nextval', 'side-effect')])]));
    assert.deepEqual([onlyFn.action, onlyFn.rule], ['allow', 'sequences']);
    // pg_catalog prefix and bare names; deny even when classified safe
    const read = evaluate(b, identity(), sel(fnOp('pg_catalog.pg_read_file', 'safe')));
    assert.deepEqual([read.action, read.rule], ['deny', 'deny[2]']);
    assert.equal(read.reason, 'function pg_catalog.pg_read_file is denied');
    const dblink = evaluate(b, identity(), sel(fnOp('public.dblink_exec', 'side-effect')));
    assert.equal(dblink.action, 'deny');
    assert.equal(dblink.rule, 'deny[2]');
  });

  test('a rule with only sql never matches function ops, and vice versa', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select, call]
    deny:
      - functions: [drop_everything]
`);
    const d = evaluate(b2, identity(), request(b2, [stmt('call', [sqlOp('call'), fnOp('do_things', 'side-effect')])]));
    assert.equal(d.action, 'deny');
    assert.match(d.reason, /^function do_things/);
    const d2 = evaluate(b2, identity(), request(b2, [stmt('select', [sqlOp('select', ['drop_everything'])])]));
    assert.equal(d2.action, 'allow');
  });

  test('without_where only matches whereless UPDATE/DELETE', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [update, delete]
    deny:
      - sql: [update, delete]
        without_where: true
        name: no-whereless
`);
    const ok = evaluate(b2, identity(), request(b2, [stmt('update', [sqlOp('update', ['orders'], false)])]));
    assert.equal(ok.action, 'allow');
    const bad = evaluate(b2, identity(), request(b2, [stmt('delete', [sqlOp('delete', ['orders'], true)])]));
    assert.deepEqual([bad.action, bad.rule], ['deny', 'no-whereless']);
    assert.equal(bad.reason, 'delete without a WHERE clause on table orders is denied');
  });

  test('tables: allow needs every table covered, deny needs any table', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
        tables: ["public.*", orders]
    deny:
      - sql: [select, update]
        tables: [secrets, "vault.*"]
`);
    const ask = (tables: string[], kind: SqlKind = 'select') => evaluate(b2, identity(), request(b2, [stmt(kind, [sqlOp(kind, tables)])]));
    assert.equal(ask(['public.a', 'public.b']).action, 'allow');
    assert.equal(ask(['orders']).action, 'allow');
    assert.equal(ask(['sales.orders']).action, 'allow', 'a pattern without a dot matches the bare table name');
    assert.equal(ask([]).action, 'allow', 'an op without tables passes a tables filter');
    const mixed = ask(['public.a', 'other']);
    assert.equal(mixed.action, 'deny');
    assert.equal(mixed.reason, 'select on table other is not allowed by any policy');
    assert.equal(ask(['a', 'b']).reason, 'select on tables a, b is not allowed by any policy');
    assert.equal(ask(['public.a', 'public.secrets']).rule, 'deny[0]');
    assert.equal(ask(['public.a', 'secrets']).reason, 'select on table secrets is denied');
    assert.equal(ask(['vault.keys']).rule, 'deny[0]');
    assert.equal(ask(['PUBLIC.A'.toLowerCase()]).action, 'allow');
    // deny with tables does not match an op without tables
    assert.equal(ask([], 'update').reason, 'statement kind update is not allowed by any policy');
    // "public.x" does not match an unqualified x
    const b3 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
        tables: ["public.orders"]
`);
    assert.equal(evaluate(b3, identity(), request(b3, [stmt('select', [sqlOp('select', ['orders'])])])).action, 'deny');
  });

  test('tables: a tables-limited rule does not grant DDL that names no table', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select, drop]
        tables: ["scratch.*"]
`);
    const drop = (tables: string[]) => evaluate(b2, identity(), request(b2, [stmt('drop', [sqlOp('drop', tables)])])).action;
    assert.equal(drop(['scratch.tmp']), 'allow');
    assert.equal(drop([]), 'deny', 'DROP SCHEMA public CASCADE names no table');
    assert.equal(evaluate(b2, identity(), request(b2, [stmt('select', [sqlOp('select', [])])])).action, 'allow', 'SELECT 1 still passes');
  });

  test('table patterns match quoted mixed-case names too (deny must not go dead)', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
    deny:
      - tables: [Secrets]
`);
    for (const t of ['Secrets', 'secrets', 'public.Secrets']) {
      assert.equal(evaluate(b2, identity(), request(b2, [stmt('select', [sqlOp('select', [t])])])).action, 'deny', t);
    }
  });

  test('tables: each table may be covered by a different rule', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
        tables: [a]
    review:
      - sql: [select]
        tables: [b]
        approvers: [group:dba]
`);
    const d = evaluate(b2, identity(), request(b2, [stmt('select', [sqlOp('select', ['a', 'b'])])]));
    assert.equal(d.action, 'review');
    assert.equal(evaluate(b2, identity(), request(b2, [stmt('select', [sqlOp('select', ['a'])])])).action, 'allow');
  });

  test('baseline statements need no allow, but deny rules still apply', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    deny:
      - sql: [set]
        tables: [x]
  - name: q
    subjects: [{ group: ci }]
    connections: [analytics]
    deny:
      - sql: [discard]
`);
    const set = stmt('set', [sqlOp('set')], { baseline: true });
    const d = evaluate(b2, identity(), request(b2, [set, stmt('transaction', [sqlOp('transaction')], { baseline: true })]));
    assert.equal(d.action, 'allow');
    assert.equal(d.policy, 'p');
    assert.match(d.reason, /baseline/);
    const discard = evaluate(b2, identity(), request(b2, [stmt('discard', [sqlOp('discard')], { baseline: true })]));
    assert.deepEqual([discard.action, discard.policy], ['deny', 'q']);
    // baseline still needs an applicable policy
    assert.equal(evaluate(b2, identity({ groups: [] }), request(b2, [set])).action, 'deny');
  });

  test('empty request (no statements) is allowed when a policy applies', () => {
    assert.equal(evaluate(b, identity(), request(b, [])).action, 'allow');
  });

  test('rules without sql: tables alone match every kind', () => {
    const b2 = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - tables: ["scratch.*"]
`);
    assert.equal(evaluate(b2, identity(), request(b2, [stmt('drop', [sqlOp('drop', ['scratch.t'])])])).action, 'allow');
    assert.equal(evaluate(b2, identity(), request(b2, [stmt('drop', [sqlOp('drop', ['main.t'])])])).action, 'deny');
  });
});

describe('evaluate: subjects and connections', () => {
  const b = bundle(`policies:
  - name: gha
    subjects:
      - issuer: "https://token.actions.githubusercontent.com"
        claims: { repository: "acme/*", ref: refs/heads/main, run_attempt: 1, environment: [prod, staging] }
    connections: [{ tags: { env: prod } }]
    allow:
      - sql: [select]
  - name: deployers
    subjects:
      - subject: "deploy-*"
        kind: service-token
    connections: ["prod-*"]
    allow:
      - sql: [insert]
`);
  const gha = (claims: Record<string, unknown>, issuer = 'https://token.actions.githubusercontent.com') =>
    identity({ subject: 'repo:acme/api:ref:refs/heads/main', kind: 'jwt', groups: [], issuer, claims });
  const good = { repository: 'acme/api', ref: 'refs/heads/main', run_attempt: '1', environment: 'prod' };
  const sel = [stmt('select')];

  test('claims: globs, every claim required, lists are any-of, non-strings as JSON text', () => {
    assert.equal(evaluate(b, gha(good), request(b, sel)).action, 'allow');
    assert.equal(evaluate(b, gha({ ...good, run_attempt: 1 }), request(b, sel)).action, 'allow');
    assert.equal(evaluate(b, gha({ ...good, environment: 'staging' }), request(b, sel)).action, 'allow');
    assert.equal(evaluate(b, gha({ ...good, environment: 'dev' }), request(b, sel)).action, 'deny');
    assert.equal(evaluate(b, gha({ ...good, repository: 'evil/api' }), request(b, sel)).action, 'deny');
    assert.equal(evaluate(b, gha({ ...good, ref: 'refs/heads/feature' }), request(b, sel)).action, 'deny');
    const { ref: _ref, ...noRef } = good;
    assert.equal(evaluate(b, gha(noRef), request(b, sel)).action, 'deny');
    // token arrays: any element
    assert.equal(evaluate(b, gha({ ...good, environment: ['dev', 'prod'] }), request(b, sel)).action, 'allow');
    assert.equal(evaluate(b, gha(good, 'https://evil.example'), request(b, sel)).action, 'deny');
  });

  test('tag selectors and name globs', () => {
    assert.equal(evaluate(b, gha(good), request(b, sel, { conn: 'prod-billing' })).action, 'allow');
    assert.equal(evaluate(b, gha(good), request(b, sel, { conn: 'app' })).action, 'deny');
    const deployer = identity({ subject: 'deploy-42', groups: [] });
    const ins = [stmt('insert', [sqlOp('insert', ['t'])])];
    assert.equal(evaluate(b, deployer, request(b, ins, { conn: 'prod-billing' })).action, 'allow');
    assert.equal(evaluate(b, deployer, request(b, ins, { conn: 'analytics' })).action, 'deny');
    assert.equal(evaluate(b, { ...deployer, kind: 'jwt' }, request(b, ins, { conn: 'prod-billing' })).action, 'deny');
  });

  test('globs', () => {
    assert.ok(globMatch('deploy-*', 'deploy-a.b/c'));
    assert.ok(globMatch('a?c', 'abc'));
    assert.ok(!globMatch('a?c', 'ac'));
    assert.ok(globMatch('a.b', 'a.b'));
    assert.ok(!globMatch('a.b', 'axb'));
    assert.ok(globMatch('(x)+[y]', '(x)+[y]'));
    for (let c = 32; c < 127; c++) {
      const ch = String.fromCharCode(c);
      if (ch === '*' || ch === '?') continue;
      assert.ok(globMatch(`a${ch}b`, `a${ch}b`), `literal ${ch}`);
      assert.ok(!globMatch(`a${ch}b`, 'a\u00e9b'), `literal ${ch} is not a wildcard`);
    }
  });
});

describe('evaluate: when', () => {
  const policy = (when: string, rule = '') => bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
${rule}
    when:
${when}
`);
  const at = (b: PolicyBundle, iso: string, source = '10.1.2.3') =>
    evaluate(b, identity(), request(b, [stmt('select')], { time: new Date(iso), source })).action;

  test('days and hours (UTC)', () => {
    const b = policy('      days: [mon, tue, wed, thu, fri]\n      hours: "06:00-22:00"');
    assert.equal(at(b, '2024-01-15T12:00:00Z'), 'allow'); // Monday
    assert.equal(at(b, '2024-01-15T06:00:00Z'), 'allow'); // start inclusive
    assert.equal(at(b, '2024-01-15T21:59:59Z'), 'allow');
    assert.equal(at(b, '2024-01-15T22:00:00Z'), 'deny'); // end exclusive
    assert.equal(at(b, '2024-01-15T05:59:00Z'), 'deny');
    assert.equal(at(b, '2024-01-13T12:00:00Z'), 'deny'); // Saturday
    const d = evaluate(b, identity(), request(b, [stmt('select')], { time: new Date('2024-01-13T12:00:00Z') }));
    assert.equal(d.reason, 'no policy grants ci-bot access to connection analytics (policy p applies only on mon, tue, wed, thu, fri, UTC)');
    const d2 = evaluate(b, identity(), request(b, [stmt('select')], { time: new Date('2024-01-15T23:00:00Z') }));
    assert.equal(d2.reason, 'no policy grants ci-bot access to connection analytics (policy p applies only 06:00-22:00 UTC)');
  });

  test('hours wrapping midnight', () => {
    const b = policy('      hours: "22:00-06:00"');
    assert.equal(at(b, '2024-01-15T23:30:00Z'), 'allow');
    assert.equal(at(b, '2024-01-15T00:00:00Z'), 'allow');
    assert.equal(at(b, '2024-01-15T05:59:00Z'), 'allow');
    assert.equal(at(b, '2024-01-15T06:00:00Z'), 'deny');
    assert.equal(at(b, '2024-01-15T12:00:00Z'), 'deny');
  });

  test('time zone', () => {
    const b = policy('      timezone: America/New_York\n      hours: "09:00-17:00"\n      days: [mon]');
    // 14:00Z is 09:00 in New York (EST, UTC-5) on Monday 2024-01-15
    assert.equal(at(b, '2024-01-15T14:00:00Z'), 'allow');
    assert.equal(at(b, '2024-01-15T13:59:00Z'), 'deny');
    // 02:00Z Tuesday is 21:00 Monday in New York: outside hours
    assert.equal(at(b, '2024-01-16T02:00:00Z'), 'deny');
    // 15:00Z on Tuesday: Tuesday in New York: wrong day
    assert.equal(at(b, '2024-01-16T15:00:00Z'), 'deny');
    const tokyo = policy('      timezone: Asia/Tokyo\n      days: [tue]');
    // Monday 20:00Z is Tuesday 05:00 in Tokyo
    assert.equal(at(tokyo, '2024-01-15T20:00:00Z'), 'allow');
    assert.deepEqual(localTime(new Date('2024-01-15T20:00:00Z'), 'Asia/Tokyo'), { day: 2, minute: 300 });
  });

  test('source CIDR: IPv4, IPv6, IPv4-mapped IPv6', () => {
    const b = policy('      source: [10.0.0.0/8, "127.0.0.1/32", "::1/128", "2001:db8::/32"]');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '10.200.0.1'), 'allow');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '11.0.0.1'), 'deny');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '127.0.0.1'), 'allow');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '127.0.0.2'), 'deny');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '::ffff:127.0.0.1'), 'allow');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '::ffff:10.9.8.7'), 'allow');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '::ffff:192.168.0.1'), 'deny');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '::1'), 'allow');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '::2'), 'deny');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '2001:db8:1::5'), 'allow');
    assert.equal(at(b, '2024-01-15T12:00:00Z', '2001:db9::5'), 'deny');
    assert.equal(at(b, '2024-01-15T12:00:00Z', ''), 'deny');
    assert.equal(at(b, '2024-01-15T12:00:00Z', 'garbage'), 'deny');
    const d = evaluate(b, identity(), request(b, [stmt('select')], { source: '192.0.2.7' }));
    assert.equal(d.reason, 'no policy grants ci-bot access to connection analytics (policy p does not apply to callers from 192.0.2.7)');
    assert.ok(sourceMatches([parseCidr('::ffff:0:0/96')!], '192.0.2.1'), 'IPv6 range of mapped addresses matches IPv4 callers');
    assert.ok(sourceMatches([parseCidr('0.0.0.0/0')!], '8.8.8.8'));
    assert.ok(!sourceMatches([parseCidr('0.0.0.0/0')!], '2001:db8::1'));
  });

  test('rule-level when', () => {
    const b = bundle(`policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
      - sql: [update]
        when: { hours: "09:00-17:00" }
    deny:
      - sql: [select]
        tables: [payroll]
        when: { days: [sat, sun] }
`);
    const ask = (kind: SqlKind, tables: string[], iso: string) =>
      evaluate(b, identity(), request(b, [stmt(kind, [sqlOp(kind, tables)])], { time: new Date(iso) })).action;
    assert.equal(ask('update', ['t'], '2024-01-15T12:00:00Z'), 'allow');
    assert.equal(ask('update', ['t'], '2024-01-15T18:00:00Z'), 'deny');
    assert.equal(ask('select', ['payroll'], '2024-01-15T12:00:00Z'), 'allow');
    assert.equal(ask('select', ['payroll'], '2024-01-14T12:00:00Z'), 'deny'); // Sunday
  });
});

describe('evaluate: speed', () => {
  test('compiles once per bundle; a decision takes microseconds', () => {
    const b = bundle(BASIC);
    const id = identity();
    const r = request(b, [stmt('select', [sqlOp('select', ['public.orders', 'public.customers']), fnOp('lower')])]);
    evaluate(b, id, r);
    const n = 20_000;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) evaluate(b, id, r);
    const perCallUs = Number(process.hrtime.bigint() - t0) / 1000 / n;
    assert.ok(perCallUs < 50, `${perCallUs.toFixed(2)} us per decision`);
  });
});
