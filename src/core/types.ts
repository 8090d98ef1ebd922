// Protocol-neutral types shared by every part of Airlock.
// Adapters build `Request`s, policy turns them into `Decision`s, recording stores `AuditEvent`s.

/** Who is calling: the result of verifying a token. */
export interface Identity {
  subject: string;
  /** How the identity was proven. */
  kind: 'service-token' | 'jwt';
  groups: string[];
  /** Every claim of the token (JWT claims, or subject/groups for service tokens). */
  claims: Record<string, unknown>;
  /** Token issuer: the OIDC issuer URL, or "airlock" for service tokens. */
  issuer: string;
  /** Airlock service token id (for revocation checks), absent for JWTs. */
  tokenId?: string;
  /** Expiry, epoch milliseconds. */
  expiresAt?: number;
}

/** A connection as declared in the policy folder: no secrets. */
export interface ConnectionInfo {
  name: string;
  type: 'postgres';
  tags: Record<string, string>;
}

/** The policy vocabulary of SQL statement kinds. */
export const SQL_KINDS = [
  'select', 'insert', 'update', 'delete', 'merge', 'copy',
  'create', 'alter', 'drop', 'truncate', 'grant', 'revoke', 'comment',
  'set', 'show', 'explain', 'call', 'do', 'transaction', 'prepare', 'execute', 'deallocate',
  'vacuum', 'analyze', 'cluster', 'reindex', 'refresh', 'lock', 'listen', 'notify',
  'discard', 'checkpoint', 'load', 'security_label', 'other',
] as const;
export type SqlKind = (typeof SQL_KINDS)[number];

/** One thing a statement does that policy must permit. */
export type Operation =
  | {
      type: 'sql';
      kind: SqlKind;
      /** Tables touched by this operation, as PostgreSQL reads them (unquoted names folded to lower case), schema-qualified when written so. */
      tables: string[];
      /** UPDATE/DELETE with no WHERE clause. */
      whereless?: boolean;
    }
  | {
      type: 'function';
      /** Function name as PostgreSQL reads it (unquoted names folded to lower case), schema-qualified when written so. */
      name: string;
      /** safe: reviewed as free of side effects; side-effect: changes state or reaches outside; unknown: not reviewed. */
      effect: 'safe' | 'side-effect' | 'unknown';
      /** Why, for side effects (e.g. "advances a sequence"). */
      reason?: string;
    };

/** The classification of one SQL statement. */
export interface StatementInfo {
  /** The statement's own text (a slice of the request's text). */
  text: string;
  /** The top-level kind. */
  kind: SqlKind;
  /** Every operation the statement performs, nested ones included (a DELETE inside a CTE, a function call). */
  operations: Operation[];
  /** Tables read and written (unquoted names folded to lower case). */
  tablesRead: string[];
  tablesWritten: string[];
  /** Every function called (unquoted names folded to lower case). */
  functions: string[];
  /** True when the statement, by its effects, only reads data. */
  readOnly: boolean;
  /**
   * Harmless statements that clients send on their own (transaction control, session settings
   * such as application_name): permitted to anyone who may use the connection at all.
   */
  baseline: boolean;
  /** Human-readable notes on why the statement is not read-only. */
  notes: string[];
}

/** A parsed SQL request: one client message (a simple Query may hold several statements). */
export interface SqlRequestInfo {
  text: string;
  statements: StatementInfo[];
  /** Set when the text could not be parsed: such requests are always denied. */
  parseError?: string;
}

/** What is being asked, protocol-neutral. */
export interface Request {
  connection: ConnectionInfo;
  /** Caller's IP address. */
  source: string;
  time: Date;
  sql?: SqlRequestInfo;
}

/** A mask rule collected from the policies that apply (enforced by the masking issue). */
export interface MaskRuleRef {
  policy: string;
  columns?: string[];
  detect?: string[];
  with: string;
}

export interface Decision {
  action: 'allow' | 'deny' | 'review';
  /** Policy and rule that decided, e.g. policy "ci-read-analytics", rule "deny[0]". Absent for default deny. */
  policy?: string;
  rule?: string;
  /** A reason a person can read. */
  reason: string;
  /** Version of the policy bundle that decided (git commit or content hash). */
  bundleVersion: string;
  /** For review decisions: who may approve. */
  approvers?: string[];
  /** Mask rules that apply to the response. */
  masks: MaskRuleRef[];
}

/** Audit event types recorded in the store. */
export type AuditEventType =
  | 'session.start' | 'session.end' | 'statement' | 'auth.failure' | 'protocol.error'
  | 'token.create' | 'token.revoke' | 'policy.load' | 'policy.error';

export interface AuditEvent {
  id?: number;
  time: string; // ISO-8601
  type: AuditEventType;
  sessionId?: string;
  subject?: string;
  issuer?: string;
  connection?: string;
  source?: string;
  statement?: string;
  classification?: unknown;
  decision?: Decision['action'];
  policy?: string;
  rule?: string;
  reason?: string;
  bundleVersion?: string;
  durationMs?: number;
  rows?: number;
  error?: string;
  detail?: Record<string, unknown>;
}
