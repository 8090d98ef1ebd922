// `airlock gateway`, `airlock agent`, `airlock agent-token create` and `airlock agents`: the
// gateway and the agent as separate processes (docs/agents.md).
import { InvalidArgumentError, type Command } from 'commander';
import type { Store } from '../store/store.ts';
import { AGENT_GROUP, AGENT_SUBJECT_PREFIX } from '../identity/agent-tokens.ts';
import { durationMs } from '../policy/schema.ts';
import { call, runApiCommand, type ApiOptions } from './api-client.ts';
import { formatTable, waitForStop } from './format.ts';

type WithStore = <T>(config: string, fn: (store: Store) => Promise<T>) => Promise<T | undefined>;

export function registerAgentCommands(program: Command, configOption: readonly [string, string, string], withStore: WithStore): void {
  program
    .command('gateway')
    .description('run the gateway alone: remote agents dial in on listeners.agents (it holds no target credentials)')
    .option(...configOption)
    .action(async (opts: { config: string }) => {
      const { loadConfig } = await import('../config/config.ts');
      const config = loadConfig(opts.config);
      if (config.connections.length) {
        throw new Error(`${opts.config}: a gateway holds no target credentials: move agent.connections to the agent's config (airlock agent)`);
      }
      if (!config.listeners.agents) throw new Error(`${opts.config}: listeners.agents is required: where agents dial in, e.g. 0.0.0.0:7443`);
      const { LocalAgent } = await import('../agent/agent.ts');
      const { serveGateway } = await import('./serve.ts');
      await serveGateway(config, new LocalAgent([]));
    });

  program
    .command('agent')
    .description('run an agent: it dials out to the gateway and opens target connections with its credentials')
    .requiredOption('-c, --config <file>', 'agent config file (see docs/agents.md)')
    .action(async (opts: { config: string }) => {
      const { loadAgentConfig } = await import('../config/agent-config.ts');
      const config = loadAgentConfig(opts.config);
      const pino = (await import('pino')).default;
      const log = pino({ level: config.logLevel, base: { service: 'airlock-agent', agent: config.name } }, pino.destination(2));
      const { LocalAgent } = await import('../agent/agent.ts');
      const { AgentClient } = await import('../agent/tunnel.ts');
      const { VERSION } = await import('../core/version.ts');
      const local = new LocalAgent(config.connections);
      const client = new AgentClient({
        gateway: config.gateway, token: config.token, name: config.name, version: VERSION, agent: local, tls: config.tls,
        backoff: config.backoff, log,
      });
      client.on('connected', ({ gateway }) => log.info({ gateway, connections: local.serves() }, 'connected to the gateway'));
      client.on('disconnected', ({ reason, retryInMs }) => log.warn({ reason, retryInMs }, 'not connected to the gateway; retrying'));
      client.on('refused', ({ reason }) => log.error({ reason }, 'the gateway refused this agent'));
      client.start();
      console.log(`airlock agent ${config.name}: serving ${local.serves().join(', ')} through ${config.gateway.host}:${config.gateway.port}`);
      const signal = await waitForStop();
      console.log(`stopping (${signal})`);
      client.close();
      local.close();
    });

  program
    .command('agent-token')
    .description('manage agent tokens (revoke with `airlock token revoke ID`: the agent is disconnected at once)')
    .command('create')
    .description('create an agent token (printed once; only its hash is stored)')
    .requiredOption('--name <name>', 'the agent this token is for, e.g. db-host-1')
    .option('--ttl <duration>', 'lifetime', '365d')
    .option('--json', 'print JSON')
    .option(...configOption)
    .action(async (opts: { name: string; ttl: string; json?: boolean; config: string }) => {
      const ttlMs = durationMs(opts.ttl);
      if (!ttlMs || ttlMs <= 0) throw new InvalidArgumentError(`--ttl: invalid duration "${opts.ttl}"`);
      await withStore(opts.config, async (store) => {
        const { token, record } = await store.createToken({ subject: `${AGENT_SUBJECT_PREFIX}${opts.name}`, groups: [AGENT_GROUP], ttlMs,
          description: `agent ${opts.name}` });
        store.appendAudit({ time: new Date().toISOString(), type: 'token.create', subject: record.subject,
          detail: { tokenId: record.id, groups: record.groups, expiresAt: record.expiresAt, agent: opts.name } });
        if (opts.json) return console.log(JSON.stringify({ token, ...record }, null, 2));
        console.log(token);
        console.error(`agent token ${record.id} for ${opts.name} expires ${record.expiresAt}; put it in the agent's config as token: file:... or \${VAR}`);
      });
    });

  program
    .command('agents')
    .description('list the agents connected to the gateway (GET /api/agents)')
    .option('--api <url>', 'gateway API base URL (default: AIRLOCK_API, else the api listener of --config)')
    .option('--token <token>', 'your Airlock token or JWT (default: AIRLOCK_TOKEN)')
    .option('--tls-fingerprint <sha256>', 'pin the API certificate')
    .option('--json', 'print JSON')
    .option(...configOption)
    .action((opts: ApiOptions & { json?: boolean }) => runApiCommand(async () => {
      const res = (await call(opts, 'GET', 'api/agents')) as { agents: { name: string; connections: string[]; version: string;
        connectedAt: string; lastHeartbeat: string; healthy: boolean; sessions: number; remoteAddress: string; rttMs?: number }[]; local: string[] };
      if (opts.json) return console.log(JSON.stringify(res, null, 2));
      if (res.local.length) console.log(`in-process agent: ${res.local.join(', ')}`);
      if (res.agents.length === 0) return console.log('no remote agent is connected');
      console.log(formatTable(res.agents.map((a) => ({
        name: a.name, connections: a.connections.join(','), healthy: a.healthy ? 'yes' : 'NO', sessions: a.sessions,
        since: a.connectedAt, heartbeat: a.lastHeartbeat, rtt: a.rttMs === undefined ? '' : `${a.rttMs.toFixed(1)} ms`, version: a.version, from: a.remoteAddress,
      }))));
    }));
}
