// Pure codec for the PostgreSQL frontend/backend protocol v3: bytes in, typed messages out, and back.
// No sockets, no policy. See https://www.postgresql.org/docs/current/protocol-message-formats.html

export const PROTOCOL_V3 = 196608;
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

/** Default upper bound on one message; larger length prefixes are a protocol error, never an allocation. */
export const DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** One framed message. `raw` is header + body (for forwarding untouched), `body` excludes the header. */
export interface Frame {
  type: string;
  body: Buffer;
  raw: Buffer;
}

/** Startup-phase packets (no type byte). */
export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; processId: number; secretKey: number }
  | { kind: 'startup'; protocol: number; params: Record<string, string> };

/**
 * Splits a byte stream into frames. Startup mode reads untyped packets (length first) until
 * `typed = true` is set by the caller.
 */
export class FrameReader {
  // Received chunks are kept as a list and copied once, when a whole frame is there: appending
  // to one buffer per chunk would copy a large message over and over (quadratic time).
  private chunks: Buffer[] = [];
  private length = 0;
  typed: boolean;
  /** Largest acceptable message; may be changed between frames (e.g. tighter before authentication). */
  maxMessage: number;

  constructor(opts: { typed: boolean; maxMessage?: number }) {
    this.typed = opts.typed;
    this.maxMessage = opts.maxMessage ?? DEFAULT_MAX_MESSAGE;
  }

  /** Bytes buffered but not yet framed. */
  get buffered(): number {
    return this.length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Returns the next complete frame, or undefined when more bytes are needed. Throws ProtocolError on bad framing. */
  next(): Frame | undefined {
    const header = this.typed ? 5 : 4;
    if (this.length < header) return undefined;
    if (this.chunks[0].length < header) this.coalesce();
    const first = this.chunks[0];
    const len = first.readInt32BE(this.typed ? 1 : 0);
    if (len < 4) throw new ProtocolError(`invalid message length ${len}`);
    if (len > this.maxMessage) {
      throw new ProtocolError(`message length ${len} exceeds the limit of ${this.maxMessage} bytes`);
    }
    const total = len + (this.typed ? 1 : 0);
    if (this.length < total) return undefined;
    if (this.chunks[0].length < total) this.coalesce();
    const buf = this.chunks[0];
    const raw = buf.subarray(0, total);
    if (buf.length === total) this.chunks.shift();
    else this.chunks[0] = buf.subarray(total);
    this.length -= total;
    const type = this.typed ? String.fromCharCode(raw[0]) : '';
    return { type, body: raw.subarray(header), raw };
  }

  /** Hands back whatever was buffered (e.g. bytes that must be forwarded after a mode switch). */
  drain(): Buffer {
    const b = Buffer.concat(this.chunks, this.length);
    this.chunks = [];
    this.length = 0;
    return b;
  }

  private coalesce(): void {
    this.chunks = [Buffer.concat(this.chunks, this.length)];
  }
}

// ---------- body reading ----------

class BodyReader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  int32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.off);
    this.off += 4;
    return v;
  }
  int16(): number {
    this.need(2);
    const v = this.buf.readInt16BE(this.off);
    this.off += 2;
    return v;
  }
  byte(): number {
    this.need(1);
    return this.buf[this.off++];
  }
  cstring(): string {
    const end = this.buf.indexOf(0, this.off);
    if (end < 0) throw new ProtocolError('unterminated string in message');
    const s = this.buf.toString('utf8', this.off, end);
    this.off = end + 1;
    return s;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return b;
  }
  rest(): Buffer {
    const b = this.buf.subarray(this.off);
    this.off = this.buf.length;
    return b;
  }
  get remaining(): number {
    return this.buf.length - this.off;
  }
  private need(n: number): void {
    if (this.off + n > this.buf.length) throw new ProtocolError('message shorter than its fields');
  }
}

export function decodeStartup(frame: Frame): StartupPacket {
  const r = new BodyReader(frame.body);
  const code = r.int32();
  if (code === SSL_REQUEST_CODE) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST_CODE) return { kind: 'gssenc' };
  if (code === CANCEL_REQUEST_CODE) return { kind: 'cancel', processId: r.int32(), secretKey: r.int32() };
  if (code >> 16 !== 3) throw new ProtocolError(`unsupported protocol version ${code >> 16}.${code & 0xffff}`);
  const params: Record<string, string> = {};
  while (r.remaining > 1) {
    const key = r.cstring();
    if (key === '') break;
    params[key] = r.cstring();
  }
  return { kind: 'startup', protocol: code, params };
}

// ---------- frontend messages ----------

export interface ParseMsg { name: string; query: string; paramTypes: number[] }
export interface BindMsg { portal: string; statement: string; paramFormats: number[]; params: (Buffer | null)[]; resultFormats: number[] }
export interface ExecuteMsg { portal: string; maxRows: number }
export interface TargetMsg { kind: 'S' | 'P'; name: string }

export const decodeQuery = (body: Buffer): string => new BodyReader(body).cstring();

export function decodeParse(body: Buffer): ParseMsg {
  const r = new BodyReader(body);
  const name = r.cstring();
  const query = r.cstring();
  const n = r.int16();
  const paramTypes: number[] = [];
  for (let i = 0; i < n; i++) paramTypes.push(r.int32());
  return { name, query, paramTypes };
}

export function decodeBind(body: Buffer): BindMsg {
  const r = new BodyReader(body);
  const portal = r.cstring();
  const statement = r.cstring();
  const paramFormats: number[] = [];
  for (let i = 0, n = r.int16(); i < n; i++) paramFormats.push(r.int16());
  const params: (Buffer | null)[] = [];
  for (let i = 0, n = r.int16(); i < n; i++) {
    const len = r.int32();
    params.push(len < 0 ? null : r.bytes(len));
  }
  const resultFormats: number[] = [];
  for (let i = 0, n = r.int16(); i < n; i++) resultFormats.push(r.int16());
  return { portal, statement, paramFormats, params, resultFormats };
}

export function decodeExecute(body: Buffer): ExecuteMsg {
  const r = new BodyReader(body);
  return { portal: r.cstring(), maxRows: r.int32() };
}

/** Describe and Close share a layout: 'S' (statement) or 'P' (portal) plus a name. */
export function decodeTarget(body: Buffer): TargetMsg {
  const r = new BodyReader(body);
  const kind = String.fromCharCode(r.byte());
  if (kind !== 'S' && kind !== 'P') throw new ProtocolError(`invalid Describe/Close target '${kind}'`);
  return { kind, name: r.cstring() };
}

// ---------- backend messages ----------

/** ErrorResponse / NoticeResponse fields keyed by their one-letter codes (S, V, C, M, D, H, P, ...). */
export type ErrorFields = Record<string, string>;

export function decodeErrorFields(body: Buffer): ErrorFields {
  const r = new BodyReader(body);
  const fields: ErrorFields = {};
  while (r.remaining > 0) {
    const code = r.byte();
    if (code === 0) break;
    fields[String.fromCharCode(code)] = r.cstring();
  }
  return fields;
}

export type AuthRequest =
  | { kind: 'ok' }
  | { kind: 'cleartext' }
  | { kind: 'md5'; salt: Buffer }
  | { kind: 'sasl'; mechanisms: string[] }
  | { kind: 'sasl-continue'; data: string }
  | { kind: 'sasl-final'; data: string }
  | { kind: 'other'; code: number };

export function decodeAuth(body: Buffer): AuthRequest {
  const r = new BodyReader(body);
  const code = r.int32();
  switch (code) {
    case 0: return { kind: 'ok' };
    case 3: return { kind: 'cleartext' };
    case 5: return { kind: 'md5', salt: Buffer.from(r.bytes(4)) };
    case 10: {
      const mechanisms: string[] = [];
      for (let m = r.cstring(); m !== ''; m = r.cstring()) mechanisms.push(m);
      return { kind: 'sasl', mechanisms };
    }
    case 11: return { kind: 'sasl-continue', data: r.rest().toString('utf8') };
    case 12: return { kind: 'sasl-final', data: r.rest().toString('utf8') };
    default: return { kind: 'other', code };
  }
}

export function decodeParameterStatus(body: Buffer): { name: string; value: string } {
  const r = new BodyReader(body);
  return { name: r.cstring(), value: r.cstring() };
}

export function decodeBackendKey(body: Buffer): { processId: number; secretKey: number } {
  const r = new BodyReader(body);
  return { processId: r.int32(), secretKey: r.int32() };
}

/** One column of a RowDescription. `tableOid`/`column` are 0 for computed columns. */
export interface FieldDescription {
  name: string;
  tableOid: number;
  column: number;
  typeOid: number;
  typeLen: number;
  typeMod: number;
  /** 0 text, 1 binary. */
  format: number;
}

export function decodeRowDescription(body: Buffer): FieldDescription[] {
  const r = new BodyReader(body);
  const fields: FieldDescription[] = [];
  for (let i = 0, n = r.int16(); i < n; i++) {
    fields.push({ name: r.cstring(), tableOid: r.int32() >>> 0, column: r.int16(), typeOid: r.int32() >>> 0,
      typeLen: r.int16(), typeMod: r.int32(), format: r.int16() });
  }
  return fields;
}

/** DataRow values: raw bytes per column, null for SQL NULL. */
export function decodeDataRow(body: Buffer): (Buffer | null)[] {
  const r = new BodyReader(body);
  const values: (Buffer | null)[] = [];
  for (let i = 0, n = r.int16(); i < n; i++) {
    const len = r.int32();
    values.push(len < 0 ? null : r.bytes(len));
  }
  return values;
}

/**
 * DataRow cells without copies, for the masking hot path: [start, length] pairs of offsets into
 * `body`, length -1 for NULL.
 */
export function dataRowCells(body: Buffer): Int32Array {
  if (body.length < 2) throw new ProtocolError('DataRow too short');
  const n = body.readInt16BE(0);
  const cells = new Int32Array(2 * n);
  let off = 2;
  for (let i = 0; i < n; i++) {
    if (off + 4 > body.length) throw new ProtocolError('DataRow truncated');
    const len = readInt32(body, off);
    off += 4;
    if (len > body.length - off) throw new ProtocolError('DataRow truncated');
    cells[2 * i] = off;
    cells[2 * i + 1] = len;
    if (len > 0) off += len;
  }
  return cells;
}

/** Buffer#readInt32BE / writeInt32BE by hand, without their argument checks (a hot path; callers check bounds). */
function readInt32(buf: Buffer, off: number): number {
  return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3];
}
function writeInt32(buf: Buffer, n: number, off: number): void {
  buf[off] = n >>> 24;
  buf[off + 1] = n >>> 16;
  buf[off + 2] = n >>> 8;
  buf[off + 3] = n;
}

/** UTF-8 size of `text`: short ASCII counted by hand, which is faster than Buffer.byteLength. */
function utf8Size(text: string): number {
  if (text.length > 64) return Buffer.byteLength(text);
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return Buffer.byteLength(text);
  return text.length;
}

/** Buffer#copy for short runs by hand: the native call costs more than the copy (a hot path). */
function copyBytes(src: Buffer, start: number, end: number, dst: Buffer, at: number): number {
  if (end - start > 64) return src.copy(dst, at, start, end);
  for (let i = start; i < end; i++) dst[at++] = src[i];
  return end - start;
}

/** Writes `text` (of `size` UTF-8 bytes) at `off`; short ASCII by hand, which is faster than Buffer#write. */
function writeUtf8(out: Buffer, text: string, off: number, size: number): number {
  if (size !== text.length || size > 64) return out.write(text, off, size, 'utf8');
  for (let i = 0; i < size; i++) out[off + i] = text.charCodeAt(i);
  return size;
}

/** ReadyForQuery status: 'I' idle, 'T' in transaction, 'E' failed transaction. */
export const decodeReadyStatus = (body: Buffer): string => String.fromCharCode(body[0] ?? 0x49);

/** CommandComplete tag, e.g. "SELECT 5", "INSERT 0 1". */
export const decodeCommandTag = (body: Buffer): string => new BodyReader(body).cstring();

/** Row count from a command tag ("UPDATE 3" -> 3), undefined when the tag carries none. */
export function rowsFromTag(tag: string): number | undefined {
  const m = /(\d+)$/.exec(tag);
  return m ? Number(m[1]) : undefined;
}

// ---------- encoding ----------

/** Builds one typed message (type byte, int32 length, body). */
export function message(type: string, ...parts: (Buffer | string | number[])[]): Buffer {
  const bufs = parts.map((p) => (typeof p === 'string' ? cstr(p) : Array.isArray(p) ? Buffer.from(p) : p));
  const bodyLen = bufs.reduce((n, b) => n + b.length, 0);
  const out = Buffer.allocUnsafe(5 + bodyLen);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(4 + bodyLen, 1);
  let off = 5;
  for (const b of bufs) {
    b.copy(out, off);
    off += b.length;
  }
  return out;
}

const cstr = (s: string): Buffer => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);
const int32 = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n);
  return b;
};
const int16 = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(2);
  b.writeInt16BE(n);
  return b;
};

function untyped(...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([int32(body.length + 4), body]);
}

export const encode = {
  // frontend
  startup(params: Record<string, string>): Buffer {
    const kv = Object.entries(params).flatMap(([k, v]) => [cstr(k), cstr(v)]);
    return untyped(int32(PROTOCOL_V3), ...kv, Buffer.from([0]));
  },
  sslRequest: (): Buffer => untyped(int32(SSL_REQUEST_CODE)),
  cancelRequest: (processId: number, secretKey: number): Buffer =>
    untyped(int32(CANCEL_REQUEST_CODE), int32(processId), int32(secretKey)),
  query: (text: string): Buffer => message('Q', text),
  parse: (name: string, query: string, paramTypes: number[] = []): Buffer =>
    message('P', name, query, int16(paramTypes.length), ...paramTypes.map(int32)),
  bind(portal: string, statement: string, params: (Buffer | string | null)[] = [], resultFormats: number[] = []): Buffer {
    const vals = params.flatMap((p) => {
      if (p === null) return [int32(-1)];
      const b = typeof p === 'string' ? Buffer.from(p) : p;
      return [int32(b.length), b];
    });
    return message('B', portal, statement, int16(0), int16(params.length), ...vals,
      int16(resultFormats.length), ...resultFormats.map(int16));
  },
  describe: (kind: 'S' | 'P', name: string): Buffer => message('D', Buffer.from(kind), name),
  close: (kind: 'S' | 'P', name: string): Buffer => message('C', Buffer.from(kind), name),
  execute: (portal: string, maxRows = 0): Buffer => message('E', portal, int32(maxRows)),
  sync: (): Buffer => message('S'),
  flush: (): Buffer => message('H'),
  terminate: (): Buffer => message('X'),
  password: (password: string): Buffer => message('p', password),
  saslInitial: (mechanism: string, data: string): Buffer => {
    const d = Buffer.from(data, 'utf8');
    return message('p', mechanism, int32(d.length), d);
  },
  saslResponse: (data: string): Buffer => message('p', Buffer.from(data, 'utf8')),
  copyData: (data: Buffer): Buffer => message('d', data),
  copyDone: (): Buffer => message('c'),
  copyFail: (reason: string): Buffer => message('f', reason),

  // backend
  sslResponse: (accept: boolean): Buffer => Buffer.from(accept ? 'S' : 'N'),
  negotiateProtocolVersion: (newestMinor: number, unsupportedOptions: string[]): Buffer =>
    message('v', int32(newestMinor), int32(unsupportedOptions.length), ...unsupportedOptions),
  authOk: (): Buffer => message('R', int32(0)),
  authCleartext: (): Buffer => message('R', int32(3)),
  backendKeyData: (processId: number, secretKey: number): Buffer => message('K', int32(processId), int32(secretKey)),
  readyForQuery: (status: string): Buffer => message('Z', Buffer.from(status)),
  /** One allocation per row: rows are re-encoded on the masking hot path. */
  dataRow(values: (Buffer | null)[]): Buffer {
    let len = 4 + 2;
    for (const v of values) len += 4 + (v === null ? 0 : v.length);
    const out = Buffer.allocUnsafe(1 + len);
    out[0] = 0x44; // 'D'
    out.writeInt32BE(len, 1);
    out.writeInt16BE(values.length, 5);
    let off = 7;
    for (const v of values) {
      if (v === null) {
        out.writeInt32BE(-1, off);
        off += 4;
      } else {
        out.writeInt32BE(v.length, off);
        v.copy(out, off + 4);
        off += 4 + v.length;
      }
    }
    return out;
  },
  /**
   * A DataRow from `body` (cells from dataRowCells) with some cells replaced: `changes[i]` is
   * the new value (a string is written as UTF-8; null is NULL), undefined keeps cell i.
   */
  dataRowPatched(body: Buffer, cells: Int32Array, changes: (Buffer | string | null | undefined)[]): Buffer {
    const n = cells.length / 2;
    let len = 4 + body.length;
    const sizes: number[] = [];
    for (let i = 0; i < n; i++) {
      const c = changes[i];
      if (c === undefined) continue;
      sizes[i] = c === null ? -1 : typeof c === 'string' ? utf8Size(c) : c.length;
      len += Math.max(0, sizes[i]) - Math.max(0, cells[2 * i + 1]);
    }
    const out = Buffer.allocUnsafe(1 + len);
    out[0] = 0x44; // 'D'
    writeInt32(out, len, 1);
    // Unchanged cells are copied in runs (header and value together), straight from the body.
    let off = 5;
    let from = 0;
    for (let i = 0; i < n; i++) {
      const c = changes[i];
      if (c === undefined) continue;
      const header = cells[2 * i] - 4;
      off += copyBytes(body, from, header, out, off);
      from = cells[2 * i] + Math.max(0, cells[2 * i + 1]);
      writeInt32(out, sizes[i], off);
      off += 4;
      if (typeof c === 'string') off += writeUtf8(out, c, off, sizes[i]);
      else if (c !== null) off += copyBytes(c, 0, c.length, out, off);
    }
    copyBytes(body, from, body.length, out, off);
    return out;
  },
  commandComplete: (tag: string): Buffer => message('C', tag),
  errorResponse: (fields: ErrorFields): Buffer => message('E', fieldsBody(fields)),
  notice: (fields: ErrorFields): Buffer => message('N', fieldsBody(fields)),
};

function fieldsBody(fields: ErrorFields): Buffer {
  const parts: Buffer[] = [];
  for (const [code, value] of Object.entries(fields)) {
    parts.push(Buffer.from(code), cstr(value));
  }
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

/** Standard fields for an error or notice with a SQLSTATE code. */
export function errorFields(code: string, messageText: string, extra: { detail?: string; hint?: string; severity?: string } = {}): ErrorFields {
  const severity = extra.severity ?? 'ERROR';
  const f: ErrorFields = { S: severity, V: severity, C: code, M: messageText };
  if (extra.detail) f.D = extra.detail;
  if (extra.hint) f.H = extra.hint;
  return f;
}
