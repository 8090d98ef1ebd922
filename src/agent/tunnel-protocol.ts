// Gateway <-> agent tunnel: what both ends share (the handshake, HTTP/2 settings, heartbeats).
//
// The agent dials OUT to the gateway's agent listener over TLS. Before anything else, on the TLS
// socket, a one-line handshake (the "preface"), each line at most PREFACE_MAX_BYTES, UTF-8, ending in LF:
//
//   agent   -> gateway   AIRLOCK-AGENT/1 {"token":"…","name":"…","version":"…","connections":["…"]}\n
//   gateway -> agent     OK {"id":"ag_…","heartbeatMs":5000}\n
//                    or  ERR <reason>\n              (and the gateway closes the connection)
//
// The agent sends nothing after its line until it has read the answer, and the gateway nothing
// before it, so neither end reads past the other's line. The gateway answers within
// handshakeTimeoutMs or drops the connection. The token is never logged, by either end.
//
// After OK, the same TLS socket carries HTTP/2 with the roles reversed: the AGENT is the HTTP/2
// server and the GATEWAY the client, so the gateway opens the streams. Each stream is one request:
//
//   POST /open         header airlock-open: base64url(JSON {connection, params})
//                      200: response body = target -> client bytes (from the AuthenticationOk on),
//                           request body  = client -> target bytes; END_STREAM on either side is a
//                           half-close (the target's or the client's FIN); RST_STREAM aborts.
//                      502: JSON {message, fields?} (the target's error fields, see TargetError).
//   POST /cancel       JSON {connection, processId, secretKey} -> 204, or 502 JSON {message}
//   POST /table-names  JSON {connection, oids}  -> 200 JSON [[oid, "schema.table", [[attnum, name], …]], …]
//
// Flow control is HTTP/2's: every stream has its own window (STREAM_WINDOW), the connection a larger
// one (SESSION_WINDOW); a reader that pauses stops its stream's window updates and nothing else.
// Both ends ping the other every heartbeatMs (the gateway's value, sent in OK); an end whose pings go
// unanswered maxMissed times in a row drops the connection (the agent then reconnects).
import type http2 from 'node:http2';
import type net from 'node:net';

export const PREFACE_MAGIC = 'AIRLOCK-AGENT/1';
export const PREFACE_MAX_BYTES = 16 * 1024;
/** ALPN protocol both ends offer (a misrouted client, e.g. a browser, is refused by TLS itself). */
export const ALPN_PROTOCOL = 'airlock-agent/1';

/** Per-stream HTTP/2 window: how far one session's target may run ahead of its reader. */
export const STREAM_WINDOW = 1024 * 1024;
/** Connection-level HTTP/2 window, larger than a stream's so that one paused stream cannot block the others. */
export const SESSION_WINDOW = 32 * 1024 * 1024;

export const DEFAULT_HEARTBEAT_MS = 5000;
export const DEFAULT_MAX_MISSED = 3;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

export const HTTP2_SETTINGS: http2.Settings = {
  initialWindowSize: STREAM_WINDOW,
  maxConcurrentStreams: 100_000,
  enablePush: false,
  maxFrameSize: 64 * 1024,
};
/** MB of memory nghttp2 may hold per session before refusing new streams (Node's default is 10). */
export const MAX_SESSION_MEMORY_MB = 128;

export interface Announcement {
  /** The agent's own name (e.g. its host name): shown next to the token's name. */
  name: string;
  version: string;
  /** Names of the connections the agent serves. */
  connections: string[];
}

export interface Preface extends Announcement {
  token: string;
}

export interface Welcome {
  /** The id the gateway gave this agent connection. */
  id: string;
  heartbeatMs: number;
}

/** Minimal logger (pino's signature). */
export interface TunnelLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export const silentLogger: TunnelLogger = { info() {}, warn() {}, debug() {} };

const NAME_RE = /^[\p{L}\p{N}_.:@\/-]{1,200}$/u;

export function encodePreface(p: Preface): string {
  return `${PREFACE_MAGIC} ${JSON.stringify({ token: p.token, name: p.name, version: p.version, connections: p.connections })}\n`;
}

/** Parses the agent's line; the error messages never quote the line (it holds the token). */
export function parsePreface(line: string): Preface {
  if (!line.startsWith(`${PREFACE_MAGIC} `)) throw new Error(`not an ${PREFACE_MAGIC} preface`);
  let v: unknown;
  try {
    v = JSON.parse(line.slice(PREFACE_MAGIC.length + 1));
  } catch {
    throw new Error('preface is not valid JSON');
  }
  const o = v as Record<string, unknown>;
  if (!o || typeof o !== 'object') throw new Error('preface is not a JSON object');
  if (typeof o.token !== 'string' || !o.token || o.token.length > 4096) throw new Error('preface: missing or invalid token');
  if (typeof o.name !== 'string' || !NAME_RE.test(o.name)) throw new Error('preface: missing or invalid name');
  const version = typeof o.version === 'string' ? o.version.slice(0, 100) : 'unknown';
  if (!Array.isArray(o.connections) || o.connections.length > 10_000 || !o.connections.every((c) => typeof c === 'string' && NAME_RE.test(c))) {
    throw new Error('preface: connections must be a list of connection names');
  }
  return { token: o.token, name: o.name, version, connections: [...new Set(o.connections as string[])] };
}

export function parseWelcome(line: string): Welcome {
  if (line.startsWith('ERR ')) throw new HandshakeRefused(line.slice(4).trim() || 'refused');
  if (!line.startsWith('OK ')) throw new Error('the gateway answered with something other than OK/ERR');
  const o = JSON.parse(line.slice(3)) as Partial<Welcome>;
  if (typeof o.id !== 'string' || typeof o.heartbeatMs !== 'number' || !(o.heartbeatMs > 0)) throw new Error('invalid OK from the gateway');
  return { id: o.id, heartbeatMs: o.heartbeatMs };
}

/** The gateway said ERR: the token (or announcement) was refused. */
export class HandshakeRefused extends Error {
  constructor(reason: string) {
    super(`the gateway refused the agent: ${reason}`);
    this.name = 'HandshakeRefused';
  }
}

/**
 * Reads one LF-terminated line from the socket (at most maxBytes, within timeoutMs), leaves the
 * socket paused and puts back anything read past the line.
 */
export function readLine(socket: net.Socket, maxBytes: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => done(new Error('handshake timed out')), timeoutMs);
    const onData = (d: Buffer) => {
      const nl = d.indexOf(10);
      const part = nl < 0 ? d : d.subarray(0, nl);
      size += part.length;
      if (size > maxBytes) return done(new Error(`handshake line longer than ${maxBytes} bytes`));
      chunks.push(part);
      if (nl < 0) return;
      socket.pause();
      if (nl + 1 < d.length) socket.unshift(d.subarray(nl + 1));
      done(undefined, Buffer.concat(chunks).toString('utf8'));
    };
    const onEnd = () => done(new Error('connection closed during the handshake'));
    const onError = (e: Error) => done(new Error(`connection failed during the handshake: ${e.message}`));
    function done(err?: Error, line?: string) {
      clearTimeout(timer);
      socket.off('data', onData).off('end', onEnd).off('close', onEnd).off('error', onError);
      socket.pause();
      if (err) reject(err);
      else resolve(line!);
    }
    socket.on('data', onData).once('end', onEnd).once('close', onEnd).once('error', onError);
    socket.resume();
  });
}

/**
 * Writes and waits until the TLS layer is done with the bytes: HTTP/2 must not take the socket over
 * while a write of ours is in flight (Node asserts on it).
 */
export function writeAll(socket: net.Socket, data: string): Promise<void> {
  return new Promise((resolve, reject) => socket.write(data, (err) => (err ? reject(err) : resolve())));
}

/**
 * Pings the peer every intervalMs; a ping still unanswered when the next is due is a miss. After
 * maxMissed misses in a row, onDead runs (once).
 */
export class Heartbeat {
  missed = 0;
  lastAnswer = Date.now();
  rttMs?: number;
  private outstanding = false;
  private readonly timer: NodeJS.Timeout;
  private dead = false;

  constructor(private readonly session: http2.Http2Session, intervalMs: number, private readonly maxMissed: number,
    private readonly onDead: (missed: number) => void) {
    this.timer = setInterval(() => this.tick(), intervalMs);
    this.timer.unref();
  }

  private tick(): void {
    if (this.dead || this.session.destroyed) return this.stop();
    if (this.outstanding) {
      this.missed++;
      if (this.missed >= this.maxMissed) {
        this.dead = true;
        this.stop();
        return this.onDead(this.missed);
      }
      return;
    }
    this.outstanding = true;
    try {
      this.session.ping((err, duration) => {
        this.outstanding = false;
        if (err) return;
        this.missed = 0;
        this.lastAnswer = Date.now();
        this.rttMs = duration;
      });
    } catch {
      this.outstanding = false; // session closing
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** Delay before reconnect attempt `attempt` (0-based): initial doubling to max, +-jitter. */
export function backoffDelay(attempt: number, opts: { initialMs: number; maxMs: number; jitter: number }, random = Math.random): number {
  const base = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.min(attempt, 30));
  return Math.max(0, Math.round(base * (1 + opts.jitter * (2 * random() - 1))));
}

/** `AB:CD:…` (colons optional, any case, optional `sha256` prefix) as `AB:CD:…`. */
export function normalizeFingerprint(text: string): string {
  const hex = text.trim().replace(/^sha-?256[:= ]?\s*/i, '').replace(/:/g, '');
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error('expected a SHA-256 certificate fingerprint (AB:CD:…, 32 bytes)');
  return hex.toUpperCase().match(/../g)!.join(':');
}

export function encodeHeaderJson(v: unknown): string {
  return Buffer.from(JSON.stringify(v), 'utf8').toString('base64url');
}

export function decodeHeaderJson(v: unknown): unknown {
  if (typeof v !== 'string') throw new Error('missing header');
  return JSON.parse(Buffer.from(v, 'base64url').toString('utf8'));
}

/** Reads a whole (small) stream body, refusing more than maxBytes. */
export function readBody(stream: NodeJS.ReadableStream & { destroy(err?: Error): void }, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (d: Buffer) => {
      size += d.length;
      if (size > maxBytes) {
        stream.destroy(new Error(`body larger than ${maxBytes} bytes`));
        return;
      }
      chunks.push(d);
    });
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
    stream.once('close', () => reject(new Error('stream closed before its end')));
  });
}
