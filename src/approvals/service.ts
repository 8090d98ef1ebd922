// Just-in-time approvals: a statement that a review rule matched waits here until the people the
// rule names approve it, someone rejects it, it times out, or its requester goes away.
// Protocol-neutral: adapters bring the request (identity, connection, statement, a normalized
// form and a hash of its parameters) and get back an outcome to enforce.
//
// Everything is persisted in the store, so a gateway restart loses no request: pending ones are
// re-armed (or expired) at start, and a client that retries the same request after a restart
// joins the request it already made instead of asking again. See docs/approvals.md.

import { createHash, randomBytes } from 'node:crypto';
import type {
  ApprovalDecisionEntry, ApprovalRecord, ApprovalRequirement, AuditEvent, Decision, Identity,
} from '../core/types.ts';
import type { Store } from '../store/store.ts';
import type { ApprovalNotice } from './notify.ts';

export interface ApprovalRequest {
  identity: Identity;
  connection: string;
  /** As the client sent it: what approvers read. */
  statement: string;
  /** The statement's meaning (e.g. its syntax tree without positions): what the approval binds. */
  normalized: string;
  /** Hash of bound parameter values (extended protocol); absent for a plain statement. */
  paramsHash?: string;
  decision: Decision;
}

export type Outcome = { status: 'approved' | 'rejected' | 'expired' | 'cancelled'; record: ApprovalRecord };

/** A request the caller is waiting on. */
export interface Held {
  record: ApprovalRecord;
  /** True when this request joined an existing one (same binding) instead of creating it. */
  joined: boolean;
  outcome: Promise<Outcome>;
}

export class ApprovalError extends Error {
  constructor(readonly status: 400 | 403 | 404 | 409, message: string) {
    super(message);
    this.name = 'ApprovalError';
  }
}

export interface ApprovalsDeps {
  store: Store;
  audit(e: AuditEvent): void;
  notify(n: ApprovalNotice): void;
  log: { warn(o: object, msg?: string): void };
  /** Base URL of the gateway's API as approvers reach it (for links in notifications). */
  publicUrl?: string;
  now?: () => number;
}

const ID_RE = /^apr_[0-9a-f]{20}$/;

export function isApprovalId(id: string): boolean {
  return ID_RE.test(id);
}

/** The hash an approval is bound to: who, where, what (by meaning) and with which parameters. */
export function bindingOf(req: Pick<ApprovalRequest, 'identity' | 'connection' | 'normalized' | 'paramsHash'>): string {
  const parts = [req.identity.issuer ?? '', req.identity.subject, req.connection, req.normalized, req.paramsHash ?? ''];
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

/** `group:<name>` or `user:<subject>` against an identity. */
export function approverMatches(approver: string, who: { subject: string; groups: string[] }): boolean {
  if (approver.startsWith('group:')) return who.groups.includes(approver.slice(6));
  if (approver.startsWith('user:')) return who.subject === approver.slice(5);
  return false;
}

/** Same subject from the same issuer. */
export const sameIdentity = (a: { subject: string; issuer?: string }, b: { subject: string; issuer?: string }) =>
  a.subject === b.subject && (a.issuer ?? '') === (b.issuer ?? '');

export class Approvals {
  readonly #deps: ApprovalsDeps;
  readonly #now: () => number;
  /** Resolvers of callers waiting on a request, by id. */
  readonly #waiters = new Map<string, Set<(o: Outcome) => void>>();
  readonly #timers = new Map<string, NodeJS.Timeout>();

  constructor(deps: ApprovalsDeps) {
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
  }

  /** Re-arms the expiry of pending requests after a restart (expiring those already past). */
  async start(): Promise<void> {
    for (const rec of await this.#deps.store.listApprovals({ status: ['pending'], limit: 1000 })) this.#arm(rec);
  }

  /** Stops the expiry timers; waiting callers are not resolved (their sessions are closing too). */
  stop(): void {
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
  }

  /**
   * An open grant window that covers this review decision: approved earlier for this requester
   * and connection, by rules that include every rule of the decision.
   */
  async grantFor(identity: Identity, connection: string, decision: Decision): Promise<ApprovalRecord | undefined> {
    const needed = decision.approval?.requirements ?? [];
    if (needed.length === 0) return undefined;
    const grants = await this.#deps.store.openGrants(identity.subject, connection, this.#now());
    return grants.find((g) => sameIdentity(g.requester, identity) &&
      needed.every((n) => g.terms.requirements.some((r) => r.policy === n.policy && r.rule === n.rule)));
  }

  /**
   * Holds a request: joins a pending or approved-but-unused request with the same binding, or
   * creates one (persisted, audited, notified) that expires after the decision's timeout.
   */
  async request(req: ApprovalRequest): Promise<Held> {
    const terms = req.decision.approval;
    if (!terms) throw new Error('not a review decision');
    const binding = bindingOf(req);
    const existing = (await this.#deps.store.approvalsByBinding(binding, ['pending', 'approved'])).find((r) =>
      (r.status === 'pending' && Date.parse(r.expiresAt) > this.#now()) || (r.status === 'approved' && r.grantUntil === undefined));
    if (existing) return { record: existing, joined: true, outcome: this.#wait(existing) };

    const now = this.#now();
    const rec: ApprovalRecord = {
      id: `apr_${randomBytes(10).toString('hex')}`,
      status: 'pending',
      requester: { subject: req.identity.subject, issuer: req.identity.issuer, groups: [...req.identity.groups] },
      connection: req.connection,
      statement: req.statement,
      binding,
      reason: req.decision.reason,
      policy: req.decision.policy,
      rule: req.decision.rule,
      bundleVersion: req.decision.bundleVersion,
      terms,
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + terms.timeoutMs).toISOString(),
      decisions: [],
    };
    await this.#deps.store.saveApproval(rec);
    this.#event('approval.requested', rec);
    this.#arm(rec);
    return { record: rec, joined: false, outcome: this.#wait(rec) };
  }

  /** Records an approval or rejection by `who`. Throws ApprovalError with an HTTP-like status. */
  async decide(id: string, who: Identity, verdict: 'approve' | 'reject', reason?: string): Promise<ApprovalRecord> {
    if (!isApprovalId(id)) throw new ApprovalError(400, `"${id}" is not an approval id`);
    let refusal: ApprovalError | undefined;
    const entry: ApprovalDecisionEntry = { by: who.subject, issuer: who.issuer, groups: [...who.groups], verdict, reason, at: new Date(this.#now()).toISOString() };
    const before = await this.#deps.store.getApproval(id);
    const after = await this.#deps.store.updateApproval(id, (rec) => {
      refusal = this.#refusal(rec, who);
      if (refusal) return undefined;
      const next: ApprovalRecord = { ...rec, decisions: [...rec.decisions, entry] };
      if (verdict === 'reject') return { ...next, status: 'rejected', decidedAt: entry.at };
      if (!requirementsMet(next)) return next;
      const grantUntil = rec.terms.grantMs === undefined ? undefined : new Date(this.#now() + rec.terms.grantMs).toISOString();
      return { ...next, status: 'approved', decidedAt: entry.at, grantUntil };
    });
    if (!after || !before) throw new ApprovalError(404, `no approval request ${id}`);
    if (refusal) throw refusal;
    if (after.status === 'pending') {
      this.#event('approval.approved', after, { by: who.subject, partial: true, reason });
    } else {
      this.#settle(after, after.status === 'approved' ? 'approved' : 'rejected', { by: who.subject, reason });
    }
    return after;
  }

  /** The requester went away while waiting: its pending request ends. */
  async cancel(id: string, why: string): Promise<void> {
    const rec = await this.#deps.store.updateApproval(id, (r) => (r.status === 'pending' ? { ...r, status: 'cancelled', decidedAt: new Date(this.#now()).toISOString() } : undefined));
    if (rec?.status === 'cancelled') this.#settle(rec, 'cancelled', { reason: why });
  }

  /**
   * The approved statement is about to run. A single-use approval is consumed (false when it
   * already was: an approval runs one statement once); a grant window stays open.
   */
  async use(id: string, sessionId: string): Promise<boolean> {
    const at = new Date(this.#now()).toISOString();
    let ok = false;
    const rec = await this.#deps.store.updateApproval(id, (r) => {
      if (r.status !== 'approved') return undefined;
      ok = true;
      return r.grantUntil === undefined ? { ...r, status: 'used', usedAt: at } : undefined;
    });
    if (ok && rec) this.#deps.audit({ ...this.#base('approval.used', rec), sessionId });
    return ok;
  }

  list(status?: ApprovalRecord['status'][], limit?: number): Promise<ApprovalRecord[]> {
    return this.#deps.store.listApprovals({ status, limit });
  }

  get(id: string): Promise<ApprovalRecord | undefined> {
    return isApprovalId(id) ? this.#deps.store.getApproval(id) : Promise.resolve(undefined);
  }

  /** How to approve: the CLI command, and the API URL when a public URL is configured. */
  approveHow(id: string): { command: string; url?: string } {
    const base = this.#deps.publicUrl?.replace(/\/+$/, '');
    return { command: `airlock approvals approve ${id}`, url: base ? `${base}/api/approvals/${id}` : undefined };
  }

  // ------------------------------------------------------------------------------------------

  #refusal(rec: ApprovalRecord, who: Identity): ApprovalError | undefined {
    if (rec.status !== 'pending') return new ApprovalError(409, `approval request ${rec.id} is already ${rec.status}`);
    if (Date.parse(rec.expiresAt) <= this.#now()) return new ApprovalError(409, `approval request ${rec.id} has expired`);
    if (sameIdentity(rec.requester, who)) return new ApprovalError(403, 'a requester cannot approve or reject its own request');
    if (!rec.terms.requirements.some((q) => q.approvers.some((a) => approverMatches(a, who)))) {
      const names = [...new Set(rec.terms.requirements.flatMap((q) => q.approvers))].join(', ');
      return new ApprovalError(403, `${who.subject} is not an approver of ${rec.id} (approvers: ${names})`);
    }
    if (rec.decisions.some((d) => sameIdentity({ subject: d.by, issuer: d.issuer }, who))) {
      return new ApprovalError(409, `${who.subject} has already decided on ${rec.id}`);
    }
    return undefined;
  }

  #wait(rec: ApprovalRecord): Promise<Outcome> {
    if (rec.status === 'approved') return Promise.resolve({ status: 'approved', record: rec });
    return new Promise((resolve) => {
      let set = this.#waiters.get(rec.id);
      if (!set) this.#waiters.set(rec.id, (set = new Set()));
      set.add(resolve);
    });
  }

  #arm(rec: ApprovalRecord): void {
    const ms = Math.max(0, Date.parse(rec.expiresAt) - this.#now());
    // setTimeout holds at most ~24.8 days; timeouts are far shorter, but stay safe.
    const timer = setTimeout(() => void this.#expire(rec.id), Math.min(ms, 2 ** 31 - 1));
    timer.unref();
    this.#timers.set(rec.id, timer);
  }

  async #expire(id: string): Promise<void> {
    this.#timers.delete(id);
    try {
      const rec = await this.#deps.store.updateApproval(id, (r) =>
        (r.status === 'pending' ? { ...r, status: 'expired', decidedAt: new Date(this.#now()).toISOString() } : undefined));
      if (rec?.status === 'expired') this.#settle(rec, 'expired', {});
    } catch (err) {
      this.#deps.log.warn({ err, approval: id }, 'could not expire an approval request');
    }
  }

  /** A request reached a final state: audit, notify, wake its waiters. */
  #settle(rec: ApprovalRecord, status: Outcome['status'], detail: { by?: string; reason?: string }): void {
    clearTimeout(this.#timers.get(rec.id));
    this.#timers.delete(rec.id);
    this.#event(`approval.${status}`, rec, detail);
    const waiters = this.#waiters.get(rec.id);
    this.#waiters.delete(rec.id);
    for (const w of waiters ?? []) w({ status, record: rec });
  }

  #base(type: AuditEvent['type'], rec: ApprovalRecord): AuditEvent {
    return {
      time: new Date(this.#now()).toISOString(), type, subject: rec.requester.subject, issuer: rec.requester.issuer,
      connection: rec.connection, statement: rec.statement, policy: rec.policy, rule: rec.rule, bundleVersion: rec.bundleVersion,
      detail: { approval: rec.id, status: rec.status },
    };
  }

  #event(type: `approval.${'requested' | 'approved' | 'rejected' | 'expired' | 'cancelled'}`, rec: ApprovalRecord,
    detail: { by?: string; reason?: string; partial?: boolean } = {}): void {
    const base = this.#base(type, rec);
    this.#deps.audit({ ...base, reason: detail.reason, detail: { ...base.detail, by: detail.by, partial: detail.partial } });
    if (type === 'approval.cancelled' || detail.partial) return;
    const how = this.approveHow(rec.id);
    this.#deps.notify({
      event: type, id: rec.id, requester: rec.requester.subject, connection: rec.connection, statement: rec.statement,
      reason: rec.reason, policy: rec.policy ?? '', rule: rec.rule ?? '', approvers: approversOf(rec.terms.requirements),
      expiresAt: rec.expiresAt, approveCommand: how.command, url: how.url, by: detail.by, decisionReason: detail.reason,
    });
  }
}

export function approversOf(requirements: ApprovalRequirement[]): string[] {
  return [...new Set(requirements.flatMap((q) => q.approvers))];
}

/** Every requirement has its number of distinct approvers among the approvals given. */
function requirementsMet(rec: ApprovalRecord): boolean {
  const approvals = rec.decisions.filter((d) => d.verdict === 'approve');
  return rec.terms.requirements.every((q) => {
    const eligible = approvals.filter((d) => q.approvers.some((a) => approverMatches(a, { subject: d.by, groups: d.groups })));
    return eligible.length >= q.minApprovals;
  });
}
