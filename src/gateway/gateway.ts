// Wiring only: builds the gateway from a config (store, policies, identity, protocol listeners, API).
import net from 'node:net';
import { once } from 'node:events';
import pino, { type Logger } from 'pino';
import Fastify, { type FastifyInstance } from 'fastify';
import type { AirlockConfig, HostPort } from '../config/config.ts';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { AuditEvent, ConnectionInfo, Identity, MaskRuleRef } from '../core/types.ts';
import { Masker } from '../masking/engine.ts';
import { openStore, type Store } from '../store/store.ts';
import { PolicyHolder } from '../policy/watch.ts';
import { evaluate } from '../policy/evaluate.ts';
import { formatProblems, type PolicyProblem } from '../policy/loader.ts';
import { initClassifier, classifySql } from '../protocols/postgres/classify.ts';
import { createPgServer } from '../protocols/postgres/adapter.ts';
import { JwtVerifier } from '../identity/jwt.ts';
import { AuthError } from '../identity/errors.ts';
import { looksLikeServiceToken } from '../identity/service-tokens.ts';
import type { AgentLink } from '../agent/agent.ts';
import { loadOrCreateTls, type TlsMaterial } from './tls.ts';
import { VERSION } from '../core/version.ts';
import { isLoopback } from '../core/net.ts';
import { Approvals } from '../approvals/service.ts';
import { Notifier } from '../approvals/notify.ts';
import { bearerIdentity, registerApprovalRoutes } from './approvals-api.ts';
import { auditStoreOptions } from '../audit/config.ts';
import { combineAgents, startAgentHub } from './agents.ts';
import { AGENT_GROUP } from '../identity/agent-tokens.ts';
import type { AgentHub } from '../agent/tunnel.ts';


export class PolicyInvalidError extends Error {
  constructor(readonly problems: PolicyProblem[]) {
    super(`the policy folder is invalid:\n${formatProblems(problems)}`);
    this.name = 'PolicyInvalidError';
  }
}

export interface Gateway {
  config: AirlockConfig;
  store: Store;
  approvals: Approvals;
  policies: PolicyHolder;
  tls: TlsMaterial;
  /** Bound addresses (ports resolved when the config asked for port 0). */
  addresses: { api: HostPort & { tls: boolean }; postgres: HostPort; agents?: HostPort };
  /** Remote agents (when `listeners.agents` is set). */
  agents?: AgentHub;
  log: Logger;
  reloadPolicies(): void;
  close(): Promise<void>;
}

export async function startGateway(config: AirlockConfig, localAgent: AgentLink, opts: { logger?: Logger } = {}): Promise<Gateway> {
  const log = opts.logger ?? pino({ level: config.logLevel, base: { service: 'airlock' } }, pino.destination(2));
  const policies = new PolicyHolder(config.policiesDir);
  const initial = policies.load();
  if (initial.problems.length) throw new PolicyInvalidError(initial.problems);

  const store = await openStore({ type: 'embedded', path: config.storePath },
    { onError: (err) => log.error({ err }, 'audit store write failed; events are kept and retried'),
      audit: auditStoreOptions(config, { notice: (m) => log.warn(m) }) });
  const retention = config.audit.retentionMs && setInterval(() => store.applyRetention(config.audit.retentionMs!)
    .catch((err: unknown) => log.error({ err }, 'audit retention failed')), 3_600_000).unref();
  const audit = (e: AuditEvent) => store.appendAudit(e);
  const closers: (() => Promise<void>)[] = [];
  let api: FastifyInstance | undefined;
  try {
    await initClassifier();
    const tls = await loadOrCreateTls(config.tls, config.dataDir);
    const jwt = new JwtVerifier(config.issuers.map((i) => ({
      issuer: i.issuer, audience: i.audience, jwksUri: i.jwks_uri, groupsClaim: i.groups_claim, subjectClaim: i.subject_claim,
      algorithms: i.algorithms, clockToleranceSec: i.clock_tolerance_sec,
    })));

    const bundle = () => policies.current;
    policies.on('reloaded', (b) => {
      log.info({ version: b.version, policies: b.policies.length }, 'policies reloaded');
      audit({ time: new Date().toISOString(), type: 'policy.load', bundleVersion: b.version, detail: { files: b.files } });
    });
    policies.on('invalid', (problems: PolicyProblem[]) => {
      log.error({ problems }, `policy reload failed; still enforcing version ${bundle().version}\n${formatProblems(problems)}`);
      audit({ time: new Date().toISOString(), type: 'policy.error', bundleVersion: bundle().version,
        error: formatProblems(problems) });
    });
    policies.on('error', (err) => log.error({ err }, 'policy folder watch failed; SIGHUP still reloads'));
    policies.watch();
    audit({ time: new Date().toISOString(), type: 'policy.load', bundleVersion: bundle().version, detail: { files: bundle().files } });

    const authenticate = async (token: string): Promise<Identity> => {
      if (looksLikeServiceToken(token)) {
        const id = await store.verifyServiceToken(token);
        if (id.groups.includes(AGENT_GROUP)) throw new AuthError('agent_token', 'an agent token cannot be used to open sessions');
        return id;
      }
      if (JwtVerifier.looksLikeJwt(token)) return jwt.verify(token);
      throw new AuthError('malformed', 'the password must be an Airlock token or a JWT from a trusted issuer');
    };
    const isIdentityActive = async (id: Identity): Promise<boolean> => {
      if (id.expiresAt !== undefined && id.expiresAt <= Date.now()) return false;
      return id.tokenId ? store.isTokenActive(id.tokenId) : true;
    };
    const connection = (name: string): ConnectionInfo | undefined => bundle().connections.find((c) => c.name === name);

    const notifier = new Notifier(config.approvals.notify, log);
    const approvals = new Approvals({ store, audit, notify: (n) => notifier.notify(n), log, publicUrl: config.approvals.publicUrl });
    await approvals.start();
    closers.push(async () => {
      approvals.stop();
      await notifier.idle();
    });

    const remote = config.listeners.agents ? await startAgentHub(config, tls, store, log, audit) : undefined;
    if (remote) closers.push(async () => remote.close());
    const agent = combineAgents(localAgent, remote?.hub);
    if (!remote) {
      const served = new Set(agent.serves());
      for (const c of bundle().connections) {
        if (!served.has(c.name)) log.warn({ connection: c.name }, 'connection is declared in policies but no agent serves it');
      }
    }

    const pg = createPgServer({
      authenticate,
      isIdentityActive,
      connection,
      classify: classifySql,
      decide: (identity, request) => evaluate(bundle(), identity, request),
      policyVersion: () => bundle().version,
      openTarget: (name, params) => agent.open(name, params),
      cancelTarget: (name, pid, key) => agent.cancel(name, pid, key),
      tableNames: (name, oids) => agent.tableNames(name, oids),
      masker: maskers(loadOrCreateHashKey(config), policies),
      approvals,
      recordingUnavailable: () => {
        const health = store.auditHealth();
        return health.ok ? undefined : health.reason ?? 'the audit spool is full';
      },
      audit,
      log,
      tls: { cert: tls.cert, key: tls.key },
    });
    closers.push(() => pg.close());
    const pgAddr = await listen(pg.server, config.listeners.postgres);
    pg.server.on('error', (err) => log.error({ err }, 'postgres listener error'));

    // The API leaves the host only over TLS: plain HTTP is for loopback addresses.
    const apiTls = !isLoopback(config.listeners.api.host);
    api = (apiTls ? Fastify({ logger: false, https: { cert: tls.cert, key: tls.key } }) : Fastify({ logger: false })) as FastifyInstance;
    api.get('/healthz', async () => ({ ok: true }));
    api.get('/api/status', async () => ({
      version: VERSION,
      policyVersion: bundle().version,
      connections: bundle().connections.map((c) => ({ ...c, served: agent.serves().includes(c.name) })),
      listeners: { postgres: `${pgAddr.host}:${pgAddr.port}` },
      tlsFingerprint: tls.fingerprint,
    }));
    registerApprovalRoutes(api, { approvals, authenticate, isIdentityActive });
    api.get('/api/agents', async (req, reply) => {
      if (!(await bearerIdentity(req, reply, { authenticate, isIdentityActive }))) return reply;
      return { agents: remote?.hub.agents() ?? [], local: localAgent.serves() };
    });
    await api.listen({ host: config.listeners.api.host, port: config.listeners.api.port });
    const apiAddr = api.server.address() as net.AddressInfo;

    log.info({ postgres: pgAddr, api: apiAddr.port, apiTls, policyVersion: bundle().version }, 'gateway started');
    let closed = false;
    return {
      config, store, approvals, policies, tls, log, agents: remote?.hub,
      addresses: { api: { host: config.listeners.api.host, port: apiAddr.port, tls: apiTls }, postgres: pgAddr, agents: remote?.address },
      reloadPolicies: () => policies.reload(),
      async close() {
        if (closed) return;
        closed = true;
        policies.close();
        for (const close of closers) await close();
        agent.close();
        await api?.close();
        clearInterval(retention || undefined);
        await store.close();
      },
    };
  } catch (err) {
    policies.close();
    for (const close of closers) await close();
    await api?.close();
    clearInterval(retention || undefined);
    await store.close();
    throw err;
  }
}

/**
 * One masking engine per distinct set of mask rules (policies are few; decisions are many),
 * with the custom detectors of the bundle in force. Emptied when the bundle changes: the same
 * rules may name a detector that the reload redefined.
 */
function maskers(hashKey: Buffer, policies: PolicyHolder): (rules: MaskRuleRef[]) => Masker | undefined {
  const cache = new Map<string, Masker>();
  let bundle = policies.current;
  return (rules) => {
    if (rules.length === 0) return undefined;
    if (policies.current !== bundle) {
      bundle = policies.current;
      cache.clear();
    }
    const key = JSON.stringify(rules);
    let m = cache.get(key);
    if (!m) {
      if (cache.size >= 1000) cache.clear();
      cache.set(key, (m = new Masker(rules, { hashKey, detectors: bundle.detectors })));
    }
    return m;
  };
}

/** The `hash` strategy's key: from config, or generated once and kept in the data directory. */
function loadOrCreateHashKey(config: AirlockConfig): Buffer {
  if (config.maskingHashKey) return Buffer.from(config.maskingHashKey, 'utf8');
  const file = path.join(config.dataDir, 'masking.key');
  try {
    return Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'base64');
  } catch {
    const key = randomBytes(32);
    fs.mkdirSync(config.dataDir, { recursive: true });
    fs.writeFileSync(file, key.toString('base64') + '\n', { mode: 0o600 });
    return key;
  }
}

async function listen(server: net.Server, at: HostPort): Promise<HostPort> {
  server.listen(at.port, at.host);
  try {
    await once(server, 'listening'); // rejects on 'error'
  } catch (e) {
    throw new Error(`cannot listen on ${at.host}:${at.port}: ${(e as Error).message}`);
  }
  const addr = server.address() as net.AddressInfo;
  return { host: at.host, port: addr.port };
}
