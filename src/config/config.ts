// airlock.yaml: listeners, store, policy folder, TLS, trusted issuers and the agent's connections.
// Secret references (`${VAR}` anywhere in a string, or a whole value `file:/path`) are resolved at
// load time; resolved secrets are kept only in memory and never logged.
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import YAML from 'yaml';
import { parseDuration } from '../policy/schema.ts';

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'expected host:port, e.g. 127.0.0.1:15432');

const issuerSchema = z.strictObject({
  issuer: z.string().min(1), // usually a URL; in-cluster issuers may not be (then set jwks_uri)
  audience: z.union([z.string(), z.array(z.string()).min(1)]),
  jwks_uri: z.string().url().optional(),
  groups_claim: z.string().optional(),
  subject_claim: z.string().optional(),
  algorithms: z.array(z.string()).min(1).optional(),
  clock_tolerance_sec: z.number().int().min(0).max(600).optional(),
});

const durationText = (what: string) =>
  z.string().refine((v) => parseDuration(v) !== undefined, `${what} must be a positive duration such as 90d, 12h, 30m`);

const auditSchema = z.strictObject({
  /** PEM Ed25519 private key (usually `file:/path` or `${VAR}`); generated into data_dir when absent. */
  signing_key: z.string().min(1).optional(),
  /** Events older than this are pruned (`airlock audit prune`, and hourly by the gateway). */
  retention: durationText('retention').optional(),
  /** A signed checkpoint every this many events (default 1000)... */
  checkpoint_every: z.number().int().min(1).max(10_000_000).optional(),
  /** ...or this long after the last one when events were written since (default 60s). */
  checkpoint_interval: durationText('checkpoint_interval').optional(),
  /** Bound of the spool file in MiB (default 256). */
  spool_max_mb: z.number().int().min(1).max(1_000_000).optional(),
});

const connectionSchema = z.strictObject({
  name: z.string().min(1),
  url: z.string().min(1),
});

/** `log:` of airlock.yaml and agent.yaml. */
export const logSchema = z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
  .default({ level: 'info' });

/** A failed schema check as a ConfigError listing every problem with its key. */
export function configProblems(what: string, error: z.ZodError): ConfigError {
  const lines = error.issues.map((i) => `  ${i.path.join('.') || '(top level)'}: ${i.message}`);
  return new ConfigError(`invalid ${what}:\n${lines.join('\n')}`);
}

export const configSchema = z.strictObject({
  data_dir: z.string().optional(),
  store: z.strictObject({ type: z.literal('embedded').default('embedded'), path: z.string().optional() }).optional(),
  policies: z.string().default('./policies'),
  listeners: z.strictObject({
    api: hostPort.default('127.0.0.1:8080'),
    postgres: hostPort.default('127.0.0.1:15432'),
    /** Where remote agents dial in (TLS, the gateway's certificate); unset: no remote agents. */
    agents: hostPort.optional(),
  }).default({ api: '127.0.0.1:8080', postgres: '127.0.0.1:15432' }),
  agents: z.strictObject({
    heartbeat: durationText('heartbeat').optional(),
    max_missed: z.number().int().min(1).max(100).optional(),
    /** PEM CA (usually `file:/path`): agents must present a client certificate it signed (mTLS). */
    client_ca: z.string().includes('BEGIN CERTIFICATE', { error: 'client_ca must be a PEM certificate (use file:/path/to/ca.pem)' }).optional(),
  }).optional(),
  tls: z.strictObject({ cert: z.string(), key: z.string() }).optional(),
  identity: z.strictObject({ issuers: z.array(issuerSchema).default([]) }).default({ issuers: [] }),
  agent: z.strictObject({ connections: z.array(connectionSchema).default([]) }).default({ connections: [] }),
  audit: auditSchema.optional(),
  masking: z.strictObject({ hash_key: z.string().min(16, 'hash_key must have at least 16 characters') }).optional(),
  log: logSchema,
  approvals: z.strictObject({
    /** The API's address as approvers reach it, for links in notices and notifications. */
    public_url: z.url({ error: 'public_url must be a URL such as https://airlock.example.com:8080' }).optional(),
    notify: z.strictObject({
      webhooks: z.array(z.strictObject({ url: z.url(), secret: z.string().min(16, 'webhook secret must have at least 16 characters') })).default([]),
      slack: z.array(z.strictObject({ webhook_url: z.url() })).default([]),
    }).default({ webhooks: [], slack: [] }),
  }).default({ notify: { webhooks: [], slack: [] } }),
});

export type RawConfig = z.infer<typeof configSchema>;

export interface AirlockConfig {
  /** Folder of the config file; relative paths are resolved against it. */
  baseDir: string;
  dataDir: string;
  storePath: string;
  policiesDir: string;
  listeners: { api: HostPort; postgres: HostPort; agents?: HostPort };
  /** Remote agents: heartbeat interval and how many may be missed before an agent is dropped. */
  agents: { heartbeatMs?: number; maxMissed?: number; clientCa?: string };
  tls?: { cert: string; key: string };
  issuers: RawConfig['identity']['issuers'];
  connections: { name: string; url: string }[];
  logLevel: RawConfig['log']['level'];
  /** Key of the `hash` mask strategy; generated once into the data directory when not configured. */
  maskingHashKey?: string;
  approvals: { publicUrl?: string; notify: RawConfig['approvals']['notify'] };
  /** The `audit:` key (docs/configuration.md#audit); unset fields take the store's defaults. */
  audit: AuditConfig;
}

export interface AuditConfig {
  /** PEM private key (secret references resolved); undefined: `<data_dir>/audit-signing.key`, generated once. */
  signingKey?: string;
  retentionMs?: number;
  checkpointEvery?: number;
  checkpointIntervalMs?: number;
  spoolMaxBytes?: number;
}

export interface HostPort { host: string; port: number }

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export function parseHostPort(s: string): HostPort {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) };
}

/**
 * A source of secrets for whole-value references `<scheme>:<reference>` in config files. `file`
 * is built in; further backends (a Vault agent's files, a cloud secret manager) plug in with
 * registerSecretBackend. Resolution happens once, at start, synchronously.
 */
export interface SecretBackend {
  scheme: string;
  /** The secret; throw an Error whose message names the problem, never the secret. */
  resolve(reference: string, ctx: { baseDir: string; env: NodeJS.ProcessEnv }): string;
}

const secretBackends = new Map<string, SecretBackend>();

export function registerSecretBackend(backend: SecretBackend): void {
  if (!/^[a-z][a-z0-9-]*$/.test(backend.scheme)) throw new Error(`invalid secret backend scheme "${backend.scheme}"`);
  secretBackends.set(backend.scheme, backend);
}

registerSecretBackend({
  scheme: 'file',
  resolve(reference, { baseDir }) {
    const file = path.resolve(baseDir, reference);
    try {
      return fs.readFileSync(file, 'utf8').trim();
    } catch (e) {
      throw new Error(`cannot read secret file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  },
});

/** Resolves a whole-value `<scheme>:` reference of a registered backend, else `${VAR}` references inside the value. */
export function resolveSecrets(value: string, where: string, baseDir: string, env: NodeJS.ProcessEnv = process.env): string {
  const scheme = /^([a-z][a-z0-9-]*):/.exec(value)?.[1];
  const backend = scheme === undefined ? undefined : secretBackends.get(scheme);
  if (backend) {
    try {
      return backend.resolve(value.slice(scheme!.length + 1), { baseDir, env });
    } catch (e) {
      throw new ConfigError(`${where}: ${(e as Error).message}`);
    }
  }
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
    const v = env[name];
    if (v === undefined) throw new ConfigError(`${where}: environment variable ${name} is not set`);
    return v;
  });
}

function resolveDeep(node: unknown, where: string, baseDir: string, env: NodeJS.ProcessEnv): unknown {
  if (typeof node === 'string') return resolveSecrets(node, where, baseDir, env);
  if (Array.isArray(node)) return node.map((v, i) => resolveDeep(v, `${where}[${i}]`, baseDir, env));
  if (node && typeof node === 'object') {
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, resolveDeep(v, where ? `${where}.${k}` : k, baseDir, env)]));
  }
  return node;
}

/** Builds the effective config from a parsed YAML object. */
export function buildConfig(raw: unknown, baseDir: string, env: NodeJS.ProcessEnv = process.env): AirlockConfig {
  const resolved = resolveDeep(raw ?? {}, '', baseDir, env);
  const parsed = configSchema.safeParse(resolved);
  if (!parsed.success) throw configProblems('configuration', parsed.error);
  const c = parsed.data;
  const abs = (p: string) => path.resolve(baseDir, p);
  const dataDir = abs(c.data_dir ?? '.airlock');
  const names = new Set<string>();
  for (const conn of c.agent.connections) {
    if (names.has(conn.name)) throw new ConfigError(`agent.connections: duplicate connection name "${conn.name}"`);
    names.add(conn.name);
  }
  return {
    baseDir,
    dataDir,
    storePath: c.store?.path ? abs(c.store.path) : path.join(dataDir, 'airlock.db'),
    policiesDir: abs(c.policies),
    listeners: {
      api: parseHostPort(c.listeners.api), postgres: parseHostPort(c.listeners.postgres),
      ...(c.listeners.agents === undefined ? {} : { agents: parseHostPort(c.listeners.agents) }),
    },
    agents: { heartbeatMs: c.agents?.heartbeat ? parseDuration(c.agents.heartbeat) : undefined, maxMissed: c.agents?.max_missed, clientCa: c.agents?.client_ca },
    tls: c.tls && { cert: abs(c.tls.cert), key: abs(c.tls.key) },
    issuers: c.identity.issuers,
    connections: c.agent.connections,
    logLevel: c.log.level,
    maskingHashKey: c.masking?.hash_key,
    approvals: { publicUrl: c.approvals.public_url, notify: c.approvals.notify },
    audit: {
      signingKey: c.audit?.signing_key,
      retentionMs: c.audit?.retention ? parseDuration(c.audit.retention) : undefined,
      checkpointEvery: c.audit?.checkpoint_every,
      checkpointIntervalMs: c.audit?.checkpoint_interval ? parseDuration(c.audit.checkpoint_interval) : undefined,
      spoolMaxBytes: c.audit?.spool_max_mb ? c.audit.spool_max_mb * 1024 * 1024 : undefined,
    },
  };
}

export interface LoadConfigOptions {
  /** A missing file is not an error: defaults apply. */
  optional?: boolean;
  /**
   * Ignore the `agent:` section, so that the agent's connection secrets (`${VAR}`, `file:`) need
   * not be available (token and audit commands, which only need the store).
   */
  withoutAgent?: boolean;
}

/** Loads a config file. A missing file is an error unless `optional` (then defaults apply). */
export function loadConfig(file: string | undefined, opts: LoadConfigOptions = {}): AirlockConfig {
  const resolvedFile = path.resolve(file ?? 'airlock.yaml');
  let text: string;
  try {
    text = fs.readFileSync(resolvedFile, 'utf8');
  } catch (e) {
    if (opts.optional && (e as NodeJS.ErrnoException).code === 'ENOENT') return buildConfig({}, path.dirname(resolvedFile));
    throw new ConfigError(`cannot read config file ${resolvedFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = YAML.parse(text, { prettyErrors: true });
  } catch (e) {
    throw new ConfigError(`${resolvedFile}: ${(e as Error).message}`);
  }
  if (opts.withoutAgent && raw && typeof raw === 'object' && !Array.isArray(raw)) {
    const { agent: _agent, ...rest } = raw as Record<string, unknown>;
    raw = rest;
  }
  try {
    return buildConfig(raw, path.dirname(resolvedFile));
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(`${resolvedFile}: ${e.message}`);
    throw e;
  }
}
