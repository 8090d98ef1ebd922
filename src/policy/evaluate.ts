// The decision function: (bundle, identity, request) -> Decision. Pure and fast: globs, CIDRs
// and time windows are compiled once per bundle (WeakMap cache) and reused per statement.
// The semantics are documented in docs/policy.md; keep the two in step.

import type {
  ApprovalRequirement, ApprovalTerms, ConnectionInfo, Decision, Identity, MaskRuleRef, Operation, Request, SqlKind, StatementInfo,
} from '../core/types.ts';
import type { PolicyBundle } from './loader.ts';
import {
  DAYS, REVIEW_DEFAULTS, durationMs, parseCidr, parseHours, parseIp, type Cidr, type ConnectionSelector, type Policy, type SubjectMatcher, type When,
} from './schema.ts';

// ---------------------------------------------------------------------------------------------
// Globs

const globCache = new Map<string, RegExp>();

/** `*` matches any characters (dots and slashes included), `?` exactly one; the rest is literal. */
export function globToRegExp(glob: string): RegExp {
  let re = globCache.get(glob);
  if (!re) {
    let src = '^';
    for (const ch of glob) {
      if (ch === '*') src += '[\\s\\S]*';
      else if (ch === '?') src += '[\\s\\S]';
      else src += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    re = new RegExp(src + '$', 'u');
    if (globCache.size > 10_000) globCache.clear();
    globCache.set(glob, re);
  }
  return re;
}

export function globMatch(glob: string, text: string): boolean {
  return globToRegExp(glob).test(text);
}

/**
 * Table/function name pattern, matched case-insensitively: PostgreSQL folds unquoted names to
 * lower case but keeps quoted ones ("Secrets"), and a deny rule must catch both spellings.
 * Without a dot it also matches the bare name of a qualified name (`customers` matches
 * `public.customers`).
 */
interface NamePattern {
  re: RegExp;
  bare: boolean;
}

function namePattern(glob: string): NamePattern {
  const g = glob.toLowerCase();
  return { re: new RegExp(globToRegExp(g).source, 'iu'), bare: !g.includes('.') };
}

function nameMatches(patterns: NamePattern[], name: string): boolean {
  const dot = name.lastIndexOf('.');
  const bareName = dot >= 0 ? name.slice(dot + 1) : undefined;
  for (const p of patterns) {
    if (p.re.test(name)) return true;
    if (p.bare && bareName !== undefined && p.re.test(bareName)) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Compiled bundle

interface CompiledWhen {
  spec: When;
  days?: Set<number>;
  hours?: [number, number];
  timezone: string;
  source?: Cidr[];
}

type RuleKind = 'allow' | 'review' | 'deny';

interface CompiledRule {
  kind: RuleKind;
  id: string;
  policy: string;
  sql?: Set<SqlKind>;
  tables?: NamePattern[];
  functions?: NamePattern[];
  withoutWhere: boolean;
  /** Has a selector for SQL operations (sql, tables or without_where). */
  forSql: boolean;
  when?: CompiledWhen;
  message?: string;
  approvers?: string[];
  /** Review rules: what an approval takes. */
  review?: { minApprovals: number; timeoutMs: number; grantMs?: number };
}

interface CompiledSubject {
  subject?: RegExp;
  group?: RegExp;
  issuer?: RegExp;
  kind?: Identity['kind'];
  claims?: [string, RegExp[]][];
}

type CompiledSelector = { name: RegExp } | { tags: [string, RegExp][] };

interface CompiledPolicy {
  name: string;
  subjects: CompiledSubject[];
  connections: CompiledSelector[];
  when?: CompiledWhen;
  allow: CompiledRule[];
  review: CompiledRule[];
  deny: CompiledRule[];
  masks: MaskRuleRef[];
  recordResults: boolean;
}

interface CompiledBundle {
  policies: CompiledPolicy[];
}

const compiledCache = new WeakMap<PolicyBundle, CompiledBundle>();

function compileWhen(w: When | undefined): CompiledWhen | undefined {
  if (!w) return undefined;
  return {
    spec: w,
    days: w.days ? new Set(w.days.map((d) => DAYS.indexOf(d))) : undefined,
    hours: w.hours ? parseHours(w.hours) : undefined,
    timezone: w.timezone ?? 'UTC',
    source: w.source?.map((s) => parseCidr(s)).filter((c): c is Cidr => c !== undefined),
  };
}

function claimText(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v) ?? 'undefined';
}

function compileSubject(m: SubjectMatcher): CompiledSubject {
  return {
    subject: m.subject !== undefined ? globToRegExp(m.subject) : undefined,
    group: m.group !== undefined ? globToRegExp(m.group) : undefined,
    issuer: m.issuer !== undefined ? globToRegExp(m.issuer) : undefined,
    kind: m.kind,
    claims: m.claims
      ? Object.entries(m.claims).map(([k, v]) => [k, (Array.isArray(v) ? v : [v]).map((x) => globToRegExp(claimText(x)))])
      : undefined,
  };
}

function compileSelector(s: ConnectionSelector): CompiledSelector {
  if (typeof s === 'string') return { name: globToRegExp(s) };
  return { tags: Object.entries(s.tags).map(([k, v]) => [k, globToRegExp(v)]) };
}

interface RuleInput {
  name?: string;
  message?: string;
  when?: When;
  sql?: SqlKind[];
  tables?: string[];
  functions?: string[];
  without_where?: boolean;
  approvers?: string[];
  timeout?: string;
  min_approvals?: number;
  grant?: string;
}

function compileRule(kind: RuleKind, policy: string, r: RuleInput, i: number): CompiledRule {
  return {
    kind,
    id: r.name ?? `${kind}[${i}]`,
    policy,
    sql: r.sql ? new Set(r.sql) : undefined,
    tables: r.tables?.map(namePattern),
    functions: r.functions?.map(namePattern),
    withoutWhere: r.without_where === true,
    forSql: r.sql !== undefined || r.tables !== undefined || r.without_where === true,
    when: compileWhen(r.when),
    message: r.message,
    approvers: r.approvers,
    review: kind === 'review' ? {
      minApprovals: r.min_approvals ?? REVIEW_DEFAULTS.min_approvals,
      timeoutMs: durationMs(r.timeout ?? REVIEW_DEFAULTS.timeout)!,
      grantMs: r.grant === undefined ? undefined : durationMs(r.grant),
    } : undefined,
  };
}

function compilePolicy(p: Policy): CompiledPolicy {
  return {
    name: p.name,
    subjects: p.subjects.map(compileSubject),
    connections: p.connections.map(compileSelector),
    when: compileWhen(p.when),
    allow: (p.allow ?? []).map((r, i) => compileRule('allow', p.name, r, i)),
    review: (p.review ?? []).map((r, i) => compileRule('review', p.name, r, i)),
    deny: (p.deny ?? []).map((r, i) => compileRule('deny', p.name, r, i)),
    recordResults: p.record === 'results',
    masks: (p.mask ?? []).map((m) => {
      const ref: MaskRuleRef = { policy: p.name, with: m.with };
      if (m.columns) ref.columns = [...m.columns];
      if (m.detect) ref.detect = [...m.detect];
      return ref;
    }),
  };
}

function compiled(bundle: PolicyBundle): CompiledBundle {
  let c = compiledCache.get(bundle);
  if (!c) {
    c = { policies: bundle.policies.map(compilePolicy) };
    compiledCache.set(bundle, c);
  }
  return c;
}

/** Compiles the bundle ahead of the first request (optional: evaluate compiles lazily). */
export function precompile(bundle: PolicyBundle): void {
  compiled(bundle);
}

// ---------------------------------------------------------------------------------------------
// Matching

function subjectMatches(m: CompiledSubject, id: Identity): boolean {
  if (m.subject && !m.subject.test(id.subject)) return false;
  if (m.issuer && !m.issuer.test(id.issuer)) return false;
  if (m.kind && m.kind !== id.kind) return false;
  if (m.group) {
    const g = m.group;
    if (!id.groups.some((x) => g.test(x))) return false;
  }
  if (m.claims) {
    for (const [key, patterns] of m.claims) {
      if (!Object.prototype.hasOwnProperty.call(id.claims, key)) return false;
      const value = id.claims[key];
      if (value === undefined) return false;
      const values = Array.isArray(value) ? value : [value];
      if (!values.some((v) => { const t = claimText(v); return patterns.some((p) => p.test(t)); })) return false;
    }
  }
  return true;
}

function selectorMatches(s: CompiledSelector, c: ConnectionInfo): boolean {
  if ('name' in s) return s.name.test(c.name);
  for (const [k, re] of s.tags) {
    const v = c.tags?.[k];
    if (v === undefined || !re.test(v)) return false;
  }
  return true;
}

const fmtCache = new Map<string, Intl.DateTimeFormat>();
const lastLocal = new Map<string, { key: number; value: { day: number; minute: number } }>();
const WEEKDAY: Record<string, number> = { Sun: 0, Mon: 1, Tue: 2, Wed: 3, Thu: 4, Fri: 5, Sat: 6 };

/** Day of week (0 = Sunday) and minute of the day of `time` in `tz`. */
export function localTime(time: Date, tz: string): { day: number; minute: number } {
  if (tz === 'UTC' || tz === 'Etc/UTC') {
    return { day: time.getUTCDay(), minute: time.getUTCHours() * 60 + time.getUTCMinutes() };
  }
  // Cached per minute: statements arrive in bursts and formatToParts costs microseconds.
  const key = Math.floor(time.getTime() / 60_000);
  const last = lastLocal.get(tz);
  if (last && last.key === key) return last.value;
  let fmt = fmtCache.get(tz);
  if (!fmt) {
    fmt = new Intl.DateTimeFormat('en-US', { timeZone: tz, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    fmtCache.set(tz, fmt);
  }
  let day = 0;
  let hour = 0;
  let minute = 0;
  for (const part of fmt.formatToParts(time)) {
    if (part.type === 'weekday') day = WEEKDAY[part.value] ?? 0;
    else if (part.type === 'hour') hour = Number(part.value) % 24;
    else if (part.type === 'minute') minute = Number(part.value);
  }
  const value = { day, minute: hour * 60 + minute };
  lastLocal.set(tz, { key, value });
  return value;
}

function cidrContains(c: Cidr, addr: { v4: boolean; bytes: Uint8Array }): boolean {
  let bytes = addr.bytes;
  if (c.v4 && !addr.v4) {
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) matches IPv4 ranges.
    for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
    if (bytes[10] !== 0xff || bytes[11] !== 0xff) return false;
    bytes = bytes.subarray(12);
  } else if (!c.v4 && addr.v4) {
    const mapped = new Uint8Array(16);
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped.set(bytes, 12);
    bytes = mapped;
  }
  let bits = c.prefix;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((bytes[i] & mask) !== (c.bytes[i] & mask)) return false;
  }
  return true;
}

/** True when `source` (an IP address) is inside one of the ranges. Unparseable: false. */
export function sourceMatches(ranges: Cidr[], source: string): boolean {
  const addr = parseIp(source);
  if (!addr) return false;
  return ranges.some((c) => cidrContains(c, addr));
}

/** Why `w` does not hold for the request, or undefined when it holds. */
function whenFailure(w: CompiledWhen | undefined, req: Request): string | undefined {
  if (!w) return undefined;
  if (w.days || w.hours) {
    if (!(req.time instanceof Date) || Number.isNaN(req.time.getTime())) return 'applies only at known times (the request time is invalid)';
    const t = localTime(req.time, w.timezone);
    if (w.days && !w.days.has(t.day)) return `applies only on ${w.spec.days!.join(', ')}, ${w.timezone}`;
    if (w.hours) {
      const [start, end] = w.hours;
      const inside = start < end ? t.minute >= start && t.minute < end : t.minute >= start || t.minute < end;
      if (!inside) return `applies only ${w.spec.hours} ${w.timezone}`;
    }
  }
  if (w.source && !sourceMatches(w.source, req.source)) return `does not apply to callers from ${req.source || 'an unknown address'}`;
  return undefined;
}


type SqlOp = Extract<Operation, { type: 'sql' }>;

/** Statement kinds that a rule with a `tables` filter still grants when they name no table. */
const TABLELESS_KINDS = new Set<SqlKind>(['select', 'show', 'explain', 'set', 'transaction', 'listen', 'deallocate', 'prepare']);
type FnOp = Extract<Operation, { type: 'function' }>;

function kindOk(r: CompiledRule, op: SqlOp): boolean {
  if (!r.forSql) return false;
  if (r.sql && !r.sql.has(op.kind)) return false;
  if (r.withoutWhere && !op.whereless) return false;
  return true;
}

function functionMatches(r: CompiledRule, op: FnOp): boolean {
  return r.functions !== undefined && nameMatches(r.functions, op.name);
}

// ---------------------------------------------------------------------------------------------
// Reasons

function tableList(tables: string[]): string {
  return tables.length === 1 ? `table ${tables[0]}` : `tables ${tables.join(', ')}`;
}

function describeFunction(op: FnOp): string {
  if (op.effect === 'side-effect') return `function ${op.name} (side effect: ${op.reason ?? 'changes state'})`;
  if (op.effect === 'unknown') return `function ${op.name} (not known to be free of side effects)`;
  return `function ${op.name}`;
}

function describeSql(op: SqlOp, tables: string[] = op.tables): string {
  const kind = op.whereless ? `${op.kind} without a WHERE clause` : op.kind;
  return tables.length ? `${kind} on ${tableList(tables)}` : `statement kind ${kind}`;
}

function describeOp(op: Operation): string {
  return op.type === 'sql' ? describeSql(op) : describeFunction(op);
}

// ---------------------------------------------------------------------------------------------
// Decision

/**
 * Every review rule that matched must be satisfied. The strictest terms win: the shortest
 * timeout, and a grant window only when every rule grants one (the shortest).
 */
function approvalTerms(rules: CompiledRule[]): ApprovalTerms {
  const requirements: ApprovalRequirement[] = [];
  for (const r of rules) {
    if (requirements.some((q) => q.policy === r.policy && q.rule === r.id)) continue;
    requirements.push({ policy: r.policy, rule: r.id, approvers: r.approvers ?? [], minApprovals: r.review!.minApprovals });
  }
  const terms = rules.map((r) => r.review!);
  const grants = terms.map((t) => t.grantMs);
  return {
    requirements,
    timeoutMs: Math.min(...terms.map((t) => t.timeoutMs)),
    grantMs: grants.every((g) => g !== undefined) ? Math.min(...(grants as number[])) : undefined,
  };
}

interface Hit {
  rule: CompiledRule;
  op: Operation;
  stmt: number;
}

/** Decides one request. Never throws for well-formed input. */
export function evaluate(bundle: PolicyBundle, identity: Identity, request: Request): Decision {
  const version = bundle.version;
  const conn = request.connection;
  const applicable = compiled(bundle).policies.filter(
    (p) =>
      p.subjects.some((s) => subjectMatches(s, identity)) &&
      p.connections.some((s) => selectorMatches(s, conn)) &&
      whenFailure(p.when, request) === undefined,
  );
  const deny = (reason: string, hit?: CompiledRule): Decision => ({
    action: 'deny',
    ...(hit ? { policy: hit.policy, rule: hit.id } : {}),
    reason,
    bundleVersion: version,
    masks: [],
  });
  if (applicable.length === 0) {
    // Say so when a policy would apply but for its `when` (time window or source address).
    const near = compiled(bundle).policies.find(
      (p) => p.when && p.subjects.some((s) => subjectMatches(s, identity)) && p.connections.some((s) => selectorMatches(s, conn)),
    );
    const why = near && whenFailure(near.when, request);
    return deny(`no policy grants ${identity.subject} access to connection ${conn.name}${why ? ` (policy ${near!.name} ${why})` : ''}`);
  }
  const masks = applicable.flatMap((p) => p.masks);
  // Result rows are recorded (after masking) when any applicable policy asks for it.
  const recordResults = applicable.some((p) => p.recordResults) || undefined;
  const sql = request.sql;
  if (!sql) {
    return {
      action: 'allow', policy: applicable[0].name,
      reason: `policy ${applicable[0].name} grants ${identity.subject} access to connection ${conn.name}`,
      bundleVersion: version, masks, recordResults,
    };
  }
  if (sql.parseError !== undefined) {
    return deny(`the SQL could not be parsed (${sql.parseError}); statements that cannot be parsed are always denied`);
  }
  const statements = sql.statements;
  if (statements.length === 0) {
    return { action: 'allow', policy: applicable[0].name, reason: 'empty request', bundleVersion: version, masks, recordResults };
  }
  const prefix = (i: number) => (statements.length > 1 ? `statement ${i + 1}: ` : '');
  const active = (rules: CompiledRule[]) => rules.filter((r) => whenFailure(r.when, request) === undefined);
  const denies = applicable.flatMap((p) => active(p.deny));

  // 1. Deny rules apply to every operation, baseline and safe ones included.
  for (let si = 0; si < statements.length; si++) {
    for (const op of statements[si].operations) {
      for (const r of denies) {
        if (op.type === 'sql') {
          if (!kindOk(r, op)) continue;
          let matched = op.tables;
          if (r.tables) {
            const pats = r.tables;
            matched = op.tables.filter((t) => nameMatches(pats, t));
            if (matched.length === 0) continue;
          }
          return deny(prefix(si) + (r.message ?? `${describeSql(op, matched)} is denied`), r);
        } else if (functionMatches(r, op)) {
          return deny(prefix(si) + (r.message ?? `${describeFunction(op)} is denied`), r);
        }
      }
    }
  }

  // 2. Every operation that needs permission must be covered by allow or review rules.
  const grants = applicable.flatMap((p) => [...active(p.review), ...active(p.allow)]);
  const reviews: Hit[] = [];
  let primary: Hit | undefined;
  let firstPermitted: Hit | undefined;
  for (let si = 0; si < statements.length; si++) {
    const stmt: StatementInfo = statements[si];
    if (stmt.baseline) continue;
    for (const op of stmt.operations) {
      let matched: CompiledRule[];
      if (op.type === 'sql') {
        const candidates = grants.filter((r) => kindOk(r, op));
        if (op.tables.length === 0) {
          // A `tables` filter limits what a rule grants; an operation that names no table (DROP
          // SCHEMA, DROP OWNED, CREATE FUNCTION...) escapes it unless it is a plain read or
          // session statement.
          matched = TABLELESS_KINDS.has(op.kind) ? candidates : candidates.filter((r) => !r.tables);
        } else {
          // Each table must be covered by some rule (a rule without `tables` covers all).
          matched = [];
          const uncovered: string[] = [];
          for (const t of op.tables) {
            const covering = candidates.filter((r) => !r.tables || nameMatches(r.tables, t));
            if (covering.length === 0) uncovered.push(t);
            for (const r of covering) if (!matched.includes(r)) matched.push(r);
          }
          if (uncovered.length) {
            return deny(`${prefix(si)}${describeSql(op, uncovered)} is not allowed by any policy`);
          }
        }
      } else {
        if (op.effect === 'safe') continue;
        matched = grants.filter((r) => functionMatches(r, op));
      }
      if (matched.length === 0) return deny(`${prefix(si)}${describeOp(op)} is not allowed by any policy`);
      const review = matched.find((r) => r.kind === 'review');
      if (review) {
        for (const r of matched) if (r.kind === 'review') reviews.push({ rule: r, op, stmt: si });
        continue;
      }
      const hit = { rule: matched[0], op, stmt: si };
      firstPermitted ??= hit;
      if (!primary && op.type === 'sql' && op.kind === stmt.kind) primary = hit;
    }
  }

  if (reviews.length) {
    const first = reviews[0];
    const approvers = [...new Set(reviews.flatMap((h) => h.rule.approvers ?? []))];
    return {
      action: 'review',
      policy: first.rule.policy,
      rule: first.rule.id,
      reason: prefix(first.stmt) + (first.rule.message ?? `${describeOp(first.op)} requires approval by ${approvers.join(', ')}`),
      bundleVersion: version,
      approvers,
      approval: approvalTerms(reviews.map((h) => h.rule)),
      masks,
      recordResults,
    };
  }
  const decider = primary ?? firstPermitted;
  if (!decider) {
    return {
      action: 'allow',
      policy: applicable[0].name,
      reason: `only baseline statements or side-effect-free functions, permitted to anyone with access to connection ${conn.name}`,
      bundleVersion: version,
      masks,
      recordResults,
    };
  }
  return {
    action: 'allow',
    policy: decider.rule.policy,
    rule: decider.rule.id,
    reason: `${prefix(decider.stmt)}${describeOp(decider.op)} allowed by policy ${decider.rule.policy} rule ${decider.rule.id}`,
    bundleVersion: version,
    masks,
    recordResults,
  };
}
