// `airlock approvals list|show|approve|reject`: a client of the gateway's approvals API, so that
// every decision is made by an authenticated identity (its token, from AIRLOCK_TOKEN or --token).
import type { Command } from 'commander';
import { call, runApiCommand as run, type ApiOptions } from './api-client.ts';
import type { ApprovalRecord } from '../core/types.ts';
import { formatTable, oneLine } from './format.ts';

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
