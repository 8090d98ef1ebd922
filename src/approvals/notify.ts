// Approval notifiers: tell people that a statement waits for them (and how it ended).
//
// Two kinds of target: generic JSON webhooks, HMAC-signed so a receiver can tell the request came
// from this gateway, and Slack incoming webhooks. Delivery is fire and forget: notify() returns at
// once and deliveries run in the background with retries, because a slow or broken chat service
// must never hold up the gateway (the approval itself lives in the store, not in the message).
// Delivery is at least once: a timed-out attempt may still have arrived, and is sent again.
//
// Secrets: webhook secrets and Slack webhook URLs (the URL *is* the credential) never reach the
// log; targets are logged by kind, index and host only.

import { createHmac, timingSafeEqual } from 'node:crypto';

/** What notifiers are told about an approval request (no secrets: statement text is already what the audit log holds). */
export interface ApprovalNotice {
  event: 'approval.requested' | 'approval.approved' | 'approval.rejected' | 'approval.expired';
  /** Approval id, e.g. "apr_3f9c2a...". */
  id: string;
  /** Subject of the identity that asked. */
  requester: string;
  connection: string;
  statement: string;
  /** Why approval is needed (policy reason). */
  reason: string;
  policy: string;
  rule: string;
  /** e.g. ["group:dba", "user:alice"]. */
  approvers: string[];
  /** ISO time. */
  expiresAt: string;
  /** e.g. "airlock approvals approve apr_... --reason '...'". */
  approveCommand: string;
  /** e.g. "https://gw.example.com:8080/api/approvals/apr_..." when a public URL is configured. */
  url?: string;
  /** Who approved/rejected (for those events). */
  by?: string;
  decisionReason?: string;
}

export interface NotifierConfig {
  /** Generic JSON webhooks, HMAC-signed. */
  webhooks?: { url: string; secret: string }[];
  /** Slack incoming webhooks. */
  slack?: { webhook_url: string }[];
}

export interface NotifierLog {
  warn(o: object, msg?: string): void;
  info(o: object, msg?: string): void;
}

export interface NotifierOptions {
  /** Attempts per delivery, the first included (default 3). */
  attempts?: number;
  /** Wait before the second attempt, doubled for each further one (default 1000 ms: 1 s, 2 s, 4 s...). */
  backoffMs?: number;
  /** Time limit of one attempt, response body included (default 5000 ms). */
  timeoutMs?: number;
  /** Deliveries in flight beyond which new ones are dropped with a warning (default 1000): bounds memory when a target hangs. */
  maxPending?: number;
}

export const SIGNATURE_HEADER = 'x-airlock-signature';
export const TIMESTAMP_HEADER = 'x-airlock-timestamp';
/** Statements longer than this are cut in Slack messages (a section holds at most 3,000 characters). */
export const SLACK_STATEMENT_MAX = 2500;
/** Longest Retry-After (429/503) honoured; longer ones fall back to the normal backoff. */
const MAX_RETRY_AFTER_MS = 30_000;
const USER_AGENT = 'airlock-approvals/1';

interface Target {
  kind: 'webhook' | 'slack';
  url: URL;
  /** Safe to log: kind, index and host, e.g. "slack[0] hooks.slack.com". */
  label: string;
  secret?: string;
}

/** One attempt's outcome. `retry` says whether another attempt may help. */
type Attempt = { ok: true; status: number } | { ok: false; retry: boolean; error: string; retryAfterMs?: number };

function parseTarget(kind: Target['kind'], raw: string, where: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    // Not echoing the value: for Slack it is the credential.
    throw new Error(`${where}: not a valid URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`${where}: must be an http(s) URL`);
  if (url.username || url.password) throw new Error(`${where}: credentials in the URL are not supported`);
  if (kind === 'slack' && url.pathname.length <= 1) throw new Error(`${where}: not a Slack incoming webhook URL`);
  return url;
}

export class Notifier {
  private readonly targets: Target[] = [];
  private readonly pending = new Set<Promise<void>>();
  private readonly attempts: number;
  private readonly backoffMs: number;
  private readonly timeoutMs: number;
  private readonly maxPending: number;

  constructor(cfg: NotifierConfig, private readonly log: NotifierLog, opts: NotifierOptions = {}) {
    this.attempts = Math.max(1, Math.floor(opts.attempts ?? 3));
    this.backoffMs = Math.max(0, opts.backoffMs ?? 1000);
    this.timeoutMs = Math.max(1, opts.timeoutMs ?? 5000);
    this.maxPending = Math.max(1, opts.maxPending ?? 1000);
    (cfg.webhooks ?? []).forEach((w, i) => {
      const where = `approvals.notify.webhooks[${i}]`;
      const url = parseTarget('webhook', w.url, `${where}.url`);
      // An empty key would make every signature forgeable by anyone.
      if (typeof w.secret !== 'string' || w.secret.length === 0) throw new Error(`${where}.secret: must not be empty`);
      this.targets.push({ kind: 'webhook', url, label: `webhook[${i}] ${url.host}`, secret: w.secret });
    });
    (cfg.slack ?? []).forEach((s, i) => {
      const url = parseTarget('slack', s.webhook_url, `approvals.notify.slack[${i}].webhook_url`);
      this.targets.push({ kind: 'slack', url, label: `slack[${i}] ${url.host}` });
    });
  }

  /** Fire and forget: never throws, never blocks the caller (deliveries run in the background with retries). */
  notify(n: ApprovalNotice): void {
    try {
      if (this.targets.length === 0) return;
      // Serialized now, so later changes to `n` by the caller do not leak into the messages.
      const webhookBody = JSON.stringify({ type: n.event, approval: n, sentAt: new Date().toISOString() });
      const slackBody = this.targets.some((t) => t.kind === 'slack') ? JSON.stringify(slackMessage(n)) : '';
      for (const t of this.targets) {
        const ctx = { notifier: t.label, approval: n.id, event: n.event };
        if (this.pending.size >= this.maxPending) {
          this.say('warn', { ...ctx, pending: this.pending.size }, 'approval notification dropped: too many deliveries in flight');
          continue;
        }
        const p = this.deliver(t, t.kind === 'slack' ? slackBody : webhookBody, ctx);
        this.pending.add(p);
        void p.finally(() => this.pending.delete(p));
      }
    } catch (err) {
      this.say('warn', { approval: safeId(n), error: errorText(err) }, 'approval notification could not be prepared');
    }
  }

  /** Resolves when every delivery started so far has finished (delivered or given up): for tests and graceful shutdown. */
  async idle(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  /** Runs every attempt of one delivery; resolves (never rejects) when delivered or given up. */
  private async deliver(t: Target, body: string, ctx: object): Promise<void> {
    // Yield first: not even the request setup runs on the caller's turn.
    await new Promise<void>((resolve) => setImmediate(resolve));
    for (let attempt = 1; ; attempt++) {
      const r = await this.attempt(t, body);
      if (r.ok) {
        this.say('info', { ...ctx, attempt, status: r.status }, 'approval notification delivered');
        return;
      }
      this.say('warn', { ...ctx, attempt, attempts: this.attempts, error: r.error }, 'approval notification attempt failed');
      if (!r.retry || attempt >= this.attempts) {
        this.say('warn', { ...ctx, attempts: attempt, error: r.error }, 'approval notification given up');
        return;
      }
      const backoff = this.backoffMs * 2 ** (attempt - 1);
      const wait = r.retryAfterMs !== undefined ? Math.max(backoff, r.retryAfterMs) : backoff;
      await new Promise<void>((resolve) => setTimeout(resolve, wait));
    }
  }

  /** A throwing logger must neither reach the caller nor cut retries short. */
  private say(level: 'info' | 'warn', o: object, msg: string): void {
    try {
      this.log[level](o, msg);
    } catch {
      // nothing better to do
    }
  }

  private async attempt(t: Target, body: string): Promise<Attempt> {
    const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': USER_AGENT };
    if (t.secret !== undefined) {
      // Signed per attempt, so a retry after a long backoff still carries a fresh timestamp.
      const ts = String(Math.floor(Date.now() / 1000));
      headers[TIMESTAMP_HEADER] = ts;
      headers[SIGNATURE_HEADER] = `v1=${sign(t.secret, ts, body)}`;
    }
    try {
      const res = await fetch(t.url, {
        method: 'POST',
        headers,
        body,
        // A redirect would replay the signed request to wherever it points: configure final URLs.
        redirect: 'manual',
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      if (res.status >= 200 && res.status < 300) {
        await res.body?.cancel().catch(() => {});
        return { ok: true, status: res.status };
      }
      const said = await res.text().then((s) => s.slice(0, 200).trim(), () => '');
      const error = scrub(`HTTP ${res.status}${said ? `: ${said}` : ''}`, t.url);
      if (res.status >= 300 && res.status < 400) return { ok: false, retry: false, error: `${error} (redirects are not followed)` };
      const retry = res.status >= 500 || res.status === 429;
      const retryAfterMs = retry ? parseRetryAfter(res.headers.get('retry-after')) : undefined;
      return retryAfterMs === undefined ? { ok: false, retry, error } : { ok: false, retry, error, retryAfterMs };
    } catch (err) {
      const name = (err as { name?: unknown } | null)?.name;
      const timedOut = name === 'TimeoutError' || name === 'AbortError';
      return { ok: false, retry: true, error: timedOut ? `timed out after ${this.timeoutMs} ms` : scrub(errorText(err), t.url) };
    }
  }
}

function sign(secret: string, timestamp: string, body: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.`, 'utf8').update(body, 'utf8').digest('hex');
}

const SIG_RE = /^v1=([0-9a-f]{64})$/i;

/**
 * Verifies a webhook signature (exported so receivers/tests/docs can use the same code).
 * `body` must be the raw request body, not re-serialized JSON. Does not check the timestamp's
 * age: receivers must also reject old timestamps (see docs/approvals-notifications.md).
 */
export function verifyWebhookSignature(secret: string, timestamp: string, body: string, signatureHeader: string): boolean {
  if (typeof secret !== 'string' || secret.length === 0) return false;
  // Digits only: anything else could shift the "timestamp.body" boundary.
  if (typeof timestamp !== 'string' || !/^\d{1,15}$/.test(timestamp)) return false;
  if (typeof body !== 'string' || typeof signatureHeader !== 'string') return false;
  const expected = Buffer.from(sign(secret, timestamp, body), 'hex');
  // Comma-separated list tolerated, so a later scheme (v2=...) can be sent alongside v1.
  let ok = false;
  for (const part of signatureHeader.split(',')) {
    const m = SIG_RE.exec(part.trim());
    if (!m) continue;
    const given = Buffer.from(m[1]!, 'hex');
    if (given.length === expected.length && timingSafeEqual(given, expected)) ok = true;
  }
  return ok;
}

function parseRetryAfter(v: string | null): number | undefined {
  if (v === null || !/^\d+$/.test(v.trim())) return undefined;
  const ms = Number(v.trim()) * 1000;
  return ms <= MAX_RETRY_AFTER_MS ? ms : undefined;
}

function errorText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  // fetch() says only "fetch failed"; the reason (ECONNREFUSED, ENOTFOUND...) is in the cause.
  const cause = err.cause instanceof Error ? err.cause : undefined;
  const code = cause && 'code' in cause ? String((cause as NodeJS.ErrnoException).code) : undefined;
  return [err.message, cause?.message, code && !cause?.message.includes(code) ? code : undefined].filter(Boolean).join(': ');
}

/** Removes the URL's path and query (which may be the credential) from any text bound for the log. */
function scrub(text: string, url: URL): string {
  let out = text.split(url.href).join(url.host);
  const secretParts = [url.pathname + url.search, url.pathname, url.search].filter((s) => s.length > 1);
  for (const s of secretParts) out = out.split(s).join('/***');
  return out;
}

function safeId(n: unknown): string | undefined {
  const id = n && typeof n === 'object' ? (n as { id?: unknown }).id : undefined;
  return typeof id === 'string' ? id.slice(0, 64) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Slack message. Everything the requester controls (statement, subject) is escaped, so a
// statement cannot ping @channel or hide a link in the message.

type SlackBlock = Record<string, unknown>;

/** Slack's mrkdwn escaping (&, <, >), stopping before `max` escaped characters; `cut` says whether text was dropped. */
function escapeUpTo(s: string, max: number): { text: string; cut: boolean } {
  let out = '';
  for (const ch of s) {
    const e = ch === '&' ? '&amp;' : ch === '<' ? '&lt;' : ch === '>' ? '&gt;' : ch;
    if (out.length + e.length > max) return { text: out, cut: true };
    out += e;
  }
  return { text: out, cut: false };
}

function esc(s: string, max = 1900): string {
  const r = escapeUpTo(s, max);
  return r.cut ? `${r.text}…` : r.text;
}

/** Contents of a ``` block: a run of backticks in the text would otherwise close it. */
function codeBlock(s: string, max: number): { text: string; cut: boolean } {
  const r = escapeUpTo(s.replace(/`{3,}/g, (m) => m.split('').join('\u200b')), max);
  return { text: '```' + r.text + '```', cut: r.cut };
}

function inlineCode(s: string): string {
  return '`' + esc(s.replace(/`/g, "'"), 200) + '`';
}

function slackDate(iso: string): string {
  const t = Date.parse(iso);
  // Shown in each reader's own time zone; the ISO text is the fallback.
  return Number.isFinite(t) ? `<!date^${Math.floor(t / 1000)}^{date_short_pretty} {time}|${esc(iso, 100)}>` : esc(iso, 100);
}

function slackLink(url: string, label: string): string {
  return `<${url.replace(/&/g, '&amp;').replace(/</g, '%3C').replace(/>/g, '%3E').replace(/\|/g, '%7C')}|${label}>`;
}

/** `{ text, blocks }` for a Slack incoming webhook. */
export function slackMessage(n: ApprovalNotice): { text: string; blocks: SlackBlock[] } {
  const who = esc(n.requester, 200);
  const conn = esc(n.connection, 200);
  const id = esc(n.id, 100);
  if (n.event !== 'approval.requested') {
    const status = n.event === 'approval.approved'
      ? `:white_check_mark: *Approved*${n.by ? ` by ${esc(n.by, 200)}` : ''}`
      : n.event === 'approval.rejected'
        ? `:x: *Rejected*${n.by ? ` by ${esc(n.by, 200)}` : ''}`
        : ':hourglass: *Expired* without enough approvals';
    const because = n.decisionReason ? `\n> ${esc(n.decisionReason, 1000).replace(/\n/g, '\n> ')}` : '';
    // The first line of the statement, so readers can tell which request this was.
    const firstLine = esc(n.statement.trim().split('\n', 1)[0] || '(empty statement)', 200);
    const context = n.url ? `${firstLine}  ${slackLink(n.url, 'details')}` : firstLine;
    const word = n.event.slice('approval.'.length);
    const by = n.by && n.event !== 'approval.expired' ? ` by ${esc(n.by, 200)}` : '';
    return {
      text: `Approval ${id} ${word}${by}`,
      blocks: [
        { type: 'section', text: { type: 'mrkdwn', text: `${status}: \`${id}\` (${who} on ${conn})${because}` } },
        { type: 'context', elements: [{ type: 'mrkdwn', text: context }] },
      ],
    };
  }
  const stmt = codeBlock(n.statement, SLACK_STATEMENT_MAX);
  const blocks: SlackBlock[] = [
    { type: 'header', text: { type: 'plain_text', text: `Approval requested: ${n.connection}`.slice(0, 150), emoji: false } },
    {
      type: 'section',
      fields: [
        { type: 'mrkdwn', text: `*Requester*\n${who}` },
        { type: 'mrkdwn', text: `*Connection*\n${conn}` },
        { type: 'mrkdwn', text: `*Approvers*\n${esc(n.approvers.join(', '), 500) || '(none)'}` },
        { type: 'mrkdwn', text: `*Expires*\n${slackDate(n.expiresAt)}` },
      ],
    },
    { type: 'section', text: { type: 'mrkdwn', text: `*Reason*\n${esc(n.reason)}\nPolicy ${inlineCode(n.policy)}, rule ${inlineCode(n.rule)}` } },
    { type: 'section', text: { type: 'mrkdwn', text: stmt.text } },
  ];
  if (stmt.cut) {
    blocks.push({ type: 'context', elements: [{ type: 'mrkdwn', text: `Statement truncated (${n.statement.length} characters); the full text is in the approval request.` }] });
  }
  blocks.push({ type: 'section', text: { type: 'mrkdwn', text: `*To approve*\n${codeBlock(n.approveCommand, 1000).text}` } });
  if (n.url) blocks.push({ type: 'section', text: { type: 'mrkdwn', text: `${slackLink(n.url, 'Open the approval request')}  (\`${id}\`)` } });
  else blocks.push({ type: 'context', elements: [{ type: 'mrkdwn', text: `\`${id}\`` }] });
  return { text: `Approval requested: ${who} on ${conn} (${id})`, blocks };
}
