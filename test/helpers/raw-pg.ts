// A protocol-level PostgreSQL client for tests that need exact control over message batching.
import net from 'node:net';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { FrameReader, decodeErrorFields, encode } from '../../src/protocols/postgres/codec.ts';

export interface Msg { type: string; text: string; fields?: Record<string, string>; cols?: (string | null)[] }

export const types = (msgs: Msg[]) => msgs.map((m) => m.type).join('');
export const errors = (msgs: Msg[]) => msgs.filter((m) => m.type === 'E');
export const rows = (msgs: Msg[]) => msgs.filter((m) => m.type === 'D').map((m) => m.cols);

/** Opens and authenticates a session; every read has a deadline. */
export async function openRawSession(opts: { port: number; user: string; database: string; token: string; params?: Record<string, string> }) {
  const sock = net.connect(opts.port, '127.0.0.1');
  const reader = new FrameReader({ typed: true });
  const waiters: (() => void)[] = [];
  let closed = false;
  sock.on('data', (d) => { reader.push(d); waiters.splice(0).forEach((w) => w()); });
  sock.on('error', () => {});
  sock.on('close', () => { closed = true; waiters.splice(0).forEach((w) => w()); });
  const msgs: Msg[] = [];
  const pump = () => {
    for (let f = reader.next(); f; f = reader.next()) {
      const m: Msg = { type: f.type, text: '' };
      if (f.type === 'E' || f.type === 'N') { m.fields = decodeErrorFields(f.body); m.text = Object.values(m.fields).join(' '); }
      if (f.type === 'D') {
        const n = f.body.readInt16BE(0);
        let off = 2;
        m.cols = [];
        for (let i = 0; i < n; i++) {
          const len = f.body.readInt32BE(off);
          off += 4;
          if (len < 0) m.cols.push(null);
          else { m.cols.push(f.body.toString('utf8', off, off + len)); off += len; }
        }
      }
      msgs.push(m);
    }
  };
  /** Reads until `readies` ReadyForQuery messages arrived, the socket closed, or the deadline passed. */
  const read = async (readies = 1, timeoutMs = 3000) => {
    const out: Msg[] = [];
    let seen = 0;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      pump();
      while (msgs.length) {
        const m = msgs.shift()!;
        out.push(m);
        if (m.type === 'Z' && ++seen === readies) return { msgs: out, timedOut: false, closed };
      }
      if (closed) return { msgs: out, timedOut: false, closed };
      const left = deadline - Date.now();
      if (left <= 0) return { msgs: out, timedOut: true, closed };
      await new Promise<void>((r) => { const t = setTimeout(r, left); waiters.push(() => { clearTimeout(t); r(); }); });
    }
  };
  await new Promise((r) => sock.once('connect', r));
  sock.write(encode.startup({ user: opts.user, database: opts.database, ...opts.params }));
  await sleep(30);
  sock.write(encode.password(opts.token));
  const hello = await read();
  assert.ok(!hello.msgs.some((m) => m.type === 'E'), JSON.stringify(hello));
  return {
    sock,
    read,
    exchange: (bytes: Buffer, readies = 1, timeoutMs = 3000) => { sock.write(bytes); return read(readies, timeoutMs); },
    query: (sql: string, timeoutMs = 3000) => { sock.write(encode.query(sql)); return read(1, timeoutMs); },
    get closed() { return closed; },
    close: () => { if (!closed) sock.end(encode.terminate()); },
  };
}

/** Raw bytes to a server on a new socket; resolves with everything received until close or `waitMs`. */
export function rawBytes(port: number, bytes: Buffer | Buffer[], waitMs = 1000): Promise<Buffer> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    s.on('data', (d) => got.push(d));
    s.on('error', () => {});
    s.on('close', () => resolve(Buffer.concat(got)));
    s.on('connect', () => { for (const b of [bytes].flat()) s.write(b); });
    setTimeout(() => { s.destroy(); }, waitMs);
  });
}
