// Tracks, message by message, what the target has been sent and what it has answered, so that the
// gateway always knows which statement text a name stands for on the target. Pure: no sockets.
//
// Prepared statements and portals change only when the target confirms (ParseComplete,
// BindComplete, CloseComplete). Until then the change is pending: later messages of the same
// batch see it (if it fails, the target skips them until Sync), and messages of a later batch
// wait for it to settle. After an error in an extended-protocol batch the target ignores every
// message up to Sync, simple Queries included; those entries are dropped here in the same way.
// The same bookkeeping keeps each statement's and portal's RowDescription, so that the columns of
// every DataRow are known (masking needs them).
import type { FieldDescription } from './codec.ts';

/** A statement execution the adapter records when it completes. */
export interface Tracked {
  started: number;
  rows?: number;
  error?: string;
  /** Set when the target skipped it (an earlier message of its batch failed). */
  skipped?: boolean;
}

type Settle = { promise: Promise<void>; resolve: () => void };

export type Entry =
  | { kind: 'parse'; name: string; text: string; batch: number; settle: Settle }
  | { kind: 'bind'; portal: string; text: string | undefined; statement: string; formats: number[]; params?: Buffer; batch: number; settle: Settle }
  | { kind: 'close'; target: 'S' | 'P'; name: string; batch: number; settle: Settle }
  | { kind: 'describe'; target: 'S' | 'P'; name: string }
  | { kind: 'execute'; tracked?: Tracked; marker?: string; portal: string }
  | { kind: 'query'; tracked?: Tracked; marker?: string; releases?: boolean; fields?: FieldDescription[] }
  | { kind: 'sync'; releases?: boolean };

/** A prepared statement or portal on the target: its text and, once described, its columns. */
interface Named {
  text: string;
  fields?: FieldDescription[];
  /** Portals: the Bind's parameter section (formats and values), what an approval binds to. */
  params?: Buffer;
}

export interface PipelineEvents {
  /** A tracked statement finished (completed, failed or skipped). */
  finished(t: Tracked): void;
  /** An entry carrying `releases` was answered (or skipped): the barrier it held may go. */
  released(): void;
  /** A refusal marker will never be echoed back (its message was answered or skipped). */
  forget(marker: string): void;
}

/** A name's text as the target will see it, or a promise to wait on when that is not known yet. */
export type Lookup = { text: string | undefined } | { wait: Promise<void> };

const settle = (): Settle => {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
};

export class Pipeline {
  /** Incremented at every Sync and simple Query sent: messages between two of them form a batch. */
  private batch = 0;
  private readonly statements = new Map<string, Named>();
  private readonly portals = new Map<string, Named>();
  private readonly entries: Entry[] = [];

  constructor(private readonly events: PipelineEvents) {}

  get pending(): number {
    return this.entries.length;
  }

  // ---------- messages sent to the target ----------

  parse(name: string, text: string): void {
    this.entries.push({ kind: 'parse', name, text, batch: this.batch, settle: settle() });
  }

  /** `formats` are the Bind's result-column format codes (none: all text; one: all alike). */
  bind(portal: string, text: string | undefined, statement = '', formats: number[] = [], params?: Buffer): void {
    this.entries.push({ kind: 'bind', portal, text, statement, formats, params, batch: this.batch, settle: settle() });
  }

  close(target: 'S' | 'P', name: string): void {
    this.entries.push({ kind: 'close', target, name, batch: this.batch, settle: settle() });
  }

  describe(target: 'S' | 'P' = 'P', name = ''): void {
    this.entries.push({ kind: 'describe', target, name });
  }

  execute(tracked?: Tracked, marker?: string, portal = ''): void {
    this.entries.push({ kind: 'execute', tracked, marker, portal });
  }

  query(tracked?: Tracked, marker?: string, releases = false): void {
    this.entries.push({ kind: 'query', tracked, marker, releases });
    this.batch++;
  }

  sync(releases = false): void {
    this.entries.push({ kind: 'sync', releases });
    this.batch++;
  }

  /** Text of a prepared statement as the target will have it when the next message arrives. */
  statement(name: string): Lookup {
    return this.lookup('S', name, this.statements);
  }

  /** The parameters bound to a portal (latest Bind sent, confirmed or not). */
  portalParams(name: string): Buffer | undefined {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i];
      if (e.kind === 'bind' && e.portal === name) return e.params;
    }
    return this.portals.get(name)?.params;
  }

  /** Text behind a portal as the target will have it when the next message arrives. */
  portal(name: string): Lookup {
    return this.lookup('P', name, this.portals);
  }

  private lookup(target: 'S' | 'P', name: string, confirmed: Map<string, Named>): Lookup {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i];
      const hit = target === 'S'
        ? (e.kind === 'parse' && e.name === name) || (e.kind === 'close' && e.target === 'S' && e.name === name)
        : (e.kind === 'bind' && e.portal === name) || (e.kind === 'close' && e.target === 'P' && e.name === name);
      if (!hit) continue;
      const change = e as Extract<Entry, { batch: number }>;
      // A change from an earlier batch may still fail without this batch being skipped: wait.
      if (change.batch !== this.batch) return { wait: change.settle.promise };
      return { text: change.kind === 'close' ? undefined : change.text };
    }
    return { text: confirmed.get(name)?.text };
  }

  /**
   * The statement whose results are arriving now (the head Query or Execute), with the columns
   * of its rows when known: from the Query's RowDescription, or the executed portal's.
   */
  current(): { tracked?: Tracked; fields?: FieldDescription[] } | undefined {
    const e = this.entries[0];
    if (e?.kind === 'query') return { tracked: e.tracked, fields: e.fields };
    if (e?.kind === 'execute') return { tracked: e.tracked, fields: this.portals.get(e.portal)?.fields };
    return undefined;
  }

  // ---------- messages received from the target ----------

  /** ParseComplete, BindComplete, CloseComplete: the oldest change is now true on the target. */
  confirmed(type: '1' | '2' | '3'): void {
    const e = this.entries[0];
    const expected = type === '1' ? 'parse' : type === '2' ? 'bind' : 'close';
    if (e?.kind !== expected) throw new Error(`target answered ${expected} out of order`);
    this.entries.shift();
    if (e.kind === 'parse') this.statements.set(e.name, { text: e.text });
    else if (e.kind === 'bind') {
      const fields = this.statements.get(e.statement)?.fields;
      if (e.text === undefined) this.portals.delete(e.portal);
      else this.portals.set(e.portal, { text: e.text, fields: fields && withFormats(fields, e.formats), params: e.params });
    } else if (e.kind === 'close') (e.target === 'S' ? this.statements : this.portals).delete(e.name);
    e.settle.resolve();
  }

  /**
   * RowDescription (`fields`) or NoData (`undefined`): answers a Describe at the head, recording the
   * columns of that statement or portal; for a simple Query, describes the rows that follow.
   */
  described(fields: FieldDescription[] | undefined): void {
    const e = this.entries[0];
    if (e?.kind === 'query') e.fields = fields;
    if (e?.kind !== 'describe') return;
    this.entries.shift();
    const named = (e.target === 'S' ? this.statements : this.portals).get(e.name);
    if (named) named.fields = fields;
  }

  /** CommandComplete, EmptyQueryResponse, PortalSuspended: the head statement is done (Execute) or one of its statements is (Query). */
  completed(rows: number | undefined, endsExecute: boolean): void {
    const e = this.entries[0];
    if (e?.kind !== 'execute' && e?.kind !== 'query') return;
    if (e.tracked && rows !== undefined) e.tracked.rows = (e.tracked.rows ?? 0) + rows;
    if (e.kind === 'execute' && endsExecute) this.pop();
  }

  /**
   * ErrorResponse. A simple Query's error belongs to it (it ends at ReadyForQuery). Any other
   * message failed: the target now skips everything up to the next Sync.
   */
  failed(error: string): void {
    const e = this.entries[0];
    // An error raised at Sync (a deferred constraint or serialization failure at the implicit
    // commit) belongs to that Sync: its ReadyForQuery follows and ends it.
    if (!e || e.kind === 'sync') return;
    if (e.kind === 'query') {
      if (e.tracked) e.tracked.error = error;
      return;
    }
    if (e.kind === 'execute' && e.tracked) e.tracked.error = error;
    this.pop();
    while (this.entries.length && this.entries[0].kind !== 'sync') {
      const skipped = this.entries[0];
      if ((skipped.kind === 'execute' || skipped.kind === 'query') && skipped.tracked) skipped.tracked.skipped = true;
      this.pop();
    }
  }

  /** ReadyForQuery: ends the head Query or Sync. `idle` (status I): portals are gone with the transaction. */
  ready(idle: boolean): void {
    while (this.entries.length) {
      const kind = this.entries[0].kind;
      this.pop();
      if (kind === 'query' || kind === 'sync') break;
    }
    if (idle) this.portals.clear();
  }

  /** Ends everything (connection lost): tracked statements are reported as skipped. */
  abandon(): void {
    while (this.entries.length) {
      const e = this.entries[0];
      if ((e.kind === 'execute' || e.kind === 'query') && e.tracked && e.tracked.rows === undefined && !e.tracked.error) e.tracked.skipped = true;
      this.pop();
    }
  }

  private pop(): void {
    const e = this.entries.shift();
    if (!e) return;
    if ('settle' in e) e.settle.resolve();
    if ((e.kind === 'execute' || e.kind === 'query') && e.tracked) this.events.finished(e.tracked);
    if ((e.kind === 'execute' || e.kind === 'query') && e.marker) this.events.forget(e.marker);
    if ((e.kind === 'query' || e.kind === 'sync') && e.releases) this.events.released();
  }
}

/** A statement's columns with a Bind's result format codes (none: all text; one: all alike). */
function withFormats(fields: FieldDescription[], formats: number[]): FieldDescription[] {
  return fields.map((f, i) => ({ ...f, format: formats.length === 0 ? 0 : formats.length === 1 ? formats[0] : formats[i] ?? 0 }));
}
