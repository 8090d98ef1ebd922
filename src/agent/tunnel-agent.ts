// Agent end of the tunnel: dials OUT to the gateway's agent listener, authenticates with its token,
// then serves the gateway's requests (open / cancel / table names) with an AgentLink, usually a
// LocalAgent that holds the target credentials. Reconnects with jittered backoff. The protocol is
// described in tunnel-protocol.ts.
import tls from 'node:tls';
import http2 from 'node:http2';
import { EventEmitter } from 'node:events';
import type { AgentLink } from './agent.ts';
import { TargetError, type TargetConnection } from '../protocols/postgres/target.ts';
import { VERSION } from '../core/version.ts';
import {
  ALPN_PROTOCOL, DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_MISSED, HTTP2_SETTINGS, HandshakeRefused, Heartbeat, MAX_SESSION_MEMORY_MB,
  PREFACE_MAX_BYTES, SESSION_WINDOW, backoffDelay, decodeHeaderJson, encodePreface, normalizeFingerprint, parseWelcome, readBody, readLine,
  silentLogger, writeAll, type TunnelLogger, type Welcome,
} from './tunnel-protocol.ts';

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR } = http2.constants;

export interface AgentClientOptions {
  /** The gateway's agent listener. */
  gateway: { host: string; port: number };
  /** The agent token (kept in memory only, sent once per connection after the certificate check). */
  token: string;
  /** This agent's name (e.g. its host name); default: the host name. */
  name: string;
  version?: string;
  /** What actually serves the requests: usually a LocalAgent with the target URLs. Not closed by close(). */
  agent: AgentLink;
  tls?: {
    /** PEM CA bundle (or the gateway's self-signed certificate) to verify the gateway with, hostname included. */
    ca?: string | Buffer;
    /** SHA-256 fingerprint of the gateway's certificate (as `airlock up` prints it): pinned instead of a CA. */
    fingerprint?: string;
    /** Name the certificate must carry when a CA is used (default: gateway.host). */
    servername?: string;
    /** Client certificate and key, for a gateway that asks for mTLS. */
    cert?: string | Buffer;
    key?: string | Buffer;
  };
  backoff?: { initialMs?: number; maxMs?: number; jitter?: number };
  handshakeTimeoutMs?: number;
  /** Heartbeats missed in a row after which the agent drops the connection and reconnects. */
  maxMissedHeartbeats?: number;
  log?: TunnelLogger;
}

export interface AgentClientEvents {
  connected: [{ id: string; gateway: string }];
  /** A connection (or an attempt) ended; `wasConnected` says whether it had been up. */
  disconnected: [{ reason: string; wasConnected: boolean; retryInMs?: number }];
  /** The gateway refused the token, or its certificate failed the check (the token was not sent). */
  refused: [{ reason: string }];
}

/**
 * Events: `connected` ({id, gateway}), `disconnected` ({reason, retryInMs}), `refused` ({reason}).
 * Call start() to connect; close() stops for good.
 */
export class AgentClient extends EventEmitter<AgentClientEvents> {
  private readonly log: TunnelLogger;
  private readonly pin?: string;
  private readonly backoff: { initialMs: number; maxMs: number; jitter: number };
  private socket?: tls.TLSSocket;
  private session?: http2.ServerHttp2Session;
  private heartbeat?: Heartbeat;
  private retryTimer?: NodeJS.Timeout;
  private attempt = 0;
  private started = false;
  private closed = false;
  private welcome?: Welcome;
  /** Target sockets of the open streams (destroyed with the connection). */
  private readonly targets = new Set<TargetConnection['socket']>();

  constructor(private readonly opts: AgentClientOptions) {
    super();
    this.log = opts.log ?? silentLogger;
    if (opts.tls?.fingerprint) this.pin = normalizeFingerprint(opts.tls.fingerprint);
    this.backoff = { initialMs: 500, maxMs: 30_000, jitter: 0.2, ...opts.backoff };
  }

  get connected(): boolean {
    return !!this.welcome && !!this.session && !this.session.destroyed;
  }

  /** The id the gateway gave the current connection. */
  get id(): string | undefined {
    return this.connected ? this.welcome?.id : undefined;
  }

  start(): this {
    if (this.started || this.closed) return this;
    this.started = true;
    this.connect();
    return this;
  }

  /** Stops reconnecting and drops the connection (open streams end with it). */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    const socket = this.socket;
    this.teardown('agent closing');
    if (socket && !socket.destroyed) await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  }

  private get gatewayLabel(): string {
    return `${this.opts.gateway.host}:${this.opts.gateway.port}`;
  }

  private connect(): void {
    if (this.closed) return;
    const t = this.opts.tls ?? {};
    const socket = tls.connect({
      host: this.opts.gateway.host,
      port: this.opts.gateway.port,
      servername: t.servername ?? (isIp(this.opts.gateway.host) ? undefined : this.opts.gateway.host),
      ALPNProtocols: [ALPN_PROTOCOL],
      cert: t.cert,
      key: t.key,
      ...(this.pin
        // Node checks the chain before checkServerIdentity, so a pin on a self-signed certificate
        // is checked by hand on secureConnect, before a byte of ours is sent.
        ? { rejectUnauthorized: false }
        : { ca: t.ca, rejectUnauthorized: true,
          ...(t.servername ? { checkServerIdentity: (_h: string, cert: tls.PeerCertificate) => tls.checkServerIdentity(t.servername!, cert) } : {}) }),
    });
    this.socket = socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    let failed = false;
    const fail = (reason: string, refused = false) => {
      clearTimeout(timer);
      if (failed) return;
      failed = true;
      if (refused) {
        this.log.warn({ gateway: this.gatewayLabel, reason }, 'agent refused');
        this.emit('refused', { reason });
      }
      this.dropped(socket, reason);
    };
    // TLS handshake and preface together must finish in time (a frozen gateway still accepts TCP).
    const timer = setTimeout(() => {
      if (this.welcome && this.socket === socket) return;
      socket.destroy();
      fail('the gateway did not complete the handshake in time');
    }, this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    socket.on('error', (e) => fail(`connection to the gateway failed: ${e.message}`));
    socket.once('close', () => fail('connection to the gateway closed'));
    socket.once('secureConnect', () => {
      if (this.pin) {
        const fp = socket.getPeerX509Certificate()?.fingerprint256;
        if (fp !== this.pin) {
          socket.destroy();
          return fail(`the gateway's certificate (sha256 ${fp ?? 'none'}) does not match the pinned fingerprint`, true);
        }
      }
      void this.handshake(socket).then(() => clearTimeout(timer), (e: Error) => {
        socket.destroy();
        fail(e.message, e instanceof HandshakeRefused);
      });
    });
  }

  private async handshake(socket: tls.TLSSocket): Promise<void> {
    const announcement = { name: this.opts.name, version: this.opts.version ?? VERSION, connections: this.opts.agent.serves() };
    const sent = writeAll(socket, encodePreface({ token: this.opts.token, ...announcement }));
    const line = await readLine(socket, PREFACE_MAX_BYTES, this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
    await sent;
    const welcome = parseWelcome(line);
    if (this.closed || socket.destroyed) return;
    const session = http2.performServerHandshake(socket, { settings: HTTP2_SETTINGS, maxSessionMemory: MAX_SESSION_MEMORY_MB });
    this.session = session;
    this.welcome = welcome;
    this.attempt = 0;
    try {
      session.setLocalWindowSize(SESSION_WINDOW);
    } catch { /* closing already */ }
    session.on('error', (e) => this.log.debug({ err: e.message }, 'agent tunnel session error'));
    session.on('close', () => this.dropped(socket, 'the tunnel session closed'));
    session.on('goaway', () => this.log.debug({}, 'gateway sent GOAWAY'));
    session.on('stream', (stream, headers) => this.onStream(stream, headers));
    this.heartbeat = new Heartbeat(session, welcome.heartbeatMs, this.opts.maxMissedHeartbeats ?? DEFAULT_MAX_MISSED, (missed) => {
      this.log.warn({ gateway: this.gatewayLabel, missed }, 'the gateway stopped answering heartbeats; reconnecting');
      session.destroy();
      socket.destroy();
    });
    this.log.info({ gateway: this.gatewayLabel, id: welcome.id, connections: announcement.connections }, 'agent connected to the gateway');
    this.emit('connected', { id: welcome.id, gateway: this.gatewayLabel });
  }

  /** The connection is gone (or never came up): clean up and schedule the next attempt. */
  private dropped(socket: tls.TLSSocket, reason: string): void {
    if (socket !== this.socket) return;
    const wasConnected = !!this.welcome;
    this.teardown(reason);
    if (this.closed) {
      if (wasConnected) this.emit('disconnected', { reason, wasConnected });
      return;
    }
    const retryInMs = backoffDelay(this.attempt++, this.backoff);
    (wasConnected ? this.log.warn : this.log.debug).call(this.log, { gateway: this.gatewayLabel, reason, retryInMs },
      wasConnected ? 'agent disconnected from the gateway' : 'cannot connect to the gateway');
    this.emit('disconnected', { reason, wasConnected, retryInMs });
    this.retryTimer = setTimeout(() => this.connect(), retryInMs);
  }

  private teardown(reason: string): void {
    this.heartbeat?.stop();
    this.heartbeat = undefined;
    const session = this.session, socket = this.socket;
    this.session = undefined;
    this.socket = undefined;
    this.welcome = undefined;
    session?.destroy();
    socket?.destroy();
    for (const t of this.targets) t.destroy();
    this.targets.clear();
    void reason;
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', (e) => this.log.debug({ err: e.message }, 'tunnel stream error'));
    const path = headers[':path'];
    const task = path === '/open' ? this.serveOpen(stream, headers)
      : path === '/cancel' ? this.serveJson(stream, async (b) => {
        const { connection, processId, secretKey } = b as { connection: string; processId: number; secretKey: number };
        if (typeof connection !== 'string' || !Number.isInteger(processId) || !Number.isInteger(secretKey)) throw new Error('invalid cancel request');
        await this.opts.agent.cancel(connection, processId, secretKey);
        return undefined;
      })
      : path === '/table-names' ? this.serveJson(stream, async (b) => {
        const { connection, oids } = b as { connection: string; oids: number[] };
        if (typeof connection !== 'string' || !Array.isArray(oids) || !oids.every((o) => Number.isInteger(o))) throw new Error('invalid table-names request');
        const names = await this.opts.agent.tableNames(connection, oids);
        return [...names].map(([oid, t]) => [oid, t.name, [...t.columns]]);
      })
      : Promise.reject(new Error(`unknown request ${String(path)}`));
    task.catch((e: Error) => replyError(stream, e));
  }

  private async serveOpen(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    const req = decodeHeaderJson(headers['airlock-open']) as { connection?: unknown; params?: unknown };
    if (typeof req.connection !== 'string' || !req.params || typeof req.params !== 'object') throw new Error('invalid open request');
    const params: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.params as Record<string, unknown>)) if (typeof v === 'string') params[k] = v;
    const conn = await this.opts.agent.open(req.connection, params);
    const target = conn.socket;
    if (stream.destroyed || stream.closed) {
      target.destroy();
      return;
    }
    this.targets.add(target);
    stream.respond({ ':status': 200 });
    if (conn.leftover.length) stream.write(conn.leftover);
    let targetEnded = false;
    target.once('end', () => (targetEnded = true));
    target.on('error', (e) => this.log.debug({ err: e.message, connection: req.connection }, 'target socket error'));
    target.once('close', () => {
      this.targets.delete(target);
      // A clean FIN from the target ends the response (piped, after the data); anything else aborts the stream.
      if (!targetEnded && !stream.closed) stream.close(NGHTTP2_INTERNAL_ERROR);
    });
    // pipe() carries the backpressure both ways: a full target socket pauses the stream (whose
    // window then closes), a full stream (the gateway's window) pauses the target socket.
    target.pipe(stream);
    stream.pipe(target);
    stream.once('close', () => {
      if (!target.destroyed) {
        // The gateway's side is done: after a clean end both ways the target is closing anyway.
        if (stream.rstCode !== undefined && stream.rstCode !== 0) target.destroy();
        else if (!targetEnded) setTimeout(() => target.destroy(), 1000).unref();
      }
    });
    stream.once('aborted', () => target.destroy());
  }

  private async serveJson(stream: http2.ServerHttp2Stream, handle: (body: unknown) => Promise<unknown>): Promise<void> {
    const body = JSON.parse((await readBody(stream, 1024 * 1024)).toString('utf8')) as unknown;
    const result = await handle(body);
    if (stream.destroyed) return;
    if (result === undefined) {
      stream.respond({ ':status': 204 }, { endStream: true });
    } else {
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify(result));
    }
  }
}

function replyError(stream: http2.ServerHttp2Stream, e: Error): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) return void stream.close(NGHTTP2_CANCEL);
  stream.respond({ ':status': 502, 'content-type': 'application/json' });
  stream.end(JSON.stringify({ message: e.message, fields: e instanceof TargetError ? e.fields : undefined, target: e instanceof TargetError }));
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}
