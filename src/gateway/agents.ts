// Wiring of remote agents: the hub agents dial into, agent tokens (service tokens of a reserved
// group, stored hashed like any token), revocation, and one AgentLink over the in-process agent
// and the remote ones.
import type { Logger } from 'pino';
import type { AgentLink, TableInfo } from '../agent/agent.ts';
import { AgentHub } from '../agent/tunnel.ts';
import type { AuditEvent } from '../core/types.ts';
import type { AirlockConfig } from '../config/config.ts';
import type { Store } from '../store/store.ts';
import type { TargetConnection } from '../protocols/postgres/target.ts';
import { AGENT_GROUP, AGENT_SUBJECT_PREFIX } from '../identity/agent-tokens.ts';

/** How often connected agents' tokens are re-checked, so that a revocation from the CLI disconnects them. */
const REVOCATION_CHECK_MS = 1000;

export async function startAgentHub(config: AirlockConfig, tls: { cert: string; key: string }, store: Store, log: Logger,
  audit: (e: AuditEvent) => void): Promise<{ hub: AgentHub; address: { host: string; port: number }; close(): void }> {
  const hub = new AgentHub({
    tls: { cert: tls.cert, key: tls.key, ...(config.agents.clientCa ? { ca: config.agents.clientCa, requestCert: true, rejectUnauthorized: true } : {}) },
    heartbeatMs: config.agents.heartbeatMs,
    maxMissedHeartbeats: config.agents.maxMissed,
    log: log.child({ component: 'agents' }),
    verifyAgentToken: async (token) => {
      const id = await store.verifyServiceToken(token).catch(() => undefined);
      if (!id?.tokenId || !id.groups.includes(AGENT_GROUP)) return undefined;
      return { id: id.tokenId, name: id.subject.slice(AGENT_SUBJECT_PREFIX.length) };
    },
  });
  const now = () => new Date().toISOString();
  hub.on('agent-connected', (a) => audit({ time: now(), type: 'agent.connect', subject: `${AGENT_SUBJECT_PREFIX}${a.tokenName}`,
    source: a.remoteAddress, detail: { agent: a.name, tokenId: a.tokenId, version: a.version, connections: a.connections } }));
  hub.on('agent-disconnected', (a, reason) => audit({ time: now(), type: 'agent.disconnect', subject: `${AGENT_SUBJECT_PREFIX}${a.tokenName}`,
    source: a.remoteAddress, reason, detail: { agent: a.name, tokenId: a.tokenId } }));
  hub.on('agent-refused', (r) => audit({ time: now(), type: 'auth.failure', source: r.remoteAddress, reason: r.reason, detail: { agent: r.name } }));
  const address = await hub.listen(config.listeners.agents!);
  const timer = setInterval(() => {
    for (const tokenId of new Set(hub.agents().map((a) => a.tokenId))) {
      void store.isTokenActive(tokenId).then((active) => {
        if (!active) hub.disconnect(tokenId, 'agent token revoked or expired');
      }).catch(() => {});
    }
  }, REVOCATION_CHECK_MS);
  timer.unref();
  return { hub, address, close: () => { clearInterval(timer); hub.close(); } };
}

/** The in-process agent serves its own connections; every other connection goes to remote agents. */
export function combineAgents(local: AgentLink, hub: AgentHub | undefined): AgentLink {
  if (!hub) return local;
  const pick = (connection: string): AgentLink => (local.serves().includes(connection) ? local : hub);
  return {
    serves: () => [...new Set([...local.serves(), ...hub.serves()])],
    open: (c, params): Promise<TargetConnection> => pick(c).open(c, params),
    cancel: (c, pid, key) => pick(c).cancel(c, pid, key),
    tableNames: (c, oids): Promise<Map<number, TableInfo>> => pick(c).tableNames(c, oids),
    close: () => {
      local.close();
      hub.close();
    },
  };
}
