// The `airlock` command line. Wiring only: each command calls into the library.
import { Command, InvalidArgumentError } from 'commander';
import { loadConfig } from '../config/config.ts';
import { VERSION } from '../core/version.ts';
import { loadPolicyDir, formatProblems } from '../policy/loader.ts';
import { durationMs } from '../policy/schema.ts';
import type { Store } from '../store/store.ts';
import { formatTable } from './format.ts';
import { registerApprovals } from './approvals.ts';
import { registerAudit } from './audit.ts';
import { registerSessions } from './sessions.ts';
import { registerAgentCommands } from './agents.ts';
import { AGENT_GROUP } from '../identity/agent-tokens.ts';
// The gateway, the demo and the store are imported where they are used, so that `--help`,
// `policy check` and friends start fast.

const program = new Command();
program
  .name('airlock')
  .description('Airlock: an identity-aware gateway for non-human access to databases.\nDocs: docs/getting-started.md')
  .version(VERSION)
  .showHelpAfterError();

const configOption = ['-c, --config <file>', 'config file', 'airlock.yaml'] as const;

program
  .command('up')
  .description('run the gateway and an in-process agent (single host)')
  .option(...configOption)
  .action(async (opts: { config: string }) => {
    const config = loadConfig(opts.config);
    const { LocalAgent } = await import('../agent/agent.ts');
    const { serveGateway } = await import('./serve.ts');
    await serveGateway(config, new LocalAgent(config.connections));
  });

program
  .command('demo')
  .description('start an embedded PostgreSQL with sample data, example policies, the gateway and two tokens')
  .option('--dir <dir>', 'where the demo keeps its files', '.airlock-demo')
  .option('--postgres-url <url>', 'use this PostgreSQL server (a superuser URL) instead of starting an embedded one')
  .option('--listen <host:port>', 'PostgreSQL listener of the gateway', '127.0.0.1:15432')
  .option('--api <host:port>', 'API listener of the gateway', '127.0.0.1:8080')
  .action(async (opts: { dir: string; postgresUrl?: string; listen: string; api: string }) => {
    const { runDemo } = await import('./demo.ts');
    await runDemo(opts);
  });

const token = program.command('token').description('manage Airlock service tokens');
token
  .command('create')
  .description('create a service token (printed once; only its hash is stored)')
  .requiredOption('--subject <name>', 'identity the token stands for, e.g. ci-runner')
  .option('--groups <a,b>', 'comma-separated groups', '')
  .option('--ttl <duration>', 'lifetime, e.g. 30m, 1h, 7d', '1h')
  .option('--description <text>', 'free text shown in `token list`')
  .option('--json', 'print JSON')
  .option(...configOption)
  .action(async (opts: { subject: string; groups: string; ttl: string; description?: string; json?: boolean; config: string }) => {
    const ttlMs = parseTtl(opts.ttl);
    const groups = opts.groups.split(',').map((g) => g.trim()).filter(Boolean);
    if (groups.includes(AGENT_GROUP)) throw new InvalidArgumentError(`--groups: ${AGENT_GROUP} is reserved for agent tokens (airlock agent-token create)`);
    const { TokenTtlTooLongError } = await import('../store/store.ts');
    await withStore(opts.config, async (store) => {
      const { token: tok, record } = await store.createToken({ subject: opts.subject, groups, ttlMs, description: opts.description })
        .catch((err: unknown) => {
          if (err instanceof TokenTtlTooLongError) throw new InvalidArgumentError(`--ttl: duration "${opts.ttl}" is too long`);
          throw err;
        });
      store.appendAudit({ time: new Date().toISOString(), type: 'token.create', subject: record.subject,
        detail: { tokenId: record.id, groups: record.groups, expiresAt: record.expiresAt } });
      if (opts.json) console.log(JSON.stringify({ token: tok, ...record }, null, 2));
      else {
        console.log(tok);
        console.error(`token ${record.id} for ${record.subject} (groups: ${record.groups.join(',') || '-'}) expires ${record.expiresAt}`);
      }
    });
  });
token
  .command('list')
  .description('list tokens (active ones unless --all)')
  .option('--all', 'include revoked and expired tokens')
  .option('--json', 'print JSON')
  .option(...configOption)
  .action(async (opts: { all?: boolean; json?: boolean; config: string }) => {
    await withStore(opts.config, async (store) => {
      const rows = await store.listTokens({ includeRevoked: !!opts.all, includeExpired: !!opts.all });
      if (opts.json) return console.log(JSON.stringify(rows, null, 2));
      console.log(formatTable(rows.map((r) => ({
        id: r.id, subject: r.subject, groups: r.groups.join(','), created: r.createdAt, expires: r.expiresAt,
        status: r.revokedAt ? 'revoked' : Date.parse(r.expiresAt) <= Date.now() ? 'expired' : 'active',
        description: r.description ?? '',
      }))));
    });
  });
token
  .command('revoke')
  .description('revoke a token: new connections and new statements on open sessions are refused at once')
  .argument('<id>', 'token id (from `airlock token list`)')
  .option(...configOption)
  .action(async (id: string, opts: { config: string }) => {
    await withStore(opts.config, async (store) => {
      if (!(await store.revokeToken(id))) {
        console.error(`airlock: no active token with id ${id}`);
        process.exitCode = 1;
        return;
      }
      store.appendAudit({ time: new Date().toISOString(), type: 'token.revoke', detail: { tokenId: id } });
      console.log(`revoked ${id}`);
    });
  });

const policy = program.command('policy').description('work with policy folders');
policy
  .command('check')
  .description('validate a policy folder; prints file:line: problem, exit status 1 when invalid')
  .argument('[dir]', 'policy folder', 'policies')
  .action((dir: string) => {
    const result = loadPolicyDir(dir);
    if (result.problems.length) {
      console.error(formatProblems(result.problems, dir));
      console.error(`${result.problems.length} problem(s) in ${dir}`);
      process.exitCode = 1;
      return;
    }
    const b = result.bundle!;
    console.log(`ok: ${b.policies.length} policies, ${b.connections.length} connections in ${b.files.length} files (version ${b.version})`);
  });

registerApprovals(program, configOption);
registerAudit(program, configOption);
registerSessions(program, configOption, withStore);
registerAgentCommands(program, configOption, withStore);

(await import('./exec.ts')).registerExec(program);

/** `--ttl`: 90s, 30m, 1h, 7d, 2w, compounds such as 1h30m; a bare number is seconds. */
function parseTtl(text: string): number {
  const ms = durationMs(text.trim());
  if (ms === undefined) throw new InvalidArgumentError(`--ttl: invalid duration "${text}" (use e.g. 90s, 30m, 1h, 7d, 2w)`);
  if (!(ms > 0)) throw new InvalidArgumentError(`--ttl: duration must be positive: "${text}"`);
  return ms;
}

async function withStore<T>(configFile: string, fn: (store: Store) => Promise<T>): Promise<T> {
  // Token and audit commands ignore `agent:`, so the agent's connection secrets need not be
  // available where they run.
  const config = loadConfig(configFile, { optional: configFile === 'airlock.yaml', withoutAgent: true });
  const { openStore } = await import('../store/store.ts');
  const { auditStoreOptions } = await import('../audit/config.ts');
  const store = await openStore({ type: 'embedded', path: config.storePath }, { audit: auditStoreOptions(config) });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

try {
  await program.parseAsync(process.argv);
  process.exit(process.exitCode ?? 0);
} catch (err) {
  console.error(`airlock: ${(err as Error).message ?? err}`);
  if (process.env.AIRLOCK_DEBUG) console.error(err);
  process.exit(1);
}
