// The audit spool: an append-only JSON-lines file next to the database that holds audit events
// while the database cannot be written (locked beyond the busy timeout, disk full, read-only).
// One file per process: the first line is a header naming its owner; the events follow, one
// stored event JSON per line, in order. Files of dead owners (a crash, a restart) are claimed by
// renaming them and drained by the next process that opens the store. See docs/audit.md#spool.
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';

export const SPOOL_NAME = 'audit-spool.jsonl';
const SPOOL_RE = /^audit-spool(\..+)?\.jsonl$/;
const CLAIMED_RE = /^audit-spool\.claimed-(\d+)-([0-9a-f]{8})-[0-9a-f]+\.jsonl$/;
const RELEASED_RE = /^audit-spool\.released-[0-9a-f-]+\.jsonl$/;
const READ_CHUNK = 4 << 20;

/** This process's identity in spool headers (a pid can be reused, e.g. pid 1 in containers). */
const INSTANCE = randomUUID();

interface Header {
  airlock_spool: 1;
  id: string;
  pid: number;
  instance: string;
  created: string;
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readHeader(file: string): Header | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(1024);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    const nl = buf.subarray(0, n).indexOf(10);
    if (nl < 0) return undefined;
    const h = JSON.parse(buf.subarray(0, nl).toString('utf8')) as Header;
    return h && h.airlock_spool === 1 && typeof h.id === 'string' ? h : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Writes a batch durably: one write(2) with O_APPEND, then fsync. */
function appendDurably(file: string, data: string, exclusive: boolean): void {
  const fd = fs.openSync(file, exclusive ? 'wx' : 'a', 0o600);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export interface SpoolBatch {
  spoolId: string;
  /** Stored event JSON, in order. */
  events: string[];
  /** Byte offset just after the last of these events: the progress to record with them. */
  endOffset: number;
}

export interface SpoolOptions {
  /** Bound of this process's spool file in bytes (default 256 MiB). */
  maxBytes?: number;
}

export class AuditSpool {
  readonly dir: string;
  readonly maxBytes: number;
  /** This process's file, once created. */
  private own: { file: string; id: string; bytes: number; events: number } | undefined;
  /** Claimed files of dead processes, oldest first, with their approximate event counts. */
  private orphans: { file: string; events: number }[] = [];

  constructor(dir: string, opts: SpoolOptions = {}) {
    this.dir = dir;
    this.maxBytes = opts.maxBytes ?? 256 * 1024 * 1024;
  }

  get ownFile(): string | undefined {
    return this.own?.file;
  }

  /** Events in spool files not yet written to the database. */
  get pending(): number {
    return (this.own?.events ?? 0) + this.orphans.reduce((n, o) => n + o.events, 0);
  }

  get hasPending(): boolean {
    return this.orphans.length > 0 || (this.own?.events ?? 0) > 0;
  }

  /** Whether `bytes` more would exceed the bound. */
  wouldOverflow(bytes: number): boolean {
    return (this.own?.bytes ?? 0) + bytes > this.maxBytes;
  }

  /**
   * Claims the spool files of processes that are gone (renaming them, so that only one process
   * drains each). Returns how many files were claimed.
   */
  claimOrphans(): number {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return 0;
    }
    let claimed = 0;
    for (const name of names.sort()) {
      if (!SPOOL_RE.test(name)) continue;
      const file = path.join(this.dir, name);
      if (file === this.own?.file || this.orphans.some((o) => o.file === file)) continue;
      const c = CLAIMED_RE.exec(name);
      let ownerGone: boolean;
      if (RELEASED_RE.test(name)) {
        ownerGone = true;
      } else if (c) {
        const pid = Number(c[1]);
        ownerGone = pid === process.pid ? c[2] !== INSTANCE.slice(0, 8) : !alive(pid);
      } else {
        const h = readHeader(file);
        if (!h) {
          // A header still being written by its creator, or garbage: only claim it when old.
          try {
            ownerGone = Date.now() - fs.statSync(file).mtimeMs > 60_000;
          } catch {
            continue;
          }
        } else {
          ownerGone = h.pid === process.pid ? h.instance !== INSTANCE : !alive(h.pid);
        }
      }
      if (!ownerGone) continue;
      const target = path.join(this.dir, `audit-spool.claimed-${process.pid}-${INSTANCE.slice(0, 8)}-${Date.now().toString(16)}${claimed}.jsonl`);
      try {
        fs.renameSync(file, target);
      } catch {
        continue; // another process claimed it first
      }
      this.orphans.push({ file: target, events: countLines(target) - 1 });
      claimed++;
    }
    return claimed;
  }

  /**
   * Gives up this process's file and the claimed ones that still hold events (the store is
   * closing): they are renamed so that the next process, or store, that opens the database
   * claims and writes them.
   */
  release(): void {
    const files = [...this.orphans.map((o) => o.file), ...(this.own && this.own.events > 0 ? [this.own.file] : [])];
    const stamp = Date.now().toString(16).padStart(12, '0');
    for (const [i, file] of files.entries()) {
      try {
        fs.renameSync(file, path.join(this.dir, `audit-spool.released-${stamp}-${String(i).padStart(4, '0')}-${randomUUID()}.jsonl`));
      } catch {
        // left where it is: claimed once this process is gone
      }
    }
    if (this.own && this.own.events === 0) fs.rmSync(this.own.file, { force: true });
    this.own = undefined;
    this.orphans = [];
  }

  /**
   * Appends events (stored JSON) durably: the longest prefix that fits within the bound.
   * Returns how many were written (0 when the spool is full).
   */
  append(events: string[]): number {
    if (events.length === 0) return 0;
    const header = this.own ? 0 : 256; // room for the header of a new file
    let bytes = 0;
    let count = 0;
    for (const e of events) {
      const b = Buffer.byteLength(e) + 1;
      if (this.wouldOverflow(header + bytes + b)) break;
      bytes += b;
      count++;
    }
    if (count === 0) return 0;
    if (!this.own) this.createOwn();
    appendDurably(this.own!.file, events.slice(0, count).join('\n') + '\n', false);
    this.own!.bytes += bytes;
    this.own!.events += count;
    return count;
  }

  private createOwn(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const id = randomUUID();
    const header = JSON.stringify({ airlock_spool: 1, id, pid: process.pid, instance: INSTANCE, created: new Date().toISOString() } satisfies Header) + '\n';
    for (const name of [SPOOL_NAME, `audit-spool.${process.pid}.jsonl`, `audit-spool.${process.pid}-${id.slice(0, 8)}.jsonl`]) {
      const file = path.join(this.dir, name);
      try {
        appendDurably(file, header, true);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        // Taken: by a live process, or left by a dead one (claimed here, then drained).
        if (this.claimOrphans() > 0) {
          try {
            appendDurably(file, header, true);
          } catch (e2) {
            if ((e2 as NodeJS.ErrnoException).code !== 'EEXIST') throw e2;
            continue;
          }
        } else continue;
      }
      this.own = { file, id, bytes: Buffer.byteLength(header), events: 0 };
      return;
    }
    throw new Error(`cannot create an audit spool file in ${this.dir}`);
  }

  /**
   * Writes every spooled event to the database, oldest file first: `write` stores a batch and
   * records its progress in the same transaction (so a crash never writes an event twice);
   * `progress` returns the recorded offset for a spool id; `done` forgets it. Files are removed
   * once drained. Throws (keeping what is left) when `write` throws.
   */
  drain(write: (batch: SpoolBatch) => void, progress: (spoolId: string) => number, done: (spoolId: string) => void, batchSize = 500): number {
    let written = 0;
    while (this.orphans.length > 0) {
      const o = this.orphans[0]!;
      written += this.drainFile(o.file, write, progress, batchSize, (n) => (o.events = Math.max(0, o.events - n)));
      this.orphans.shift();
      const h = readHeader(o.file);
      fs.rmSync(o.file, { force: true });
      if (h) done(h.id);
    }
    if (this.own && this.own.events > 0) {
      const own = this.own;
      written += this.drainFile(own.file, write, progress, batchSize, (n) => (own.events = Math.max(0, own.events - n)));
      fs.rmSync(own.file, { force: true });
      done(own.id);
      this.own = undefined;
    }
    return written;
  }

  private drainFile(file: string, write: (b: SpoolBatch) => void, progress: (id: string) => number,
    batchSize: number, consumed: (n: number) => void): number {
    const h = readHeader(file);
    if (!h) return 0; // empty or unreadable: nothing that can be recovered
    const fd = fs.openSync(file, 'r');
    let written = 0;
    try {
      const size = fs.fstatSync(fd).size;
      const headerEnd = Buffer.byteLength(JSON.stringify(h)) + 1;
      let offset = Math.max(progress(h.id), headerEnd);
      let carry = Buffer.alloc(0);
      let carryStart = offset;
      let pos = offset;
      while (pos < size) {
        const buf = Buffer.alloc(Math.min(READ_CHUNK, size - pos));
        const n = fs.readSync(fd, buf, 0, buf.length, pos);
        if (n <= 0) break;
        pos += n;
        const data = carry.length ? Buffer.concat([carry, buf.subarray(0, n)]) : buf.subarray(0, n);
        let start = 0;
        let batch: string[] = [];
        let batchEnd = carryStart;
        for (let nl = data.indexOf(10, start); nl >= 0; nl = data.indexOf(10, start)) {
          const line = data.subarray(start, nl).toString('utf8');
          start = nl + 1;
          batchEnd = carryStart + start;
          if (line.trim() !== '') batch.push(line);
          if (batch.length >= batchSize) {
            write({ spoolId: h.id, events: batch, endOffset: batchEnd });
            written += batch.length;
            consumed(batch.length);
            batch = [];
            offset = batchEnd;
          }
        }
        if (batch.length > 0 || batchEnd > offset) {
          write({ spoolId: h.id, events: batch, endOffset: batchEnd });
          written += batch.length;
          consumed(batch.length);
          offset = batchEnd;
        }
        carry = Buffer.from(data.subarray(start));
        carryStart = offset;
      }
      // A partial last line (the writer died mid-write) was never acknowledged: nothing to keep.
    } finally {
      fs.closeSync(fd);
    }
    return written;
  }
}

function countLines(file: string): number {
  try {
    const data = fs.readFileSync(file);
    let n = 0;
    for (let i = data.indexOf(10); i >= 0; i = data.indexOf(10, i + 1)) n++;
    return n;
  } catch {
    return 0;
  }
}
