// `airlock exec CONNECTION -c SQL`: one statement through the gateway, for CI jobs and AI agents.
// Predictable output (a psql-like table, or one JSON document with --json), errors on stderr,
// stable exit codes, and a visible status line while the gateway holds the statement for approval.
// The `pg` driver is imported when the command runs, so that `airlock --help` stays fast.
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type pg from 'pg';
import { loadConfig, parseHostPort, type HostPort } from '../config/config.ts';
import { isLoopback } from '../core/net.ts';
import { durationMs } from '../policy/schema.ts';

/** Exit statuses of `airlock exec` (documented in docs/exec.md; scripts depend on them). */
export const EXIT = {
  ok: 0,
  /** The statement failed or was refused. */
  failed: 1,
  /** Usage error: missing SQL, bad option, no token, TLS not configured for a remote gateway. */
  usage: 2,
  /** Cannot reach the gateway, TLS verification failed, or the gateway refused the session. */
  connect: 3,
  /** The statement was held for approval and then rejected, or the approval expired. */
  approval: 4,
  /** `--timeout` was reached; the statement was cancelled. */
  timeout: 124,
  sigint: 130,
  sigterm: 143,
} as const;

export const DEFAULT_GATEWAY = '127.0.0.1:15432';
export const DEFAULT_USER = 'airlock-exec';
/** SQLSTATE of the gateway's "statement held for approval" notice (class 01: warning). */
export const HELD_SQLSTATE = '01AL0';
/** SQLSTATE of refusals (insufficient_privilege): policy denials, rejected or expired approvals. */
const REFUSED_SQLSTATE = '42501';

/** A usage problem found by `airlock exec` itself (exit status 2). */
export class ExecUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ExecUsageError';
  }
}

// ---------------------------------------------------------------------------------------------
// Approval notices and the status line

/** The fields of a NoticeResponse that matter here (pg's NoticeMessage has them). */
export interface NoticeLike {
  severity?: string;
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
}

export interface HeldNotice {
  /** Approval id, `apr_` and at least 16 hex digits. */
  id: string;
  /** Why the statement needs approval (the policy's words). */
  reason: string;
  /** The command that approves it, as the gateway suggests it. */
  approveCommand: string;
  /** A link to approve it (the first URL in the detail), when the gateway sends one. */
  url?: string;
  /** The detail's other lines (e.g. `or: POST https://…/approve`), shown once when the wait starts. */
  otherDetail: string[];
  /** When the approval request expires (the gateway then refuses the statement). */
  expiresAt?: Date;
}

const HELD_MESSAGE_RE = /^airlock: statement held for approval (apr_[0-9a-f]{16,}):[ \t]*([\s\S]*)$/;

/**
 * Recognises the gateway's "statement held for approval" notice: SQLSTATE 01AL0 and the message
 * `airlock: statement held for approval <ID>: <reason>`. The detail carries
 * `approve with: <command>` (and possibly a URL line), the hint `expires at <ISO time>`.
 * Returns undefined for any other notice.
 */
export function parseHeldNotice(notice: NoticeLike | null | undefined): HeldNotice | undefined {
  if (!notice || notice.code !== HELD_SQLSTATE || typeof notice.message !== 'string') return undefined;
  const m = HELD_MESSAGE_RE.exec(notice.message.trim());
  if (!m) return undefined;
  const id = m[1];
  let approveCommand: string | undefined;
  let url: string | undefined;
  const otherDetail: string[] = [];
  for (const raw of (notice.detail ?? '').split(/\r?\n/)) {
    const line = raw.trim();
    if (!line) continue;
    const cmd = /^approve with:\s*(\S.*)$/i.exec(line);
    if (cmd && !approveCommand) {
      approveCommand = cmd[1].trim();
      continue;
    }
    otherDetail.push(line);
    const link = /\bhttps?:\/\/\S+/.exec(line);
    if (link && !url) url = link[0];
  }
  const exp = /^expires at\s+(\S+)/i.exec((notice.hint ?? '').trim());
  const expiresMs = exp ? Date.parse(exp[1]) : NaN;
  return {
    id,
    reason: m[2].trim(),
    approveCommand: approveCommand ?? `airlock approvals approve ${id}`,
    ...(url ? { url } : {}),
    otherDetail,
    ...(Number.isFinite(expiresMs) ? { expiresAt: new Date(expiresMs) } : {}),
  };
}

/** `12s`, `9m48s`, `2h05m`, `3d04h` (rounded down; negative values count as 0). */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

/** Control characters from the server never reach the terminal in the status line. */
const oneLine = (s: string) => s.replace(/[\x00-\x1f\x7f-\x9f]+/g, ' ').trim();

/**
 * The status line while a statement waits:
 * `waiting for approval apr_… (12s, expires in 9m48s) — approve: airlock approvals approve apr_…`
 */
export function formatStatusLine(held: HeldNotice, waitedMs: number, now: number): string {
  const parts = [formatDuration(waitedMs)];
  if (held.expiresAt) {
    const left = held.expiresAt.getTime() - now;
    parts.push(left > 0 ? `expires in ${formatDuration(left)}` : 'expired');
  }
  return oneLine(`waiting for approval ${held.id} (${parts.join(', ')}) — approve: ${held.approveCommand}`);
}

export interface StatusStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/**
 * Shows the approval wait on stderr. On a terminal: one line rewritten every second. Otherwise
 * (CI logs): a line at the start and then one every 30 seconds.
 */
export class ApprovalStatus {
  private current?: HeldNotice;
  private since = 0;
  private timer?: NodeJS.Timeout;
  private drawn = false;
  private readonly tty: boolean;
  private readonly intervalMs: number;

  constructor(private readonly out: StatusStream, private readonly now: () => number = Date.now,
    opts: { tty?: boolean; intervalMs?: number } = {}) {
    this.tty = opts.tty ?? !!out.isTTY;
    this.intervalMs = opts.intervalMs ?? (this.tty ? 1000 : 30_000);
  }

  get held(): HeldNotice | undefined {
    return this.current;
  }

  /** Milliseconds since the statement was held (0 when it was not). */
  get waitedMs(): number {
    return this.current ? this.now() - this.since : 0;
  }

  /** A held notice arrived: start showing the wait (a repeated notice for the same id is ignored). */
  hold(held: HeldNotice): void {
    if (this.current?.id === held.id) return;
    this.clear();
    this.current = held;
    this.since = this.now();
    this.out.write(`${oneLine(`airlock: statement held for approval ${held.id}: ${held.reason}`)}\n`);
    for (const line of held.otherDetail) this.out.write(`${oneLine(`airlock: ${line}`)}\n`);
    this.tick();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  /** Redraws (terminal) or prints (log) the status line; called by the timer. */
  tick(): void {
    if (!this.current) return;
    const line = formatStatusLine(this.current, this.waitedMs, this.now());
    if (this.tty) {
      const max = (this.out.columns ?? 0) > 1 ? this.out.columns! - 1 : Infinity;
      const chars = [...line];
      const shown = chars.length > max ? `${chars.slice(0, max - 1).join('')}…` : line;
      this.out.write(`\r\x1b[2K${shown}`);
      this.drawn = true;
    } else {
      this.out.write(`${line}\n`);
    }
  }

  /** Prints a whole line (another notice) without breaking the status line. */
  print(text: string): void {
    const wasDrawn = this.drawn;
    this.clear();
    this.out.write(text.endsWith('\n') ? text : `${text}\n`);
    if (wasDrawn) this.tick();
  }

  /** The statement finished: stop the timer, remove the status line, say how the wait ended. */
  finish(outcome: 'completed' | 'failed' | 'aborted'): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.clear();
    const held = this.current;
    if (!held) return;
    const waited = formatDuration(this.waitedMs);
    if (outcome === 'completed') this.out.write(`airlock: ${held.id} was approved; the statement ran after ${waited}\n`);
    else if (outcome === 'aborted') this.out.write(`airlock: stopped waiting for approval ${held.id} after ${waited}\n`);
  }

  private clear(): void {
    if (this.drawn) this.out.write('\r\x1b[2K');
    this.drawn = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Where to connect, and how

export interface GatewayTarget extends HostPort {
  /** Where the address came from, for messages. */
  source: string;
}

/** `host:port` or `[v6]:port` with a port in 1..65535. */
export function parseGatewayAddress(text: string, what: string): HostPort {
  const t = text.trim();
  if (!/^(\[[0-9a-fA-F:.]+\]|[^:\s[\]]+):\d{1,5}$/.test(t)) {
    throw new ExecUsageError(`${what}: expected HOST:PORT (e.g. 127.0.0.1:15432 or [::1]:15432), got "${text}"`);
  }
  const hp = parseHostPort(t);
  if (!(hp.port >= 1 && hp.port <= 65535)) throw new ExecUsageError(`${what}: port out of range in "${text}"`);
  return hp;
}

/**
 * The gateway address: `--gateway`, else $AIRLOCK_GATEWAY, else `listeners.postgres` of `--config`
 * (./airlock.yaml when present), else 127.0.0.1:15432. A wildcard listener (0.0.0.0, ::) from the
 * config means this host.
 */
export function resolveGateway(opts: { gateway?: string; config?: string }, env: NodeJS.ProcessEnv = process.env): GatewayTarget {
  if (opts.gateway !== undefined) return { ...parseGatewayAddress(opts.gateway, '--gateway'), source: '--gateway' };
  if (env.AIRLOCK_GATEWAY) return { ...parseGatewayAddress(env.AIRLOCK_GATEWAY, 'AIRLOCK_GATEWAY'), source: 'AIRLOCK_GATEWAY' };
  const file = opts.config ?? (fs.existsSync('airlock.yaml') ? 'airlock.yaml' : undefined);
  if (file !== undefined) {
    let listener: HostPort;
    try {
      listener = loadConfig(file, { withoutAgent: true }).listeners.postgres;
    } catch (err) {
      throw new ExecUsageError((err as Error).message);
    }
    const host = listener.host === '0.0.0.0' ? '127.0.0.1' : listener.host === '::' ? '::1' : listener.host;
    return { host, port: listener.port, source: `listeners.postgres in ${file}` };
  }
  return { ...parseHostPort(DEFAULT_GATEWAY), source: 'default' };
}

/** `AB:CD:…` (64 hex digits, colons optional, any case, optional `sha256` prefix) as `AB:CD:…`. */
export function normalizeFingerprint(text: string): string {
  const hex = text.trim().replace(/^sha-?256[:= ]?\s*/i, '').replace(/:/g, '');
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new ExecUsageError(`--tls-fingerprint: expected a SHA-256 fingerprint as the gateway prints it (AB:CD:… 32 bytes), got "${text}"`);
  }
  return hex.toUpperCase().match(/../g)!.join(':');
}

export type TlsPlan =
  | { mode: 'plain' }
  | { mode: 'tls'; ca?: string; caFile?: string; fingerprint?: string };

/**
 * Plain text only to a loopback gateway, and only when neither --ca nor --tls-fingerprint is given;
 * otherwise TLS, verified against the CA (chain and host name) and/or pinned to the fingerprint.
 * Never connects.
 */
export function planTls(host: string, opts: { ca?: string; tlsFingerprint?: string }): TlsPlan {
  const fingerprint = opts.tlsFingerprint !== undefined ? normalizeFingerprint(opts.tlsFingerprint) : undefined;
  let ca: string | undefined;
  if (opts.ca !== undefined) {
    try {
      ca = fs.readFileSync(opts.ca, 'utf8');
    } catch (err) {
      throw new ExecUsageError(`--ca: cannot read ${opts.ca}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new ExecUsageError(`--ca: ${opts.ca} holds no PEM certificate`);
  }
  if (ca !== undefined || fingerprint !== undefined) return { mode: 'tls', ca, caFile: opts.ca, fingerprint };
  if (isLoopback(host)) return { mode: 'plain' };
  throw new ExecUsageError(`the gateway ${host} is not on this host, so TLS is required and must be verified: `
    + 'pass --ca FILE (the CA or certificate of the gateway) or --tls-fingerprint SHA256 (printed by `airlock up`)');
}

/** Compares a peer certificate with a pinned fingerprint; an Error when they differ. */
export function checkPinnedCertificate(cert: { fingerprint256?: string } | undefined, expected: string): Error | undefined {
  const got = cert?.fingerprint256?.toUpperCase();
  if (got === expected) return undefined;
  const err = new Error(`the gateway's TLS certificate has fingerprint ${got ?? '(none)'}, not the expected ${expected} (--tls-fingerprint)`);
  (err as NodeJS.ErrnoException).code = 'ERR_AIRLOCK_TLS_FINGERPRINT';
  return err;
}

/** Options for tls.connect (the pg driver passes them through). */
export function tlsConnectOptions(plan: Extract<TlsPlan, { mode: 'tls' }>): tls.ConnectionOptions {
  const pin = plan.fingerprint;
  if (plan.ca !== undefined) {
    return {
      ca: plan.ca,
      rejectUnauthorized: true,
      checkServerIdentity: (hostname, cert) => tls.checkServerIdentity(hostname, cert) ?? (pin ? checkPinnedCertificate(cert, pin) : undefined),
    };
  }
  // Pinned only: the chain is not verified (the gateway's certificate is usually self-signed).
  // Node calls checkServerIdentity only for a verified chain, so `enforcePin` checks the
  // certificate on 'secureConnect' as well, before the password can be sent.
  return { rejectUnauthorized: false, checkServerIdentity: (_hostname, cert) => checkPinnedCertificate(cert, pin!) };
}

/** Destroys a TLS socket whose certificate does not match the pin, right after the handshake. */
function enforcePin(socket: tls.TLSSocket, pin: string, onMismatch: (err: Error) => void): void {
  socket.once('secureConnect', () => {
    const err = checkPinnedCertificate(socket.getPeerCertificate(), pin);
    if (err) {
      onMismatch(err);
      socket.destroy(err);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Output

export interface FieldInfo {
  name: string;
  dataTypeID: number;
}

/** One statement's outcome as --json prints it. */
export interface ResultDocument {
  /** The command tag without counts: SELECT, INSERT, CREATE TABLE, … */
  command: string | null;
  /** The command tag as PostgreSQL sent it: `SELECT 3`, `INSERT 0 1`, `CREATE TABLE`. */
  tag: string | null;
  /** Rows returned or affected; null for commands without a count. */
  rowCount: number | null;
  fields: FieldInfo[];
  /** Values as PostgreSQL sent them (text), NULL as null. */
  rows: Record<string, string | null>[];
}

/** int2, int4, int8, oid, xid, cid, float4, float8, money, numeric: right-aligned as in psql. */
const NUMERIC_TYPES = new Set([20, 21, 23, 26, 28, 29, 700, 701, 790, 1700]);
const width = (s: string) => [...s].length;
const padEnd = (s: string, w: number) => s + ' '.repeat(Math.max(0, w - width(s)));
const padStart = (s: string, w: number) => ' '.repeat(Math.max(0, w - width(s))) + s;

/**
 * An aligned table as psql prints it by default: centred headers, numbers right-aligned, NULL
 * empty, `+` marking a value continued on the next line, and the `(N rows)` footer. Lines carry
 * no trailing blanks.
 */
export function formatResultTable(fields: FieldInfo[], rows: (string | null)[][]): string {
  const footer = `(${rows.length} ${rows.length === 1 ? 'row' : 'rows'})`;
  if (fields.length === 0) return ['--', footer].join('\n');
  const cells = rows.map((r) => fields.map((_, i) => (r[i] ?? '').split(/\r?\n/)));
  const widths = fields.map((f, i) => Math.max(width(f.name), ...cells.map((row) => Math.max(...row[i].map(width)))));
  const right = fields.map((f) => NUMERIC_TYPES.has(f.dataTypeID));
  const lines: string[] = [];
  lines.push(fields.map((f, i) => {
    const left = Math.floor((widths[i] - width(f.name)) / 2);
    return ` ${padEnd(' '.repeat(left) + f.name, widths[i])} `;
  }).join('|'));
  lines.push(widths.map((w) => '-'.repeat(w + 2)).join('+'));
  for (const row of cells) {
    const height = Math.max(...row.map((c) => c.length));
    for (let k = 0; k < height; k++) {
      lines.push(row.map((c, i) => {
        const text = c[k] ?? '';
        const padded = right[i] ? padStart(text, widths[i]) : padEnd(text, widths[i]);
        return ` ${padded}${k < c.length - 1 ? '+' : ' '}`;
      }).join('|'));
    }
  }
  lines.push(footer);
  return lines.map((l) => l.trimEnd()).join('\n');
}

/** `SELECT 3` → `SELECT`, `INSERT 0 1` → `INSERT`, `CREATE TABLE` → `CREATE TABLE`. */
export function commandOfTag(tag: string): string {
  return tag.replace(/(\s+\d+)+$/, '');
}

/** Object keys for the row objects: the column names, later duplicates as `name_2`, `name_3`, … */
export function rowKeys(fields: FieldInfo[]): string[] {
  const used = new Set<string>();
  return fields.map((f) => {
    let key = f.name;
    for (let n = 2; used.has(key); n++) key = `${f.name}_${n}`;
    used.add(key);
    return key;
  });
}

interface RawResult {
  tag: string | null;
  rowCount: number | null;
  fields: FieldInfo[];
  rows: (string | null)[][];
}

export function resultDocument(r: RawResult): ResultDocument {
  const keys = rowKeys(r.fields);
  return {
    command: r.tag !== null ? commandOfTag(r.tag) : null,
    tag: r.tag,
    rowCount: r.rowCount,
    fields: r.fields.map((f) => ({ name: f.name, dataTypeID: f.dataTypeID })),
    rows: r.rows.map((row) => Object.fromEntries(keys.map((k, i) => [k, row[i] ?? null]))),
  };
}

/** Text output: a table for row-returning statements, the command tag for the others. */
export function formatResultsText(results: RawResult[]): string {
  const blocks: string[] = [];
  for (const r of results) {
    const command = r.tag !== null ? commandOfTag(r.tag) : '';
    if (r.fields.length > 0 || command === 'SELECT') {
      let block = formatResultTable(r.fields, r.rows);
      // psql also prints the tag after RETURNING rows.
      if (r.tag && /^(INSERT|UPDATE|DELETE|MERGE)$/.test(command)) block += `\n${r.tag}`;
      blocks.push(`${block}\n`);
    } else if (r.tag) {
      blocks.push(r.tag);
    }
  }
  // A blank line after each table, as psql does; none after the last block.
  return blocks.join('\n').replace(/\n+$/, '');
}

// ---------------------------------------------------------------------------------------------
// Errors

export interface ErrorDocument {
  code: string | null;
  message: string;
  detail: string | null;
  hint: string | null;
}

interface PgLikeError extends Error {
  severity?: string;
  code?: string;
  detail?: string;
  hint?: string;
  errors?: unknown[];
}

const isServerError = (err: PgLikeError) => typeof err.severity === 'string' && typeof err.code === 'string' && /^[0-9A-Z]{5}$/.test(err.code);

function describe(err: unknown): { server: boolean; severity: string; doc: ErrorDocument } {
  const e = (err ?? {}) as PgLikeError;
  if (isServerError(e)) {
    return { server: true, severity: e.severity!, doc: { code: e.code!, message: e.message, detail: e.detail ?? null, hint: e.hint ?? null } };
  }
  // Node's AggregateError (several addresses tried) has no message of its own.
  let message = e.message || '';
  if (!message && Array.isArray(e.errors) && e.errors.length) message = (e.errors as Error[]).map((x) => x?.message).filter(Boolean).join('; ');
  return { server: false, severity: 'ERROR', doc: { code: null, message: message || String(err), detail: null, hint: null } };
}

function errorLines(severity: string, doc: ErrorDocument, prefix = ''): string {
  const lines = [`${severity}: ${prefix}${doc.message}`];
  if (doc.detail) lines.push(`DETAIL: ${doc.detail}`);
  if (doc.hint) lines.push(`HINT: ${doc.hint}`);
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// The command

export interface ExecOptions {
  command?: string;
  file?: string;
  json?: boolean;
  gateway?: string;
  config?: string;
  token?: string;
  user: string;
  ca?: string;
  tlsFingerprint?: string;
  timeout?: number;
  connectTimeout: number;
}

function durationOption(name: string) {
  return (text: string): number => {
    const ms = durationMs(text.trim());
    if (ms === undefined) throw new InvalidArgumentError(`invalid duration "${text}" (use e.g. 30s, 5m, 1h, 1h30m; a bare number is seconds)`);
    if (!(ms > 0)) throw new InvalidArgumentError(`${name} must be positive`);
    return ms;
  };
}

const HELP_AFTER = `
The SQL is sent as one simple-query message (like psql -c). Values are printed as PostgreSQL
sends them: an aligned table with a "(N rows)" footer, or with --json one JSON document on one
line: {"command","tag","rowCount","fields":[{"name","dataTypeID"}],"rows":[{...}]} (values as
text, NULL as null). Statements without rows print their command tag, e.g. "DELETE 3".

Gateway address: --gateway, else $AIRLOCK_GATEWAY, else listeners.postgres of --config
(./airlock.yaml when present), else ${DEFAULT_GATEWAY}.
Token: $AIRLOCK_TOKEN, or --token (the environment is preferred: the command line of a
process is visible to other users in \`ps\`).
TLS: plain text only to a gateway on this host (loopback). Any other gateway needs TLS with
--ca FILE (verifies the chain and host name) or --tls-fingerprint SHA256 (pins the
certificate whose fingerprint \`airlock up\` prints); both may be given.

Approvals: when a policy makes the statement wait for approval, the gateway holds it and a
status line on stderr shows the approval id, the time waited, the expiry and the approve
command (on a terminal rewritten every second; in logs a line every 30 s). The command
waits until the statement runs (approved), or is rejected or expires (exit status 4).

Exit status:
  0    success
  1    the statement failed or was refused by policy (ERROR: ... on stderr)
  2    usage error (no SQL, bad option, no token, TLS not configured for a remote gateway)
  3    cannot connect or authenticate (the gateway's message on stderr)
  4    the statement was held for approval, then rejected or expired
  124  --timeout reached (the statement is cancelled)
  130  interrupted (SIGINT; 143 for SIGTERM); the statement is cancelled
With --json, failures with status 1, 3, 4 and 124 also print
{"error":{"code","message","detail","hint"}} on stdout (code: the SQLSTATE, or null).

Examples:
  airlock exec analytics -c "SELECT count(*) FROM orders"
  airlock exec analytics --json -c "SELECT id, email FROM customers LIMIT 10"
  echo "DELETE FROM staging WHERE day < now() - interval '30 days'" | airlock exec analytics -f -

  # CI: AIRLOCK_TOKEN (a secret) and AIRLOCK_GATEWAY are set in the job's environment
  airlock exec analytics --tls-fingerprint "$AIRLOCK_TLS_FINGERPRINT" --timeout 15m \\
    --json -c "UPDATE jobs SET done = true WHERE id = 42"

Docs: docs/exec.md`;

/** Registers `airlock exec` on the program. */
export function registerExec(program: Command): void {
  const cmd = program
    .command('exec')
    .description('run one SQL statement through the gateway and print the result (for CI jobs and agents)')
    .argument('<connection>', 'connection name (the database name clients use), e.g. analytics')
    .option('-c, --command <sql>', 'the SQL to run')
    .option('-f, --file <file>', 'read the SQL from a file ("-" for stdin)')
    .option('--json', 'print one JSON document (result or error) on stdout')
    .option('--gateway <host:port>', `gateway PostgreSQL listener (default: $AIRLOCK_GATEWAY, listeners.postgres of --config, ${DEFAULT_GATEWAY})`)
    .option('--config <file>', 'airlock.yaml to take the gateway address from (default: ./airlock.yaml when present)')
    .option('--token <token>', 'Airlock token or JWT (default: $AIRLOCK_TOKEN, preferred: argv is visible in ps)')
    .option('--user <name>', 'user name sent to the gateway (shown in the audit log)', DEFAULT_USER)
    .option('--ca <file>', 'verify the gateway\'s TLS certificate with this CA/certificate (PEM)')
    .option('--tls-fingerprint <sha256>', 'pin the gateway\'s TLS certificate (colon-hex SHA-256, as `airlock up` prints it)')
    .option('--timeout <duration>', 'overall limit, e.g. 30s, 15m (default: none; the gateway bounds approval waits)', durationOption('--timeout'))
    .addOption(new Option('--connect-timeout <duration>', 'limit for connecting and authenticating')
      .argParser(durationOption('--connect-timeout')).default(30_000, '30s'))
    .showHelpAfterError('(airlock exec --help shows the options, exit statuses and examples)')
    .addHelpText('after', HELP_AFTER)
    // Usage errors exit with status 2 (commander's own default is 1); help exits with 0.
    .exitOverride((err) => {
      process.exit(err.exitCode === 0 ? 0 : EXIT.usage);
    })
    .action(async (connection: string, opts: ExecOptions) => {
      process.exitCode = await runExec(connection, opts, (message) => cmd.error(`error: ${message}`, { exitCode: EXIT.usage, code: 'airlock.usage' }));
    });
}

async function readSql(opts: ExecOptions): Promise<string> {
  if (opts.command !== undefined && opts.file !== undefined) throw new ExecUsageError('give the SQL either with -c or with -f, not both');
  let sql: string;
  if (opts.command !== undefined) sql = opts.command;
  else if (opts.file === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    sql = Buffer.concat(chunks).toString('utf8');
  } else if (opts.file !== undefined) {
    try {
      sql = fs.readFileSync(opts.file, 'utf8');
    } catch (err) {
      throw new ExecUsageError(`-f: cannot read ${opts.file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  } else {
    throw new ExecUsageError('no SQL given: use -c "SQL", -f FILE, or -f - to read it from stdin');
  }
  if (!sql.trim()) throw new ExecUsageError(`the SQL ${opts.command !== undefined ? 'of -c' : `in ${opts.file === '-' ? 'stdin' : opts.file}`} is empty`);
  return sql;
}

type Outcome =
  | { kind: 'ok'; results: RawResult[] }
  | { kind: 'connect-error'; err: unknown }
  | { kind: 'statement-error'; err: unknown }
  | { kind: 'timeout' }
  | { kind: 'signal'; signal: 'SIGINT' | 'SIGTERM' };

/** Runs the command; returns the exit status. Usage problems go to `usage` (which exits). */
export async function runExec(connection: string, opts: ExecOptions, usage: (message: string) => never): Promise<number> {
  let sql: string;
  let target: GatewayTarget;
  let plan: TlsPlan;
  let token: string;
  try {
    if (!connection.trim()) throw new ExecUsageError('the connection name is empty');
    sql = await readSql(opts);
    target = resolveGateway(opts);
    plan = planTls(target.host, opts);
    const t = (opts.token ?? process.env.AIRLOCK_TOKEN ?? '').trim(); // a secret file's trailing newline
    if (!t) throw new ExecUsageError('no token: set AIRLOCK_TOKEN (preferred) or pass --token');
    token = t;
  } catch (err) {
    if (err instanceof ExecUsageError) usage(err.message);
    throw err;
  }

  const stdout = (text: string) => process.stdout.write(text);
  const stderr = (text: string) => process.stderr.write(text);
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0); // the reader went away (| head)
  });
  const address = `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;
  const status = new ApprovalStatus(process.stderr);
  const startedAt = Date.now();

  const { default: pgm } = await import('pg');
  let pinError: Error | undefined;
  const tlsOptions = plan.mode === 'tls' ? tlsConnectOptions(plan) : undefined;
  const client = new pgm.Client({
    host: target.host,
    port: target.port,
    user: opts.user,
    database: connection,
    password: token,
    ssl: tlsOptions ?? false,
    application_name: 'airlock-exec',
    client_encoding: 'UTF8',
    keepAlive: true,
    connectionTimeoutMillis: opts.connectTimeout,
    // Text exactly as PostgreSQL sent it: no parsing into numbers, dates or JSON.
    types: { getTypeParser: () => (value: string) => value } as unknown as pg.CustomTypesConfig,
  });
  const connection_ = (client as unknown as { connection: pg.Connection & { stream: net.Socket } }).connection;
  if (plan.mode === 'tls' && plan.fingerprint) {
    const pin = plan.fingerprint;
    connection_.on('sslconnect', () => enforcePin(connection_.stream as tls.TLSSocket, pin, (err) => (pinError = err)));
  }
  // Full command tags (pg keeps only the first word), in the order of the results.
  const tags: string[] = [];
  connection_.on('commandComplete', (msg: { text: string }) => tags.push(msg.text));
  client.on('error', () => { /* reported through the pending connect or query */ });
  client.on('notice', (notice: NoticeLike) => {
    const held = parseHeldNotice(notice);
    if (held) return status.hold(held);
    status.print(errorLines(notice.severity ?? 'NOTICE',
      { code: null, message: notice.message ?? '', detail: notice.detail ?? null, hint: notice.hint ?? null }).trimEnd());
  });

  // Set by `work` (TypeScript cannot see the assignment from inside the closure).
  let phase = 'connect' as 'connect' | 'statement';
  const work: Promise<Outcome> = (async () => {
    try {
      await client.connect();
    } catch (err) {
      return { kind: 'connect-error', err: pinError ?? err };
    }
    phase = 'statement';
    try {
      const res = await client.query({ text: sql, rowMode: 'array' }) as unknown as pg.QueryArrayResult | pg.QueryArrayResult[];
      const list = Array.isArray(res) ? res : [res];
      return {
        kind: 'ok',
        results: list.map((r, i) => ({
          tag: tags[i] ?? (r.command ? `${r.command}${r.rowCount !== null && r.rowCount !== undefined ? ` ${r.rowCount}` : ''}` : null),
          rowCount: r.rowCount ?? null,
          fields: r.fields.map((f) => ({ name: f.name, dataTypeID: f.dataTypeID })),
          rows: r.rows as (string | null)[][],
        })),
      };
    } catch (err) {
      return { kind: 'statement-error', err };
    }
  })();

  let stopTimer: NodeJS.Timeout | undefined;
  const onSignal: Record<string, () => void> = {};
  const stop = new Promise<Outcome>((resolve) => {
    if (opts.timeout !== undefined) stopTimer = setTimeout(() => resolve({ kind: 'timeout' }), opts.timeout);
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      onSignal[signal] = () => resolve({ kind: 'signal', signal });
      process.once(signal, onSignal[signal]);
    }
  });
  const outcome = await Promise.race([work, stop]);
  clearTimeout(stopTimer);
  for (const [signal, fn] of Object.entries(onSignal)) process.off(signal, fn);

  const failJson = (doc: ErrorDocument) => {
    if (!opts.json) return;
    const held = status.held;
    stdout(`${JSON.stringify({ error: doc, ...(held ? { approval: approvalDoc(held) } : {}) })}\n`);
  };

  if (outcome.kind === 'timeout' || outcome.kind === 'signal') {
    const processID = (client as unknown as { processID?: number }).processID;
    const secretKey = (client as unknown as { secretKey?: number }).secretKey;
    if (phase === 'statement' && processID !== undefined && secretKey !== undefined) {
      // Ask the gateway to cancel the statement (or to drop the held one), then give it a moment.
      await sendCancel(target, plan, processID, secretKey).catch(() => undefined);
      await Promise.race([work, sleep(2000)]);
    }
    status.finish('aborted');
    destroy(client);
    const message = outcome.kind === 'timeout'
      ? `timed out after ${formatDuration(Date.now() - startedAt)} (--timeout ${formatDuration(opts.timeout!)})${phase === 'statement' ? '; the statement was cancelled' : ''}`
      : `interrupted (${outcome.signal})${phase === 'statement' ? '; the statement was cancelled' : ''}`;
    stderr(`airlock: ${message}\n`);
    failJson({ code: null, message, detail: null, hint: null });
    return outcome.kind === 'timeout' ? EXIT.timeout : outcome.signal === 'SIGINT' ? EXIT.sigint : EXIT.sigterm;
  }

  if (outcome.kind === 'connect-error') {
    destroy(client);
    const { server, doc } = describe(outcome.err);
    const code = (outcome.err as NodeJS.ErrnoException)?.code;
    if (!server && !doc.hint && /^(ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ETIMEDOUT)$/.test(code ?? '')) {
      doc.hint = `is the gateway running at ${address} (from ${target.source})? Set it with --gateway or AIRLOCK_GATEWAY`;
    } else if (!server && /timeout expired/i.test(doc.message)) {
      doc.message = `no answer within ${formatDuration(opts.connectTimeout)} (--connect-timeout)`;
    }
    stderr(errorLines('airlock', doc, `cannot connect to "${connection}" through the gateway at ${address}: `));
    failJson(doc);
    return EXIT.connect;
  }

  if (outcome.kind === 'statement-error') {
    const held = status.held;
    const { server, severity, doc } = describe(outcome.err);
    status.finish('failed');
    await end(client);
    if (!server) {
      const message = `the connection to the gateway was lost during the statement (${doc.message}); it may or may not have run`;
      stderr(`ERROR: ${message}\n`);
      failJson({ ...doc, message });
      return EXIT.failed;
    }
    stderr(errorLines(severity, doc));
    failJson(doc);
    return held && doc.code === REFUSED_SQLSTATE ? EXIT.approval : EXIT.failed;
  }

  status.finish('completed');
  await end(client);
  if (opts.json) {
    const docs = outcome.results.map(resultDocument);
    const last = docs.at(-1) ?? { command: null, tag: null, rowCount: null, fields: [], rows: [] };
    const held = status.held;
    stdout(`${JSON.stringify({ ...last, ...(docs.length > 1 ? { results: docs } : {}), ...(held ? { approval: approvalDoc(held) } : {}) })}\n`);
  } else {
    const text = formatResultsText(outcome.results);
    if (text) stdout(`${text}\n`);
  }
  return EXIT.ok;
}

function approvalDoc(held: HeldNotice) {
  return { id: held.id, reason: held.reason, ...(held.expiresAt ? { expiresAt: held.expiresAt.toISOString() } : {}),
    ...(held.url ? { url: held.url } : {}) };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

async function end(client: pg.Client): Promise<void> {
  await Promise.race([client.end().catch(() => undefined), sleep(2000)]);
  destroy(client);
}

function destroy(client: pg.Client): void {
  (client as unknown as { connection?: { stream?: net.Socket } }).connection?.stream?.destroy();
}

/**
 * Sends a CancelRequest for (processID, secretKey) to the gateway, over TLS (verified as the
 * session was) when the session used TLS. Resolves when sent or after 3 s.
 */
export function sendCancel(target: HostPort, plan: TlsPlan, processID: number, secretKey: number): Promise<void> {
  const cancel = Buffer.alloc(16);
  cancel.writeInt32BE(16, 0);
  cancel.writeInt32BE(80877102, 4);
  cancel.writeInt32BE(processID, 8);
  cancel.writeInt32BE(secretKey, 12);
  return new Promise<void>((resolve) => {
    const sockets: net.Socket[] = [];
    const done = () => {
      clearTimeout(timer);
      for (const s of sockets) s.destroy();
      resolve();
    };
    const timer = setTimeout(done, 3000);
    const raw = net.connect({ host: target.host, port: target.port });
    sockets.push(raw);
    raw.on('error', done);
    raw.on('close', done);
    raw.once('connect', () => {
      if (plan.mode === 'plain') {
        raw.end(cancel);
        return;
      }
      const sslRequest = Buffer.alloc(8);
      sslRequest.writeInt32BE(8, 0);
      sslRequest.writeInt32BE(80877103, 4);
      raw.write(sslRequest);
      raw.once('data', (answer) => {
        if (answer[0] !== 0x53 /* S */) return done();
        const secure = tls.connect({ socket: raw, host: target.host,
          ...(net.isIP(target.host) ? {} : { servername: target.host }), ...tlsConnectOptions(plan) });
        sockets.push(secure);
        secure.on('error', done);
        let pinned = true;
        if (plan.fingerprint) enforcePin(secure, plan.fingerprint, () => (pinned = false));
        secure.once('secureConnect', () => {
          if (pinned) secure.end(cancel);
        });
      });
    });
  });
}
