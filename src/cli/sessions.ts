// `airlock sessions list|show|export|replay`: the audit log read as sessions (docs/sessions.md).
// Turning events into sessions is src/audit/sessions.ts; this file reads the store and renders.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { InvalidArgumentError, type Command } from 'commander';
import type { Store } from '../store/store.ts';
import { loadConfig } from '../config/config.ts';
import { VERSION } from '../core/version.ts';
import { durationMs } from '../policy/schema.ts';
import {
  asciicastSteps, buildSession, exportSessionLines, findSessions, formatCounts, formatDuration, formatMasked, formatOffset,
  formatRows, formatStatementDuration, loadSession, parseSessionExport, replaySteps, summarizeClaims,
  type ReplayStep, type Session, type SessionStatement, type SessionSummary,
} from '../audit/sessions.ts';
import { formatTable } from './format.ts';

type WithStore = <T>(config: string, fn: (store: Store) => Promise<T>) => Promise<T | undefined>;

/** Registers `airlock sessions ...` on `program`. `withStore` opens the store of a config file (as main.ts does). */
export function registerSessions(program: Command, configOption: readonly [string, string, string], withStore: WithStore): void {
  const sessions = program.command('sessions').description('list, show, export and replay sessions from the audit log');

  sessions
    .command('list')
    .description('one line per session, newest last')
    .option('--since <when>', 'sessions with activity since: a duration back from now (30m, 1h, 7d) or an ISO-8601 time')
    .option('--subject <subject>', 'only this identity')
    .option('--connection <name>', 'only this connection')
    .option('--limit <n>', 'how many sessions (the latest)', positiveInt, 50)
    .option('--json', 'print JSON')
    .option(...configOption)
    .action(async (opts: { since?: string; subject?: string; connection?: string; limit: number; json?: boolean; config: string }) => {
      const since = opts.since === undefined ? undefined : parseSince(opts.since);
      await withStore(opts.config, async (store) => {
        const list = await findSessions(store, { since, subject: opts.subject, connection: opts.connection, limit: opts.limit });
        if (opts.json) return void console.log(JSON.stringify(list, null, 2));
        console.log(formatTable(list.map(listRow)));
      });
    });

  sessions
    .command('show')
    .description('a session: who, from where, and every statement in order')
    .argument('<session>', 'session id (from `airlock sessions list`), or a file written by `sessions export`')
    .option('--json', 'print JSON')
    .option(...configOption)
    .action(async (ref: string, opts: { json?: boolean; config: string }) => {
      const s = await resolveSession(ref, opts.config, withStore);
      if (!s) return;
      if (opts.json) {
        const { auditEvents: _events, timeline: _timeline, ...rest } = s.session;
        return void console.log(JSON.stringify(rest, null, 2));
      }
      process.stdout.write(renderSession(s.session, terminal()));
    });

  sessions
    .command('export')
    .description('the session as JSON lines in the open airlock-session format (docs/sessions.md)')
    .argument('<session>', 'session id')
    .option('-o, --output <file>', 'write to this file instead of standard output')
    .option(...configOption)
    .action(async (ref: string, opts: { output?: string; config: string }) => {
      const s = await resolveSession(ref, opts.config, withStore, { fromFile: false });
      if (!s) return;
      const text = exportSessionLines(s.session, { generator: `airlock ${VERSION}` }).join('\n') + '\n';
      if (!opts.output) return void process.stdout.write(text);
      fs.writeFileSync(opts.output, text, { mode: 0o600 });
      console.error(`wrote session ${s.session.id} (${s.session.auditEvents.length} events) to ${opts.output}`);
    });

  sessions
    .command('replay')
    .description('print a session back at its real pace, as a psql-like transcript (or play its terminal recording)')
    .argument('<session>', 'session id, or a file written by `sessions export`')
    .option('--speed <n>', 'play this many times faster', positiveNumber, 1)
    .option('--no-wait', 'print everything at once')
    .option('--real-time', 'keep idle gaps as they were (by default gaps over 5 s are cut to 5 s)')
    .option('--sql', 'replay the statements even when the session has a terminal recording')
    .option(...configOption)
    .action(async (ref: string, opts: { speed: number; wait: boolean; realTime?: boolean; sql?: boolean; config: string }) => {
      const s = await resolveSession(ref, opts.config, withStore);
      if (!s) return;
      const t = terminal();
      const maxIdleMs = opts.realTime ? undefined : 5000;
      let steps: ReplayStep[] | undefined;
      if (s.session.recording && !opts.sql) {
        const file = path.resolve(s.baseDir ?? recordingsBase(opts.config), s.session.recording);
        if (fs.existsSync(file)) {
          steps = asciicastSteps(fs.readFileSync(file, 'utf8'), { maxIdleMs: 5000, realTime: opts.realTime }).steps;
        } else {
          process.stdout.write(t.dim(`-- the terminal recording ${file} is missing; replaying the statements`) + '\n');
        }
      }
      steps ??= replaySteps(s.session, { maxIdleMs, paint: t });
      await play(steps, { speed: opts.speed, wait: opts.wait });
    });
}

// ---------------------------------------------------------------------------------------------

/** Writes each step after its wait divided by `speed` (no waits with `wait: false`). */
export async function play(steps: readonly ReplayStep[], opts: { speed: number; wait: boolean; write?: (s: string) => void }): Promise<void> {
  const write = opts.write ?? ((s: string) => void process.stdout.write(s));
  for (const step of steps) {
    const delay = step.waitMs / opts.speed;
    if (opts.wait && delay >= 1) await sleep(delay);
    write(step.text);
  }
}

async function resolveSession(ref: string, config: string, withStore: WithStore, opts: { fromFile?: boolean } = {}): Promise<{ session: Session; baseDir?: string } | undefined> {
  if (opts.fromFile !== false && looksLikeFile(ref)) {
    const { header, events } = parseSessionExport(fs.readFileSync(ref, 'utf8'));
    if (!events.length) throw new Error(`${ref}: the export of session ${header.session} has no events`);
    return { session: buildSession(header.session, events), baseDir: path.dirname(path.resolve(ref)) };
  }
  const session = await withStore(config, (store) => loadSession(store, ref));
  if (!session) {
    console.error(`airlock: no session with id ${ref} in the audit log (see \`airlock sessions list\`)`);
    process.exitCode = 1;
    return undefined;
  }
  return { session };
}

const looksLikeFile = (ref: string) => (/[/\\]|\.jsonl?$/.test(ref)) && fs.existsSync(ref) && fs.statSync(ref).isFile();

/** Relative `detail.recording` paths are relative to the data directory. */
function recordingsBase(config: string): string {
  try {
    return loadConfig(config, { optional: config === 'airlock.yaml', withoutAgent: true }).dataDir;
  } catch {
    return process.cwd();
  }
}

function listRow(s: SessionSummary): Record<string, string> {
  return {
    session: s.id,
    start: shortTime(s.start ?? s.firstTime) + (s.start ? '' : '*'),
    duration: s.outcome === 'open' ? 'open' : s.durationMs !== undefined ? formatDuration(s.durationMs) : '-',
    subject: s.subject ?? '',
    connection: s.connection ?? '',
    source: s.source ?? '',
    statements: String(s.counts.statements),
    allowed: String(s.counts.allowed),
    denied: String(s.counts.denied),
    review: String(s.counts.review),
    outcome: s.outcome + (s.startPruned ? ' (start pruned)' : ''),
  };
}

/** 2024-05-01T12:00:03.123Z -> 2024-05-01T12:00:03Z */
const shortTime = (iso: string) => iso.replace(/\.\d+Z$/, 'Z');

// ---------------------------------------------------------------------------------------------
// Terminal rendering

interface Terminal {
  width: number;
  allow(s: string): string;
  deny(s: string): string;
  review(s: string): string;
  dim(s: string): string;
  bold(s: string): string;
}

/** Colors only when standard output is a terminal and NO_COLOR is not set. */
function terminal(): Terminal {
  const color = !!process.stdout.isTTY && !process.env.NO_COLOR;
  const sgr = (code: string) => (s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
  return {
    width: Math.max(40, process.stdout.columns || 100),
    allow: sgr('32'), deny: sgr('31'), review: sgr('33'), dim: sgr('2'), bold: sgr('1'),
  };
}

/** Wraps text to `width` columns after `indent` spaces, keeping its line breaks. */
export function wrap(text: string, width: number, indent: number): string[] {
  const room = Math.max(20, width - indent);
  const pad = ' '.repeat(indent);
  const out: string[] = [];
  for (const raw of text.replace(/\t/g, '  ').split(/\r?\n/)) {
    const lead = /^\s*/.exec(raw)![0];
    let line = raw.trimEnd();
    if (line.length <= room) {
      out.push(pad + line);
      continue;
    }
    while (line.length > room) {
      let cut = line.lastIndexOf(' ', room);
      if (cut <= lead.length) cut = room;
      out.push(pad + line.slice(0, cut).trimEnd());
      line = lead + line.slice(cut).trimStart();
    }
    if (line.trim()) out.push(pad + line);
  }
  return out;
}

export function renderSession(s: Session, t: Terminal): string {
  const lines: string[] = [];
  const field = (name: string, value: string | undefined) => {
    if (value) lines.push(`  ${t.dim(name.padEnd(11))}  ${value}`);
  };
  lines.push(`${t.bold(`session ${s.id}`)}  ${outcomeText(s, t)}`);
  field('subject', [s.subject ?? '?', s.issuer && t.dim(`issuer ${s.issuer}`), s.tokenId && t.dim(`token ${s.tokenId}`)].filter(Boolean).join('  '));
  field('groups', s.groups?.length ? s.groups.join(', ') : s.groups ? '(none)' : undefined);
  field('claims', summarizeClaims(s.claims, Math.max(40, t.width - 16)));
  field('source', s.source);
  field('connection', [s.connection, s.user && t.dim(`user ${s.user}`)].filter(Boolean).join('  '));
  field('application', s.application);
  field('tls', s.tls === undefined ? undefined : s.tls ? 'yes' : 'no');
  field('started', s.start ? shortTime(s.start) : `${shortTime(s.firstTime)} ${t.dim('(first event; the session start was pruned from the log)')}`);
  field('ended', s.end ? `${shortTime(s.end)}${s.durationMs !== undefined ? `  ${t.dim(`after ${formatDuration(s.durationMs)}`)}` : ''}` : s.outcome === 'open' ? 'not recorded (still open, or the gateway stopped)' : undefined);
  if (s.reason) field('reason', s.reason);
  const recorded = s.recordedCounts;
  const mismatch = recorded && (recorded.statements !== s.counts.statements || (recorded.denied ?? 0) !== s.counts.denied)
    ? t.dim(`  (session.end counted ${recorded.statements ?? '?'} statements, ${recorded.denied ?? '?'} denied)`) : '';
  field('statements', formatCounts(s.counts) + mismatch);
  if (s.recording) field('recording', s.recording);

  for (const item of s.timeline) {
    lines.push('');
    if (item.kind === 'note') {
      lines.push(`${t.dim(`     ${formatOffset(item.note.offsetMs)}`)}  ${t.review(item.note.type)}  ${item.note.text}`);
      continue;
    }
    lines.push(...renderStatement(item.statement, t));
  }
  if (!s.statements.length) lines.push('', t.dim('  (no statements)'));
  return lines.join('\n') + '\n';
}

function outcomeText(s: SessionSummary, t: Terminal): string {
  if (s.outcome === 'open') return t.review('open');
  if (s.outcome === 'closed') return t.dim('closed');
  return t.deny(s.outcome);
}

function renderStatement(st: SessionStatement, t: Terminal): string[] {
  const decision = st.decision === 'deny' ? t.deny('DENIED') : st.decision === 'review' ? t.review('REVIEW') : t.allow('ALLOW ');
  const facts = [
    st.rows !== undefined && formatRows(st.rows),
    st.durationMs !== undefined && formatStatementDuration(st.durationMs),
    (st.policy || st.rule) && t.dim([st.policy && `policy ${st.policy}`, st.rule && `rule ${st.rule}`].filter(Boolean).join(' ')),
  ].filter(Boolean);
  const out = [`${`#${st.index}`.padStart(4)} ${t.dim(formatOffset(st.offsetMs))}  ${decision}  ${facts.join('  ')}`];
  out.push(...wrap(st.statement, t.width, 6));
  const extra = (name: string, value: string | undefined, paint = (x: string) => x) => {
    if (value) out.push(...wrap(`${name}: ${value}`, t.width, 6).map((l) => paint(l)));
  };
  if (st.decision !== 'allow' || st.error) extra('reason', st.reason, st.decision === 'allow' ? t.dim : undefined);
  if (st.masked.length) extra('masked', formatMasked(st.masked), t.dim);
  if (st.approval) extra('approval', st.approval);
  if (st.error) extra('error', st.error, t.deny);
  if (st.results) {
    const rows = st.results.reduce((n, r) => n + r.rows.length, 0);
    extra('results', `${formatRows(rows)} recorded${st.results.some((r) => r.truncated) ? ' (truncated)' : ''} (see \`sessions replay\` or --json)`, t.dim);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Option parsing

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function positiveNumber(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a positive number');
  return n;
}

/** `--since`: a duration back from now (90s, 30m, 1h, 7d) or an ISO-8601 time. */
export function parseSince(text: string, now = Date.now()): string {
  const t = text.trim();
  const back = durationMs(t);
  if (back !== undefined) return new Date(now - back).toISOString();
  if (/^\d{4}-\d{2}-\d{2}/.test(t)) {
    const at = Date.parse(t);
    if (!Number.isNaN(at)) return new Date(at).toISOString();
  }
  throw new InvalidArgumentError(`--since: "${text}" is neither a duration (30m, 1h, 7d) nor an ISO-8601 time`);
}
