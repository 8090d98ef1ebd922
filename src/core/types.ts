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
  /** For review decisions: who may approve (the union over the review rules that matched). */
  approvers?: string[];
  /** For review decisions: what an approval must satisfy. */
  approval?: ApprovalTerms;
  /** Set when an approval request made this statement allowed: its id. */
  approvalId?: string;
  /** Record the statement's result rows (after masking) in the session: a policy says `record: results`. */
  recordResults?: boolean;
  /** Mask rules that apply to the response. */
  masks: MaskRuleRef[];
}

/** One review rule that matched: `minApprovals` distinct approvers it names must approve. */
export interface ApprovalRequirement {
  policy: string;
  rule: string;
  /** `group:<name>` or `user:<subject>`. */
  approvers: string[];
  minApprovals: number;
}

/** The terms of a review decision: every requirement must be met before `timeoutMs`. */
export interface ApprovalTerms {
  requirements: ApprovalRequirement[];
  timeoutMs: number;
  /** After approval, the requester may run statements these rules match, on this connection, for this long. */
  grantMs?: number;
}

export type ApprovalStatus = 'pending' | 'approved' | 'rejected' | 'expired' | 'cancelled' | 'used';

/** An approval request: one held statement (or the grant window its approval opened). */
export interface ApprovalRecord {
  /** `apr_` + 20 hex digits. */
  id: string;
  status: ApprovalStatus;
  requester: { subject: string; issuer?: string; groups: string[] };
  connection: string;
  /** The statement as the requester sent it (what approvers read). */
  statement: string;
  /**
   * sha256 over requester, connection, the normalized statement and its parameters: the
   * approval is valid for exactly this request.
   */
  binding: string;
  /** Why approval is needed (the deciding rule's reason) and the policy version that said so. */
  reason: string;
  policy?: string;
  rule?: string;
  bundleVersion: string;
  terms: ApprovalTerms;
  /** ISO-8601. */
  createdAt: string;
  expiresAt: string;
  decidedAt?: string;
  /** Set when approved with a grant window: matching statements run without asking until then. */
  grantUntil?: string;
  usedAt?: string;
  decisions: ApprovalDecisionEntry[];
}

export interface ApprovalDecisionEntry {
  by: string;
  issuer?: string;
  /** The approver's groups when it decided (what `group:` approvers are checked against). */
  groups: string[];
  verdict: 'approve' | 'reject';
  reason?: string;
  at: string;
}

/** Audit event types recorded in the store. */
export type AuditEventType =
  | 'session.start' | 'session.end' | 'statement' | 'auth.failure' | 'protocol.error'
  | 'token.create' | 'token.revoke' | 'policy.load' | 'policy.error'
  | 'approval.requested' | 'approval.approved' | 'approval.rejected' | 'approval.expired' | 'approval.cancelled' | 'approval.used'
  | 'agent.connect' | 'agent.disconnect';

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
