// The store: tokens and audit events. Async so that a PostgreSQL
// implementation can sit behind the same interface; the embedded one is in ./sqlite.ts.

import type { ApprovalRecord, ApprovalStatus, AuditEvent, Identity } from '../core/types.ts';
import { redactServiceTokens } from '../identity/service-tokens.ts';

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
    const store = new SqliteStore(spec.path, { onError: opts.onError });
    await store.migrate();
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
