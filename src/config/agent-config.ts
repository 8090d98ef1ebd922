// agent.yaml: where the gateway is, the agent's token, and the targets with their credentials.
// The agent runs inside the target network and dials out; see docs/agents.md.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseDuration } from '../policy/schema.ts';
import { ConfigError, configProblems, logSchema, parseHostPort, resolveSecrets, type HostPort } from './config.ts';

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):\d{1,5}$/, 'expected host:port');

const agentSchema = z.strictObject({
  /** The gateway's agent listener (its `listeners.agents`). */
  gateway: hostPort,
  /** The agent token (`airlock agent-token create`): use `${VAR}` or `file:`, never the token itself. */
  token: z.string().min(1),
  /** This agent's name in `airlock agents` (default: the host name). */
  name: z.string().min(1).max(200).optional(),
  tls: z.strictObject({
    /** SHA-256 fingerprint of the gateway's certificate, as the gateway prints it. */
    fingerprint: z.string().regex(/^([0-9A-Fa-f]{2}:?){32}$/, 'expected a SHA-256 fingerprint (64 hex digits, colons allowed)').optional(),
    /** CA (or the gateway's own certificate) to verify it with, instead of a fingerprint. */
    ca: z.string().optional(),
    servername: z.string().optional(),
    /** Client certificate and key, when the gateway asks for mTLS. */
    cert: z.string().optional(),
    key: z.string().optional(),
  }).refine((t) => t.fingerprint !== undefined || t.ca !== undefined, 'tls needs fingerprint or ca: the agent must verify the gateway'),
  connections: z.array(z.strictObject({ name: z.string().min(1), url: z.string().min(1) })).min(1, 'connections must not be empty'),
  backoff: z.strictObject({ initial: z.string().optional(), max: z.string().optional() }).optional(),
  log: logSchema,
});

export interface AgentConfig {
  gateway: HostPort;
  token: string;
  name: string;
  tls: { fingerprint?: string; ca?: string; servername?: string; cert?: string; key?: string };
  connections: { name: string; url: string }[];
  backoff: { initialMs?: number; maxMs?: number };
  logLevel: z.infer<typeof logSchema>['level'];
}

/** Loads agent.yaml; `${VAR}` and `file:` references are resolved (the token and target URLs hold secrets). */
export function loadAgentConfig(file: string, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read agent config ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const baseDir = path.dirname(path.resolve(file));
  const parsed = agentSchema.safeParse(parseYaml(text) ?? {});
  if (!parsed.success) throw configProblems(`agent configuration ${file}`, parsed.error);
  const c = parsed.data;
  const secret = (value: string, where: string) => resolveSecrets(value, where, baseDir, env);
  const pem = (value: string | undefined, where: string) =>
    value === undefined ? undefined : fs.existsSync(path.resolve(baseDir, value)) ? fs.readFileSync(path.resolve(baseDir, value), 'utf8') : secret(value, where);
  const names = new Set<string>();
  for (const conn of c.connections) {
    if (names.has(conn.name)) throw new ConfigError(`connections: duplicate connection name "${conn.name}"`);
    names.add(conn.name);
  }
  const duration = (v: string | undefined, where: string) => {
    if (v === undefined) return undefined;
    const ms = parseDuration(v);
    if (ms === undefined) throw new ConfigError(`${where}: "${v}" is not a duration (e.g. 500ms is not supported: use 1s, 30s, 1m)`);
    return ms;
  };
  return {
    gateway: parseHostPort(c.gateway),
    token: secret(c.token, 'token'),
    name: c.name ?? os.hostname(),
    tls: {
      fingerprint: c.tls.fingerprint,
      ca: pem(c.tls.ca, 'tls.ca'),
      servername: c.tls.servername,
      cert: pem(c.tls.cert, 'tls.cert'),
      key: pem(c.tls.key, 'tls.key'),
    },
    connections: c.connections.map((conn, i) => ({ name: conn.name, url: secret(conn.url, `connections[${i}].url`) })),
    backoff: { initialMs: duration(c.backoff?.initial, 'backoff.initial'), maxMs: duration(c.backoff?.max, 'backoff.max') },
    logLevel: c.log.level,
  };
}
