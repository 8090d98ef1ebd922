// Agent side of the PostgreSQL adapter: opens an authenticated connection to the real target
// with credentials the caller never sees (SCRAM-SHA-256, md5 or cleartext).
import net from 'node:net';
import tls from 'node:tls';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import { FrameReader, decodeAuth, decodeDataRow, decodeErrorFields, encode, type Frame } from './codec.ts';

const require = createRequire(import.meta.url);
// pg's SCRAM client: a well-kept implementation of RFC 5802 (with SASLprep).
const sasl = require('pg/lib/crypto/sasl.js') as {
  startSession(mechanisms: string[]): { mechanism: string; response: string };
  continueSession(session: object, password: string, serverData: string): Promise<void>;
  finalizeSession(session: object, serverData: string): void;
};

export interface PgTarget {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  sslmode: 'disable' | 'prefer' | 'require' | 'verify-full';
}

export function parsePgUrl(url: string): PgTarget {
  const u = new URL(url);
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new Error(`connection url must start with postgres:// (got ${u.protocol}//)`);
  }
  const sslmode = (u.searchParams.get('sslmode') ?? 'prefer') as PgTarget['sslmode'];
  if (!['disable', 'prefer', 'require', 'verify-full'].includes(sslmode)) {
    throw new Error(`unsupported sslmode "${sslmode}" (use disable, prefer, require or verify-full)`);
  }
  return {
    host: decodeURIComponent(u.hostname.replace(/^\[|\]$/g, '')) || '127.0.0.1',
    port: Number(u.port || 5432),
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    database: decodeURIComponent(u.pathname.replace(/^\//, '')) || decodeURIComponent(u.username),
    sslmode,
  };
}

/**
 * Client startup parameters passed through to the target (names compared case-insensitively, as
 * PostgreSQL does: libpq sends `datestyle` and `timezone` from PGDATESTYLE/PGTZ); anything else,
 * notably `options`, is dropped.
 */
const FORWARDED_PARAMS = new Set(['application_name', 'client_encoding', 'datestyle', 'timezone', 'extra_float_digits', 'intervalstyle']);

export interface TargetConnection {
  /** The target's socket, or a stream that behaves like one (an HTTP/2 stream through a remote agent). */
  socket: Duplex;
  /** Bytes received after AuthenticationOk (ParameterStatus, BackendKeyData, ReadyForQuery...). */
  leftover: Buffer;
}

export class TargetError extends Error {
  /** The target's own error fields, for the gateway's log and audit (not for the client). */
  constructor(message: string, readonly fields?: Record<string, string>) {
    super(message);
    this.name = 'TargetError';
  }
}

/** Connects and authenticates; resolves once the target sent AuthenticationOk. */
export async function connectTarget(target: PgTarget, clientParams: Record<string, string>, timeoutMs = 10_000): Promise<TargetConnection> {
  const socket = await openSocket(target, timeoutMs);
  try {
    const params: Record<string, string> = { user: target.user, database: target.database };
    for (const [k, v] of Object.entries(clientParams)) if (FORWARDED_PARAMS.has(k.toLowerCase())) params[k] = v;
    socket.write(encode.startup(params));
    return await authenticate(socket, target, socket instanceof tls.TLSSocket, timeoutMs);
  } catch (err) {
    socket.destroy();
    throw err;
  }
}

/** Sends a CancelRequest for a backend on its own short connection. */
export async function cancelTarget(target: PgTarget, processId: number, secretKey: number): Promise<void> {
  const socket = await openSocket(target, 5000);
  await new Promise<void>((resolve) => {
    socket.end(encode.cancelRequest(processId, secretKey));
    socket.once('close', () => resolve());
    socket.once('error', () => resolve());
  });
}

async function openSocket(target: PgTarget, timeoutMs: number): Promise<net.Socket | tls.TLSSocket> {
  const plain = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: target.host, port: target.port });
    const timer = setTimeout(() => s.destroy(new Error(`timed out connecting to ${target.host}:${target.port}`)), timeoutMs);
    s.once('connect', () => { clearTimeout(timer); resolve(s); });
    s.once('error', (e) => { clearTimeout(timer); reject(new TargetError(`cannot reach target ${target.host}:${target.port}: ${e.message}`)); });
  });
  plain.setNoDelay(true);
  if (target.sslmode === 'disable') return plain;
  plain.write(encode.sslRequest());
  const answer = await readBytes(plain, 1, timeoutMs);
  if (answer.toString() !== 'S') {
    if (target.sslmode === 'prefer') return plain;
    plain.destroy();
    throw new TargetError(`target ${target.host}:${target.port} does not support TLS (sslmode=${target.sslmode})`);
  }
  return await new Promise<tls.TLSSocket>((resolve, reject) => {
    const t = tls.connect({
      socket: plain,
      servername: net.isIP(target.host) ? undefined : target.host,
      rejectUnauthorized: target.sslmode === 'verify-full',
    });
    const timer = setTimeout(() => t.destroy(new Error('handshake timed out')), timeoutMs);
    t.once('secureConnect', () => { clearTimeout(timer); resolve(t); });
    t.once('error', (e) => { clearTimeout(timer); reject(new TargetError(`TLS to target failed: ${e.message}`)); });
  });
}

function readBytes(socket: net.Socket, n: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new TargetError('target did not answer in time')), timeoutMs);
    const onData = (d: Buffer) => {
      if (d.length > n) socket.unshift(d.subarray(n));
      done(undefined, d.subarray(0, n));
    };
    const onClose = () => done(new TargetError('target closed the connection'));
    function done(err?: Error, data?: Buffer) {
      clearTimeout(timer);
      socket.off('data', onData).off('close', onClose).off('error', onClose);
      if (err) reject(err);
      else resolve(data!);
    }
    socket.on('data', onData).once('close', onClose).once('error', onClose);
  });
}

function authenticate(socket: net.Socket, target: PgTarget, encrypted: boolean, timeoutMs: number): Promise<TargetConnection> {
  const reader = new FrameReader({ typed: true });
  let session: ({ mechanism: string; response: string }) | undefined;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new TargetError('target authentication timed out')), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData).off('close', onClose).off('error', onError);
    };
    const fail = (e: Error) => { cleanup(); reject(e); };
    const onClose = () => fail(new TargetError('target closed the connection during authentication'));
    const onError = (e: Error) => fail(new TargetError(`target connection failed: ${e.message}`));
    const onData = (chunk: Buffer) => {
      reader.push(chunk);
      void pump();
    };
    let busy = false;
    const pump = async () => {
      if (busy) return;
      busy = true;
      try {
        let frame: Frame | undefined;
        while ((frame = reader.next())) {
          if (frame.type === 'E') {
            const f = decodeErrorFields(frame.body);
            // Login failures name the target's role: callers learn only that the agent's credentials were refused.
            const why = f.C?.startsWith('28') ? `the agent's credentials were refused (SQLSTATE ${f.C})` : f.M ?? 'unknown error';
            return fail(new TargetError(`target refused the connection: ${why}`, f));
          }
          if (frame.type !== 'R') continue; // NegotiateProtocolVersion and the like: nothing to do
          const auth = decodeAuth(frame.body);
          switch (auth.kind) {
            case 'ok':
              cleanup();
              return resolve({ socket, leftover: reader.drain() });
            case 'cleartext':
              // Under sslmode=prefer a man in the middle can decline TLS and ask for the password
              // in clear: send it only over TLS, or when plain TCP was asked for explicitly.
              if (!encrypted && target.sslmode !== 'disable') {
                return fail(new TargetError('target asked for a cleartext password over an unencrypted connection (use sslmode=require, or sslmode=disable on a trusted network)'));
              }
              socket.write(encode.password(target.password));
              break;
            case 'md5': {
              const inner = createHash('md5').update(target.password + target.user).digest('hex');
              const outer = createHash('md5').update(Buffer.concat([Buffer.from(inner), auth.salt])).digest('hex');
              socket.write(encode.password('md5' + outer));
              break;
            }
            case 'sasl':
              session = sasl.startSession(auth.mechanisms);
              socket.write(encode.saslInitial(session.mechanism, session.response));
              break;
            case 'sasl-continue':
              if (!session) return fail(new TargetError('unexpected SASL continue from target'));
              await sasl.continueSession(session, target.password, auth.data);
              socket.write(encode.saslResponse(session.response));
              break;
            case 'sasl-final':
              if (!session) return fail(new TargetError('unexpected SASL final from target'));
              sasl.finalizeSession(session, auth.data);
              break;
            default:
              return fail(new TargetError(`target asked for an unsupported authentication method (code ${auth.code})`));
          }
        }
      } catch (e) {
        fail(e instanceof Error ? e : new Error(String(e)));
      } finally {
        busy = false;
      }
    };
    socket.on('data', onData).once('close', onClose).once('error', onError);
  });
}

/**
 * Runs one simple query on an authenticated target connection (the agent's own catalog lookups)
 * and returns the rows as text; with `sql` undefined, only waits for the ReadyForQuery that ends
 * the connection's start-up. Rejects with the target's error message.
 */
export function queryTarget(conn: TargetConnection, sql: string | undefined, timeoutMs = 10_000): Promise<(string | null)[][]> {
  const reader = new FrameReader({ typed: true });
  reader.push(conn.leftover);
  conn.leftover = Buffer.alloc(0);
  const rows: (string | null)[][] = [];
  let error: string | undefined;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new TargetError('catalog query timed out')), timeoutMs);
    const onData = (chunk: Buffer) => {
      reader.push(chunk);
      pump();
    };
    const onClose = () => done(new TargetError('target connection closed'));
    function done(err?: Error) {
      clearTimeout(timer);
      conn.socket.off('data', onData).off('close', onClose).off('error', onClose);
      conn.leftover = reader.drain();
      if (err) reject(err);
      else resolve(rows);
    }
    function pump() {
      try {
        for (let f = reader.next(); f; f = reader.next()) {
          if (f.type === 'D') rows.push(decodeDataRow(f.body).map((v) => (v === null ? null : v.toString('utf8'))));
          else if (f.type === 'E') error = decodeErrorFields(f.body).M ?? 'error';
          else if (f.type === 'Z') return done(error === undefined ? undefined : new TargetError(error));
        }
      } catch (e) {
        done(e as Error);
      }
    }
    conn.socket.on('data', onData).once('close', onClose).once('error', onClose);
    if (sql !== undefined) conn.socket.write(encode.query(sql));
    pump();
  });
}
