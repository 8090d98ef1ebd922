// Sessions from the audit log: every client connection is a session, and its audit events share
// a `sessionId`. This module turns those events into sessions (summaries for listings, statement
// timelines for `show`, the export format of docs/sessions.md, replay steps) and, at the end,
// reads them from a store. Everything above `Store access` is pure, so that the CLI and the HTTP
// API render the same sessions.

import type { AuditEvent } from '../core/types.ts';
import type { AuditQuery, Store } from '../store/store.ts';

// ---------------------------------------------------------------------------------------------
// Types

/** Statements of a session by decision. `errors`: allowed statements the target failed (or skipped). */
export interface SessionCounts {
  statements: number;
  allowed: number;
  denied: number;
  review: number;
  errors: number;
}

/**
 * `open`: no `session.end` yet (still connected, or the gateway stopped without recording it);
 * `closed`: ended normally; `refused`: ended before it started (no policy allowed the identity on
 * the connection, unknown connection, target unavailable); `auth-failed`: only an `auth.failure`
 * is recorded. Other `detail.outcome` values of a `session.end` are passed through.
 */
export type SessionOutcome = 'open' | 'closed' | 'refused' | 'auth-failed' | (string & {});

/** One session, without its events: what `sessions list` prints. */
export interface SessionSummary {
  id: string;
  /** Time of `session.start`; absent when it was pruned from the log (see `startPruned`) or the session never started. */
  start?: string;
  /** Time of the first event known: `start` when there is one. */
  firstTime: string;
  /** Time of `session.end`, when recorded. */
  end?: string;
  /** Time of the last event known. */
  lastTime: string;
  /** From `session.end` (time since the client connected), else end - start; absent while open. */
  durationMs?: number;
  outcome: SessionOutcome;
  /** The session has events but its `session.start` is no longer in the log (retention pruned it). */
  startPruned: boolean;
  subject?: string;
  issuer?: string;
  connection?: string;
  source?: string;
  /** PostgreSQL user name and `application_name` the client sent. */
  user?: string;
  application?: string;
  tls?: boolean;
  groups?: string[];
  claims?: Record<string, unknown>;
  tokenId?: string;
  /** Why a refused session was refused, or why authentication failed. */
  reason?: string;
  /** Counted from the statement events present. */
  counts: SessionCounts;
  /** The counts `session.end` recorded (statements, denied), when present. */
  recordedCounts?: { statements?: number; denied?: number };
  /** A terminal recording of the session (asciicast v2), from `detail.recording` of any event. */
  recording?: string;
  /** Number of events. */
  events: number;
}

/** Columns a statement's results had masked: `detail.masked` of a statement event. */
export interface MaskedColumn {
  column: string;
  strategy: string;
  values: number;
}

/** Result rows recorded under `record: results` (`detail.results`). */
export interface RecordedResultSet {
  columns: string[];
  rows: (string | null)[][];
  truncated?: boolean;
}

export interface SessionStatement {
  /** 1-based position among the statements of the session. */
  index: number;
  id?: number;
  time: string;
  /** Milliseconds since the session started (or since its first known event). */
  offsetMs: number;
  statement: string;
  decision?: 'allow' | 'deny' | 'review';
  policy?: string;
  rule?: string;
  reason?: string;
  durationMs?: number;
  rows?: number;
  error?: string;
  masked: MaskedColumn[];
  approval?: string;
  results?: RecordedResultSet[];
  classification?: unknown;
}

/** A non-statement event of a session, placed in its timeline (protocol errors, approvals, ...). */
export interface SessionNote {
  id?: number;
  time: string;
  offsetMs: number;
  type: AuditEvent['type'];
  text: string;
}

export interface Session extends SessionSummary {
  statements: SessionStatement[];
  /** Statements and notes interleaved, in order. */
  timeline: ({ kind: 'statement'; statement: SessionStatement } | { kind: 'note'; note: SessionNote })[];
  /** Every event, in session order (see `sortSessionEvents`). */
  auditEvents: AuditEvent[];
}

// ---------------------------------------------------------------------------------------------
// Events to sessions

const ms = (iso: string): number => {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? 0 : t;
};

/**
 * Session order: by time, then by id. Statement events carry the time the statement arrived and
 * are written when it completes, so in a pipeline a refused statement can be written before an
 * earlier one that was still running; ordering by time restores the order the client sent them.
 */
export function sortSessionEvents(events: readonly AuditEvent[]): AuditEvent[] {
  return events
    .map((e, i) => ({ e, i }))
    .sort((a, b) => ms(a.e.time) - ms(b.e.time) || (a.e.id ?? 0) - (b.e.id ?? 0) || a.i - b.i)
    .map((x) => x.e);
}

/** Groups events by `sessionId` (events without one are ignored). Map order: first appearance. */
export function groupBySession(events: readonly AuditEvent[]): Map<string, AuditEvent[]> {
  const out = new Map<string, AuditEvent[]>();
  for (const e of events) {
    if (!e.sessionId) continue;
    let list = out.get(e.sessionId);
    if (!list) out.set(e.sessionId, (list = []));
    list.push(e);
  }
  return out;
}

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const obj = (v: unknown): Record<string, unknown> | undefined =>
  v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;

function recordingOf(d: Record<string, unknown> | undefined): string | undefined {
  const r = d?.recording;
  return str(r) ?? str(obj(r)?.path);
}

/** The summary of one session from its events (any order; events of other sessions must not be passed). */
export function summarizeSession(id: string, events: readonly AuditEvent[]): SessionSummary {
  return build(id, events, false);
}

/** One session with its statements, from its events. Throws when `events` is empty. */
export function buildSession(id: string, events: readonly AuditEvent[]): Session {
  return build(id, events, true) as Session;
}

/** Summaries of every session among `events`, oldest first (by first known time). */
export function summarizeSessions(events: readonly AuditEvent[]): SessionSummary[] {
  return [...groupBySession(events)]
    .map(([id, list]) => summarizeSession(id, list))
    .sort((a, b) => ms(a.firstTime) - ms(b.firstTime) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function build(id: string, input: readonly AuditEvent[], full: boolean): SessionSummary | Session {
  if (input.length === 0) throw new Error(`no events for session ${id}`);
  const events = sortSessionEvents(input);
  const start = events.find((e) => e.type === 'session.start');
  const end = events.findLast((e) => e.type === 'session.end');
  const authFailure = events.find((e) => e.type === 'auth.failure');
  const first = events[0];
  const last = events[events.length - 1];
  const sd = obj(start?.detail);
  const ed = obj(end?.detail);
  const identityEvent = start ?? events.find((e) => e.subject) ?? first;

  const endOutcome = str(ed?.outcome);
  const refused = !start && (endOutcome === 'refused' || (end?.decision === 'deny' && !endOutcome));
  let outcome: SessionOutcome;
  if (end) outcome = endOutcome ?? (refused ? 'refused' : 'closed');
  else if (!start && authFailure && !events.some((e) => e.type === 'statement')) outcome = 'auth-failed';
  else outcome = 'open';
  const startPruned = !start && !refused && outcome !== 'auth-failed';

  const counts: SessionCounts = { statements: 0, allowed: 0, denied: 0, review: 0, errors: 0 };
  for (const e of events) {
    if (e.type !== 'statement') continue;
    counts.statements++;
    if (e.decision === 'deny') counts.denied++;
    else if (e.decision === 'review') counts.review++;
    else {
      counts.allowed++;
      if (e.error) counts.errors++;
    }
  }

  let durationMs = num(end?.durationMs);
  if (durationMs === undefined && end && start) durationMs = Math.max(0, ms(end.time) - ms(start.time));

  const recordedCounts = ed && (num(ed.statements) !== undefined || num(ed.denied) !== undefined)
    ? { statements: num(ed.statements), denied: num(ed.denied) } : undefined;
  const groups = Array.isArray(sd?.groups) ? (sd.groups as unknown[]).map(String) : undefined;
  const summary: SessionSummary = {
    id,
    start: start?.time,
    firstTime: first.time,
    end: end?.time,
    lastTime: last.time,
    durationMs,
    outcome,
    startPruned,
    subject: identityEvent.subject ?? events.find((e) => e.subject)?.subject,
    issuer: identityEvent.issuer ?? events.find((e) => e.issuer)?.issuer,
    connection: identityEvent.connection ?? events.find((e) => e.connection)?.connection,
    source: identityEvent.source ?? events.find((e) => e.source)?.source,
    user: str(sd?.user) ?? str(ed?.user) ?? str(obj(authFailure?.detail)?.user),
    application: str(sd?.application),
    tls: typeof sd?.tls === 'boolean' ? sd.tls : undefined,
    groups,
    claims: obj(sd?.claims),
    tokenId: str(sd?.tokenId) ?? str(obj(authFailure?.detail)?.tokenId),
    reason: refused ? end?.reason : outcome === 'auth-failed' ? authFailure?.reason : undefined,
    counts,
    recordedCounts,
    recording: events.map((e) => recordingOf(obj(e.detail))).find(Boolean),
    events: events.length,
  };
  compact(summary);
  if (!full) return summary;

  const origin = ms(start?.time ?? first.time);
  const statements: SessionStatement[] = [];
  const timeline: Session['timeline'] = [];
  for (const e of events) {
    const offsetMs = Math.max(0, ms(e.time) - origin);
    if (e.type === 'statement') {
      const d = obj(e.detail);
      const s: SessionStatement = {
        index: statements.length + 1, id: e.id, time: e.time, offsetMs, statement: e.statement ?? '',
        decision: e.decision, policy: e.policy, rule: e.rule, reason: e.reason, durationMs: e.durationMs, rows: e.rows,
        error: e.error, masked: maskedOf(d?.masked), approval: str(d?.approval), results: resultsOf(d?.results),
        classification: e.classification,
      };
      compact(s);
      statements.push(s);
      timeline.push({ kind: 'statement', statement: s });
    } else if (e.type !== 'session.start' && e.type !== 'session.end') {
      timeline.push({ kind: 'note', note: { id: e.id, time: e.time, offsetMs, type: e.type, text: noteText(e) } });
    }
  }
  return { ...summary, statements, timeline, auditEvents: events };
}

/** Removes undefined fields (so that JSON and deepEqual see only what is there). */
function compact<T extends object>(o: T): T {
  const r = o as Record<string, unknown>;
  for (const k of Object.keys(r)) if (r[k] === undefined) delete r[k];
  return o;
}

function maskedOf(v: unknown): MaskedColumn[] {
  if (!Array.isArray(v)) return [];
  return v.flatMap((m) => {
    const o = obj(m);
    return o && str(o.column) ? [{ column: String(o.column), strategy: String(o.strategy ?? ''), values: num(o.values) ?? 0 }] : [];
  });
}

function resultsOf(v: unknown): RecordedResultSet[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const sets = v.flatMap((r) => {
    const o = obj(r);
    if (!o || !Array.isArray(o.columns) || !Array.isArray(o.rows)) return [];
    const set: RecordedResultSet = {
      columns: o.columns.map(String),
      rows: (o.rows as unknown[]).filter(Array.isArray).map((row) => (row as unknown[]).map((c) => (c === null ? null : String(c)))),
    };
    if (o.truncated === true) set.truncated = true;
    return [set];
  });
  return sets.length ? sets : undefined;
}

function noteText(e: AuditEvent): string {
  const d = obj(e.detail);
  const approval = str(d?.approval);
  const parts = [e.error, e.reason, approval && `approval ${approval}`].filter(Boolean);
  return parts.join('; ') || e.type;
}

// ---------------------------------------------------------------------------------------------
// Text helpers

/** 850 -> "850ms", 1234 -> "1.2s", 130000 -> "2m10s", 3723000 -> "1h02m". */
export function formatDuration(msValue: number): string {
  const v = Math.max(0, msValue);
  if (v < 1000) return `${Math.round(v)}ms`;
  if (v < 60_000) return `${(Math.floor(v / 100) / 10).toFixed(1)}s`;
  const s = Math.floor(v / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  const m = Math.floor(s / 60);
  if (m < 24 * 60) return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(m / 1440)}d${String(Math.floor((m % 1440) / 60)).padStart(2, '0')}h`;
}

/** Statement durations: "0.42 ms", "1.2 ms", "35 ms", "1.5 s". */
export function formatStatementDuration(msValue: number): string {
  if (msValue < 1) return `${msValue.toFixed(2)} ms`;
  if (msValue < 10) return `${msValue.toFixed(1)} ms`;
  if (msValue < 1000) return `${Math.round(msValue)} ms`;
  return `${(msValue / 1000).toFixed(1)} s`;
}

/** "+0.123s": offset from the start of the session. */
export const formatOffset = (offsetMs: number): string => `+${(offsetMs / 1000).toFixed(3)}s`;

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** "3 rows" / "1 row". */
export const formatRows = (n: number): string => plural(n, 'row');

/** "4: 2 allowed, 1 denied, 1 review" (zero counts after the total are left out; errors when any). */
export function formatCounts(c: SessionCounts): string {
  const parts = [c.allowed && `${c.allowed} allowed`, c.denied && `${c.denied} denied`, c.review && `${c.review} review`,
    c.errors && plural(c.errors, 'error')].filter(Boolean);
  return parts.length ? `${c.statements}: ${parts.join(', ')}` : String(c.statements);
}

/** "4 statements (2 allowed, 1 denied, 1 review)", "0 statements". */
export function formatCountsLong(c: SessionCounts): string {
  const parts = [c.allowed && `${c.allowed} allowed`, c.denied && `${c.denied} denied`, c.review && `${c.review} review`,
    c.errors && plural(c.errors, 'error')].filter(Boolean);
  return plural(c.statements, 'statement') + (parts.length ? ` (${parts.join(', ')})` : '');
}

/** "customers.card_number (last4, 3 values), ..." */
export const formatMasked = (m: readonly MaskedColumn[]): string =>
  m.map((c) => `${c.column} (${[c.strategy, plural(c.values, 'value')].filter(Boolean).join(', ')})`).join(', ');

const TIME_CLAIMS = new Set(['exp', 'iat', 'nbf', 'auth_time']);
const SKIP_CLAIMS = new Set(['groups', 'jti']);

/** A one-line summary of token claims: `sub=x, aud=y, exp=2024-...Z, +3 more`, at most `max` characters. */
export function summarizeClaims(claims: Record<string, unknown> | undefined, max = 100): string {
  if (!claims) return '';
  const keys = Object.keys(claims).filter((k) => !SKIP_CLAIMS.has(k));
  const parts: string[] = [];
  let used = 0;
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i];
    const v = claims[k];
    let text: string;
    if (TIME_CLAIMS.has(k) && typeof v === 'number') text = new Date(v * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    else if (Array.isArray(v)) text = v.map((x) => (typeof x === 'object' ? '…' : String(x))).join(',');
    else if (v && typeof v === 'object') text = '{…}';
    else text = String(v);
    if (text.length > 40) text = `${text.slice(0, 39)}…`;
    const part = `${k}=${text}`;
    const rest = keys.length - i - 1;
    if (parts.length && used + part.length + 2 > max - (rest ? 10 : 0)) {
      parts.push(`+${keys.length - i} more`);
      break;
    }
    parts.push(part);
    used += part.length + 2;
  }
  return parts.join(', ');
}

// ---------------------------------------------------------------------------------------------
// Export format (docs/sessions.md)

export const EXPORT_FORMAT = 'airlock-session';
export const EXPORT_VERSION = 1;

/** The first line of an export. */
export interface ExportHeader {
  format: typeof EXPORT_FORMAT;
  version: number;
  session: string;
  exportedAt: string;
  /** Airlock version that wrote the file. */
  generator: string;
  events: number;
  start?: string;
  end?: string;
  subject?: string;
  issuer?: string;
  connection?: string;
  source?: string;
  outcome: SessionOutcome;
  startPruned?: boolean;
  recording?: string;
}

/** Field order of exported events: that of the audit log (docs/audit.md). Unknown fields follow. */
export const EVENT_FIELDS = [
  'id', 'time', 'type', 'sessionId', 'subject', 'issuer', 'connection', 'source', 'statement', 'classification',
  'decision', 'policy', 'rule', 'reason', 'bundleVersion', 'durationMs', 'rows', 'error', 'detail',
] as const;

/** An event with its fields in the documented order, undefined fields left out. */
export function normalizeEvent(e: AuditEvent): AuditEvent {
  const src = e as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of EVENT_FIELDS) if (src[k] !== undefined) out[k] = src[k];
  for (const k of Object.keys(src)) if (!(k in out) && src[k] !== undefined) out[k] = src[k];
  return out as unknown as AuditEvent;
}

/** The lines of an export (without newlines): the header, then every event in session order. */
export function exportSessionLines(session: Session, opts: { generator: string; exportedAt?: string }): string[] {
  const header: ExportHeader = {
    format: EXPORT_FORMAT, version: EXPORT_VERSION, session: session.id,
    exportedAt: opts.exportedAt ?? new Date().toISOString(), generator: opts.generator, events: session.auditEvents.length,
    start: session.start, end: session.end, subject: session.subject, issuer: session.issuer, connection: session.connection,
    source: session.source, outcome: session.outcome, startPruned: session.startPruned || undefined, recording: session.recording,
  };
  return [JSON.stringify(header), ...session.auditEvents.map((e) => JSON.stringify(normalizeEvent(e)))];
}

/** Reads an export back. Throws with the line number on anything that is not one. */
export function parseSessionExport(text: string): { header: ExportHeader; events: AuditEvent[] } {
  const lines = text.split(/\r?\n/);
  while (lines.length && lines[lines.length - 1].trim() === '') lines.pop();
  if (!lines.length) throw new Error('empty session export');
  const parse = (line: string, n: number): Record<string, unknown> => {
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (err) {
      throw new Error(`line ${n}: not JSON (${(err as Error).message})`);
    }
    const o = obj(v);
    if (!o) throw new Error(`line ${n}: not a JSON object`);
    return o;
  };
  const header = parse(lines[0], 1);
  if (header.format !== EXPORT_FORMAT) throw new Error(`line 1: not an ${EXPORT_FORMAT} export (format: ${JSON.stringify(header.format)})`);
  if (header.version !== EXPORT_VERSION) throw new Error(`line 1: unsupported ${EXPORT_FORMAT} version ${JSON.stringify(header.version)} (this Airlock reads version ${EXPORT_VERSION})`);
  if (!str(header.session)) throw new Error('line 1: no "session" id');
  const events = lines.slice(1).map((line, i) => {
    const e = parse(line, i + 2);
    if (!str(e.time) || !str(e.type)) throw new Error(`line ${i + 2}: an event needs "time" and "type"`);
    if (e.sessionId !== header.session) throw new Error(`line ${i + 2}: event of session ${JSON.stringify(e.sessionId)} in the export of ${header.session as string}`);
    return e as unknown as AuditEvent;
  });
  return { header: header as unknown as ExportHeader, events };
}

// ---------------------------------------------------------------------------------------------
// Replay

/** One step of a replay: wait `waitMs` (session time, before any speed-up), then write `text`. */
export interface ReplayStep {
  waitMs: number;
  text: string;
}

export interface ReplayOptions {
  /** Gaps longer than this are cut to it, with an "(idle ...)" note; undefined: real time. Default 5000. */
  maxIdleMs?: number;
  /** Colors for decisions (identity by default). */
  paint?: { allow?(s: string): string; deny?(s: string): string; review?(s: string): string; dim?(s: string): string };
}

const id = (s: string) => s;

/**
 * A psql-like transcript of a session, paced as it happened: the prompt and statement when it
 * arrived, the outcome when it completed (`-- allow (policy p rule r) 3 rows 1.2 ms`,
 * `-- DENIED: reason`), recorded result rows when the session has them.
 */
export function replaySteps(session: Session, opts: ReplayOptions = {}): ReplayStep[] {
  const maxIdle = 'maxIdleMs' in opts ? opts.maxIdleMs : 5000;
  const paint = { allow: id, deny: id, review: id, dim: id, ...opts.paint };
  const steps: ReplayStep[] = [];
  const origin = ms(session.start ?? session.firstTime);
  let clock = origin;
  const at = (t: number, text: string) => {
    let gap = Math.max(0, t - clock);
    let prefix = '';
    if (maxIdle !== undefined && gap > maxIdle) {
      prefix = paint.dim(`-- (idle ${formatDuration(gap)})`) + '\n';
      gap = maxIdle;
    }
    clock = Math.max(clock, t);
    steps.push({ waitMs: gap, text: prefix + text });
  };
  const who = [session.subject ?? '?', session.connection && `@${session.connection}`].filter(Boolean).join('');
  const from = [session.source && `from ${session.source}`, session.application && `(${session.application})`].filter(Boolean).join(' ');
  const started = session.start ? `started ${session.start}` : `first event ${session.firstTime} (start pruned)`;
  steps.push({ waitMs: 0, text: paint.dim(`-- session ${session.id}: ${[who, from].filter(Boolean).join(' ')}, ${started}`) + '\n' });
  const db = session.connection ?? 'airlock';
  for (const item of session.timeline) {
    if (item.kind === 'note') {
      at(ms(item.note.time), paint.dim(`-- ${item.note.type}: ${item.note.text}`) + '\n');
      continue;
    }
    const s = item.statement;
    const t = ms(s.time);
    const text = s.statement.replace(/\s+$/, '');
    const lines = (text.endsWith(';') ? text : `${text};`).split(/\r?\n/);
    at(t, lines.map((l, i) => `${db}${i === 0 ? '=>' : '->'} ${l}`).join('\n') + '\n');
    const done = t + (s.durationMs ?? 0);
    at(done, outcomeLines(s, paint).join('\n') + '\n');
  }
  if (session.end) {
    at(ms(session.end), paint.dim(`-- session ${session.outcome}${session.durationMs !== undefined ? ` after ${formatDuration(session.durationMs)}` : ''}: ${formatCountsLong(session.counts)}`) + '\n');
  } else if (session.outcome === 'open') {
    steps.push({ waitMs: 0, text: paint.dim('-- (session still open, or its end was not recorded)') + '\n' });
  }
  return steps;
}

function outcomeLines(s: SessionStatement, paint: Required<NonNullable<ReplayOptions['paint']>>): string[] {
  const by = [s.policy && `policy ${s.policy}`, s.rule && `rule ${s.rule}`].filter(Boolean).join(' ');
  const out: string[] = [];
  if (s.decision === 'deny') out.push(paint.deny(`-- DENIED: ${s.reason ?? 'denied'}`) + (by ? paint.dim(` (${by})`) : ''));
  else if (s.decision === 'review') out.push(paint.review(`-- HELD FOR REVIEW: ${s.reason ?? 'needs approval'}`) + (by ? paint.dim(` (${by})`) : ''));
  else {
    if (s.results) for (const set of s.results) out.push(...renderResultSet(set));
    const facts = [s.rows !== undefined && formatRows(s.rows), s.durationMs !== undefined && formatStatementDuration(s.durationMs)].filter(Boolean);
    out.push(paint.allow('-- allow') + paint.dim(`${by ? ` (${by})` : ''}${facts.length ? ` ${facts.join(' ')}` : ''}`));
    if (s.approval) out.push(paint.dim(`-- approved by request ${s.approval}`));
    if (s.masked.length) out.push(paint.dim(`-- masked: ${formatMasked(s.masked)}`));
    if (s.error) out.push(paint.deny(`-- ERROR: ${s.error}`));
  }
  return out;
}

/** A result set as psql prints it (aligned, NULL as empty, "(n rows)"). */
export function renderResultSet(set: RecordedResultSet): string[] {
  const cells = set.rows.map((r) => r.map((c) => (c ?? '').replace(/\r?\n/g, '↵')));
  const widths = set.columns.map((c, i) => Math.max(c.length, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (vals: string[], center = false) => ' ' + vals.map((v, i) => {
    if (!center) return v.padEnd(widths[i]);
    const left = Math.floor((widths[i] - v.length) / 2);
    return (' '.repeat(left) + v).padEnd(widths[i]);
  }).join(' | ').trimEnd();
  return [
    line(set.columns, true),
    widths.map((w) => '-'.repeat(w + 2)).join('+'),
    ...cells.map((r) => line(set.columns.map((_, i) => r[i] ?? ''))),
    `(${formatRows(set.rows.length)}${set.truncated ? ' recorded; later rows were not recorded' : ''})`,
  ];
}

// ---------------------------------------------------------------------------------------------
// Terminal recordings: asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/)

export interface AsciicastHeader {
  version: 2;
  width: number;
  height: number;
  timestamp?: number;
  title?: string;
  idle_time_limit?: number;
  [key: string]: unknown;
}

/**
 * Parses an asciicast v2 recording into replay steps: one per output ("o") event, waiting the
 * gap since the previous one. Input ("i"), resize ("r") and marker ("m") events are skipped.
 * Gaps are capped at `maxIdleMs` and at the header's `idle_time_limit`, unless `realTime`.
 */
export function asciicastSteps(text: string, opts: { maxIdleMs?: number; realTime?: boolean } = {}): { header: AsciicastHeader; steps: ReplayStep[] } {
  const lines = text.split(/\r?\n/);
  let n = 0;
  while (n < lines.length && lines[n].trim() === '') n++;
  let header: AsciicastHeader;
  try {
    header = JSON.parse(lines[n] ?? '') as AsciicastHeader;
  } catch {
    throw new Error('not an asciicast v2 recording: the first line is not a JSON header');
  }
  if (!obj(header) || header.version !== 2) throw new Error(`not an asciicast v2 recording (version ${JSON.stringify(obj(header)?.version)})`);
  const fileLimit = num(header.idle_time_limit);
  const limit = opts.realTime ? Infinity : Math.min(opts.maxIdleMs ?? Infinity, fileLimit !== undefined && fileLimit > 0 ? fileLimit * 1000 : Infinity);
  const steps: ReplayStep[] = [];
  let prev = 0;
  for (let i = n + 1; i < lines.length; i++) {
    if (lines[i].trim() === '') continue;
    let ev: unknown;
    try {
      ev = JSON.parse(lines[i]);
    } catch {
      throw new Error(`asciicast line ${i + 1}: not JSON`);
    }
    if (!Array.isArray(ev) || ev.length < 3 || typeof ev[0] !== 'number' || typeof ev[1] !== 'string') {
      throw new Error(`asciicast line ${i + 1}: expected [time, type, data]`);
    }
    const t = Math.max(prev, ev[0] * 1000);
    if (ev[1] !== 'o') continue;
    let gap = t - prev;
    if (gap > limit) gap = limit;
    prev = t;
    steps.push({ waitMs: gap, text: String(ev[2]) });
  }
  return { header, steps };
}

// ---------------------------------------------------------------------------------------------
// Store access

/** Most events `listAudit` returns at once. */
const PAGE = 10_000;

/** Every event of one session, in session order ([] when the id is unknown). */
export async function loadSessionEvents(store: Store, sessionId: string): Promise<AuditEvent[]> {
  const out: AuditEvent[] = [];
  let sinceId = 0;
  for (;;) {
    const page = await store.listAudit({ sessionId, sinceId, limit: PAGE });
    out.push(...page);
    if (page.length < PAGE) break;
    sinceId = page[page.length - 1].id ?? sinceId;
  }
  return sortSessionEvents(out);
}

/** One session from the store, or undefined when no event has this session id. */
export async function loadSession(store: Store, sessionId: string): Promise<Session | undefined> {
  const events = await loadSessionEvents(store, sessionId);
  return events.length ? buildSession(sessionId, events) : undefined;
}

export interface SessionQuery {
  /** ISO-8601: sessions with an event at or after this time. */
  since?: string;
  subject?: string;
  connection?: string;
  /** The latest `limit` sessions (default 50). */
  limit?: number;
}

/**
 * The latest sessions, oldest first. Sessions are found from their `session.start` events, from
 * `session.end` events (refused sessions, and sessions whose start was pruned) and from the
 * latest statements (open sessions whose start was pruned).
 */
export async function findSessions(store: Store, q: SessionQuery = {}): Promise<SessionSummary[]> {
  const limit = Math.max(1, Math.min(q.limit ?? 50, PAGE));
  const base: AuditQuery = { since: q.since, subject: q.subject, connection: q.connection };
  const [starts, ends, statements] = await Promise.all([
    store.listAudit({ ...base, type: 'session.start', limit }),
    store.listAudit({ ...base, type: 'session.end', limit }),
    store.listAudit({ ...base, type: 'statement', limit: PAGE }),
  ]);
  const firstSeen = new Map<string, number>();
  for (const e of [...starts, ...ends, ...statements]) {
    if (!e.sessionId) continue;
    const t = ms(e.time);
    const seen = firstSeen.get(e.sessionId);
    if (seen === undefined || t < seen) firstSeen.set(e.sessionId, t);
  }
  // Candidates beyond `limit` only matter when their full events start later than they seem: keep a margin.
  const ids = [...firstSeen].sort((a, b) => a[1] - b[1]).slice(-limit * 2).map(([sid]) => sid);
  const sessions: SessionSummary[] = [];
  for (const sid of ids) {
    const events = await loadSessionEvents(store, sid);
    if (events.length) sessions.push(summarizeSession(sid, events));
  }
  sessions.sort((a, b) => ms(a.firstTime) - ms(b.firstTime) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return sessions.slice(-limit);
}
