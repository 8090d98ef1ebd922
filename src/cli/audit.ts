// `airlock audit ...`: list, verify, export and prune the audit log (docs/audit.md).
import fs from 'node:fs';
import { once } from 'node:events';
import { Command, InvalidArgumentError, Option } from 'commander';
import { loadConfig, type AirlockConfig } from '../config/config.ts';
import { durationMs } from '../policy/schema.ts';
import type { Store, VerifyReport } from '../store/store.ts';
import { auditStoreOptions, loadAuditSigner, parseSince } from '../audit/config.ts';
import { formatTable, oneLine } from './format.ts';

export function registerAudit(program: Command, configOption: readonly [string, string, string]): void {
  const audit = program.command('audit').description('read, verify, export and prune the audit log');

  audit
    .command('list')
    .description('show the latest audit events')
    .option('--limit <n>', 'how many events', (v) => positiveInt(v), 50)
    .option('--since <when>', 'only events since then: a duration back from now (30m, 1h, 2d) or an ISO-8601 time', sinceArg)
    .option('--type <type>', 'only this event type (statement, session.start, auth.failure, ...)')
    .option('--subject <subject>', 'only this identity')
    .option('--connection <name>', 'only this connection')
    .addOption(new Option('--decision <decision>', 'only this decision').choices(['allow', 'deny', 'review']))
    .option('--session <id>', 'only this session')
    .option('--json', 'print JSON lines')
    .option(...configOption)
    .action(async (opts: { limit: number; since?: string; type?: string; subject?: string; connection?: string; decision?: string;
      session?: string; json?: boolean; config: string }) => {
      await withAuditStore(opts.config, false, async (store) => {
        const events = await store.listAudit({ limit: opts.limit, since: opts.since, type: opts.type, subject: opts.subject,
          connection: opts.connection, decision: opts.decision, sessionId: opts.session });
        if (opts.json) {
          for (const e of events) console.log(JSON.stringify(e));
          return;
        }
        console.log(formatTable(events.map((e) => ({
          id: e.id, time: e.time, type: e.type, subject: e.subject ?? '', connection: e.connection ?? '',
          decision: e.decision ?? '', statement: oneLine(e.statement ?? e.error ?? ''), reason: oneLine(e.reason ?? ''),
        }))));
      });
    });

  audit
    .command('verify')
    .description('check the hash chain and the signed checkpoints; exit status 1 at the first break')
    .option('--public-key <file>', 'PEM public key every checkpoint must be signed with (pins the key)')
    .option('--json', 'print the report as JSON')
    .option(...configOption)
    .action(async (opts: { publicKey?: string; json?: boolean; config: string }) => {
      let publicKey: string | undefined;
      if (opts.publicKey) {
        try {
          publicKey = fs.readFileSync(opts.publicKey, 'utf8');
        } catch (e) {
          throw new Error(`--public-key: cannot read ${opts.publicKey}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
      }
      await withAuditStore(opts.config, false, async (store) => {
        const report = await store.verifyAudit({ publicKey });
        if (opts.json) console.log(JSON.stringify(report, null, 2));
        else console.log(formatReport(report));
        if (!report.ok) process.exitCode = 1;
      });
    });

  audit
    .command('export')
    .description('write the audit log as JSON lines (one event per line, with id, prev_hash and hash)')
    .addOption(new Option('--format <format>', 'output format').choices(['jsonl']).default('jsonl'))
    .option('--since <when>', 'only events since then: a duration back from now (30m, 1h, 2d) or an ISO-8601 time', sinceArg)
    .option('--output <file>', 'write to this file (created 0600) instead of stdout')
    .option(...configOption)
    .action(async (opts: { format: string; since?: string; output?: string; config: string }) => {
      await withAuditStore(opts.config, false, async (store) => {
        const out = opts.output ? fs.createWriteStream(opts.output, { mode: 0o600 }) : process.stdout;
        let n = 0;
        try {
          for await (const e of store.exportAudit({ since: opts.since })) {
            if (!out.write(JSON.stringify(e) + '\n')) await once(out, 'drain');
            n++;
          }
        } finally {
          if (out !== process.stdout) {
            (out as fs.WriteStream).end();
            await once(out, 'close');
          }
        }
        if (opts.output) console.error(`exported ${n} events to ${opts.output}`);
      });
    });

  audit
    .command('prune')
    .description('delete events older than the retention, recording the deleted range in a signed checkpoint')
    .option('--older-than <duration>', 'e.g. 90d, 12w (default: audit.retention of the config)', (v) => {
      const ms = durationMs(v.trim());
      if (ms === undefined || !(ms > 0)) throw new InvalidArgumentError(`invalid duration "${v}" (use e.g. 90d, 12w, 36h)`);
      return ms;
    })
    .option(...configOption)
    .action(async (opts: { olderThan?: number; config: string }) => {
      await withAuditStore(opts.config, true, async (store, config) => {
        const olderThan = opts.olderThan ?? config.audit.retentionMs;
        if (olderThan === undefined) throw new Error('give --older-than, or set audit.retention in the config');
        const r = await store.applyRetention(olderThan);
        console.log(r.deleted === 0 ? 'nothing to prune'
          : `pruned ${r.deleted} events (ids ${r.fromId}..${r.toId}); ${r.checkpoints} signed retention checkpoint(s) written`);
      });
    });

  audit
    .command('public-key')
    .description('print the public key of the checkpoint signing key (PEM), for `audit verify --public-key`')
    .option(...configOption)
    .action((opts: { config: string }) => {
      const signer = loadAuditSigner(readConfig(opts.config));
      process.stdout.write(signer.publicKeyPem);
      console.error(`key id ${signer.keyId}`);
    });
}

/** The report as `audit verify` prints it. */
export function formatReport(r: VerifyReport): string {
  const counts = `${r.events} events${r.events ? ` (ids ${r.firstId}..${r.lastId})` : ''}, ${r.checkpoints} checkpoints`
    + (r.prunedUpTo ? `, pruned up to id ${r.prunedUpTo} (${r.retentionCheckpoints} retention checkpoints, ${r.prunedCheckpoints} older checkpoints)` : '')
    + `, keys: ${r.keyIds.join(', ') || '(none)'}`;
  if (r.ok) {
    return `OK: ${counts}` + (r.unsigned ? `\n${r.unsigned} events after the last checkpoint are chained but not yet signed` : '')
      + (r.checkpoints === 0 && r.events > 0 ? '\nwarning: no signed checkpoints: truncation of the log cannot be detected' : '');
  }
  const b = r.break!;
  return `BROKEN: ${b.kind} at event ${b.eventId} (index ${b.index})${b.checkpointId !== undefined ? `, checkpoint ${b.checkpointId}` : ''}\n`
    + `  ${b.message}\n  verified before the break: ${counts}`;
}

function readConfig(configFile: string): AirlockConfig {
  // Audit commands ignore `agent:`, so the agent's connection secrets need not be available here.
  return loadConfig(configFile, { optional: configFile === 'airlock.yaml', withoutAgent: true });
}

async function withAuditStore<T>(configFile: string, sign: boolean, fn: (store: Store, config: AirlockConfig) => Promise<T>): Promise<T> {
  const config = readConfig(configFile);
  const { openStore } = await import('../store/store.ts');
  const store = await openStore({ type: 'embedded', path: config.storePath }, { audit: auditStoreOptions(config, { sign }) });
  try {
    return await fn(store, config);
  } finally {
    await store.close();
  }
}

function sinceArg(v: string): string {
  const iso = parseSince(v, durationMs);
  if (!iso) throw new InvalidArgumentError(`expected a duration (30m, 1h, 2d) or an ISO-8601 time, got "${v}"`);
  return iso;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

