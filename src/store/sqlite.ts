// Embedded store: SQLite through better-sqlite3, WAL mode, schema migrations tracked in a
// `schema_version` table. Several processes may open the same file (the gateway, and the CLI
// revoking a token): every read outside a transaction sees the latest committed state.

import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { ApprovalRecord, AuditEvent, Identity } from '../core/types.ts';
import {
  ServiceTokenError,
  generateServiceToken,
  hashSecret,
  isValidTokenId,
  parseServiceToken,
  secretMatches,
} from '../identity/service-tokens.ts';
import {
  sanitizeAuditEvent,
  TokenTtlTooLongError,
  type ApprovalQuery,
  type AuditQuery,
  type CreateTokenInput,
  type ListTokensOptions,
  type Store,
  type TokenRecord,
} from './store.ts';

/** Ordered migrations; version N is MIGRATIONS[N - 1]. Never edit a released one: append. */
const MIGRATIONS: string[] = [
  // 1: tokens, audit events, meta (the meta table is no longer used; kept so that released
  // migrations stay unchanged)
  `
  CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,            -- hex sha256 of the secret; the token itself is never stored
    subject     TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    description TEXT,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
  ) STRICT;

  -- AUTOINCREMENT: ids are strictly increasing and never reused, even after deletes
  -- (needed by the hash chain added later).
  CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TEXT NOT NULL,            -- ISO-8601 UTC (normalised), sortable as text
    type        TEXT NOT NULL,
    session_id  TEXT,
    subject     TEXT,
    connection  TEXT,
    decision    TEXT,
    event_json  TEXT NOT NULL             -- the whole event (without id)
  ) STRICT;
  CREATE INDEX audit_events_time       ON audit_events(time);
  CREATE INDEX audit_events_type       ON audit_events(type, id);
  CREATE INDEX audit_events_session    ON audit_events(session_id, id);
  CREATE INDEX audit_events_subject    ON audit_events(subject, id);
  CREATE INDEX audit_events_connection ON audit_events(connection, id);
  CREATE INDEX audit_events_decision   ON audit_events(decision, id);

  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) STRICT;
  `,
  // 2: approval requests (the record as JSON, with the columns lookups need)
  `
  CREATE TABLE approvals (
    id             TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    requester      TEXT NOT NULL,
    connection     TEXT NOT NULL,
    binding        TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    grant_until_ms INTEGER,
    record_json    TEXT NOT NULL
  ) STRICT;
  CREATE INDEX approvals_status  ON approvals(status, created_ms);
  CREATE INDEX approvals_binding ON approvals(binding, status);
  CREATE INDEX approvals_grants  ON approvals(requester, connection, grant_until_ms);
  `,
];

export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length;

const FLUSH_INTERVAL_MS = 50;
const FLUSH_BATCH = 500;
/** Beyond this many unwritten events (the database keeps failing), the oldest are dropped. */
const MAX_BUFFERED = 200_000;
/** Dropped at once on overflow, so that dropping is not O(buffer) on every append. */
const DROP_CHUNK = MAX_BUFFERED / 10;
const MAX_LIST_LIMIT = 10_000;

interface TokenRow {
  id: string;
  secret_hash: string;
  subject: string;
  groups_json: string;
  description: string | null;
  created_ms: number;
  expires_ms: number;
  revoked_ms: number | null;
}

interface PendingEvent {
  time: string;
  type: string;
  sessionId: string | null;
  subject: string | null;
  connection: string | null;
  decision: string | null;
  json: string;
}

// Open stores, flushed synchronously if the process exits without closing them.
const openStores = new Set<SqliteStore>();
let exitHookInstalled = false;
function trackForExit(store: SqliteStore): void {
  openStores.add(store);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const s of openStores) s.flushSyncQuiet();
    });
  }
}

const iso = (ms: number): string => new Date(ms).toISOString();

function rowToRecord(r: TokenRow): TokenRecord {
  const rec: TokenRecord = {
    id: r.id,
    subject: r.subject,
    groups: JSON.parse(r.groups_json) as string[],
    createdAt: iso(r.created_ms),
    expiresAt: iso(r.expires_ms),
  };
  if (r.revoked_ms !== null) rec.revokedAt = iso(r.revoked_ms);
  if (r.description !== null) rec.description = r.description;
  return rec;
}

function normaliseTime(t: unknown): string {
  if (typeof t === 'string') {
    const ms = Date.parse(t);
    return Number.isNaN(ms) ? t : iso(ms);
  }
  return iso(Date.now());
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

interface Statements {
  insertToken: Database.Statement;
  getToken: Database.Statement<[string]>;
  isActive: Database.Statement<[string, number]>;
  revoke: Database.Statement<[number, string]>;
  insertAudit: Database.Statement;
}

export interface SqliteStoreOptions {
  /** Called when a background audit write fails (default: console.error). */
  onError?: (err: unknown) => void;
  /** Milliseconds between background audit flushes (default 50). */
  flushIntervalMs?: number;
}

export class SqliteStore implements Store {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly onError: (err: unknown) => void;
  private readonly flushIntervalMs: number;
  private buffer: PendingEvent[] = [];
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private closed = false;
  private droppedEvents = 0;

  private st: Statements | null = null;

  constructor(path: string, opts: SqliteStoreOptions = {}) {
    this.onError = opts.onError ?? ((err) => console.error('airlock store: audit write failed:', err));
    this.flushIntervalMs = opts.flushIntervalMs ?? FLUSH_INTERVAL_MS;
    const inMemory = path === ':memory:';
    this.path = inMemory ? path : resolve(path);
    if (!inMemory) {
      mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
      // Create the file with 0600 before SQLite does (SQLite copies the database file's mode
      // to its -wal and -shm files), and tighten it if it already existed.
      closeSync(openSync(this.path, 'a', 0o600));
      chmodSync(this.path, 0o600);
    }
    this.db = new Database(this.path, { timeout: 5000 });
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    trackForExit(this);
  }

  /** Prepared statements, created once the schema exists. */
  private get s(): Statements {
    if (this.closed) throw new Error('store is closed');
    if (!this.st) {
      const db = this.db;
      this.st = {
        insertToken: db.prepare(
          `INSERT INTO tokens (id, secret_hash, subject, groups_json, description, created_ms, expires_ms)
           VALUES (@id, @secret_hash, @subject, @groups_json, @description, @created_ms, @expires_ms)`,
        ),
        getToken: db.prepare(`SELECT * FROM tokens WHERE id = ?`),
        isActive: db.prepare(`SELECT 1 FROM tokens WHERE id = ? AND revoked_ms IS NULL AND expires_ms > ?`).pluck(),
        revoke: db.prepare(`UPDATE tokens SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL`),
        insertAudit: db.prepare(
          `INSERT INTO audit_events (time, type, session_id, subject, connection, decision, event_json)
           VALUES (@time, @type, @sessionId, @subject, @connection, @decision, @json)`,
        ),
      };
    }
    return this.st;
  }

  async migrate(): Promise<void> {
    if (this.closed) throw new Error('store is closed');
    // IMMEDIATE: take the write lock before reading the version, so two processes migrating
    // at once apply each migration exactly once.
    this.db
      .transaction(() => {
        this.db.exec(`CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`);
        let current = this.db.prepare(`SELECT max(version) FROM schema_version`).pluck().get() as number | null;
        current ??= 0;
        if (current > MIGRATIONS.length) {
          throw new Error(
            `store schema version ${current} is newer than this Airlock (${MIGRATIONS.length}): upgrade Airlock`,
          );
        }
        for (let v = current + 1; v <= MIGRATIONS.length; v++) {
          this.db.exec(MIGRATIONS[v - 1]!);
          this.db.prepare(`INSERT INTO schema_version (version) VALUES (?)`).run(v);
        }
      })
      .immediate();
  }

  // ------------------------------------------------------------------------------- tokens

  async createToken(input: CreateTokenInput): Promise<{ token: string; record: TokenRecord }> {
    const subject = input.subject;
    if (typeof subject !== 'string' || subject.trim() === '') throw new Error('token subject must be a non-empty string');
    if (!Array.isArray(input.groups) || !input.groups.every((g) => typeof g === 'string' && g !== '')) {
      throw new Error('token groups must be non-empty strings');
    }
    if (typeof input.ttlMs !== 'number' || Number.isNaN(input.ttlMs) || input.ttlMs <= 0) {
      throw new Error('token ttl must be a positive number of milliseconds');
    }
    if (input.description !== undefined && typeof input.description !== 'string') {
      throw new Error('token description must be a string');
    }
    const groups = [...new Set(input.groups)];
    const now = Date.now();
    const expires = now + Math.round(input.ttlMs);
    if (Number.isNaN(new Date(expires).getTime())) throw new TokenTtlTooLongError(); // also Infinity
    for (let attempt = 0; ; attempt++) {
      const { id, token, secretHash } = generateServiceToken();
      try {
        this.s.insertToken.run({
          id,
          secret_hash: secretHash,
          subject,
          groups_json: JSON.stringify(groups),
          description: input.description ?? null,
          created_ms: now,
          expires_ms: expires,
        });
      } catch (err) {
        // 60-bit ids: a collision is astronomically unlikely, but retry rather than fail.
        if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY' && attempt < 5) continue;
        throw err;
      }
      const record: TokenRecord = {
        id,
        subject,
        groups,
        createdAt: iso(now),
        expiresAt: iso(expires),
      };
      if (input.description !== undefined) record.description = input.description;
      return { token, record };
    }
  }

  async listTokens(opts: ListTokensOptions = {}): Promise<TokenRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (!opts.includeRevoked) where.push('revoked_ms IS NULL');
    if (!opts.includeExpired) {
      where.push('expires_ms > ?');
      params.push(Date.now());
    }
    if (this.closed) throw new Error('store is closed');
    const sql = `SELECT * FROM tokens ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_ms, id`;
    return (this.db.prepare(sql).all(...params) as TokenRow[]).map(rowToRecord);
  }

  async revokeToken(id: string): Promise<boolean> {
    if (!isValidTokenId(id)) return false;
    return this.s.revoke.run(Date.now(), id).changes > 0;
  }

  async verifyServiceToken(token: string): Promise<Identity> {
    const parsed = parseServiceToken(token);
    if (!parsed) throw new ServiceTokenError('malformed');
    const row = this.s.getToken.get(parsed.id) as TokenRow | undefined;
    // Check the secret before saying anything about the token's state, so that knowing a
    // (public) id reveals nothing. An unknown id and a wrong secret look the same.
    if (!secretMatches(parsed.secret, row?.secret_hash ?? hashSecret('')) || !row) {
      throw new ServiceTokenError('unknown_token', parsed.id);
    }
    if (row.revoked_ms !== null) throw new ServiceTokenError('revoked', row.id);
    if (row.expires_ms <= Date.now()) throw new ServiceTokenError('expired', row.id);
    const groups = JSON.parse(row.groups_json) as string[];
    return {
      subject: row.subject,
      kind: 'service-token',
      groups,
      claims: { sub: row.subject, groups: [...groups] },
      issuer: 'airlock',
      tokenId: row.id,
      expiresAt: row.expires_ms,
    };
  }

  /** One prepared point lookup, a few microseconds. */
  async isTokenActive(id: string): Promise<boolean> {
    if (typeof id !== 'string') return false;
    return this.s.isActive.get(id, Date.now()) !== undefined;
  }

  // -------------------------------------------------------------------------------- audit

  appendAudit(event: AuditEvent): void {
    if (this.closed) {
      this.onError(new Error(`audit event "${String(event?.type)}" appended after the store was closed: dropped`));
      return;
    }
    let pending: PendingEvent;
    try {
      const e = sanitizeAuditEvent(event);
      pending = {
        time: normaliseTime(e.time),
        type: typeof e.type === 'string' ? e.type : 'unknown',
        sessionId: str(e.sessionId),
        subject: str(e.subject),
        connection: str(e.connection),
        decision: str(e.decision),
        json: JSON.stringify(e),
      };
    } catch (err) {
      this.onError(err);
      return;
    }
    this.buffer.push(pending);
    if (this.buffer.length > MAX_BUFFERED) {
      const drop = Math.max(this.buffer.length - MAX_BUFFERED, DROP_CHUNK);
      this.buffer.splice(0, drop);
      this.droppedEvents += drop;
    }
    if (this.buffer.length >= FLUSH_BATCH) {
      // Write soon, but never inside the caller's stack.
      this.immediate ??= setImmediate(() => {
        this.immediate = null;
        this.backgroundFlush();
      });
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.backgroundFlush();
      }, this.flushIntervalMs);
      this.timer.unref();
    }
  }

  /** Number of events queued and not yet written. */
  get pendingAuditEvents(): number {
    return this.buffer.length;
  }

  private backgroundFlush(): void {
    try {
      this.flushSync();
    } catch (err) {
      this.onError(err);
      // Keep the events and try again later.
      if (!this.closed && this.buffer.length > 0 && !this.timer) {
        this.timer = setTimeout(() => {
          this.timer = null;
          this.backgroundFlush();
        }, Math.max(this.flushIntervalMs, 250));
        this.timer.unref();
      }
    }
  }

  /** Writes the buffer, in transactions of at most FLUSH_BATCH events. Throws on failure (events are kept). */
  flushSync(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.immediate) {
      clearImmediate(this.immediate);
      this.immediate = null;
    }
    if (this.droppedEvents > 0) {
      const n = this.droppedEvents;
      this.droppedEvents = 0;
      this.onError(new Error(`${n} audit events were dropped: the store could not keep up or kept failing`));
    }
    while (this.buffer.length > 0) {
      const batch = this.buffer.slice(0, FLUSH_BATCH);
      const insert = this.s.insertAudit;
      this.db.transaction((rows: PendingEvent[]) => {
        for (const r of rows) insert.run(r);
      })(batch);
      this.buffer.splice(0, batch.length);
    }
  }

  /** For the process exit hook. */
  flushSyncQuiet(): void {
    try {
      if (!this.closed) this.flushSync();
    } catch (err) {
      this.onError(err);
    }
  }

  async flush(): Promise<void> {
    if (this.closed) return;
    this.flushSync();
  }

  async listAudit(q: AuditQuery = {}): Promise<AuditEvent[]> {
    await this.flush();
    if (this.closed) throw new Error('store is closed');
    const where: string[] = [];
    const params: unknown[] = [];
    const eq = (col: string, v: unknown) => {
      if (v !== undefined && v !== null && v !== '') {
        where.push(`${col} = ?`);
        params.push(String(v));
      }
    };
    eq('type', q.type);
    eq('subject', q.subject);
    eq('connection', q.connection);
    eq('decision', q.decision);
    eq('session_id', q.sessionId);
    if (q.since !== undefined && q.since !== '') {
      const ms = Date.parse(q.since);
      if (Number.isNaN(ms)) throw new Error(`invalid "since" time: ${q.since}`);
      where.push('time >= ?');
      params.push(iso(ms));
    }
    const forward = q.sinceId !== undefined && q.sinceId !== null;
    if (forward) {
      where.push('id > ?');
      params.push(Math.trunc(Number(q.sinceId)) || 0);
    }
    let limit = q.limit === undefined ? 50 : Math.trunc(Number(q.limit));
    if (!Number.isFinite(limit) || limit < 1) limit = 50;
    limit = Math.min(limit, MAX_LIST_LIMIT);
    const sql = `SELECT id, event_json FROM audit_events ${where.length ? 'WHERE ' + where.join(' AND ') : ''}
      ORDER BY id ${forward ? 'ASC' : 'DESC'} LIMIT ${limit}`;
    const rows = this.db.prepare(sql).all(...params) as { id: number; event_json: string }[];
    if (!forward) rows.reverse();
    return rows.map((r) => ({ id: r.id, ...(JSON.parse(r.event_json) as AuditEvent) }));
  }

  // ---------------------------------------------------------------------------- approvals

  async saveApproval(rec: ApprovalRecord): Promise<void> {
    if (this.closed) throw new Error('store is closed');
    this.db.prepare(
      `INSERT OR REPLACE INTO approvals (id, status, requester, connection, binding, created_ms, grant_until_ms, record_json)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(rec.id, rec.status, rec.requester.subject, rec.connection, rec.binding, Date.parse(rec.createdAt),
      rec.grantUntil ? Date.parse(rec.grantUntil) : null, JSON.stringify(rec));
  }

  async getApproval(id: string): Promise<ApprovalRecord | undefined> {
    if (this.closed) throw new Error('store is closed');
    const json = this.db.prepare(`SELECT record_json FROM approvals WHERE id = ?`).pluck().get(id) as string | undefined;
    return json === undefined ? undefined : (JSON.parse(json) as ApprovalRecord);
  }

  async listApprovals(q: ApprovalQuery = {}): Promise<ApprovalRecord[]> {
    if (this.closed) throw new Error('store is closed');
    const limit = Math.min(Math.max(1, Math.trunc(Number(q.limit ?? 100)) || 100), 1000);
    const status = q.status ?? [];
    const where = status.length ? `WHERE status IN (${status.map(() => '?').join(', ')})` : '';
    const rows = this.db.prepare(`SELECT record_json FROM approvals ${where} ORDER BY created_ms DESC, id DESC LIMIT ${limit}`)
      .pluck().all(...status) as string[];
    return rows.map((j) => JSON.parse(j) as ApprovalRecord);
  }

  async approvalsByBinding(binding: string, status: ApprovalRecord["status"][]): Promise<ApprovalRecord[]> {
    if (this.closed) throw new Error('store is closed');
    if (status.length === 0) return [];
    const rows = this.db.prepare(
      `SELECT record_json FROM approvals WHERE binding = ? AND status IN (${status.map(() => '?').join(', ')}) ORDER BY created_ms DESC`,
    ).pluck().all(binding, ...status) as string[];
    return rows.map((j) => JSON.parse(j) as ApprovalRecord);
  }

  async openGrants(subject: string, connection: string, nowMs: number): Promise<ApprovalRecord[]> {
    if (this.closed) throw new Error('store is closed');
    const rows = this.db.prepare(
      `SELECT record_json FROM approvals WHERE requester = ? AND connection = ? AND status = 'approved' AND grant_until_ms > ?`,
    ).pluck().all(subject, connection, nowMs) as string[];
    return rows.map((j) => JSON.parse(j) as ApprovalRecord);
  }

  async updateApproval(id: string, change: (rec: ApprovalRecord) => ApprovalRecord | undefined): Promise<ApprovalRecord | undefined> {
    if (this.closed) throw new Error('store is closed');
    return this.db.transaction(() => {
      const json = this.db.prepare(`SELECT record_json FROM approvals WHERE id = ?`).pluck().get(id) as string | undefined;
      if (json === undefined) return undefined;
      const current = JSON.parse(json) as ApprovalRecord;
      const next = change(current);
      if (!next) return current;
      this.db.prepare(`UPDATE approvals SET status = ?, grant_until_ms = ?, record_json = ? WHERE id = ?`)
        .run(next.status, next.grantUntil ? Date.parse(next.grantUntil) : null, JSON.stringify(next), id);
      return next;
    }).immediate();
  }

  // ---------------------------------------------------------------------------- lifecycle

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      this.flushSync();
    } finally {
      this.closed = true;
      openStores.delete(this);
      if (this.timer) clearTimeout(this.timer);
      if (this.immediate) clearImmediate(this.immediate);
      this.timer = null;
      this.immediate = null;
      this.db.close();
    }
  }
}
