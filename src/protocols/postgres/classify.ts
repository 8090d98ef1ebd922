// The SQL classifier: turns SQL text into a SqlRequestInfo that policy can judge.
//
// A read is defined by its effects, not by its first keyword. Each statement is parsed with the
// real PostgreSQL 17 grammar (libpg-query, WASM) and its whole syntax tree is walked: CTEs,
// sub-selects, expressions, function arguments, RETURNING, the inner statement of EXPLAIN ANALYZE,
// PREPARE, COPY (query), CREATE TABLE AS, rule and BEGIN ATOMIC bodies. Every statement kind found
// (nested ones included) becomes an operation, and so does every function call, judged against the
// reviewed lists in sql-functions.ts, and so is every field selection `(x).f` (which PostgreSQL runs
// as the call `f(x)` when `x` has no field `f`). Reads of the sensitive relations listed there
// (pg_stat_activity, ...) are reported as side-effect function operations named after the relation.
// See docs/sql-classification.md.

import { Buffer } from 'node:buffer';
import { loadModule, parseSync } from 'libpg-query';
import type { Operation, SqlKind, SqlRequestInfo, StatementInfo } from '../../core/types.ts';
import { judgeAttributeName, judgeFunction, judgeRelation, type FunctionJudgement } from './sql-functions.ts';

// ---------------------------------------------------------------------------------------------
// Loading and the cache

let loading: Promise<void> | undefined;
let loaded = false;

/** Loads the WASM parser once. Idempotent; must be awaited before classifySql. */
export function initClassifier(): Promise<void> {
  loading ??= loadModule().then(
    () => {
      loaded = true;
    },
    (err: unknown) => {
      loading = undefined;
      throw err;
    },
  );
  return loading;
}

/** Number of request texts whose classification is kept. */
export const CACHE_ENTRIES = 5000;
/** Texts longer than this (characters) are classified every time rather than cached. */
export const CACHE_MAX_TEXT = 64 * 1024;
/** Bound on the total length of the cached texts (characters), so large texts cannot pile up. */
export const CACHE_MAX_CHARS = 8 * 1024 * 1024;

const cache = new Map<string, SqlRequestInfo>();
let cachedChars = 0;

/** Empties the classification cache (for tests). */
export function clearClassifierCache(): void {
  cache.clear();
  cachedChars = 0;
}

/** Number of entries in the classification cache (for tests). */
export function classifierCacheSize(): number {
  return cache.size;
}

/**
 * Classifies one request's SQL text (which may hold several statements). Never throws for bad
 * SQL: unparseable text comes back with `statements: []` and `parseError`. Throws only when
 * initClassifier has not completed. Results are cached by exact text (LRU) and deeply frozen:
 * callers must not mutate them.
 */
export function classifySql(text: string): SqlRequestInfo {
  if (!loaded) throw new Error('classifySql called before initClassifier() completed');
  const hit = cache.get(text);
  if (hit) {
    cache.delete(text);
    cache.set(text, hit);
    return hit;
  }
  const info = deepFreeze(classifyUncached(text));
  if (text.length <= CACHE_MAX_TEXT) {
    cache.set(text, info);
    cachedChars += text.length;
    while (cache.size > CACHE_ENTRIES || cachedChars > CACHE_MAX_CHARS) {
      const oldest = cache.keys().next();
      if (oldest.done) break;
      cache.delete(oldest.value);
      cachedChars -= oldest.value.length;
    }
  }
  return info;
}

function deepFreeze<T>(v: T): T {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k]);
  }
  return v;
}

function classifyUncached(text: string): SqlRequestInfo {
  if (text.includes('\0')) {
    return { text, statements: [], parseError: 'the text contains a NUL byte' };
  }
  let tree: Ast;
  try {
    tree = parseSync(text) as Ast;
  } catch (err) {
    if (/^\s*$/.test(text)) return { text, statements: [] };
    return { text, statements: [], parseError: errorMessage(err) };
  }
  try {
    const bytes = Buffer.from(text, 'utf8');
    const raws = (Array.isArray(tree.stmts) ? tree.stmts : []) as Ast[];
    const statements = raws.map((raw) => {
      const start = typeof raw.stmt_location === 'number' ? raw.stmt_location : 0;
      const end = typeof raw.stmt_len === 'number' && raw.stmt_len > 0 ? start + raw.stmt_len : bytes.length;
      return classifyStatement(raw.stmt as Ast, bytes.subarray(start, end).toString('utf8').trim());
    });
    return { text, statements };
  } catch (err) {
    // Fail closed: anything the walker cannot handle (e.g. absurd nesting) is treated as unparseable.
    return { text, statements: [], parseError: `could not classify the statement: ${errorMessage(err)}` };
  }
}

function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

// ---------------------------------------------------------------------------------------------
// Collecting one statement's operations

// The JSON syntax tree from libpg-query: nodes are { TypeName: { ...fields } }.
type Ast = Record<string, any>;

type Mode = 'read' | 'write' | 'none';

interface SqlOpAcc {
  tables: string[];
  whereless: boolean;
}

class Collector {
  readonly sqlOps = new Map<SqlKind, SqlOpAcc>();
  readonly fnOps = new Map<string, Extract<Operation, { type: 'function' }>>();
  readonly read: string[] = [];
  readonly written: string[] = [];
  readonly notes: string[] = [];
  /** Names in fnOps that stand for reads of sensitive relations, not calls (left out by plain EXPLAIN). */
  readonly relationReads = new Set<string>();
  readOnly = true;

  sql(kind: SqlKind, tables: readonly string[] = [], mode: Mode = 'none', whereless = false): void {
    let op = this.sqlOps.get(kind);
    if (!op) {
      op = { tables: [], whereless: false };
      this.sqlOps.set(kind, op);
    }
    for (const t of tables) {
      pushUnique(op.tables, t);
      if (mode === 'read') pushUnique(this.read, t);
      else if (mode === 'write') pushUnique(this.written, t);
    }
    if (whereless) op.whereless = true;
  }

  fn(name: string, j: FunctionJudgement): void {
    if (this.fnOps.has(name)) {
      // Also called, not only read as a relation of the same name (pg_stat_statements).
      this.relationReads.delete(name);
      return;
    }
    this.fnOps.set(name, {
      type: 'function',
      name,
      effect: j.effect,
      ...(j.effect !== 'safe' && j.reason !== undefined ? { reason: j.reason } : {}),
    });
    if (j.effect === 'side-effect') this.notWrite(`calls function ${name}, which ${j.reason ?? 'has side effects'}`);
    else if (j.effect === 'unknown') this.notWrite(`calls function ${name} whose effects are not known`);
  }

  /**
   * A read of a sensitive relation: a side-effect function operation named after the relation (bare
   * name), so that policy must permit it explicitly through `functions:`.
   */
  sensitiveRead(relname: string, j: FunctionJudgement): void {
    if (!this.fnOps.has(relname)) {
      this.fnOps.set(relname, {
        type: 'function',
        name: relname,
        effect: j.effect,
        ...(j.reason !== undefined ? { reason: j.reason } : {}),
      });
      this.relationReads.add(relname);
    }
    this.notWrite(j.reason ?? `reads ${relname}`);
  }

  /** Marks the statement as not read-only, with the reason. */
  notWrite(note: string): void {
    this.readOnly = false;
    this.note(note);
  }

  note(note: string): void {
    pushUnique(this.notes, note);
  }

  /** Adds everything another collector found (the inner statement of EXPLAIN ANALYZE). */
  absorb(o: Collector): void {
    for (const [kind, op] of o.sqlOps) this.sql(kind, op.tables, 'none', op.whereless);
    for (const t of o.read) pushUnique(this.read, t);
    for (const t of o.written) pushUnique(this.written, t);
    for (const [name, op] of o.fnOps) {
      if (this.fnOps.has(name)) continue;
      this.fnOps.set(name, op);
      if (o.relationReads.has(name)) this.relationReads.add(name);
    }
    for (const n of o.notes) this.note(n);
    if (!o.readOnly) this.readOnly = false;
  }

  operations(): Operation[] {
    const ops: Operation[] = [];
    for (const [kind, op] of this.sqlOps) {
      ops.push({ type: 'sql', kind, tables: op.tables, ...(op.whereless ? { whereless: true } : {}) });
    }
    ops.push(...this.fnOps.values());
    return ops;
  }
}

function pushUnique(list: string[], v: string): void {
  if (!list.includes(v)) list.push(v);
}

interface Ctx {
  /** CTE names visible here: an unqualified relation with one of these names is not a table. */
  ctes: ReadonlySet<string>;
  /** What a relation met by the generic walk means here: read by a query, or the target of DDL. */
  rel: { kind: SqlKind; mode: Mode };
}

const READ_CTX: Ctx = { ctes: new Set(), rel: { kind: 'select', mode: 'read' } };

function asQuery(ctx: Ctx): Ctx {
  return ctx.rel.kind === 'select' && ctx.rel.mode === 'read' ? ctx : { ctes: ctx.ctes, rel: READ_CTX.rel };
}

// ---------------------------------------------------------------------------------------------
// Top level

const UPPER = /^[A-Z]/;

function unwrap(node: unknown): [string, Ast] | undefined {
  if (!node || typeof node !== 'object' || Array.isArray(node)) return undefined;
  const keys = Object.keys(node);
  if (keys.length !== 1 || !UPPER.test(keys[0])) return undefined;
  const body = (node as Ast)[keys[0]];
  if (!body || typeof body !== 'object' || Array.isArray(body)) return undefined;
  return [keys[0], body as Ast];
}

/**
 * Classifies one already-parsed statement node ({ SelectStmt: {...} }). Exported for tests of
 * node types the grammar cannot easily produce; callers use classifySql.
 */
export function classifyStatementNode(stmt: unknown, text: string): StatementInfo {
  return classifyStatement((stmt ?? {}) as Ast, text);
}

function classifyStatement(stmt: Ast, text: string): StatementInfo {
  const col = new Collector();
  const node = unwrap(stmt);
  let kind: SqlKind = 'other';
  let baseline = false;
  if (!node) {
    col.notWrite('unrecognised statement');
  } else {
    const [type, body] = node;
    if (type === 'VariableSetStmt') {
      const s = judgeSet(body);
      kind = s.kind;
      baseline = s.baseline;
      col.sql(kind);
      if (!s.baseline) col.notWrite(s.note ?? 'changes a session setting that is not on the reviewed list');
    } else {
      kind = topKind(type, body);
      col.sql(kind);
      statementAt(type, body, READ_CTX, col);
      baseline = BASELINE_TYPES.has(type) && !(type === 'TransactionStmt' && TWO_PHASE.has(body.kind));
    }
  }
  return {
    text,
    kind,
    operations: col.operations(),
    tablesRead: col.read,
    tablesWritten: col.written,
    functions: [...col.fnOps.keys()],
    readOnly: col.readOnly,
    baseline: baseline && col.readOnly,
    notes: col.notes,
  };
}

/** Statement types that clients send on their own and that anyone with access may run. */
const BASELINE_TYPES = new Set(['TransactionStmt', 'ConstraintsSetStmt', 'VariableShowStmt', 'DeallocateStmt']);
const TWO_PHASE = new Set(['TRANS_STMT_PREPARE', 'TRANS_STMT_COMMIT_PREPARED', 'TRANS_STMT_ROLLBACK_PREPARED']);

const FIXED_KINDS: Record<string, SqlKind> = {
  InsertStmt: 'insert',
  UpdateStmt: 'update',
  DeleteStmt: 'delete',
  MergeStmt: 'merge',
  CopyStmt: 'copy',
  ExplainStmt: 'explain',
  PrepareStmt: 'prepare',
  ExecuteStmt: 'execute',
  DeallocateStmt: 'deallocate',
  DeclareCursorStmt: 'select',
  FetchStmt: 'select',
  ClosePortalStmt: 'select',
  DoStmt: 'do',
  CallStmt: 'call',
  VariableShowStmt: 'show',
  VariableSetStmt: 'set',
  TransactionStmt: 'transaction',
  ConstraintsSetStmt: 'transaction',
  ListenStmt: 'listen',
  UnlistenStmt: 'listen',
  NotifyStmt: 'notify',
  LockStmt: 'lock',
  ClusterStmt: 'cluster',
  ReindexStmt: 'reindex',
  RefreshMatViewStmt: 'refresh',
  CheckPointStmt: 'checkpoint',
  LoadStmt: 'load',
  DiscardStmt: 'discard',
  TruncateStmt: 'truncate',
  CommentStmt: 'comment',
  SecLabelStmt: 'security_label',
  CreateTableAsStmt: 'create',
  IndexStmt: 'create',
  ViewStmt: 'create',
  RuleStmt: 'create',
  DefineStmt: 'create',
  CompositeTypeStmt: 'create',
  ImportForeignSchemaStmt: 'create',
  RenameStmt: 'alter',
  ReassignOwnedStmt: 'alter',
};

function topKind(type: string, body: Ast): SqlKind {
  if (type === 'SelectStmt') return body.intoClause ? 'create' : 'select';
  if (type === 'VacuumStmt') return body.is_vacuumcmd ? 'vacuum' : 'analyze';
  if (type === 'GrantStmt' || type === 'GrantRoleStmt') return body.is_grant ? 'grant' : 'revoke';
  const fixed = FIXED_KINDS[type];
  if (fixed) return fixed;
  if (type.startsWith('Create')) return 'create';
  if (type.startsWith('Alter')) return 'alter';
  if (type.startsWith('Drop')) return 'drop';
  return 'other';
}

// ---------------------------------------------------------------------------------------------
// SET

/** Session settings that clients and drivers set on their own and that cannot widen access. */
export const BASELINE_SETTINGS: ReadonlySet<string> = new Set([
  'application_name', 'extra_float_digits', 'datestyle', 'intervalstyle', 'timezone', 'bytea_output',
  'client_min_messages', 'statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout',
  'idle_session_timeout', 'transaction_isolation', 'default_transaction_isolation', 'transaction_deferrable',
  'default_transaction_deferrable', 'lc_monetary', 'lc_numeric', 'lc_time', 'escape_string_warning',
]);

/**
 * Settings that are baseline only for some values (RESET and SET ... TO DEFAULT are always fine):
 * - read-only switches: turning them on only.
 * - standard_conforming_strings: the classifier parses with it on. With it off, 'a\'' ends at a
 *   different quote, so text the classifier reads as one string could hide a second statement.
 * - client_encoding: UTF8 only. In client encodings such as SJIS, GBK or BIG5 a multibyte character
 *   can end in the byte for backslash, so the server (after conversion) and the classifier would
 *   disagree about where an E'' string ends.
 */
export const BASELINE_WHEN: ReadonlyMap<string, { test: (v: string) => boolean; note: string }> = new Map([
  ['default_transaction_read_only', { test: isOn, note: 'is baseline only when set to on' }],
  ['transaction_read_only', { test: isOn, note: 'is baseline only when set to on' }],
  ['standard_conforming_strings', { test: isOn, note: 'is baseline only when set to on: the classifier parses string literals with it on' }],
  ['client_encoding', { test: (v) => /^(utf-?8|unicode)$/i.test(v), note: 'is baseline only for UTF8: other client encodings can change how the server reads string literals' }],
]);

function isOn(v: string): boolean {
  return ['on', 'true', 'yes', '1', 't', 'y'].includes(v.toLowerCase());
}

const SET_NOTES: Record<string, string> = {
  role: 'changes the role whose privileges the session uses',
  session_authorization: 'changes the user the session runs as',
  search_path: 'changes how table and function names resolve',
};

function judgeSet(b: Ast): { kind: SqlKind; baseline: boolean; note?: string } {
  const kind: string = b.kind ?? '';
  if (kind === 'VAR_RESET_ALL') return { kind: 'set', baseline: true };
  if (kind === 'VAR_SET_MULTI') {
    if (b.name === 'TRANSACTION' || b.name === 'TRANSACTION SNAPSHOT') return { kind: 'transaction', baseline: true };
    if (b.name === 'SESSION CHARACTERISTICS') {
      // Like default_transaction_read_only: making sessions read-write by default is not baseline.
      const readWrite = (Array.isArray(b.args) ? b.args : []).some(
        (a: Ast) => a?.DefElem?.defname === 'transaction_read_only' && settingValue([a.DefElem.arg]) === '0',
      );
      if (!readWrite) return { kind: 'set', baseline: true };
      return { kind: 'set', baseline: false, note: 'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE is not baseline' };
    }
    return { kind: 'set', baseline: false, note: `SET ${String(b.name)} is not a reviewed session setting` };
  }
  const name = String(b.name ?? '').toLowerCase();
  const verb = kind === 'VAR_RESET' ? 'RESET' : 'SET';
  const special = SET_NOTES[name];
  if (special) return { kind: 'set', baseline: false, note: `${verb} ${name} ${special}` };
  if (BASELINE_SETTINGS.has(name)) return { kind: 'set', baseline: true };
  const when = BASELINE_WHEN.get(name);
  if (when) {
    if (kind === 'VAR_RESET' || kind === 'VAR_SET_DEFAULT') return { kind: 'set', baseline: true };
    const v = kind === 'VAR_SET_VALUE' ? settingValue(b.args) : undefined;
    if (v !== undefined && when.test(v)) return { kind: 'set', baseline: true };
    return { kind: 'set', baseline: false, note: `${verb} ${name} ${when.note}` };
  }
  return { kind: 'set', baseline: false, note: `${verb} ${name} is not a reviewed session setting` };
}

/** The value of a single-constant SET (SET x = 'on', SET x TO 3), as text; undefined otherwise. */
function settingValue(args: unknown): string | undefined {
  if (!Array.isArray(args) || args.length !== 1) return undefined;
  const c = (args[0]?.A_Const ?? args[0]) as Ast | undefined;
  if (!c || typeof c !== 'object') return undefined;
  if (c.sval) return String(c.sval.sval ?? '');
  if (c.String) return String(c.String.sval ?? '');
  if (c.ival) return String(c.ival.ival ?? 0);
  if (c.Integer) return String(c.Integer.ival ?? 0);
  if (c.boolval) return c.boolval.boolval === true ? 'on' : 'off';
  if (c.Boolean) return c.Boolean.boolval === true ? 'on' : 'off';
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Statements

/** A statement in statement position: the top level, or the inner statement of EXPLAIN/PREPARE/COPY/DECLARE. */
function statementAt(type: string, body: Ast, ctx: Ctx, col: Collector): void {
  if (type === 'SelectStmt') selectStmt(body, asQuery(ctx), col, true);
  else statement(type, body, ctx, col);
}

function innerStatement(node: unknown, ctx: Ctx, col: Collector): void {
  const n = unwrap(node);
  if (n) statementAt(n[0], n[1], ctx, col);
}

/** Handles a statement node found anywhere (top level, or nested: CTEs, rule actions, function bodies). */
function statement(type: string, b: Ast, ctx: Ctx, col: Collector): void {
  const q = asQuery(ctx);
  switch (type) {
    case 'SelectStmt':
      return selectStmt(b, q, col, false);
    case 'InsertStmt':
      return insertStmt(b, q, col);
    case 'UpdateStmt':
      return updateStmt(b, q, col);
    case 'DeleteStmt':
      return deleteStmt(b, q, col);
    case 'MergeStmt':
      return mergeStmt(b, q, col);
    case 'CopyStmt':
      return copyStmt(b, q, col);
    case 'ExplainStmt':
      return explainStmt(b, q, col);
    case 'VariableSetStmt':
      // Only reachable nested (ALTER ROLE ... SET, CREATE FUNCTION ... SET): part of that statement.
      return;
    case 'VariableShowStmt':
      return col.sql('show');
    case 'PrepareStmt':
      col.sql('prepare');
      return innerStatement(b.query, q, col);
    case 'ExecuteStmt':
      col.sql('execute');
      col.notWrite(`EXECUTE ${String(b.name ?? '')} runs a prepared statement whose text is not in this request`);
      return visit(b.params, q, col);
    case 'DeallocateStmt':
      return col.sql('deallocate');
    case 'DeclareCursorStmt':
      col.sql('select');
      return innerStatement(b.query, q, col);
    case 'FetchStmt':
    case 'ClosePortalStmt':
      return col.sql('select');
    case 'DoStmt':
      col.sql('do');
      return col.notWrite('DO runs procedural code that cannot be inspected');
    case 'CallStmt': {
      col.sql('call');
      const fc = b.funccall as Ast | undefined;
      col.notWrite(`CALL runs procedure ${fc ? funcName(fc) : '?'}, whose body cannot be inspected`);
      if (fc) funcCall(fc, q, col);
      return;
    }
    case 'TransactionStmt':
      col.sql('transaction');
      if (TWO_PHASE.has(b.kind)) col.notWrite('two-phase commit statements (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED) keep or finish transactions beyond the session');
      return;
    case 'ConstraintsSetStmt':
      return col.sql('transaction');
    case 'ListenStmt':
    case 'UnlistenStmt':
      return col.sql('listen');
    case 'NotifyStmt':
      col.sql('notify');
      return col.notWrite('NOTIFY sends a notification to other sessions');
    case 'DiscardStmt':
      col.sql('discard');
      if (b.target === 'DISCARD_ALL' || b.target === 'DISCARD_TEMP') {
        col.notWrite(b.target === 'DISCARD_ALL'
          ? 'DISCARD ALL resets the session, including its user and role, and drops temporary tables'
          : 'DISCARD TEMP drops temporary tables');
      }
      return;
    case 'LockStmt': {
      const tables = relationsOf(b.relations);
      col.sql('lock', tables);
      return col.notWrite(`LOCK TABLE locks ${tables.join(', ')}`);
    }
    case 'CreateTableAsStmt': {
      const target = b.into?.rel ? rvName(b.into.rel) : undefined;
      col.sql('create', target ? [target] : [], 'write');
      col.notWrite(`${b.objtype === 'OBJECT_MATVIEW' ? 'CREATE MATERIALIZED VIEW' : 'CREATE TABLE AS'} creates ${target ?? 'a table'}`);
      return innerStatement(b.query, q, col);
    }
    case 'AlterSystemStmt':
      col.sql('alter');
      return col.notWrite('ALTER SYSTEM changes the server configuration');
    default:
      return otherStatement(type, b, ctx, col);
  }
}

/** DDL, maintenance, GRANT and anything unrecognised: its own kind, never read-only. */
function otherStatement(type: string, b: Ast, ctx: Ctx, col: Collector): void {
  const kind = topKind(type, b);
  col.sql(kind);
  if (kind === 'other') col.notWrite(`unrecognised statement type ${type}`);
  else col.notWrite(`${describeType(type, kind)} changes the database`);
  const mode: Mode = kind === 'grant' || kind === 'revoke' || kind === 'comment' || kind === 'security_label' ? 'none' : 'write';
  // Objects named as lists of names (DROP TABLE a, b; COMMENT ON TABLE t).
  if ((type === 'DropStmt' && RELATION_OBJECTS.has(b.removeType)) ||
      ((type === 'CommentStmt' || type === 'SecLabelStmt') && RELATION_OBJECTS.has(b.objtype))) {
    const objs = type === 'DropStmt' ? b.objects : [b.object];
    col.sql(kind, (Array.isArray(objs) ? objs : []).map(qualifiedName).filter((n): n is string => !!n), mode);
  }
  if (type === 'CreateFunctionStmt' && !b.sql_body) col.note('the function body is not inspected');
  walkFields(b, { ctes: ctx.ctes, rel: { kind, mode } }, col);
}

/** "CREATE FUNCTION" for CreateFunctionStmt, "CREATE INDEX" for IndexStmt, "VACUUM" for VacuumStmt. */
function describeType(type: string, kind: SqlKind): string {
  const k = kind.toUpperCase();
  if (kind === 'vacuum' || kind === 'analyze' || kind === 'grant' || kind === 'revoke') return k;
  if (type === 'RefreshMatViewStmt') return 'REFRESH MATERIALIZED VIEW';
  const words = type.replace(/Stmt$/, '').replace(/([a-z])([A-Z])/g, '$1 $2').toUpperCase();
  if (words.replace(/ /g, '') === k) return k;
  if (words === k || words.startsWith(`${k} `)) return words;
  return `${k} ${words}`;
}

const RELATION_OBJECTS = new Set([
  'OBJECT_TABLE', 'OBJECT_VIEW', 'OBJECT_MATVIEW', 'OBJECT_FOREIGN_TABLE', 'OBJECT_SEQUENCE', 'OBJECT_INDEX',
]);

function qualifiedName(node: unknown): string | undefined {
  const items = (node as Ast | undefined)?.List?.items;
  if (!Array.isArray(items)) return undefined;
  const parts = items.map((i: Ast) => i?.String?.sval).filter((s: unknown): s is string => typeof s === 'string');
  return parts.length ? parts.join('.') : undefined;
}

function withScope(withClause: Ast | undefined, ctx: Ctx, col: Collector): Ctx {
  if (!withClause || !Array.isArray(withClause.ctes)) return ctx;
  const scope = new Set(ctx.ctes);
  const ctes = withClause.ctes.map((c: unknown) => unwrap(c)?.[1]).filter(Boolean) as Ast[];
  if (withClause.recursive) for (const c of ctes) scope.add(String(c.ctename));
  for (const c of ctes) {
    // A non-recursive CTE sees only the CTEs before it.
    const inner: Ctx = { ctes: new Set(scope), rel: READ_CTX.rel };
    visit(c.ctequery, inner, col);
    walkFields(c, inner, col, ['ctequery']);
    scope.add(String(c.ctename));
  }
  return { ctes: scope, rel: ctx.rel };
}

function selectStmt(b: Ast, ctx: Ctx, col: Collector, statementPosition: boolean): void {
  if (statementPosition) col.sql('select');
  const inner = withScope(b.withClause, ctx, col);
  if (b.intoClause) {
    const target = b.intoClause.rel ? rvName(b.intoClause.rel) : 'a table';
    col.sql('create', b.intoClause.rel ? [target] : [], 'write');
    col.notWrite(`SELECT INTO creates table ${target}`);
  }
  if (Array.isArray(b.lockingClause) && b.lockingClause.length) {
    const tables = lockedTables(b, inner);
    col.sql('lock', tables);
    const strengths = b.lockingClause.map((l: Ast) => LOCK_NAMES[l?.LockingClause?.strength] ?? 'FOR UPDATE');
    col.notWrite(`SELECT ... ${[...new Set(strengths)].join('/')} takes row locks`);
  }
  if (b.larg) selectStmt(b.larg, inner, col, false);
  if (b.rarg) selectStmt(b.rarg, inner, col, false);
  walkFields(b, inner, col, ['withClause', 'intoClause', 'lockingClause', 'larg', 'rarg']);
}

const LOCK_NAMES: Record<string, string> = {
  LCS_FORUPDATE: 'FOR UPDATE',
  LCS_FORNOKEYUPDATE: 'FOR NO KEY UPDATE',
  LCS_FORSHARE: 'FOR SHARE',
  LCS_FORKEYSHARE: 'FOR KEY SHARE',
};

/** Tables a locking clause applies to: the FROM tables of its SELECT, or those named in OF. */
function lockedTables(b: Ast, ctx: Ctx): string[] {
  const from: { name: string; alias?: string; relname: string }[] = [];
  const collect = (n: unknown): void => {
    const u = unwrap(n);
    if (!u) return;
    if (u[0] === 'RangeVar') {
      const rv = u[1];
      if (!isCte(rv, ctx)) from.push({ name: rvName(rv), alias: rv.alias?.aliasname, relname: rv.relname });
    } else if (u[0] === 'JoinExpr') {
      collect(u[1].larg);
      collect(u[1].rarg);
    }
  };
  for (const f of Array.isArray(b.fromClause) ? b.fromClause : []) collect(f);
  const named: string[] = [];
  let all = false;
  for (const l of b.lockingClause as Ast[]) {
    const rels = l?.LockingClause?.lockedRels;
    if (!Array.isArray(rels) || rels.length === 0) all = true;
    else for (const r of rels) named.push(String(r?.RangeVar?.relname ?? ''));
  }
  const out: string[] = [];
  for (const f of from) {
    if (all || named.includes(f.alias ?? f.relname)) pushUnique(out, f.name);
  }
  return out;
}

function insertStmt(b: Ast, ctx: Ctx, col: Collector): void {
  const inner = withScope(b.withClause, ctx, col);
  const t = rvName(b.relation);
  col.sql('insert', [t], 'write');
  col.notWrite(`INSERT writes ${t}`);
  if (b.onConflictClause?.action === 'ONCONFLICT_UPDATE') {
    col.sql('update', [t], 'write');
    col.note(`INSERT ... ON CONFLICT DO UPDATE updates existing rows of ${t}`);
  }
  walkFields(b, inner, col, ['withClause', 'relation']);
}

function updateStmt(b: Ast, ctx: Ctx, col: Collector): void {
  const inner = withScope(b.withClause, ctx, col);
  const t = rvName(b.relation);
  const whereless = !b.whereClause;
  col.sql('update', [t], 'write', whereless);
  col.notWrite(whereless ? `UPDATE without WHERE changes every row of ${t}` : `UPDATE writes ${t}`);
  walkFields(b, inner, col, ['withClause', 'relation']);
}

function deleteStmt(b: Ast, ctx: Ctx, col: Collector): void {
  const inner = withScope(b.withClause, ctx, col);
  const t = rvName(b.relation);
  const whereless = !b.whereClause;
  col.sql('delete', [t], 'write', whereless);
  col.notWrite(whereless ? `DELETE without WHERE removes every row of ${t}` : `DELETE writes ${t}`);
  walkFields(b, inner, col, ['withClause', 'relation']);
}

const MERGE_ACTIONS: Record<string, SqlKind> = { CMD_INSERT: 'insert', CMD_UPDATE: 'update', CMD_DELETE: 'delete' };

function mergeStmt(b: Ast, ctx: Ctx, col: Collector): void {
  const inner = withScope(b.withClause, ctx, col);
  const t = rvName(b.relation);
  col.sql('merge', [t], 'write');
  col.notWrite(`MERGE writes ${t}`);
  // Each WHEN action is also reported as the write it performs on the target.
  for (const w of Array.isArray(b.mergeWhenClauses) ? b.mergeWhenClauses : []) {
    const action = MERGE_ACTIONS[w?.MergeWhenClause?.commandType];
    if (action) col.sql(action, [t], 'write');
  }
  walkFields(b, inner, col, ['withClause', 'relation']);
}

function copyStmt(b: Ast, ctx: Ctx, col: Collector): void {
  const from = b.is_from === true;
  let tables: string[] = [];
  if (b.relation) {
    const t = rvName(b.relation);
    tables = [t];
    if (from) {
      col.sql('copy', tables, 'write');
      col.sql('insert', tables, 'write');
      col.notWrite(`COPY FROM writes ${t}`);
    } else {
      col.sql('copy', tables, 'read');
      col.sql('select', tables, 'read');
      sensitiveRelation(b.relation, col);
    }
  } else if (b.query) {
    const before = col.read.length;
    innerStatement(b.query, ctx, col);
    tables = col.read.slice(before);
    col.sql('copy', tables);
  } else {
    col.sql('copy');
  }
  if (b.is_program) {
    col.fn('copy_program', { effect: 'side-effect', reason: 'runs a program on the database server (COPY ... PROGRAM)' });
  } else if (typeof b.filename === 'string') {
    col.fn('copy_server_file', {
      effect: 'side-effect',
      reason: from ? 'reads a file on the database server (COPY FROM file)' : 'writes a file on the database server (COPY TO file)',
    });
  }
  walkFields(b, ctx, col, ['relation', 'query']);
}

function explainStmt(b: Ast, ctx: Ctx, col: Collector): void {
  const analyze = explainAnalyze(b.options);
  const sub = new Collector();
  innerStatement(b.query, ctx, sub);
  const tables = [...sub.read];
  for (const t of sub.written) pushUnique(tables, t);
  if (analyze) {
    col.sql('explain', tables);
    col.absorb(sub);
    if (!sub.readOnly) col.note('EXPLAIN ANALYZE executes the statement');
    return;
  }
  // Not executed: only the plan is computed. The planner may still evaluate IMMUTABLE and STABLE
  // functions (constant folding, estimates), and a user function's volatility is not known here, so
  // functions other than the reviewed safe ones are still reported.
  col.sql('explain', tables, 'read');
  // Reads of sensitive relations are left out: planning reads no rows.
  for (const [name, op] of sub.fnOps) {
    if (op.effect !== 'safe' && !sub.relationReads.has(name)) col.fn(name, { effect: op.effect, ...(op.reason !== undefined ? { reason: op.reason } : {}) });
  }
}

function explainAnalyze(options: unknown): boolean {
  if (!Array.isArray(options)) return false;
  let on = false;
  for (const o of options) {
    const d = o?.DefElem as Ast | undefined;
    if (!d || String(d.defname).toLowerCase() !== 'analyze') continue;
    on = optionTrue(d.arg);
  }
  return on;
}

/** A DefElem boolean argument; absent means true, anything unrecognised counts as true (fail closed). */
function optionTrue(arg: unknown): boolean {
  if (arg === undefined || arg === null) return true;
  const a = arg as Ast;
  if (a.String) return !['false', 'off', 'no', '0', 'f', 'n'].includes(String(a.String.sval ?? '').toLowerCase());
  if (a.Integer) return (a.Integer.ival ?? 0) !== 0;
  if (a.Boolean) return a.Boolean.boolval === true;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Generic walk

function visit(v: unknown, ctx: Ctx, col: Collector): void {
  if (Array.isArray(v)) {
    for (const x of v) visit(x, ctx, col);
    return;
  }
  if (!v || typeof v !== 'object') return;
  const node = unwrap(v);
  if (node) return visitNode(node[0], node[1], ctx, col);
  const o = v as Ast;
  // Fields typed RangeVar hold the body without its { RangeVar: ... } wrapper.
  if (typeof o.relname === 'string') return rangeVar(o, ctx, col);
  walkFields(o, ctx, col);
}

function walkFields(o: Ast, ctx: Ctx, col: Collector, skip: readonly string[] = []): void {
  for (const k of Object.keys(o)) {
    if (skip.includes(k)) continue;
    const v = o[k];
    if (v && typeof v === 'object') visit(v, ctx, col);
  }
}

function visitNode(type: string, body: Ast, ctx: Ctx, col: Collector): void {
  switch (type) {
    case 'RangeVar':
      return rangeVar(body, ctx, col);
    case 'FuncCall':
      return funcCall(body, ctx, col);
    case 'A_Expr':
      operator(body, col);
      return walkFields(body, ctx, col);
    case 'A_Indirection':
      fieldSelection(body, col);
      return walkFields(body, ctx, col);
    case 'ColumnRef':
      return attributeReference(body, col);
    case 'RangeSubselect':
    case 'SubLink':
      // Sub-queries read, even inside DDL (CREATE TABLE ... CHECK (x IN (SELECT ...)) cannot, but be safe).
      return walkFields(body, asQuery(ctx), col);
  }
  if (type.endsWith('Stmt')) return statement(type, body, ctx, col);
  walkFields(body, ctx, col);
}

function isCte(rv: Ast, ctx: Ctx): boolean {
  return !rv.schemaname && !rv.catalogname && ctx.ctes.has(String(rv.relname));
}

function rangeVar(rv: Ast, ctx: Ctx, col: Collector): void {
  if (ctx.rel.mode === 'read' && isCte(rv, ctx)) return;
  col.sql(ctx.rel.kind, [rvName(rv)], ctx.rel.mode);
  if (ctx.rel.mode === 'read') sensitiveRelation(rv, col);
}

/**
 * A relation read whose rows show other sessions' statements or secrets (SENSITIVE_RELATIONS in
 * sql-functions.ts), in whatever schema it is written: reported under its bare name.
 */
function sensitiveRelation(rv: Ast | undefined, col: Collector): void {
  if (typeof rv?.relname !== 'string') return;
  const j = judgeRelation(rv.relname);
  if (j) col.sensitiveRead(rv.relname, j);
}

/**
 * `(x).f`, `(x)[1].f`, `(x).a.b`: PostgreSQL takes each field name as the call `f(x)` when the
 * value has no field of that name, for any function of one argument (`('s'::regclass).nextval`
 * advances a sequence). Without the catalog a field cannot be told from a call, so every field
 * name is judged as a call of that bare name: composite fields whose names are not safe functions
 * fail closed (unknown).
 */
function fieldSelection(ind: Ast, col: Collector): void {
  for (const item of Array.isArray(ind.indirection) ? ind.indirection : []) {
    const name = (item as Ast | undefined)?.String?.sval;
    if (typeof name !== 'string') continue; // A_Star, A_Indices
    const j = judgeFunction([name]);
    col.fn(name, j);
    if (j.effect !== 'safe') col.note(`(...).${name} is taken as the call ${name}(...): PostgreSQL calls a function of that name when the value has no field ${name}`);
  }
}

/**
 * `t.f` (and `s.t.f`): PostgreSQL takes it as the call `f(t)` when `t` has no column `f`. Only a
 * last name on the reviewed side-effect list is reported (as that function); anything else is a
 * column, as it almost always is.
 */
function attributeReference(ref: Ast, col: Collector): void {
  const fields = Array.isArray(ref.fields) ? ref.fields : [];
  if (fields.length < 2) return;
  const name = (fields[fields.length - 1] as Ast | undefined)?.String?.sval;
  if (typeof name !== 'string') return; // t.*
  const j = judgeAttributeName(name);
  if (!j) return;
  const qualifier = nameParts(fields.slice(0, -1)).join('.');
  col.fn(name, j);
  col.note(`${qualifier}.${name} is taken as the call ${name}(${qualifier}): PostgreSQL calls a function of that name when ${qualifier} has no column ${name}`);
}

/** schema.table as PostgreSQL folded it (unquoted names lowercased, quoted names as written). */
function rvName(rv: Ast | undefined): string {
  if (!rv) return '?';
  return [rv.catalogname, rv.schemaname, rv.relname].filter((p) => typeof p === 'string' && p.length > 0).join('.');
}

function relationsOf(list: unknown): string[] {
  const out: string[] = [];
  for (const n of Array.isArray(list) ? list : []) {
    const u = unwrap(n);
    if (u && u[0] === 'RangeVar') pushUnique(out, rvName(u[1]));
  }
  return out;
}

function nameParts(list: unknown): string[] {
  return (Array.isArray(list) ? list : []).map((n: Ast) => String(n?.String?.sval ?? ''));
}

function funcName(fc: Ast): string {
  const parts = nameParts(fc.funcname);
  // Functions the grammar writes for SQL syntax (EXTRACT, AT TIME ZONE, ...) are reported as called.
  if (fc.funcformat === 'COERCE_SQL_SYNTAX' && parts.length === 2 && parts[0] === 'pg_catalog') return parts[1];
  return parts.join('.');
}

function funcCall(fc: Ast, ctx: Ctx, col: Collector): void {
  col.fn(funcName(fc), judgeFunction(nameParts(fc.funcname)));
  walkFields(fc, ctx, col, ['funcname']);
}

/** OPERATOR(schema.op) with a schema other than pg_catalog calls a user function: judged unknown. */
function operator(e: Ast, col: Collector): void {
  const parts = nameParts(e.name);
  if (parts.length > 1 && parts[0] !== 'pg_catalog') {
    col.fn(`operator(${parts.join('.')})`, { effect: 'unknown', reason: `operator from schema ${parts.slice(0, -1).join('.')}` });
  }
}
