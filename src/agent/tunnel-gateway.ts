// Gateway end of the tunnel: accepts agents on a TLS listener, authenticates each with its agent
// token, keeps the registry of connected agents, and is the gateway's AgentLink: every open /
// cancel / table-name lookup becomes an HTTP/2 stream to an agent that serves the connection.
// The protocol is described in tunnel-protocol.ts.
import tls from 'node:tls';
import http2 from 'node:http2';
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { AgentLink, TableInfo } from './agent.ts';
import { TargetError, type TargetConnection } from '../protocols/postgres/target.ts';
import {
  ALPN_PROTOCOL, DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_MISSED, HTTP2_SETTINGS, Heartbeat, MAX_SESSION_MEMORY_MB,
  PREFACE_MAX_BYTES, SESSION_WINDOW, encodeHeaderJson, parsePreface, readBody, readLine, silentLogger, writeAll, type TunnelLogger,
} from './tunnel-protocol.ts';

const { NGHTTP2_CANCEL } = http2.constants;
type ResponseHeaders = http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader;

/** What the store says about an agent token (`undefined`: unknown, expired or revoked). */
export interface AgentTokenInfo {
  /** The token's id (what `disconnect` takes). */
  id: string;
  /** The agent name the token was issued for. */
  name: string;
  /** If set, the only connections this token may serve (others announced are ignored). */
  connections?: string[];
}

export interface AgentHubOptions {
  /** A TLS server to accept agents on (the hub listens to its `secureConnection`); or give `tls`. */
  server?: tls.Server;
  /** Options for a TLS server the hub creates (cert/key; ca + requestCert for mTLS). */
  tls?: tls.TlsOptions;
  verifyAgentToken(token: string): Promise<AgentTokenInfo | undefined>;
  /** Interval of the heartbeat pings (both ways; the agent learns it in OK). Default 5000. */
  heartbeatMs?: number;
  /** Unanswered pings in a row after which an agent is dropped. Default 3. */
  maxMissedHeartbeats?: number;
  handshakeTimeoutMs?: number;
  /** Connections that have not finished the handshake, at most (others are dropped). Default 64. */
  maxPendingHandshakes?: number;
  /** How long open() waits for the agent's answer (the agent's own target timeout is 10 s). Default 30 s. */
  openTimeoutMs?: number;
  /** How long cancel()/tableNames() wait. Default 15 s. */
  requestTimeoutMs?: number;
  log?: TunnelLogger;
}

/** One connected agent, as `GET /api/agents` would show it. */
export interface AgentInfo {
  /** Id of this agent connection (a new one on every reconnect). */
  id: string;
  tokenId: string;
  tokenName: string;
  /** The name the agent announced (e.g. its host name). */
  name: string;
  version: string;
  connections: string[];
  connectedAt: string;
  lastHeartbeat: string;
  remoteAddress: string;
  healthy: boolean;
  missedHeartbeats: number;
  rttMs?: number;
  /** Client sessions currently open through this agent. */
  sessions: number;
}

export interface AgentHubEvents {
  'agent-connected': [AgentInfo];
  'agent-disconnected': [AgentInfo, string];
  /** A connection that did not get past the handshake (bad preface, refused token...). */
  'agent-refused': [{ remoteAddress: string; reason: string; name?: string }];
}

interface Connected {
  info: Omit<AgentInfo, 'healthy' | 'missedHeartbeats' | 'lastHeartbeat' | 'rttMs' | 'sessions'>;
  session: http2.ClientHttp2Session;
  socket: tls.TLSSocket;
  heartbeat: Heartbeat;
  sessions: number;
  gone: boolean;
}

/**
 * Events: `agent-connected` (info), `agent-disconnected` (info, reason), `agent-refused` ({remoteAddress, reason, name}).
 */
export class AgentHub extends EventEmitter<AgentHubEvents> implements AgentLink {
  readonly server: tls.Server;
  private readonly ownsServer: boolean;
  private readonly log: TunnelLogger;
  private readonly live = new Map<string, Connected>();
  private readonly heartbeatMs: number;
  private pending = 0;
  private rr = 0;
  private closed = false;
  private readonly onSecureConnection = (socket: tls.TLSSocket) => void this.accept(socket);

  constructor(private readonly opts: AgentHubOptions) {
    super();
    this.log = opts.log ?? silentLogger;
    this.heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    if (opts.server) {
      this.server = opts.server;
      this.ownsServer = false;
    } else {
      if (!opts.tls) throw new Error('AgentHub needs a TLS server or TLS options (cert and key)');
      this.server = tls.createServer({ ALPNProtocols: [ALPN_PROTOCOL], ...opts.tls });
      this.ownsServer = true;
      this.server.on('tlsClientError', (err, socket) =>
        this.log.debug({ err: err.message, remoteAddress: socket.remoteAddress }, 'agent listener: TLS handshake failed'));
    }
    this.server.on('secureConnection', this.onSecureConnection);
  }

  /** Listens (only for a server the hub created); resolves to the bound address. */
  async listen(at: { host: string; port: number }): Promise<{ host: string; port: number }> {
    if (!this.ownsServer) throw new Error('the agent listener was given to the hub: listen on it directly');
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(at.port, at.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const a = this.server.address() as net.AddressInfo;
    return { host: at.host, port: a.port };
  }

  agents(): AgentInfo[] {
    return [...this.live.values()].map((a) => this.describe(a));
  }

  /** Drops every agent connected with this token (on revocation); returns how many. */
  disconnect(tokenId: string, reason = 'agent token revoked'): number {
    let n = 0;
    for (const a of [...this.live.values()]) {
      if (a.info.tokenId === tokenId) {
        this.drop(a, reason);
        n++;
      }
    }
    return n;
  }

  serves(): string[] {
    const out = new Set<string>();
    for (const a of this.live.values()) if (this.healthy(a)) for (const c of a.info.connections) out.add(c);
    return [...out];
  }

  async open(connection: string, clientParams: Record<string, string>): Promise<TargetConnection> {
    const agent = this.pick(connection);
    const stream = agent.session.request({ ':method': 'POST', ':path': '/open', 'airlock-open': encodeHeaderJson({ connection, params: clientParams }) });
    agent.sessions++;
    stream.once('close', () => agent.sessions--);
    // Until the adapter takes the stream over, an error must not go unheard (the adapter adds its own).
    stream.on('error', (e) => this.log.debug({ err: e.message, agent: agent.info.id, connection }, 'agent stream error'));
    const headers = await this.response(stream, agent, this.opts.openTimeoutMs ?? 30_000, `opening connection "${connection}"`);
    if (headers[':status'] !== 200) throw await this.failure(stream, agent);
    // Like a socket without half-open: when the target's side has ended (and been read), the stream closes.
    stream.once('end', () => {
      if (!stream.closed) stream.close();
    });
    return { socket: stream, leftover: Buffer.alloc(0) };
  }

  async cancel(connection: string, processId: number, secretKey: number): Promise<void> {
    await this.call(connection, '/cancel', { connection, processId, secretKey });
  }

  async tableNames(connection: string, oids: number[]): Promise<Map<number, TableInfo>> {
    const rows = await this.call(connection, '/table-names', { connection, oids }) as [number, string, [number, string][]][];
    const out = new Map<number, TableInfo>();
    for (const [oid, name, columns] of rows ?? []) out.set(Number(oid), { name: String(name), columns: new Map(columns.map(([n, c]) => [Number(n), String(c)])) });
    return out;
  }

  /** Drops every agent; closes the listener if the hub created it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.server.off('secureConnection', this.onSecureConnection);
    for (const a of [...this.live.values()]) this.drop(a, 'gateway shutting down');
    if (this.ownsServer) this.server.close();
  }

  // ---------- connections ----------

  private async accept(socket: tls.TLSSocket): Promise<void> {
    const remoteAddress = `${(socket.remoteAddress ?? 'unknown').replace(/^::ffff:/, '')}:${socket.remotePort ?? 0}`;
    socket.on('error', (e) => this.log.debug({ err: e.message, remoteAddress }, 'agent socket error'));
    if (this.closed) return void socket.destroy();
    if (this.pending >= (this.opts.maxPendingHandshakes ?? 64)) {
      this.log.warn({ remoteAddress }, 'too many agent handshakes in progress; connection dropped');
      return void socket.destroy();
    }
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    this.pending++;
    let name: string | undefined;
    try {
      const preface = parsePreface(await readLine(socket, PREFACE_MAX_BYTES, this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS));
      name = preface.name;
      let token: AgentTokenInfo | undefined;
      try {
        token = await this.opts.verifyAgentToken(preface.token);
      } catch (e) {
        this.log.warn({ err: (e as Error).message, remoteAddress, name }, 'agent token check failed');
        return await this.refuse(socket, remoteAddress, 'the agent token could not be checked', name);
      }
      if (!token) return await this.refuse(socket, remoteAddress, 'invalid agent token', name);
      if (this.closed || socket.destroyed) return void socket.destroy();
      let connections = preface.connections;
      if (token.connections) {
        const allowed = new Set(token.connections);
        const refused = connections.filter((c) => !allowed.has(c));
        if (refused.length) this.log.warn({ name, tokenId: token.id, refused }, 'agent announced connections its token does not cover; ignored');
        connections = connections.filter((c) => allowed.has(c));
      }
      const id = `ag_${randomBytes(6).toString('hex')}`;
      await writeAll(socket, `OK ${JSON.stringify({ id, heartbeatMs: this.heartbeatMs })}\n`);
      this.register(socket, {
        id, tokenId: token.id, tokenName: token.name, name: preface.name, version: preface.version, connections,
        connectedAt: new Date().toISOString(), remoteAddress,
      });
    } catch (e) {
      await this.refuse(socket, remoteAddress, (e as Error).message, name);
    } finally {
      this.pending--;
    }
  }

  private async refuse(socket: tls.TLSSocket, remoteAddress: string, reason: string, name?: string): Promise<void> {
    this.log.warn({ remoteAddress, name, reason }, 'agent refused');
    this.emit('agent-refused', { remoteAddress, reason, name });
    if (!socket.destroyed && socket.writable) {
      socket.end(`ERR ${reason.replace(/[\r\n]/g, ' ')}\n`);
      setTimeout(() => socket.destroy(), 1000).unref();
    } else {
      socket.destroy();
    }
  }

  private register(socket: tls.TLSSocket, info: Connected['info']): void {
    const session = http2.connect(`http://${ALPN_PROTOCOL.replace('/', '-')}`, {
      createConnection: () => socket,
      settings: HTTP2_SETTINGS,
      maxSessionMemory: MAX_SESSION_MEMORY_MB,
    });
    try {
      session.setLocalWindowSize(SESSION_WINDOW);
    } catch { /* set once the session is up */
      session.once('connect', () => session.setLocalWindowSize(SESSION_WINDOW));
    }
    const agent: Connected = {
      info, session, socket, sessions: 0, gone: false,
      heartbeat: new Heartbeat(session, this.heartbeatMs, this.opts.maxMissedHeartbeats ?? DEFAULT_MAX_MISSED,
        (missed) => this.drop(agent, `missed ${missed} heartbeats`)),
    };
    session.on('error', (e) => this.log.debug({ err: e.message, agent: info.id }, 'agent session error'));
    session.on('close', () => this.drop(agent, 'connection closed'));
    socket.on('close', () => this.drop(agent, 'connection closed'));
    this.live.set(info.id, agent);
    this.log.info({ agent: info.id, name: info.name, tokenId: info.tokenId, version: info.version, connections: info.connections,
      remoteAddress: info.remoteAddress }, 'agent connected');
    this.emit('agent-connected', this.describe(agent));
  }

  /** Removes the agent and ends its streams with an error (the sessions through it see the target lost). */
  private drop(agent: Connected, reason: string): void {
    if (agent.gone) return;
    agent.gone = true;
    agent.heartbeat.stop();
    this.live.delete(agent.info.id);
    if (!agent.session.destroyed) agent.session.destroy(new Error(`agent ${agent.info.name} (${agent.info.id}): ${reason}`));
    agent.socket.destroy();
    (reason === 'connection closed' ? this.log.info : this.log.warn).call(this.log, { agent: agent.info.id, name: agent.info.name, reason }, 'agent disconnected');
    this.emit('agent-disconnected', this.describe(agent), reason);
  }

  private describe(a: Connected): AgentInfo {
    return { ...a.info, connections: [...a.info.connections], healthy: this.healthy(a), missedHeartbeats: a.heartbeat.missed,
      lastHeartbeat: new Date(a.heartbeat.lastAnswer).toISOString(), rttMs: a.heartbeat.rttMs, sessions: a.sessions };
  }

  private healthy(a: Connected): boolean {
    return !a.gone && !a.session.destroyed && !a.session.closed && a.heartbeat.missed < (this.opts.maxMissedHeartbeats ?? DEFAULT_MAX_MISSED);
  }

  /** A healthy agent serving the connection: those answering heartbeats first, then the fewest sessions, ties in turn. */
  private pick(connection: string): Connected {
    const candidates = [...this.live.values()].filter((a) => this.healthy(a) && a.info.connections.includes(connection));
    if (candidates.length === 0) throw new Error(`no agent is connected for connection "${connection}"`);
    const rank = (a: Connected) => (a.heartbeat.missed > 0 ? 1e9 : 0) + a.sessions;
    const best = Math.min(...candidates.map(rank));
    const ties = candidates.filter((a) => rank(a) === best);
    return ties[this.rr++ % ties.length];
  }

  // ---------- requests ----------

  private response(stream: http2.ClientHttp2Stream, agent: Connected, timeoutMs: number, what: string): Promise<ResponseHeaders> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stream.close(NGHTTP2_CANCEL);
        done(new Error(`agent ${agent.info.name} did not answer in time (${what})`));
      }, timeoutMs);
      const onResponse = (h: ResponseHeaders) => done(undefined, h);
      const onGone = (e?: Error) => done(new Error(`agent ${agent.info.name} dropped the request (${what})${e ? `: ${e.message}` : ''}`));
      function done(err?: Error, headers?: ResponseHeaders) {
        clearTimeout(timer);
        stream.off('response', onResponse).off('error', onGone).off('close', onGone);
        if (err) reject(err);
        else resolve(headers!);
      }
      stream.once('response', onResponse).once('error', onGone).once('close', onGone);
    });
  }

  /** The agent's error answer (502 JSON) as an Error; a TargetError with the target's fields when it came from the target. */
  private async failure(stream: http2.ClientHttp2Stream, agent: Connected): Promise<Error> {
    try {
      const body = JSON.parse((await readBody(stream, 64 * 1024)).toString('utf8')) as { message?: string; fields?: Record<string, string>; target?: boolean };
      const message = typeof body.message === 'string' ? body.message : 'unknown agent error';
      return body.target ? new TargetError(message, body.fields) : new Error(`agent ${agent.info.name}: ${message}`);
    } catch (e) {
      return new Error(`agent ${agent.info.name} answered with an unreadable error: ${(e as Error).message}`);
    } finally {
      if (!stream.closed) stream.close();
    }
  }

  private async call(connection: string, path: string, body: unknown): Promise<unknown> {
    const agent = this.pick(connection);
    const stream = agent.session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/json' });
    stream.on('error', () => {});
    stream.end(JSON.stringify(body));
    const headers = await this.response(stream, agent, this.opts.requestTimeoutMs ?? 15_000, path.slice(1));
    const status = headers[':status'];
    if (status === 204) {
      if (!stream.closed) stream.close();
      return undefined;
    }
    if (status !== 200) throw await this.failure(stream, agent);
    return JSON.parse((await readBody(stream, 16 * 1024 * 1024)).toString('utf8')) as unknown;
  }
}
