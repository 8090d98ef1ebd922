import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CACHE_ENTRIES,
  CACHE_MAX_CHARS,
  CACHE_MAX_TEXT,
  classifierCacheSize,
  classifySql,
  classifyStatementNode,
  clearClassifierCache,
  initClassifier,
} from '../../src/protocols/postgres/classify.ts';
import {
  SAFE_FUNCTIONS,
  SENSITIVE_RELATIONS,
  SIDE_EFFECT_FUNCTIONS,
  judgeAttributeName,
  judgeFunction,
  judgeRelation,
} from '../../src/protocols/postgres/sql-functions.ts';
import { loadPolicyFiles } from '../../src/policy/loader.ts';
import { evaluate } from '../../src/policy/evaluate.ts';
import { SQL_KINDS, type Identity, type Operation, type Request, type SqlRequestInfo, type StatementInfo } from '../../src/core/types.ts';
import { PSQL_QUERIES, SQL_CORPUS } from '../fixtures/sql-corpus.ts';

/** The verdict a read-only policy would reach, as defined in the corpus. */
function readOnlyAllowed(info: SqlRequestInfo): boolean {
  if (info.parseError !== undefined) return false;
  return info.statements.every(
    (s) => (s.readOnly || s.baseline) && !s.operations.some((o) => o.type === 'function' && o.effect !== 'safe'),
  );
}

function one(sql: string): StatementInfo {
  const info = classifySql(sql);
  assert.equal(info.parseError, undefined, `unexpected parse error for ${sql}: ${info.parseError}`);
  assert.equal(info.statements.length, 1, `expected one statement in ${sql}`);
  return info.statements[0];
}

function sqlOps(s: StatementInfo): Extract<Operation, { type: 'sql' }>[] {
  return s.operations.filter((o): o is Extract<Operation, { type: 'sql' }> => o.type === 'sql');
}

function fnOps(s: StatementInfo): Extract<Operation, { type: 'function' }>[] {
  return s.operations.filter((o): o is Extract<Operation, { type: 'function' }> => o.type === 'function');
}

function op(s: StatementInfo, kind: string): Extract<Operation, { type: 'sql' }> | undefined {
  return sqlOps(s).find((o) => o.kind === kind);
}

test('classifySql throws before initClassifier', () => {
  assert.throws(() => classifySql('select 1'), /initClassifier/);
});

test('initClassifier is idempotent', async () => {
  await Promise.all([initClassifier(), initClassifier()]);
  await initClassifier();
  assert.equal(one('select 1').kind, 'select');
});

test('corpus: every entry gets the expected read-only verdict', () => {
  const wrong: string[] = [];
  for (const e of SQL_CORPUS) {
    const info = classifySql(e.sql);
    const got = readOnlyAllowed(info);
    if (got !== e.readOnlyAllowed) {
      wrong.push(`${JSON.stringify(e.sql)} (${e.why}): expected ${e.readOnlyAllowed}, got ${got}; ` +
        JSON.stringify(info.parseError ?? info.statements.map((s) => [s.kind, s.notes])));
    }
  }
  const allowed = SQL_CORPUS.filter((e) => e.readOnlyAllowed).length;
  console.log(`classifier corpus: ${SQL_CORPUS.length} requests (${allowed} read-only allowed, ${SQL_CORPUS.length - allowed} denied, ${PSQL_QUERIES.length} from psql), ${wrong.length} wrong`);
  assert.ok(SQL_CORPUS.length >= 80);
  assert.deepEqual(wrong, []);
});

test('corpus: psql describe queries are read-only selects over pg_catalog', () => {
  for (const q of PSQL_QUERIES) {
    const info = classifySql(q.sql);
    for (const s of info.statements) {
      assert.equal(s.readOnly, true, q.command);
      assert.equal(s.kind, 'select', q.command);
      for (const t of s.tablesRead) assert.match(t, /^pg_catalog\./, `${q.command} reads ${t}`);
    }
  }
});

test('every operation kind is in the policy vocabulary', () => {
  for (const e of SQL_CORPUS) {
    for (const s of classifySql(e.sql).statements) {
      assert.ok((SQL_KINDS as readonly string[]).includes(s.kind));
      for (const o of sqlOps(s)) assert.ok((SQL_KINDS as readonly string[]).includes(o.kind), o.kind);
    }
  }
});

test('CTE writes: the DELETE is an operation, the CTE name is not a table', () => {
  const s = one('WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d');
  assert.equal(s.kind, 'select');
  assert.deepEqual(s.operations, [
    { type: 'sql', kind: 'select', tables: [] },
    { type: 'sql', kind: 'delete', tables: ['t'], whereless: true },
  ]);
  assert.deepEqual(s.tablesRead, []);
  assert.deepEqual(s.tablesWritten, ['t']);
  assert.equal(s.readOnly, false);
  assert.equal(s.baseline, false);
  assert.ok(s.notes.some((n) => n.includes('DELETE')));
});

test('CTE scoping: schema-qualified names and later CTEs are real tables', () => {
  assert.deepEqual(op(one('with t as (select 1) select * from t, public.t'), 'select')?.tables, ['public.t']);
  // A non-recursive CTE does not see the CTEs after it: b inside a is the table b.
  assert.deepEqual(op(one('with a as (select * from b), b as (select 1) select * from a, b'), 'select')?.tables, ['b']);
  // A recursive WITH sees all its names.
  assert.deepEqual(op(one('with recursive a as (select * from b), b as (select 1) select * from a'), 'select')?.tables, []);
  // A CTE in an outer query is visible in a sub-select.
  assert.deepEqual(op(one('with x as (select 1) select * from t where exists (select 1 from x)'), 'select')?.tables, ['t']);
  // The target of a write is always a table, even when a CTE has its name.
  const s = one('with t as (select 1) delete from t where true');
  assert.deepEqual(op(s, 'delete')?.tables, ['t']);
});

test('INSERT ... SELECT reads the source and writes the target; VALUES reads nothing', () => {
  const s = one('insert into t (a) select a from s join u using (id)');
  assert.equal(s.kind, 'insert');
  assert.deepEqual(op(s, 'insert')?.tables, ['t']);
  assert.deepEqual(op(s, 'select')?.tables, ['s', 'u']);
  assert.deepEqual(s.tablesRead, ['s', 'u']);
  assert.deepEqual(s.tablesWritten, ['t']);
  const v = one('insert into t values (1), (2) returning id');
  assert.deepEqual(sqlOps(v).map((o) => o.kind), ['insert']);
});

test('upsert is an insert and an update', () => {
  const s = one('insert into t values (1) on conflict (id) do update set a = excluded.a');
  assert.deepEqual(sqlOps(s).map((o) => [o.kind, o.tables]), [['insert', ['t']], ['update', ['t']]]);
  const n = one('insert into t values (1) on conflict do nothing');
  assert.deepEqual(sqlOps(n).map((o) => o.kind), ['insert']);
});

test('whereless UPDATE/DELETE; WHERE CURRENT OF counts as a WHERE', () => {
  assert.equal(op(one('update t set a = 1'), 'update')?.whereless, true);
  assert.equal(op(one('update t set a = 1 where id = 2'), 'update')?.whereless, undefined);
  assert.equal(op(one('delete from t'), 'delete')?.whereless, true);
  assert.equal(op(one('delete from t where current of c'), 'delete')?.whereless, undefined);
  const u = one('update t set a = s.a from s where s.id = t.id');
  assert.deepEqual(op(u, 'select')?.tables, ['s']);
  assert.deepEqual(op(u, 'update')?.tables, ['t']);
  const d = one('delete from t using s');
  assert.equal(op(d, 'delete')?.whereless, true);
  assert.deepEqual(op(d, 'select')?.tables, ['s']);
});

test('MERGE writes the target (and reports each action) and reads the source', () => {
  const s = one('merge into t using s on t.id = s.id when matched then update set a = s.a when not matched then insert values (s.id)');
  assert.equal(s.kind, 'merge');
  assert.deepEqual(sqlOps(s).map((o) => [o.kind, o.tables]), [['merge', ['t']], ['update', ['t']], ['insert', ['t']], ['select', ['s']]]);
  assert.deepEqual(s.tablesWritten, ['t']);
  assert.deepEqual(s.tablesRead, ['s']);
});

test('SELECT INTO and CREATE TABLE AS create tables', () => {
  const s = one('select * into newt from t');
  assert.equal(s.kind, 'create');
  assert.deepEqual(op(s, 'create')?.tables, ['newt']);
  assert.deepEqual(op(s, 'select')?.tables, ['t']);
  assert.deepEqual(s.tablesWritten, ['newt']);
  assert.ok(s.notes.some((n) => n.includes('SELECT INTO')));
  const c = one('create table x as select * from t');
  assert.equal(c.kind, 'create');
  assert.deepEqual(op(c, 'create')?.tables, ['x']);
  assert.deepEqual(op(c, 'select')?.tables, ['t']);
  const m = one('create materialized view mv as select * from t');
  assert.deepEqual(op(m, 'create')?.tables, ['mv']);
});

test('SELECT ... FOR UPDATE stays a select with a lock operation', () => {
  const s = one('select * from a join b on true left join c x on true for update of x');
  assert.equal(s.kind, 'select');
  assert.deepEqual(op(s, 'lock')?.tables, ['c']);
  assert.equal(s.readOnly, false);
  assert.ok(s.notes.some((n) => n.includes('row locks')));
  assert.deepEqual(op(one('select * from a, b for share'), 'lock')?.tables, ['a', 'b']);
});

test('EXPLAIN: not executed without ANALYZE, executed with it', () => {
  const e = one('explain delete from t where id in (select id from s)');
  assert.equal(e.kind, 'explain');
  assert.deepEqual(e.operations, [{ type: 'sql', kind: 'explain', tables: ['s', 't'] }]);
  assert.equal(e.readOnly, true);
  assert.deepEqual(e.tablesWritten, []);
  const a = one('explain analyze delete from t');
  assert.deepEqual(sqlOps(a).map((o) => o.kind), ['explain', 'delete']);
  assert.equal(a.readOnly, false);
  assert.deepEqual(a.tablesWritten, ['t']);
  const r = one('explain (analyze true, buffers) select * from t');
  assert.deepEqual(sqlOps(r).map((o) => o.kind), ['explain', 'select']);
  assert.equal(r.readOnly, true);
  assert.equal(one('explain (analyze 0) delete from t').readOnly, true);
  assert.equal(one('explain (analyze off) delete from t').readOnly, true);
  // Functions other than the safe ones are still reported without ANALYZE (the planner can run them).
  const f = one('explain select my_func(), lower(a) from t');
  assert.deepEqual(fnOps(f).map((o) => [o.name, o.effect]), [['my_func', 'unknown']]);
  assert.equal(f.readOnly, false);
});

test('PREPARE carries the inner statement; EXECUTE is never read-only', () => {
  const p = one('prepare p (int) as delete from t where id = $1');
  assert.equal(p.kind, 'prepare');
  assert.deepEqual(sqlOps(p).map((o) => [o.kind, o.tables]), [['prepare', []], ['delete', ['t']]]);
  assert.equal(p.readOnly, false);
  const r = one('prepare q as select * from t');
  assert.deepEqual(sqlOps(r).map((o) => o.kind), ['prepare', 'select']);
  assert.equal(r.readOnly, true);
  const x = one('execute p(1)');
  assert.equal(x.kind, 'execute');
  assert.equal(x.readOnly, false);
  assert.ok(x.notes.some((n) => n.includes('prepared statement whose text is not in this request')));
  const d = one('deallocate p');
  assert.equal(d.kind, 'deallocate');
  assert.equal(d.baseline, true);
});

test('DO and CALL are opaque', () => {
  const d = one("do $$ begin perform 1; end $$");
  assert.equal(d.kind, 'do');
  assert.equal(d.readOnly, false);
  assert.ok(d.notes.some((n) => n.startsWith('DO runs procedural code')));
  const c = one('call my_proc(1, nextval(\'s\'))');
  assert.equal(c.kind, 'call');
  assert.equal(c.readOnly, false);
  assert.deepEqual(fnOps(c).map((o) => [o.name, o.effect]), [['my_proc', 'unknown'], ['nextval', 'side-effect']]);
});

test('COPY directions and the server-side pseudo-functions', () => {
  const out = one('copy t to stdout');
  assert.equal(out.kind, 'copy');
  assert.deepEqual(sqlOps(out).map((o) => [o.kind, o.tables]), [['copy', ['t']], ['select', ['t']]]);
  assert.deepEqual(out.tablesRead, ['t']);
  assert.equal(out.readOnly, true);
  const q = one('copy (select a from t join s using (id)) to stdout');
  assert.deepEqual(sqlOps(q).map((o) => [o.kind, o.tables]), [['copy', ['t', 's']], ['select', ['t', 's']]]);
  assert.equal(q.readOnly, true);
  const inp = one('copy t (a, b) from stdin with (format csv)');
  assert.deepEqual(sqlOps(inp).map((o) => [o.kind, o.tables]), [['copy', ['t']], ['insert', ['t']]]);
  assert.deepEqual(inp.tablesWritten, ['t']);
  assert.equal(inp.readOnly, false);
  const prog = one("copy t to program 'gzip > /tmp/x'");
  assert.deepEqual(fnOps(prog).map((o) => [o.name, o.effect]), [['copy_program', 'side-effect']]);
  assert.deepEqual(prog.functions, ['copy_program']);
  assert.equal(prog.readOnly, false);
  const file = one("copy t from '/etc/passwd'");
  const fop = fnOps(file)[0];
  assert.equal(fop.name, 'copy_server_file');
  assert.equal(fop.effect, 'side-effect');
  assert.match(fop.reason ?? '', /reads a file/);
  assert.match(fnOps(one("copy t to '/tmp/x'"))[0].reason ?? '', /writes a file/);
});

test('functions: names, qualification and judgement', () => {
  const s = one("select pg_catalog.pg_read_file('x'), public.lower('a'), lower('b'), pg_catalog.upper('c'), extract(year from now()), my_func(), \"LOWER\"('d')");
  assert.deepEqual(
    fnOps(s).map((o) => [o.name, o.effect]),
    [
      ['pg_catalog.pg_read_file', 'side-effect'],
      ['public.lower', 'unknown'],
      ['lower', 'safe'],
      ['pg_catalog.upper', 'safe'],
      ['extract', 'safe'],
      ['now', 'safe'],
      ['my_func', 'unknown'],
      ['LOWER', 'unknown'],
    ],
  );
  assert.deepEqual(s.functions, fnOps(s).map((o) => o.name));
  assert.equal(s.readOnly, false);
  assert.ok(s.notes.includes('calls function my_func whose effects are not known'));
  assert.ok(s.notes.some((n) => n.startsWith('calls function pg_catalog.pg_read_file, which reads server files')));
  // Functions are deduplicated and collected from everywhere.
  const n = one("select nextval('s'), nextval('s') from t where a in (select nextval('s'))");
  assert.deepEqual(n.functions, ['nextval']);
  const o = one('select 1 operator(public.+) 2, 3 operator(pg_catalog.+) 4');
  assert.deepEqual(o.functions, ['operator(public.+)']);
});

test('field selection (x).f is judged as the call f(x)', () => {
  const s = one("select ('s'::regclass).nextval, ('/etc/hostname'::text).pg_read_file");
  assert.deepEqual(fnOps(s), [
    { type: 'function', name: 'nextval', effect: 'side-effect', reason: 'changes a sequence' },
    { type: 'function', name: 'pg_read_file', effect: 'side-effect', reason: 'reads server files or directories' },
  ]);
  assert.deepEqual(s.functions, ['nextval', 'pg_read_file']);
  assert.equal(s.readOnly, false);
  assert.ok(s.notes.includes('calls function nextval, which changes a sequence'));
  assert.ok(s.notes.some((n) => n.startsWith('(...).nextval is taken as the call nextval(...)')));
  // After subscripts, nested in sub-selects, in WHERE, and every field of a chain.
  assert.deepEqual(one("select (array['s'::regclass])[1].nextval").functions, ['nextval']);
  assert.deepEqual(one("select x from (select ('s'::regclass).nextval as x) s").functions, ['nextval']);
  assert.deepEqual(one('select 1 from t where (pid).pg_terminate_backend').functions, ['pg_terminate_backend']);
  assert.deepEqual(fnOps(one('select (x).a.b[1].c from t')).map((o) => [o.name, o.effect]), [['a', 'unknown'], ['b', 'unknown'], ['c', 'unknown']]);
  // A composite field whose name is not a safe function fails closed; safe names stay safe.
  const f = one('select (c).city from customers');
  assert.deepEqual(fnOps(f).map((o) => [o.name, o.effect]), [['city', 'unknown']]);
  assert.equal(f.readOnly, false);
  const safe = one("select ('abc'::text).upper, (r).lower from t");
  assert.deepEqual(fnOps(safe).map((o) => [o.name, o.effect]), [['upper', 'safe'], ['lower', 'safe']]);
  assert.equal(safe.readOnly, true);
  assert.deepEqual(safe.notes, []);
  // Quoted names keep their case: not the builtin.
  assert.equal(fnOps(one('select (x)."UPPER" from t'))[0].effect, 'unknown');
  // Whole-row expansion and subscripts are not calls.
  const star = one('select (t).*, (arr)[1], (arr)[1:2] from t');
  assert.deepEqual(star.functions, []);
  assert.equal(star.readOnly, true);
  // Function arguments inside the selected value are still walked.
  assert.deepEqual(one("select (pg_sleep(1)::text).length").functions, ['length', 'pg_sleep']);
  // Field selection is reported by EXPLAIN without ANALYZE like any call that is not safe.
  assert.deepEqual(one("explain select ('s'::regclass).nextval").functions, ['nextval']);
});

test('dotted column references ending in a side-effect function name are that call', () => {
  const s = one('select t.nextval, t.id from t');
  assert.deepEqual(fnOps(s), [{ type: 'function', name: 'nextval', effect: 'side-effect', reason: 'changes a sequence' }]);
  assert.equal(s.readOnly, false);
  assert.ok(s.notes.some((n) => n.startsWith('t.nextval is taken as the call nextval(t)')));
  assert.deepEqual(one('select public.t.setval from public.t').functions, ['setval']);
  assert.deepEqual(one('select a.pg_terminate_backend from x a').functions, ['pg_terminate_backend']);
  // Exact names only: prefix families and unknown names are columns; single names are columns.
  for (const sql of ['select t.lo_limit, t.pg_read_count, t.a.b, t.* from t', 'select nextval from t', 'select t."NEXTVAL" from t']) {
    const c = one(sql);
    assert.deepEqual(c.functions, [], sql);
    assert.equal(c.readOnly, true, sql);
  }
  assert.deepEqual(judgeAttributeName('nextval'), { effect: 'side-effect', reason: 'changes a sequence' });
  assert.equal(judgeAttributeName('lo_limit'), undefined);
  assert.equal(judgeAttributeName('lower'), undefined);
});

test('sensitive relations: reads are side-effect operations named after the relation', () => {
  const s = one('SELECT query FROM pg_stat_activity');
  assert.equal(s.kind, 'select');
  assert.deepEqual(s.operations, [
    { type: 'sql', kind: 'select', tables: ['pg_stat_activity'] },
    {
      type: 'function',
      name: 'pg_stat_activity',
      effect: 'side-effect',
      reason: 'reads pg_stat_activity, which shows the statement texts (literals included) of other sessions that share the target role',
    },
  ]);
  assert.deepEqual(s.functions, ['pg_stat_activity']);
  assert.deepEqual(s.tablesRead, ['pg_stat_activity']);
  assert.equal(s.readOnly, false);
  assert.equal(s.baseline, false);
  assert.ok(s.notes.some((n) => n.startsWith('reads pg_stat_activity, which shows')));
  // Whatever the schema, the operation carries the bare name; the table keeps its spelling.
  const q = one('select * from pg_catalog.pg_stat_activity a join public.pg_stat_statements s on true');
  assert.deepEqual(q.functions, ['pg_stat_activity', 'pg_stat_statements']);
  assert.deepEqual(q.tablesRead, ['pg_catalog.pg_stat_activity', 'public.pg_stat_statements']);
  // Everywhere a query reads; COPY of the relation itself too.
  for (const sql of ['table pg_authid', 'select 1 where exists (select 1 from pg_shadow)', 'with a as (select * from pg_user_mappings) select * from a',
    'copy pg_authid to stdout', 'copy (select * from pg_authid) to stdout', 'insert into t select query from pg_stat_activity',
    'delete from t using pg_stat_activity a where a.pid = t.id', 'explain analyze select * from pg_authid', 'declare c cursor for select * from pg_shadow']) {
    const st = one(sql);
    assert.equal(st.readOnly, false, sql);
    assert.equal(fnOps(st).filter((o) => SENSITIVE_RELATIONS.has(o.name) && o.effect === 'side-effect').length, 1, sql);
  }
  // Not reads: a CTE of that name, EXPLAIN without ANALYZE, reviewed-out views, relations named in DDL.
  assert.equal(one('with pg_stat_activity as (select 1 as query) select query from pg_stat_activity').readOnly, true);
  const e = one('explain select query from pg_stat_activity');
  assert.deepEqual(e.operations, [{ type: 'sql', kind: 'explain', tables: ['pg_stat_activity'] }]);
  assert.equal(e.readOnly, true);
  for (const sql of ['select * from pg_stat_statements_info', 'select * from pg_stat_ssl', 'select * from pg_stat_replication', 'select * from pg_roles']) {
    assert.deepEqual(one(sql).functions, [], sql);
  }
  assert.deepEqual(one('grant select on pg_stat_activity to x').functions, []);
  // The functions behind them are on the side-effect list.
  for (const name of ['pg_stat_get_activity', 'pg_stat_get_backend_activity', 'pg_stat_statements']) {
    assert.deepEqual(judgeFunction([name]), { effect: 'side-effect', reason: 'shows statements of other sessions sharing the target role' }, name);
    assert.ok(!SAFE_FUNCTIONS.has(name), name);
  }
  assert.equal(judgeFunction(['public', 'pg_stat_statements']).effect, 'side-effect');
  assert.equal(judgeRelation('pg_class'), undefined);
  assert.match(judgeRelation('pg_authid')?.reason ?? '', /^reads pg_authid, which shows the password hashes/);
});

test('sensitive relations: a policy permits them only through functions: with the relation name', () => {
  const yaml = (extra: string) => `
connections:
  - name: analytics
    type: postgres
policies:
  - name: p
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
${extra}`;
  const identity: Identity = { subject: 'ci', kind: 'service-token', groups: ['ci'], claims: {}, issuer: 'airlock' };
  const decide = (policy: string, sql: string) => {
    const { bundle, problems } = loadPolicyFiles([{ path: 'p.yaml', content: policy }]);
    assert.deepEqual(problems, []);
    const request: Request = { connection: bundle!.connections[0], source: '10.0.0.1', time: new Date(), sql: classifySql(sql) };
    return evaluate(bundle!, identity, request);
  };
  const sql = 'select query from pg_catalog.pg_stat_activity';
  const denied = decide(yaml(''), sql);
  assert.equal(denied.action, 'deny');
  assert.match(denied.reason, /function pg_stat_activity \(side effect: reads pg_stat_activity/);
  assert.equal(decide(yaml('      - functions: [pg_stat_activity]'), sql).action, 'allow');
  assert.equal(decide(yaml('      - functions: [pg_stat_statements]'), sql).action, 'deny');
});

test('judgeFunction and the reviewed lists', () => {
  assert.deepEqual(judgeFunction(['count']), { effect: 'safe' });
  assert.equal(judgeFunction(['pg_catalog', 'pg_table_is_visible']).effect, 'safe');
  assert.equal(judgeFunction(['public', 'lower']).effect, 'unknown');
  assert.equal(judgeFunction(['a', 'b', 'lower']).effect, 'unknown');
  assert.equal(judgeFunction(['public', 'dblink_exec']).effect, 'side-effect');
  assert.equal(judgeFunction(['lo_something_new']).effect, 'side-effect');
  assert.equal(judgeFunction(['txid_current']).effect, 'side-effect');
  assert.equal(judgeFunction(['nextval']).reason, 'changes a sequence');
  for (const name of SAFE_FUNCTIONS) assert.ok(!SIDE_EFFECT_FUNCTIONS.has(name), name);
  for (const [name, reason] of SIDE_EFFECT_FUNCTIONS) {
    assert.ok(reason.length > 0);
    assert.equal(judgeFunction([name]).effect, 'side-effect', name);
  }
  for (const name of ['count', 'sum', 'avg', 'min', 'max', 'array_agg', 'string_agg', 'json_agg', 'lower', 'upper',
    'length', 'substring', 'concat', 'replace', 'btrim', 'format', 'now', 'date_trunc', 'extract', 'age', 'to_char',
    'to_timestamp', 'generate_series', 'row_number', 'rank', 'lag', 'lead', 'version', 'current_setting', 'pg_typeof',
    'format_type', 'has_table_privilege', 'pg_get_userbyid', 'quote_ident', 'quote_literal', 'md5', 'sha256',
    'gen_random_uuid', 'random', 'pg_table_is_visible', 'pg_get_expr', 'array_to_string', 'obj_description',
    'pg_relation_size', 'pg_total_relation_size', 'pg_size_pretty', 'pg_encoding_to_char', 'unnest', 'jsonb_build_object']) {
    assert.equal(judgeFunction([name]).effect, 'safe', name);
  }
  for (const name of ['nextval', 'setval', 'lo_import', 'lo_export', 'pg_advisory_lock', 'pg_try_advisory_xact_lock',
    'set_config', 'pg_notify', 'pg_terminate_backend', 'pg_cancel_backend', 'pg_reload_conf', 'pg_rotate_logfile',
    'pg_read_file', 'pg_read_binary_file', 'pg_ls_dir', 'pg_stat_file', 'pg_ls_waldir', 'pg_sleep', 'dblink',
    'dblink_exec', 'pg_create_logical_replication_slot', 'pg_drop_replication_slot', 'pg_logical_slot_get_changes',
    'pg_switch_wal', 'pg_promote', 'pg_backup_start', 'pg_backup_stop', 'txid_current', 'pg_file_write']) {
    assert.equal(judgeFunction([name]).effect, 'side-effect', name);
  }
});

test('SET: baseline settings, privilege-changing settings, transaction settings', () => {
  for (const sql of ["set application_name = 'x'", 'SET extra_float_digits = 3', 'set datestyle to iso, mdy',
    "set time zone 'UTC'", "set names 'UTF8'", "set local lock_timeout = '1s'", 'reset statement_timeout', 'reset all',
    'set default_transaction_read_only = on', 'set transaction_read_only to true', "set \"TimeZone\" = 'UTC'",
    'set standard_conforming_strings = on', "set client_encoding = 'UTF8'", 'set client_encoding to default',
    'reset standard_conforming_strings', 'set session characteristics as transaction read only']) {
    const s = one(sql);
    assert.equal(s.kind, 'set', sql);
    assert.equal(s.baseline, true, sql);
    assert.equal(s.readOnly, true, sql);
    assert.deepEqual(s.notes, [], sql);
  }
  const cases: [string, RegExp][] = [
    ['set role admin', /role/],
    ['reset role', /RESET role/],
    ['set session authorization admin', /user the session runs as/],
    ['set session authorization default', /user the session runs as/],
    ['set search_path = evil', /name/],
    ["set schema 'evil'", /search_path/],
    ['set default_transaction_read_only = off', /only when set to on/],
    ["set work_mem = '1GB'", /not a reviewed session setting/],
    ['set standard_conforming_strings = off', /parses string literals with it on/],
    ["set client_encoding = 'SJIS'", /only for UTF8/],
    ["set names 'GBK'", /only for UTF8/],
    ['set session characteristics as transaction read write', /READ WRITE/],
  ];
  for (const [sql, note] of cases) {
    const s = one(sql);
    assert.equal(s.kind, 'set', sql);
    assert.equal(s.baseline, false, sql);
    assert.equal(s.readOnly, false, sql);
    assert.match(s.notes.join('; '), note, sql);
  }
  const t = one('set transaction isolation level serializable');
  assert.equal(t.kind, 'transaction');
  assert.equal(t.baseline, true);
  const sc = one('set session characteristics as transaction isolation level serializable');
  assert.equal(sc.kind, 'set');
  assert.equal(sc.baseline, true);
});

test('baseline and read-only statements', () => {
  const expect: [string, string, boolean, boolean][] = [
    // sql, kind, readOnly, baseline
    ['begin', 'transaction', true, true],
    ['begin read write', 'transaction', true, true],
    ['start transaction read only', 'transaction', true, true],
    ['commit', 'transaction', true, true],
    ['end', 'transaction', true, true],
    ['rollback', 'transaction', true, true],
    ['savepoint s1', 'transaction', true, true],
    ['release savepoint s1', 'transaction', true, true],
    ['rollback to savepoint s1', 'transaction', true, true],
    ["prepare transaction 'x'", 'transaction', false, false],
    ["commit prepared 'x'", 'transaction', false, false],
    ["rollback prepared 'x'", 'transaction', false, false],
    ['show timezone', 'show', true, true],
    ['deallocate all', 'deallocate', true, true],
    ['listen ch', 'listen', true, false],
    ['unlisten *', 'listen', true, false],
    ["notify ch, 'x'", 'notify', false, false],
    ['discard plans', 'discard', true, false],
    ['discard all', 'discard', false, false],
    ['discard temp', 'discard', false, false],
    ['fetch 10 from c', 'select', true, false],
    ['close c', 'select', true, false],
    ['lock table t', 'lock', false, false],
    ['vacuum (analyze) t', 'vacuum', false, false],
    ['analyze t', 'analyze', false, false],
    ['cluster t using t_pkey', 'cluster', false, false],
    ['reindex table t', 'reindex', false, false],
    ['refresh materialized view mv', 'refresh', false, false],
    ['checkpoint', 'checkpoint', false, false],
    ["load 'auto_explain'", 'load', false, false],
    ['truncate t', 'truncate', false, false],
    ['grant select on t to x', 'grant', false, false],
    ['revoke select on t from x', 'revoke', false, false],
    ['grant admin to x', 'grant', false, false],
    ["comment on table t is 'x'", 'comment', false, false],
    ["security label on table t is 'x'", 'security_label', false, false],
    ['create index on t (a)', 'create', false, false],
    ['alter table t add column b int', 'alter', false, false],
    ['drop table t', 'drop', false, false],
    ["alter system set work_mem = '1GB'", 'alter', false, false],
    ['create view v as select * from t', 'create', false, false],
  ];
  for (const [sql, kind, readOnly, baseline] of expect) {
    const s = one(sql);
    assert.equal(s.kind, kind, sql);
    assert.equal(s.readOnly, readOnly, sql);
    assert.equal(s.baseline, baseline, sql);
    assert.equal(sqlOps(s)[0]?.kind, kind, `${sql}: first operation is the statement's own kind`);
    if (!readOnly) assert.ok(s.notes.length > 0, `${sql} explains why it is not read-only`);
  }
});

test('DDL and maintenance report their tables', () => {
  assert.deepEqual(op(one('drop table a, s.b cascade'), 'drop')?.tables, ['a', 's.b']);
  assert.deepEqual(op(one('truncate a, b'), 'truncate')?.tables, ['a', 'b']);
  assert.deepEqual(op(one('lock table a, b in share mode'), 'lock')?.tables, ['a', 'b']);
  assert.deepEqual(op(one('vacuum a, b'), 'vacuum')?.tables, ['a', 'b']);
  assert.deepEqual(op(one('grant select on a, s.b to x'), 'grant')?.tables, ['a', 's.b']);
  assert.deepEqual(op(one('alter table s.t rename to u'), 'alter')?.tables, ['s.t']);
  const v = one('create view v as select * from t');
  assert.deepEqual(op(v, 'create')?.tables, ['v']);
  assert.deepEqual(op(v, 'select')?.tables, ['t']);
  // Rule actions and SQL-standard function bodies are reported (conservatively) as if executed.
  const r = one('create rule r as on insert to t do also (delete from u; notify ch)');
  assert.deepEqual(sqlOps(r).map((o) => o.kind), ['create', 'delete', 'notify']);
  const f = one('create function f() returns int begin atomic delete from t; select 1; end');
  assert.deepEqual(sqlOps(f).map((o) => o.kind), ['create', 'delete']);
});

test('table names: folded by PostgreSQL, quoted names keep their case, schema kept', () => {
  const s = one('select * from Public.Foo, "Bar", "My Schema"."Baz" b, db.s.t');
  assert.deepEqual(s.tablesRead, ['public.foo', 'Bar', 'My Schema.Baz', 'db.s.t']);
});

test('multi-statement requests: one StatementInfo each, text sliced by bytes', () => {
  const info = classifySql("select 'é😀' ; /* c */ delete from t;select 3");
  assert.equal(info.parseError, undefined);
  assert.deepEqual(info.statements.map((s) => s.text), ["select 'é😀'", '/* c */ delete from t', 'select 3']);
  assert.deepEqual(info.statements.map((s) => s.kind), ['select', 'delete', 'select']);
  assert.deepEqual(info.statements.map((s) => s.readOnly), [true, false, true]);
});

test('parse errors come back as parseError, never as exceptions', () => {
  for (const sql of ['selec 1', "select 'x", 'select 1; selec 2', '\\d t', 'select 1\0; drop table t', '))']) {
    let info: SqlRequestInfo | undefined;
    assert.doesNotThrow(() => {
      info = classifySql(sql);
    }, sql);
    assert.ok(info);
    assert.ok(typeof info.parseError === 'string' && info.parseError.length > 0, sql);
    assert.deepEqual(info.statements, []);
    assert.equal(info.text, sql);
  }
  // Absurd nesting exhausts the parser: still an answer, and the parser keeps working afterwards.
  const deep = classifySql(`select ${'abs('.repeat(20000)}1${')'.repeat(20000)}`);
  assert.equal(typeof deep.parseError, 'string');
  assert.equal(one('select 1').readOnly, true);
});

test('empty and comment-only requests have no statements and no error', () => {
  for (const sql of ['', '   ', '-- nothing', '/* */', ';;']) {
    const info = classifySql(sql);
    assert.equal(info.parseError, undefined, JSON.stringify(sql));
    assert.deepEqual(info.statements, []);
  }
});

test('unrecognised statement types fail closed as kind other', () => {
  const s = classifyStatementNode({ SomeFutureStmt: { relation: { relname: 'x' } } }, 'future');
  assert.equal(s.kind, 'other');
  assert.equal(s.readOnly, false);
  assert.equal(s.baseline, false);
  assert.match(s.notes.join(';'), /SomeFutureStmt/);
  assert.deepEqual(op(s, 'other')?.tables, ['x']);
});

test('cache: same frozen object for the same text, bounded LRU', () => {
  clearClassifierCache();
  const a = classifySql('select * from cached_t');
  const b = classifySql('select * from cached_t');
  assert.equal(a, b);
  assert.ok(Object.isFrozen(a));
  assert.ok(Object.isFrozen(a.statements[0].operations));
  assert.ok(Object.isFrozen(a.statements[0].operations[0]));
  assert.notEqual(classifySql('select * from cached_t '), a, 'cached by exact text');
  // Parse errors are cached too.
  assert.equal(classifySql('selec 1'), classifySql('selec 1'));

  clearClassifierCache();
  const first = classifySql('select 0');
  const second = classifySql('select 1');
  for (let i = 2; i < CACHE_ENTRIES; i++) classifySql(`select ${i}`);
  assert.equal(classifierCacheSize(), CACHE_ENTRIES);
  assert.equal(classifySql('select 0'), first, 'still cached; now most recently used');
  classifySql('select -1');
  assert.equal(classifierCacheSize(), CACHE_ENTRIES);
  assert.equal(classifySql('select 0'), first, 'recently used entry survived eviction');
  const again = classifySql('select 1');
  assert.notEqual(again, second, 'the least recently used entry was evicted');
  assert.deepEqual(again, second);
  assert.equal(classifierCacheSize(), CACHE_ENTRIES);

  clearClassifierCache();
  const long = `select 1 -- ${'x'.repeat(CACHE_MAX_TEXT)}`;
  const l1 = classifySql(long);
  assert.notEqual(classifySql(long), l1, 'very long texts are not cached');
  assert.equal(classifierCacheSize(), 0);

  // The total length of cached texts is bounded too.
  clearClassifierCache();
  const big = (i: number) => `select ${i} -- ${'y'.repeat(CACHE_MAX_TEXT - 20)}`;
  const count = Math.ceil(CACHE_MAX_CHARS / (CACHE_MAX_TEXT - 10)) + 5;
  for (let i = 0; i < count; i++) classifySql(big(i));
  assert.ok(classifierCacheSize() < count);
  assert.ok(classifierCacheSize() * (CACHE_MAX_TEXT - 20) <= CACHE_MAX_CHARS);
});
