// `airlock approvals list|show|approve|reject`: a client of the gateway's approvals API, so that
// every decision is made by an authenticated identity (its token, from AIRLOCK_TOKEN or --token).
import http from 'node:http';
import https from 'node:https';
import { X509Certificate } from 'node:crypto';
import type { Command } from 'commander';
import type { ApprovalRecord } from '../core/types.ts';
import { formatTable, oneLine } from './format.ts';

interface ApiOptions {
  api?: string;
  token?: string;
  tlsFingerprint?: string;
  config: string;
}

class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The API base URL: --api, AIRLOCK_API, else the config's api listener (https off loopback). */
async function apiBase(opts: ApiOptions): Promise<string> {
  const explicit = opts.api ?? process.env.AIRLOCK_API;
  if (explicit) return explicit.replace(/\/+$/, '');
  const { loadConfig } = await import('../config/config.ts');
  const { isLoopback } = await import('../core/net.ts');
  const { host, port } = loadConfig(opts.config, { optional: true, withoutAgent: true }).listeners.api;
  const h = host.includes(':') ? `[${host}]` : host;
  return `${isLoopback(host) ? 'http' : 'https'}://${h}:${port}`;
}

/** One JSON request. HTTPS is verified by the system CAs, or pinned with --tls-fingerprint. */
async function call(opts: ApiOptions, method: 'GET' | 'POST', path: string, body?: object): Promise<unknown> {
  const token = opts.token ?? process.env.AIRLOCK_TOKEN;
  if (!token) throw new ApiError(0, 'no token: set AIRLOCK_TOKEN (or pass --token) to the approver\'s Airlock token or JWT');
  const url = new URL(path, await apiBase(opts) + '/');
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const pin = opts.tlsFingerprint?.replace(/:/g, '').toUpperCase();
  const request = url.protocol === 'https:' ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method,
      headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(payload ? { 'content-type': 'application/json' } : {}) },
      timeout: 15_000,
      ...(pin ? {
        rejectUnauthorized: false, // replaced by the pin below
        checkServerIdentity: () => undefined,
      } : {}),
    }, (res) => {
      if (pin) {
        const cert = (res.socket as import('node:tls').TLSSocket).getPeerX509Certificate?.() as X509Certificate | undefined;
        if (!cert || cert.fingerprint256.replace(/:/g, '').toUpperCase() !== pin) {
          res.destroy();
          return reject(new ApiError(0, `the API's TLS certificate does not match --tls-fingerprint`));
        }
      }
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (data += d));
      res.on('end', () => {
        let json: { error?: string } | undefined;
        try {
          json = JSON.parse(data) as { error?: string };
        } catch {
          json = undefined;
        }
        if ((res.statusCode ?? 500) >= 400) return reject(new ApiError(res.statusCode ?? 500, json?.error ?? `HTTP ${res.statusCode}`));
        resolve(json);
      });
    });
    req.on('timeout', () => req.destroy(new Error('the API did not answer within 15 s')));
    req.on('error', (err) => reject(new ApiError(0, `cannot reach the Airlock API at ${url.origin}: ${err.message}`)));
    req.end(payload);
  });
}

function since(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '';
  const s = Math.round((Date.parse(iso) - now) / 1000);
  const abs = Math.abs(s);
  const text = abs < 90 ? `${abs}s` : abs < 5400 ? `${Math.round(abs / 60)}m` : `${Math.round(abs / 3600)}h`;
  return s >= 0 ? `in ${text}` : `${text} ago`;
}


function progress(r: ApprovalRecord): string {
  const approvals = r.decisions.filter((d) => d.verdict === 'approve').length;
  const needed = r.terms.requirements.reduce((n, q) => Math.max(n, q.minApprovals), 0);
  return `${approvals}/${needed}`;
}

function describe(r: ApprovalRecord): string {
  const lines = [
    `id:          ${r.id}`,
    `status:      ${r.status}${r.grantUntil ? ` (grant window until ${r.grantUntil})` : ''}`,
    `requester:   ${r.requester.subject}${r.requester.groups.length ? ` (groups: ${r.requester.groups.join(', ')})` : ''}`,
    `connection:  ${r.connection}`,
    `reason:      ${r.reason}`,
    `policy:      ${r.policy ?? ''}${r.rule ? ` rule ${r.rule}` : ''} (version ${r.bundleVersion})`,
    `approvers:   ${r.terms.requirements.map((q) => `${q.minApprovals} of ${q.approvers.join(' | ')}`).join('; ')}`,
    `requested:   ${r.createdAt}`,
    `expires:     ${r.expiresAt} (${since(r.expiresAt)})`,
  ];
  for (const d of r.decisions) lines.push(`${d.verdict === 'approve' ? 'approved' : 'rejected'} by: ${d.by} at ${d.at}${d.reason ? ` (${d.reason})` : ''}`);
  lines.push('statement:', ...r.statement.split('\n').map((l) => `  ${l}`));
  return lines.join('\n');
}

async function run(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    console.error(`airlock: ${err.message}`);
    process.exitCode = err.status === 0 || err.status === 401 ? 3 : 1;
  }
}

export function registerApprovals(program: Command, configOption: readonly [string, string, string]): void {
  const approvals = program.command('approvals')
    .description('list and decide approval requests (statements held until a person approves them)')
    .addHelpText('after', `
The commands call the gateway's API as the identity of AIRLOCK_TOKEN (an Airlock token or an
OIDC JWT): you see the requests you made or may decide on; you cannot decide on your own.

Examples:
  export AIRLOCK_TOKEN=alk_...            # the approver's token
  airlock approvals list                  # pending requests
  airlock approvals show apr_0123456789abcdef0123
  airlock approvals approve apr_0123456789abcdef0123 --reason "ticket OPS-42"
  airlock approvals reject apr_0123456789abcdef0123 --reason "wrong table"

Exit status: 0 done, 1 refused by the gateway (not an approver, already decided...), 3 cannot
reach or authenticate to the API.`);
  const common = (c: Command) => c
    .option('--api <url>', 'gateway API base URL (default: AIRLOCK_API, else the api listener of --config)')
    .option('--token <token>', 'Airlock token or JWT (default: AIRLOCK_TOKEN; prefer the variable: arguments show in ps)')
    .option('--tls-fingerprint <sha256>', 'pin the API certificate (as printed by `airlock up`)')
    .option(...configOption);

  common(approvals.command('list').description('list approval requests (default: pending ones)'))
    .option('--status <list>', 'comma-separated: pending, approved, rejected, expired, cancelled, used, or all', 'pending')
    .option('--limit <n>', 'at most this many', '100')
    .option('--json', 'print JSON')
    .action((opts: ApiOptions & { status: string; limit: string; json?: boolean }) => run(async () => {
      const q = new URLSearchParams({ limit: opts.limit });
      if (opts.status !== 'all') q.set('status', opts.status);
      const res = (await call(opts, 'GET', `api/approvals?${q}`)) as { approvals: ApprovalRecord[] };
      if (opts.json) return console.log(JSON.stringify(res.approvals, null, 2));
      if (res.approvals.length === 0) return console.log(`no ${opts.status === 'all' ? '' : `${opts.status} `}approval requests`);
      console.log(formatTable(res.approvals.map((r) => ({
        id: r.id, status: r.status, approvals: progress(r), requester: r.requester.subject, connection: r.connection,
        expires: r.status === 'pending' ? since(r.expiresAt) : '', statement: oneLine(r.statement, 60),
      }))));
    }));

  common(approvals.command('show').description('show one request: statement, reason, approvers, decisions').argument('<id>'))
    .option('--json', 'print JSON')
    .action((id: string, opts: ApiOptions & { json?: boolean }) => run(async () => {
      const res = (await call(opts, 'GET', `api/approvals/${encodeURIComponent(id)}`)) as { approval: ApprovalRecord };
      console.log(opts.json ? JSON.stringify(res.approval, null, 2) : describe(res.approval));
    }));

  for (const verdict of ['approve', 'reject'] as const) {
    common(approvals.command(verdict).description(`${verdict} a pending request`).argument('<id>'))
      .option('--reason <text>', 'why (recorded in the audit log and shown to the requester)')
      .option('--json', 'print JSON')
      .action((id: string, opts: ApiOptions & { reason?: string; json?: boolean }) => run(async () => {
        const res = (await call(opts, 'POST', `api/approvals/${encodeURIComponent(id)}/${verdict}`, { reason: opts.reason })) as { approval: ApprovalRecord };
        const r = res.approval;
        if (opts.json) return console.log(JSON.stringify(r, null, 2));
        if (r.status === 'approved') console.log(`approved ${r.id}${r.grantUntil ? `: ${r.requester.subject} may run matching statements until ${r.grantUntil}` : ': the statement runs now'}`);
        else if (r.status === 'rejected') console.log(`rejected ${r.id}: the requester gets an error`);
        else console.log(`recorded your approval of ${r.id} (${progress(r)} approvals so far; still pending)`);
      }));
  }
}
