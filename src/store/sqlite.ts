// Embedded store: SQLite through better-sqlite3, WAL mode, schema migrations tracked in a
// `schema_version` table. Several processes may open the same file (the gateway, and the CLI
// revoking a token): every read outside a transaction sees the latest committed state.

import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { ApprovalRecord, AuditEvent, Identity } from '../core/types.ts';
import { eventHash, GENESIS_HASH } from '../audit/canonical.ts';
import { publicKeyFromPem, signCheckpoint, type AuditSigner, type CheckpointKind } from '../audit/signing.ts';
import { AuditSpool } from '../audit/spool.ts';
import { verifyChain, type AuditCheckpointRow, type AuditEventRow, type VerifyReport } from '../audit/verify.ts';
import type { KeyObject } from 'node:crypto';
import {
  ServiceTokenError,
  generateServiceToken,
  hashSecret,
  isValidTokenId,
  parseServiceToken,
  secretMatches,
} from '../identity/service-tokens.ts';
import {
  restoreAuditEvent,
  serializeAuditEvent,
  TokenTtlTooLongError,
  type ApprovalQuery,
  type AuditExportQuery,
  type AuditHealth,
  type AuditQuery,
  type AuditStoreOptions,
  type ExportedAuditEvent,
  type RetentionResult,
  type VerifyAuditOptions,
  type CreateTokenInput,
  type ListTokensOptions,
  type Store,
  type StoredAuditEvent,
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
  // 3: tamper evidence (docs/audit.md). Every event row carries its place in a hash chain; rows
  // written before this migration are chained once, in id order, by the backfill that runs in the
  // same transaction (SqliteStore.catchUpChain). audit_chain is the writers' record of the head.
  `
  ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
  ALTER TABLE audit_events ADD COLUMN hash TEXT;

  CREATE TABLE audit_chain (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_id   INTEGER NOT NULL,
    last_hash TEXT NOT NULL
  ) STRICT;
  INSERT INTO audit_chain (id, last_id, last_hash) VALUES (1, 0, '${GENESIS_HASH}');

  CREATE TABLE audit_checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    upto_id     INTEGER NOT NULL,          -- the last event covered
    upto_hash   TEXT NOT NULL,             -- its hash
    time        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('periodic', 'retention')),
    detail_json TEXT NOT NULL,
    signature   TEXT NOT NULL,             -- base64 Ed25519 over the canonical JSON of {upto_id, upto_hash, time, kind, detail}
    key_id      TEXT NOT NULL
  ) STRICT;
  CREATE INDEX audit_checkpoints_upto ON audit_checkpoints(upto_id);

  CREATE TABLE audit_keys (
    key_id     TEXT PRIMARY KEY,           -- first 16 hex digits of sha256(SPKI DER)
    public_key TEXT NOT NULL,              -- SPKI PEM
    created    TEXT NOT NULL
  ) STRICT;

  -- how far each spool file has been written to the database (written with the events)
  CREATE TABLE audit_spool_progress (
    spool_id    TEXT PRIMARY KEY,
    byte_offset INTEGER NOT NULL
  ) STRICT;
  `,
];

export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length;

const FLUSH_INTERVAL_MS = 50;
const FLUSH_BATCH = 500;
/**
 * Beyond this many events that neither the database nor the spool took (the spool is full or
 * unwritable, or appends outpace the writer within one turn), the oldest are dropped.
 */
const MAX_BUFFERED = 200_000;
const MAX_LIST_LIMIT = 10_000;
const CHECKPOINT_EVERY = 1000;
const CHECKPOINT_INTERVAL_MS = 60_000;
const WRITE_BUSY_TIMEOUT_MS = 1000;
const BUSY_TIMEOUT_MS = 5000;
/** Retention deletes at most this many events per transaction (and checkpoint). */
const RETENTION_CHUNK = 50_000;
const FULL_LOG_EVERY_MS = 10_000;

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

/**
 * A queued event: its stored form (`json` is what event_json stores, the chain hashes and the
 * spool keeps), or, read back from the spool, only its JSON.
 */
type PendingEvent = StoredAuditEvent | { json: string; time?: undefined };

const EVENT_COLUMNS = 'id, time, type, session_id, subject, connection, decision, event_json, prev_hash, hash';

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

interface Statements {
  insertToken: Database.Statement;
  getToken: Database.Statement<[string]>;
  isActive: Database.Statement<[string, number]>;
  revoke: Database.Statement<[number, string]>;
  insertAudit: Database.Statement<[number, string, string, string | null, string | null, string | null, string | null, string, string, string]>;
  head: Database.Statement;
  setHead: Database.Statement<[number, string]>;
  seq: Database.Statement;
  firstAfter: Database.Statement<[number]>;
  lastCheckpoint: Database.Statement;
}

export interface SqliteStoreOptions {
  /** Called when a background audit write fails (default: console.error). */
  onError?: (err: unknown) => void;
  /** Milliseconds between background audit flushes (default 50). */
  flushIntervalMs?: number;
  /** Signing key, checkpoints, spool (docs/audit.md). */
  audit?: AuditStoreOptions;
}

function parseEventJson(json: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(json) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export class SqliteStore implements Store {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly onError: (err: unknown) => void;
  private readonly onNotice: (message: string) => void;
  private readonly flushIntervalMs: number;
  private readonly signer: AuditSigner | undefined;
  private readonly checkpointEvery: number;
  private readonly checkpointIntervalMs: number;
  private readonly maxBuffered: number;
  private readonly writeBusyTimeoutMs: number;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  private readonly spool: AuditSpool | undefined;
  private buffer: PendingEvent[] = [];
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private checkpointTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private droppedEvents = 0;
  /** Set while audit writes to the database fail (events go to the spool). */
  private failing: { since: number; reason: string } | null = null;
  private retryDelayMs: number;
  private nextDbAttempt = 0;
  /** The spool is full or cannot be written: events are only in memory. */
  private spoolBlocked: string | null = null;
  private lastFullLog = 0;
  private wroteSinceCheckpoint = false;
  private readonly openedAt = Date.now();

  private st: Statements | null = null;

  constructor(path: string, opts: SqliteStoreOptions = {}) {
    this.onError = opts.onError ?? ((err) => console.error('airlock store: audit write failed:', err));
    const a = opts.audit ?? {};
    this.onNotice = a.onNotice ?? ((m) => console.error(`airlock store: ${m}`));
    this.flushIntervalMs = opts.flushIntervalMs ?? FLUSH_INTERVAL_MS;
    this.signer = a.signer;
    this.checkpointEvery = Math.max(1, a.checkpointEvery ?? CHECKPOINT_EVERY);
    this.checkpointIntervalMs = Math.max(1, a.checkpointIntervalMs ?? CHECKPOINT_INTERVAL_MS);
    this.maxBuffered = Math.max(10, a.maxBufferedEvents ?? MAX_BUFFERED);
    this.writeBusyTimeoutMs = Math.max(0, a.writeBusyTimeoutMs ?? WRITE_BUSY_TIMEOUT_MS);
    this.retryMinMs = Math.max(1, a.retryMinMs ?? 250);
    this.retryMaxMs = Math.max(this.retryMinMs, a.retryMaxMs ?? 10_000);
    this.retryDelayMs = this.retryMinMs;
    const inMemory = path === ':memory:';
    this.path = inMemory ? path : resolve(path);
    if (!inMemory) {
      mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
      // Create the file with 0600 before SQLite does (SQLite copies the database file's mode
      // to its -wal and -shm files), and tighten it if it already existed.
      closeSync(openSync(this.path, 'a', 0o600));
      chmodSync(this.path, 0o600);
    }
    if (!inMemory && a.spoolDir !== false) {
      this.spool = new AuditSpool(a.spoolDir ?? dirname(this.path), { maxBytes: a.spoolMaxBytes });
    }
    this.db = new Database(this.path, { timeout: BUSY_TIMEOUT_MS });
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
          `INSERT INTO audit_events (id, time, type, session_id, subject, connection, decision, event_json, prev_hash, hash)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ),
        head: db.prepare(`SELECT last_id, last_hash FROM audit_chain WHERE id = 1`),
        setHead: db.prepare(`UPDATE audit_chain SET last_id = ?, last_hash = ? WHERE id = 1`),
        seq: db.prepare(`SELECT seq FROM sqlite_sequence WHERE name = 'audit_events'`).pluck(),
        firstAfter: db.prepare(`SELECT id FROM audit_events WHERE id > ? ORDER BY id LIMIT 1`).pluck(),
        lastCheckpoint: db.prepare(`SELECT upto_id, time FROM audit_checkpoints ORDER BY upto_id DESC, id DESC LIMIT 1`),
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
        // Backfill: chain rows written before migration 3 (or by an older Airlock since).
        this.chainHead();
      })
      .immediate();
    // Spool files left by processes that are gone are written first.
    if (this.spool) {
      this.spool.claimOrphans();
      if (this.spool.hasPending) {
        try {
          this.flushSync(true);
        } catch (err) {
          this.onError(err);
        }
      }
    }
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
      // Serialized once, here: the text is what is stored, hashed and spooled.
      pending = serializeAuditEvent(event);
    } catch (err) {
      this.onError(err);
      return;
    }
    this.buffer.push(pending);
    if (this.buffer.length > this.maxBuffered) {
      const drop = Math.max(this.buffer.length - this.maxBuffered, Math.ceil(this.maxBuffered / 10));
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

  /** Number of events queued in memory and not yet written (to the database or the spool). */
  get pendingAuditEvents(): number {
    return this.buffer.length;
  }

  /** The spool file of this store, while it has one. */
  get spoolFile(): string | undefined {
    return this.spool?.ownFile;
  }

  auditHealth(): AuditHealth {
    const spooled = this.spool?.pending ?? 0;
    if (this.spoolBlocked) {
      return { ok: false, spooled, reason: `${this.spoolBlocked}; ${this.buffer.length} audit events only in memory` };
    }
    if (this.failing && !this.spool) {
      return { ok: false, spooled, reason: `audit database not writable (${this.failing.reason}) and no spool` };
    }
    if (this.failing) return { ok: true, spooled, reason: `audit database not writable (${this.failing.reason}): spooling` };
    return { ok: true, spooled };
  }

  private backgroundFlush(): void {
    try {
      this.flushSync(false);
    } catch (err) {
      const now = Date.now();
      if (!this.spoolBlocked || now - this.lastFullLog >= FULL_LOG_EVERY_MS) {
        this.lastFullLog = now;
        this.onError(err);
      }
    }
    this.scheduleRetry();
  }

  /** While failing: come back when the next database attempt is due. */
  private scheduleRetry(): void {
    if (this.closed || this.timer || !this.failing) return;
    if (this.buffer.length === 0 && !this.spool?.hasPending) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.backgroundFlush();
    }, Math.max(this.flushIntervalMs, this.nextDbAttempt - Date.now()));
    this.timer.unref();
  }

  /**
   * Makes the queued events durable: written to the database in order (the spool first), or,
   * when the database fails, appended to the spool. `force`: try the database even while backing
   * off. Throws only when events remain in memory alone (no spool, or the spool is full).
   */
  flushSync(force = true): void {
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
    if (this.buffer.length === 0 && !this.spool?.hasPending) return;
    let dbError: unknown;
    if (force || Date.now() >= this.nextDbAttempt) {
      try {
        const drained = this.spool?.hasPending ? this.drainSpool() : 0;
        while (this.buffer.length > 0) {
          const batch = this.buffer.slice(0, FLUSH_BATCH);
          this.writeEvents(batch);
          this.buffer.splice(0, batch.length);
        }
        if (this.failing || this.spoolBlocked || drained > 0) {
          this.onNotice(`audit database writable again: ${drained} spooled events written`);
        }
        this.failing = null;
        this.spoolBlocked = null;
        this.retryDelayMs = this.retryMinMs;
        this.nextDbAttempt = 0;
        return;
      } catch (err) {
        dbError = err;
        this.nextDbAttempt = Date.now() + this.retryDelayMs;
        this.retryDelayMs = Math.min(this.retryMaxMs, this.retryDelayMs * 2);
        if (!this.failing) {
          this.failing = { since: Date.now(), reason: (err as { code?: string }).code ?? (err as Error).message };
          this.onError(err);
          if (this.spool) this.onNotice(`audit events go to the spool in ${this.spool.dir} until the database is writable again`);
        }
      }
    }
    this.scheduleRetry(); // come back for the database (and the spool) when the backoff allows
    if (!this.spool) throw dbError ?? new Error('audit events are waiting for the database');
    // The database is not writable (now, or recently): make the events durable in the spool.
    while (this.buffer.length > 0) {
      const batch = this.buffer.slice(0, FLUSH_BATCH);
      let written = 0;
      try {
        written = this.spool.append(batch.map((p) => p.json));
        if (written < batch.length) this.spoolBlocked = `audit spool full (${this.spool.maxBytes} bytes)`;
      } catch (err) {
        this.spoolBlocked = `audit spool not writable (${(err as { code?: string }).code ?? (err as Error).message})`;
      }
      this.buffer.splice(0, written);
      if (written < batch.length) {
        const now = Date.now();
        const err = new Error(`AUDIT LOG DEGRADED: ${this.spoolBlocked} and the database is not writable: `
          + `${this.buffer.length} events are kept in memory only (at most ${this.maxBuffered}); new sessions are refused`);
        this.lastFullLog = now;
        throw err;
      }
    }
    this.spoolBlocked = null;
  }

  /** Writes the spool files to the database (in order, chained). Returns the number of events. */
  private drainSpool(): number {
    const spool = this.spool!;
    const getProgress = this.db.prepare(`SELECT byte_offset FROM audit_spool_progress WHERE spool_id = ?`).pluck();
    const forget = this.db.prepare(`DELETE FROM audit_spool_progress WHERE spool_id = ?`);
    return spool.drain(
      (b) => this.writeEvents(b.events.map((json) => ({ json })), { spoolId: b.spoolId, offset: b.endOffset }),
      (id) => (getProgress.get(id) as number | undefined) ?? 0,
      (id) => void forget.run(id),
      FLUSH_BATCH,
    );
  }

  /** Runs fn with the audit writer's busy timeout. */
  private withWriteTimeout<T>(fn: () => T): T {
    this.db.pragma(`busy_timeout = ${this.writeBusyTimeoutMs}`);
    try {
      return fn();
    } finally {
      this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    }
  }

  /**
   * One IMMEDIATE transaction (SQLite serializes writers, so all processes extend one chain):
   * reads the chain head, inserts the events with their hashes, moves the head, records spool
   * progress, and writes a periodic checkpoint when one is due.
   */
  private writeEvents(events: PendingEvent[], progress?: { spoolId: string; offset: number }): void {
    const st = this.s;
    this.withWriteTimeout(() => this.db.transaction(() => {
      const head = this.chainHead();
      let lastId = head.last_id;
      let lastHash = head.last_hash;
      let id = Math.max(lastId, (st.seq.get() as number | undefined) ?? 0) + 1;
      // A checkpoint every `checkpointEvery` events, also inside a batch.
      let covered = this.signer ? ((st.lastCheckpoint.get() as { upto_id: number } | undefined)?.upto_id ?? 0) : Infinity;
      const insert = st.insertAudit;
      for (const p of events) {
        const e = p.time !== undefined ? p : restoreAuditEvent(p.json);
        if (!e) {
          this.onError(new Error(`unreadable spooled audit event skipped: ${p.json.slice(0, 200)}`));
          continue;
        }
        const hash = eventHash(lastHash, id, e.json);
        insert.run(id, e.time, e.type, e.sessionId, e.subject, e.connection, e.decision, e.json, lastHash, hash);
        lastId = id++;
        lastHash = hash;
        if (lastId - covered >= this.checkpointEvery) {
          this.insertCheckpoint('periodic', lastId, lastHash, { previous_upto_id: covered });
          covered = lastId;
        }
      }
      if (lastId !== head.last_id) st.setHead.run(lastId, lastHash);
      if (this.signer && lastId > covered) this.wroteSinceCheckpoint = true;
      if (progress) {
        this.db.prepare(`INSERT INTO audit_spool_progress (spool_id, byte_offset) VALUES (?, ?)
          ON CONFLICT (spool_id) DO UPDATE SET byte_offset = excluded.byte_offset`).run(progress.spoolId, progress.offset);
      }
      this.maybeCheckpoint(lastId, lastHash, false);
    }).immediate());
    this.scheduleCheckpoint();
  }

  /**
   * The chain head (inside a write transaction). Rows after it without a hash (written before
   * migration 3, or by an older Airlock) are chained first, in id order.
   */
  private chainHead(): { last_id: number; last_hash: string } {
    const st = this.s;
    let head = st.head.get() as { last_id: number; last_hash: string } | undefined;
    if (!head) {
      head = { last_id: 0, last_hash: GENESIS_HASH };
      this.db.prepare(`INSERT INTO audit_chain (id, last_id, last_hash) VALUES (1, 0, ?)`).run(GENESIS_HASH);
    }
    if (st.firstAfter.get(head.last_id) === undefined) return head;
    const page = this.db.prepare(`SELECT id, time, type, event_json, hash FROM audit_events WHERE id > ? ORDER BY id LIMIT 1000`);
    const update = this.db.prepare(`UPDATE audit_events SET event_json = ?, prev_hash = ?, hash = ? WHERE id = ?`);
    let { last_id: lastId, last_hash: lastHash } = head;
    for (;;) {
      const rows = page.all(lastId) as { id: number; time: string; type: string; event_json: string; hash: string | null }[];
      if (rows.length === 0) break;
      for (const r of rows) {
        if (r.hash === null) {
          const ev = parseEventJson(r.event_json) ?? { unreadable_event_json: r.event_json };
          delete ev.id;
          delete ev.hash;
          delete ev.prev_hash;
          ev.time = r.time;
          ev.type = r.type;
          const json = JSON.stringify(ev);
          const hash = eventHash(lastHash, r.id, json);
          update.run(json, lastHash, hash, r.id);
          lastHash = hash;
        } else {
          lastHash = r.hash; // already chained (verify judges it)
        }
        lastId = r.id;
      }
    }
    st.setHead.run(lastId, lastHash);
    return { last_id: lastId, last_hash: lastHash };
  }

  /** Inside a write transaction: a signed periodic checkpoint at the head when one is due (or forced). */
  private maybeCheckpoint(lastId: number, lastHash: string, force: boolean): boolean {
    if (!this.signer) return false;
    const last = this.s.lastCheckpoint.get() as { upto_id: number; time: string } | undefined;
    const covered = last?.upto_id ?? 0;
    if (lastId <= covered) return false;
    const since = last ? Date.parse(last.time) : this.openedAt;
    if (!force && lastId - covered < this.checkpointEvery && Date.now() - since < this.checkpointIntervalMs) return false;
    this.insertCheckpoint('periodic', lastId, lastHash, { previous_upto_id: covered });
    return true;
  }

  private insertCheckpoint(kind: CheckpointKind, uptoId: number, uptoHash: string, detail: Record<string, unknown>): void {
    const signer = this.signer!;
    // Every time (checkpoints are rare): a flag could outlive a rolled-back transaction.
    this.db.prepare(`INSERT OR IGNORE INTO audit_keys (key_id, public_key, created) VALUES (?, ?, ?)`)
      .run(signer.keyId, signer.publicKeyPem, iso(Date.now()));
    const time = iso(Date.now());
    const signature = signCheckpoint(signer, { upto_id: uptoId, upto_hash: uptoHash, time, kind, detail });
    this.db.prepare(`INSERT INTO audit_checkpoints (upto_id, upto_hash, time, kind, detail_json, signature, key_id)
      VALUES (?, ?, ?, ?, ?, ?, ?)`).run(uptoId, uptoHash, time, kind, JSON.stringify(detail), signature, signer.keyId);
    this.wroteSinceCheckpoint = false;
  }

  /** A time-based checkpoint for events written since the last one, even when no more come. */
  private scheduleCheckpoint(): void {
    if (!this.signer || this.closed || this.checkpointTimer || !this.wroteSinceCheckpoint) return;
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = null;
      try {
        this.checkpointNow(false);
      } catch {
        // the database is not writable: the next write schedules another attempt
      }
      this.scheduleCheckpoint();
    }, this.checkpointIntervalMs);
    this.checkpointTimer.unref();
  }

  /** Writes a checkpoint at the head if one is due (or, with force, whenever events are uncovered). */
  checkpointNow(force = true): boolean {
    if (!this.signer || this.closed) return false;
    return this.withWriteTimeout(() => this.db.transaction(() => {
      const head = this.chainHead();
      const wrote = this.maybeCheckpoint(head.last_id, head.last_hash, force);
      if (!wrote && force) this.wroteSinceCheckpoint = false;
      return wrote;
    }).immediate());
  }

  /** For the process exit hook. */
  flushSyncQuiet(): void {
    try {
      if (!this.closed) this.flushSync(true);
    } catch (err) {
      this.onError(err);
    }
  }

  async flush(): Promise<void> {
    if (this.closed) return;
    this.flushSync(true);
  }

  async *exportAudit(q: AuditExportQuery = {}): AsyncGenerator<ExportedAuditEvent> {
    await this.flush();
    if (this.closed) throw new Error('store is closed');
    let cursor = Math.max(0, Math.trunc(Number(q.sinceId ?? 0)) || 0);
    let sinceIso: string | undefined;
    if (q.since !== undefined && q.since !== '') {
      const ms = Date.parse(q.since);
      if (Number.isNaN(ms)) throw new Error(`invalid "since" time: ${q.since}`);
      sinceIso = iso(ms);
      // Start at the first event that late (an index lookup), then page by id.
      const first = this.db.prepare(`SELECT min(id) FROM audit_events WHERE time >= ?`).pluck().get(sinceIso) as number | null;
      if (first === null) return;
      cursor = Math.max(cursor, first - 1);
    }
    const page = this.db.prepare(`SELECT id, event_json, prev_hash, hash FROM audit_events
      WHERE id > ? ${sinceIso ? 'AND +time >= ?' : ''} ORDER BY id LIMIT 1000`);
    for (;;) {
      if (this.closed) throw new Error('store is closed');
      const rows = (sinceIso ? page.all(cursor, sinceIso) : page.all(cursor)) as
        { id: number; event_json: string; prev_hash: string | null; hash: string | null }[];
      if (rows.length === 0) return;
      for (const r of rows) {
        yield { id: r.id, ...(JSON.parse(r.event_json) as AuditEvent), prev_hash: r.prev_hash, hash: r.hash };
      }
      cursor = rows[rows.length - 1]!.id;
    }
  }

  async verifyAudit(opts: VerifyAuditOptions = {}): Promise<VerifyReport> {
    await this.flush();
    if (this.closed) throw new Error('store is closed');
    let pinned: KeyObject | undefined;
    if (opts.publicKey !== undefined) {
      pinned = typeof opts.publicKey === 'string' ? publicKeyFromPem(opts.publicKey) : opts.publicKey;
    }
    const db = this.db;
    // One read transaction: a consistent snapshot while other processes keep writing.
    db.exec('BEGIN');
    try {
      const checkpoints = db.prepare(`SELECT * FROM audit_checkpoints ORDER BY id`).all() as AuditCheckpointRow[];
      const keys = new Map<string, KeyObject>();
      for (const k of db.prepare(`SELECT key_id, public_key FROM audit_keys`).all() as { key_id: string; public_key: string }[]) {
        try {
          keys.set(k.key_id, publicKeyFromPem(k.public_key));
        } catch {
          // an unusable key: its checkpoints report bad-signature
        }
      }
      const head = db.prepare(`SELECT last_id, last_hash FROM audit_chain WHERE id = 1`).get() as { last_id: number; last_hash: string } | undefined;
      const rowsAfter = db.prepare(`SELECT ${EVENT_COLUMNS} FROM audit_events WHERE id > ? ORDER BY id`);
      const lookahead = db.prepare(`SELECT ${EVENT_COLUMNS} FROM audit_events WHERE id > ? ORDER BY id LIMIT ?`);
      return verifyChain({
        checkpoints, keys, pinnedKey: pinned, head,
        rows: (afterId) => rowsAfter.iterate(afterId) as IterableIterator<AuditEventRow>,
        lookahead: (afterId, limit) => lookahead.all(afterId, limit) as AuditEventRow[],
      });
    } finally {
      db.exec('COMMIT');
    }
  }

  async applyRetention(olderThanMs: number): Promise<RetentionResult> {
    if (this.closed) throw new Error('store is closed');
    if (!(typeof olderThanMs === 'number' && olderThanMs > 0)) throw new Error('retention must be a positive duration');
    if (!this.signer) throw new Error('audit retention needs a signing key (audit.signing_key, or the generated one)');
    await this.flush();
    const cutoff = iso(Date.now() - olderThanMs);
    const result: RetentionResult = { deleted: 0, checkpoints: 0 };
    const scan = this.db.prepare(`SELECT id, time, hash FROM audit_events ORDER BY id LIMIT ${RETENTION_CHUNK}`);
    for (;;) {
      const chunk = this.withWriteTimeout(() => this.db.transaction(() => {
        this.chainHead();
        const rows = scan.all() as { id: number; time: string; hash: string | null }[];
        let n = 0;
        while (n < rows.length && rows[n]!.time < cutoff) n++;
        if (n === 0) return undefined;
        const from = rows[0]!.id;
        const to = rows[n - 1]!.id;
        const lastHash = rows[n - 1]!.hash ?? GENESIS_HASH;
        this.db.prepare(`DELETE FROM audit_events WHERE id <= ?`).run(to);
        this.insertCheckpoint('retention', to, lastHash, { from_id: from, to_id: to, count: n, last_hash: lastHash, cutoff });
        return { from, to, n, more: n === rows.length };
      }).immediate());
      if (!chunk) break;
      result.fromId ??= chunk.from;
      result.toId = chunk.to;
      result.deleted += chunk.n;
      result.checkpoints++;
      if (!chunk.more) break;
    }
    return result;
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
    let error: unknown;
    try {
      this.flushSync(true);
    } catch (err) {
      error = err;
    }
    try {
      // A last checkpoint over what this process wrote, so that deleting it is detectable.
      if (!error && !this.failing && this.wroteSinceCheckpoint) this.checkpointNow(true);
    } catch (err) {
      this.onError(err);
    }
    this.closed = true;
    openStores.delete(this);
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    if (this.checkpointTimer) clearTimeout(this.checkpointTimer);
    this.timer = null;
    this.immediate = null;
    this.checkpointTimer = null;
    // Spooled events not yet written are left for the next process (or store) to write.
    this.spool?.release();
    this.db.close();
    if (error) throw error;
  }
}
