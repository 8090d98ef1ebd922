// The store: tokens and audit events. Async so that a PostgreSQL
// implementation can sit behind the same interface; the embedded one is in ./sqlite.ts.

import type { ApprovalRecord, ApprovalStatus, AuditEvent, Identity } from '../core/types.ts';
import { redactServiceTokens } from '../identity/service-tokens.ts';
import type { AuditSigner } from '../audit/signing.ts';
import type { VerifyReport } from '../audit/verify.ts';

export type { VerifyReport, VerifyBreak, BreakKind } from '../audit/verify.ts';

export interface TokenRecord {
  /** Public token id (the `<id>` of `alk_<id>_<secret>`). */
  id: string;
  subject: string;
  groups: string[];
  /** ISO-8601. */
  createdAt: string;
  /** ISO-8601. */
  expiresAt: string;
  /** ISO-8601, set once revoked. */
  revokedAt?: string;
  description?: string;
}

export interface CreateTokenInput {
  subject: string;
  groups: string[];
  /** Lifetime in milliseconds (> 0). */
  ttlMs: number;
  description?: string;
}

export interface ListTokensOptions {
  includeRevoked?: boolean;
  includeExpired?: boolean;
}

export interface AuditQuery {
  /**
   * Maximum number of events (default 50, at most 10000). Without `sinceId`: the LATEST
   * `limit` events matching. With `sinceId`: the FIRST `limit` events after it, so that
   * paging forward (`sinceId` = last id seen) never skips events.
   */
  limit?: number;
  /** Only events with id > sinceId. */
  sinceId?: number;
  /** ISO-8601: only events with time >= since. */
  since?: string;
  type?: string;
  subject?: string;
  connection?: string;
  decision?: string;
  sessionId?: string;
}

/** An audit event as exported: the event, its id and its place in the hash chain. */
export type ExportedAuditEvent = AuditEvent & { id: number; prev_hash: string | null; hash: string | null };

export interface AuditExportQuery {
  /** ISO-8601: only events with time >= since. */
  since?: string;
  /** Only events with id > sinceId. */
  sinceId?: number;
}

export interface VerifyAuditOptions {
  /** PEM public key (or a KeyObject): every checkpoint must be signed by it. */
  publicKey?: string | import('node:crypto').KeyObject;
}

export interface RetentionResult {
  /** Events deleted. */
  deleted: number;
  fromId?: number;
  toId?: number;
  /** Retention checkpoints written (one per deleted range of at most 50000 events). */
  checkpoints: number;
}

export interface AuditHealth {
  /**
   * False while events cannot be made durable: the spool is full (or cannot be written) and the
   * database is not writable. New sessions must then be refused (fail closed).
   */
  ok: boolean;
  /** Events in spool files, not yet in the database. */
  spooled: number;
  /** Why the audit log is degraded (also set while spooling with ok true). */
  reason?: string;
}

/** Tamper evidence, spool and checkpoint settings of a store (docs/audit.md). */
export interface AuditStoreOptions {
  /** Signs checkpoints. Without it the chain is still written, but no checkpoints. */
  signer?: AuditSigner;
  /** A periodic checkpoint after this many events (default 1000)... */
  checkpointEvery?: number;
  /** ...or this many ms after the last one when events were written since (default 60000). */
  checkpointIntervalMs?: number;
  /** Folder of the spool (default: the database's folder); false: no spool. Always off for ':memory:'. */
  spoolDir?: string | false;
  /** Bound of the spool file (default 256 MiB). */
  spoolMaxBytes?: number;
  /** Events kept in memory when neither the database nor the spool takes them (default 200000; beyond, the oldest are dropped). */
  maxBufferedEvents?: number;
  /** Busy timeout of audit write transactions (default 1000 ms): beyond it, events go to the spool. */
  writeBusyTimeoutMs?: number;
  /** Backoff of database retries while spooling (default 250 ms doubling up to 10 s). */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Operational notices (spooling started, drained, key use); default: console.error. */
  onNotice?: (message: string) => void;
}

export interface ApprovalQuery {
  status?: ApprovalStatus[];
  /** Newest first; default 100, at most 1000. */
  limit?: number;
}

export interface Store {
  /** Creates or upgrades the schema. Idempotent, safe to run from several processes. */
  migrate(): Promise<void>;
  /**
   * Issues a token. The returned `token` is the only copy of the secret: show it once.
   * Throws `TokenTtlTooLongError` when the expiry would be beyond the representable dates.
   */
  createToken(input: CreateTokenInput): Promise<{ token: string; record: TokenRecord }>;
  /** Oldest first. Without options, only active (unrevoked, unexpired) tokens. */
  listTokens(opts?: ListTokensOptions): Promise<TokenRecord[]>;
  /** false if the id is unknown or the token is already revoked. */
  revokeToken(id: string): Promise<boolean>;
  /**
   * Verifies `alk_<id>_<secret>` and returns its identity, or throws a `ServiceTokenError`
   * (`.code` in malformed | unknown_token | revoked | expired, message safe to show).
   */
  verifyServiceToken(token: string): Promise<Identity>;
  /**
   * True while the token exists, is not revoked and has not expired. Cheap (one indexed read)
   * and sees revocations committed by other processes immediately: meant to be called before
   * every statement.
   */
  isTokenActive(id: string): Promise<boolean>;
  /**
   * Queues an audit event; never blocks. Events are written in batches (one transaction per
   * batch, about every 50 ms or every 500 events). Ids are assigned by the store at write time
   * and are strictly increasing. Token secrets are scrubbed from every string value.
   */
  appendAudit(event: AuditEvent): void;
  /** Writes everything queued so far. */
  flush(): Promise<void>;
  /** Newest last. Includes events still queued in this process (it flushes first). */
  listAudit(q?: AuditQuery): Promise<AuditEvent[]>;
  /**
   * Streams events in id order with their chain hashes (for `audit export`); flushes first.
   * Pages through the table, so it holds no transaction between events.
   */
  exportAudit(q?: AuditExportQuery): AsyncIterable<ExportedAuditEvent>;
  /**
   * Walks the whole chain (streamed, in id order) and checks every checkpoint's signature and
   * hash. Reports the first break (docs/audit.md#verify). Flushes first.
   */
  verifyAudit(opts?: VerifyAuditOptions): Promise<VerifyReport>;
  /**
   * Deletes the events older than `olderThanMs` (the prefix of the log up to the first event that
   * is not older) and records each deleted range in a signed `retention` checkpoint, from which
   * verification starts. Needs a signing key.
   */
  applyRetention(olderThanMs: number): Promise<RetentionResult>;
  /**
   * Cheap, synchronous. `ok` is false while the spool is full (or unwritable) and events are only
   * in memory: new sessions are refused while the spool is full: fail closed.
   */
  auditHealth(): AuditHealth;
  /** Inserts or replaces an approval request (by id). */
  saveApproval(rec: ApprovalRecord): Promise<void>;
  getApproval(id: string): Promise<ApprovalRecord | undefined>;
  listApprovals(q?: ApprovalQuery): Promise<ApprovalRecord[]>;
  /** Requests for exactly this binding in one of these states, newest first. */
  approvalsByBinding(binding: string, status: ApprovalStatus[]): Promise<ApprovalRecord[]>;
  /** Approved requests of this requester on this connection whose grant window is still open at `nowMs`. */
  openGrants(subject: string, connection: string, nowMs: number): Promise<ApprovalRecord[]>;
  /**
   * Reads, changes and writes one approval in a single write transaction, so that two
   * processes deciding at once cannot lose a decision. `change` returns the new record, or
   * undefined to leave it as it is. Returns what is stored afterwards (undefined: unknown id).
   */
  updateApproval(id: string, change: (rec: ApprovalRecord) => ApprovalRecord | undefined): Promise<ApprovalRecord | undefined>;
  /** Flushes, then closes. Idempotent. */
  close(): Promise<void>;
}

export type StoreSpec = { type: 'embedded'; path: string };

export interface OpenStoreOptions {
  /** Called when a background audit write fails (default: console.error). */
  onError?: (err: unknown) => void;
  /** Signing key, checkpoints, spool. */
  audit?: AuditStoreOptions;
}

/** Thrown by `createToken` when the ttl puts the expiry beyond the representable dates. */
export class TokenTtlTooLongError extends RangeError {
  constructor() {
    super('token ttl is too long');
    this.name = 'TokenTtlTooLongError';
  }
}

/** Opens (creating if needed) and migrates a store. */
export async function openStore(spec: StoreSpec, opts: OpenStoreOptions = {}): Promise<Store> {
  if (spec.type === 'embedded') {
    const { SqliteStore } = await import('./sqlite.ts');
    const store = new SqliteStore(spec.path, { onError: opts.onError, audit: opts.audit });
    try {
      await store.migrate();
    } catch (err) {
      await store.close().catch(() => {});
      throw err;
    }
    return store;
  }
  throw new Error(`unsupported store type: ${(spec as { type: unknown }).type}`);
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by store implementations.

const MAX_DEPTH = 32;

/**
 * A detached, JSON-safe copy of an audit event with every `alk_<id>_<secret>` in any string
 * (statement, reason, error, detail and classification values, and object keys) replaced by
 * `alk_<id>_***`. Handles cycles, bigint, Date, Error, binary data; drops functions and
 * symbols. The caller's object is not modified.
 */
export function sanitizeAuditEvent(event: AuditEvent): AuditEvent {
  const top = plainTop(event);
  if (top) {
    const json = JSON.stringify(top);
    const copy = JSON.parse(json.includes('alk_') ? redactServiceTokens(json) : json) as AuditEvent;
    delete copy.id;
    return copy;
  }
  return sanitizeWalk(event);
}

/** The slow, general sanitizer: a deep walk that rebuilds the event. */
function sanitizeWalk(event: AuditEvent): AuditEvent {
  const seen = new WeakSet<object>();
  const walk = (v: unknown, depth: number): unknown => {
    switch (typeof v) {
      case 'string':
        return redactServiceTokens(v);
      case 'number':
        return Number.isFinite(v) ? v : String(v);
      case 'boolean':
        return v;
      case 'bigint':
        return v.toString();
      case 'undefined':
      case 'function':
      case 'symbol':
        return undefined;
    }
    if (v === null) return null;
    const o = v as object;
    if (o instanceof Date) return Number.isNaN(o.getTime()) ? null : o.toISOString();
    if (ArrayBuffer.isView(o) || o instanceof ArrayBuffer) return `[binary ${(o as ArrayBuffer).byteLength} bytes]`;
    if (depth >= MAX_DEPTH) return '[too deep]';
    if (seen.has(o)) return '[circular]';
    seen.add(o);
    let out: unknown;
    if (Array.isArray(o)) {
      out = o.map((x) => {
        const y = walk(x, depth + 1);
        return y === undefined ? null : y;
      });
    } else if (o instanceof Error) {
      out = { name: redactServiceTokens(o.name), message: redactServiceTokens(o.message) };
    } else if (o instanceof Map) {
      out = walk(Object.fromEntries(o), depth + 1);
    } else if (o instanceof Set) {
      out = walk([...o], depth + 1);
    } else {
      const obj: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(o)) {
        const y = walk(x, depth + 1);
        if (y !== undefined) obj[redactServiceTokens(k)] = y;
      }
      out = obj;
    }
    seen.delete(o);
    return out;
  };
  const copy = walk(event, 0) as AuditEvent;
  delete copy.id; // ids are assigned by the store
  return copy;
}

const dateToJson = Date.prototype.toJSON;

/**
 * True when JSON.stringify writes `v` exactly as the walk of `sanitizeWalk` would (before the
 * token scrub): only strings, finite numbers, booleans, null, valid or invalid Dates, and plain
 * objects and arrays without toJSON, less than MAX_DEPTH deep (so also no cycles). Functions,
 * symbols and undefined are dropped (null in arrays) by both. No allocation: cheap.
 */
function plainJson(v: unknown, depth: number): boolean {
  switch (typeof v) {
    case 'string':
    case 'boolean':
    case 'undefined':
    case 'function':
    case 'symbol':
      return true;
    case 'number':
      return Number.isFinite(v);
    case 'bigint':
      return false;
  }
  if (v === null) return true;
  if (depth >= MAX_DEPTH) return false;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) if (!plainJson(v[i], depth + 1)) return false;
    return true;
  }
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto === Date.prototype) return (v as Date).toJSON === dateToJson;
  if (proto !== Object.prototype && proto !== null) return false;
  const o = v as Record<string, unknown>;
  if (o.toJSON !== undefined) return false;
  for (const k in o) if (!plainJson(o[k], depth + 1)) return false;
  return true;
}

/**
 * A shallow copy of the event that JSON.stringify serializes safely (every value passes
 * `plainJson`), without `id`; undefined when the event needs the general walk.
 */
function plainTop(event: AuditEvent): Record<string, unknown> | undefined {
  if (typeof event !== 'object' || event === null) return undefined;
  const proto = Object.getPrototypeOf(event) as unknown;
  if (proto !== Object.prototype && proto !== null) return undefined;
  const o: Record<string, unknown> = { ...event };
  if (o.toJSON !== undefined) return undefined;
  for (const k in o) if (!plainJson(o[k], 1)) return undefined;
  if (o.id !== undefined) o.id = undefined; // not delete: JSON.stringify leaves it out, and the object stays fast
  return o;
}

/** An audit event as stored: its JSON text (`event_json`, what the chain hashes) and the indexed columns. */
export interface StoredAuditEvent {
  json: string;
  time: string;
  type: string;
  sessionId: string | null;
  subject: string | null;
  connection: string | null;
  decision: string | null;
}

// Exactly what toISOString writes for the date it denotes: checked without building a Date.
const ISO_UTC_MS = /^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z$/;

/** ISO-8601 UTC with milliseconds; unparseable strings are kept, anything else becomes now. */
export function normaliseAuditTime(t: unknown): string {
  if (typeof t === 'string') {
    if (ISO_UTC_MS.test(t)) return t; // already normal (days past the 28th take the long way)
    const ms = Date.parse(t);
    return Number.isNaN(ms) ? t : new Date(ms).toISOString();
  }
  return new Date().toISOString();
}

const strOrNull = (v: unknown): string | null => (typeof v === 'string' ? v : null);

function stored(json: string, e: Record<string, unknown>): StoredAuditEvent {
  return {
    json, time: e.time as string, type: e.type as string, sessionId: strOrNull(e.sessionId), subject: strOrNull(e.subject),
    connection: strOrNull(e.connection), decision: strOrNull(e.decision),
  };
}

/**
 * The stored form of an event: sanitized as by `sanitizeAuditEvent` (tokens scrubbed, hostile
 * values made safe), `time` normalised (`normaliseAuditTime`), `type` a string, no `id`, `hash`
 * or `prev_hash`; serialized once. The columns are the event's own values, so they always match
 * the JSON. The common case is one JSON.stringify plus a substring check for `alk_`; events
 * holding a token are parsed and re-serialized after the scrub, events holding anything but
 * plain JSON data take the general walk.
 */
export function serializeAuditEvent(event: AuditEvent): StoredAuditEvent {
  let e = plainTop(event) ?? (sanitizeWalk(event) as unknown as Record<string, unknown>);
  if (e.hash !== undefined) e.hash = undefined;
  if (e.prev_hash !== undefined) e.prev_hash = undefined;
  const t = e.time;
  e.time = t instanceof Date ? (Number.isNaN(t.getTime()) ? new Date().toISOString() : t.toISOString()) : normaliseAuditTime(t);
  if (typeof e.type !== 'string') e.type = 'unknown';
  let json = JSON.stringify(e);
  if (json.includes('alk_')) {
    const scrubbed = redactServiceTokens(json);
    if (scrubbed !== json) {
      // Tokens never span JSON syntax (their characters are never escaped), so the scrubbed text
      // is valid JSON; parse it again for the columns and for one canonical serialization (a
      // token in two object keys could otherwise leave duplicate keys).
      e = JSON.parse(scrubbed) as Record<string, unknown>;
      json = JSON.stringify(e);
    }
  }
  return stored(json, e);
}

/**
 * The stored form of an event read back from the spool (already sanitized when it was
 * appended): parsed, normalised as `serializeAuditEvent` does and serialized again.
 * undefined when the text is not a JSON object.
 */
export function restoreAuditEvent(json: string): StoredAuditEvent | undefined {
  let e: Record<string, unknown>;
  try {
    const v = JSON.parse(json) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) return undefined;
    e = v as Record<string, unknown>;
  } catch {
    return undefined;
  }
  delete e.id;
  delete e.hash;
  delete e.prev_hash;
  e.time = normaliseAuditTime(e.time);
  if (typeof e.type !== 'string') e.type = 'unknown';
  return stored(JSON.stringify(e), e);
}
