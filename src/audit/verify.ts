// Verification of the audit chain and its signed checkpoints. Pure: the store feeds rows (streamed,
// in id order) and checkpoints; see docs/audit.md#verify for what each break kind means.
import type { KeyObject } from 'node:crypto';
import { eventHash, GENESIS_HASH, isHash } from './canonical.ts';
import { checkCheckpointSignature, keyIdOf, type CheckpointKind } from './signing.ts';

/** One `audit_events` row as stored. */
export interface AuditEventRow {
  id: number;
  time: string;
  type: string;
  session_id: string | null;
  subject: string | null;
  connection: string | null;
  decision: string | null;
  event_json: string;
  prev_hash: string | null;
  hash: string | null;
}

/** One `audit_checkpoints` row as stored. */
export interface AuditCheckpointRow {
  id: number;
  upto_id: number;
  upto_hash: string;
  time: string;
  kind: CheckpointKind | string;
  detail_json: string;
  signature: string;
  key_id: string;
}

export type BreakKind = 'edited' | 'deleted' | 'reordered' | 'bad-signature';

export interface VerifyBreak {
  kind: BreakKind;
  /** The event id where the chain breaks (for `deleted`: the first missing id). */
  eventId: number;
  /** 0-based position in the walk: how many existing events (after the retention start) come before it. */
  index: number;
  /** The checkpoint involved, if any. */
  checkpointId?: number;
  message: string;
}

export interface VerifyReport {
  ok: boolean;
  /** Events walked (those after the retention start). */
  events: number;
  firstId?: number;
  lastId?: number;
  /** Hash of the last event walked (or of the retention start / genesis). */
  lastHash: string;
  /** Checkpoints whose signature and hash were checked against existing events. */
  checkpoints: number;
  /** Retention checkpoints (their signatures are checked; the chain starts after the latest one). */
  retentionCheckpoints: number;
  /** Periodic checkpoints over events since pruned: only their signatures are checked. */
  prunedCheckpoints: number;
  /** Events up to this id were deleted by retention (0: none). */
  prunedUpTo: number;
  /** Events after the last checkpoint: chained but not yet covered by a signature. */
  unsigned: number;
  /** Ids of the keys that signed the checkpoints. */
  keyIds: string[];
  break?: VerifyBreak;
}

export interface VerifyInput {
  /** Checkpoints (few: one per thousand events or so). */
  checkpoints: AuditCheckpointRow[];
  /** key_id -> public key, from `audit_keys`. */
  keys: Map<string, KeyObject>;
  /** When set, every checkpoint must be signed by this key. */
  pinnedKey?: KeyObject;
  /** The writer's record of the chain head (`audit_chain`), if any. */
  head?: { last_id: number; last_hash: string };
  /** Rows with id > afterId, in id order (streamed). */
  rows(afterId: number): Iterable<AuditEventRow>;
  /** Up to `limit` rows with id > afterId, in id order (used once, to tell a reordering from an edit). */
  lookahead(afterId: number, limit: number): AuditEventRow[];
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/** The columns of a row as derived from its event JSON: any difference is an edit. */
export function columnsMatch(r: AuditEventRow, ev: Record<string, unknown>): boolean {
  return r.time === ev.time && r.type === ev.type && r.session_id === str(ev.sessionId) && r.subject === str(ev.subject)
    && r.connection === str(ev.connection) && r.decision === str(ev.decision);
}

function parseEvent(json: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(json) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The hash a row must carry given its prev_hash, or undefined when its content or columns are inconsistent. */
function recompute(r: AuditEventRow, prevHash: string, id = r.id): string | undefined {
  const ev = parseEvent(r.event_json);
  if (!ev || !columnsMatch(r, ev)) return undefined;
  return eventHash(prevHash, id, r.event_json);
}

interface CpState {
  row: AuditCheckpointRow;
  detail?: Record<string, unknown>;
  sigOk: boolean;
}

export function verifyChain(input: VerifyInput): VerifyReport {
  const pinnedId = input.pinnedKey ? keyIdOf(input.pinnedKey) : undefined;
  const keyIds = new Set<string>();
  const cps: CpState[] = input.checkpoints.map((row) => {
    keyIds.add(row.key_id);
    const detail = parseEvent(row.detail_json);
    const key = input.pinnedKey ? (row.key_id === pinnedId ? input.pinnedKey : undefined) : input.keys.get(row.key_id);
    const kindOk = row.kind === 'periodic' || row.kind === 'retention';
    const sigOk = !!key && !!detail && kindOk && isHash(row.upto_hash) && checkCheckpointSignature(key, {
      upto_id: row.upto_id, upto_hash: row.upto_hash, time: row.time, kind: row.kind as CheckpointKind, detail: detail!,
    }, row.signature);
    return { row, detail, sigOk };
  });
  cps.sort((a, b) => a.row.upto_id - b.row.upto_id || a.row.id - b.row.id);

  const report: VerifyReport = {
    ok: true, events: 0, lastHash: GENESIS_HASH, checkpoints: 0, retentionCheckpoints: 0, prunedCheckpoints: 0,
    prunedUpTo: 0, unsigned: 0, keyIds: [...keyIds].sort(),
  };
  const fail = (b: VerifyBreak): VerifyReport => {
    report.ok = false;
    report.break = b;
    return report;
  };
  const badSigBreak = (c: CpState, index: number): VerifyBreak => ({
    kind: 'bad-signature', eventId: c.row.upto_id, index, checkpointId: c.row.id,
    message: `checkpoint ${c.row.id} (${c.row.kind}, up to event ${c.row.upto_id}) has an invalid signature`
      + (input.pinnedKey && c.row.key_id !== pinnedId ? ` (signed by key ${c.row.key_id}, expected ${pinnedId})`
        : !input.pinnedKey && !input.keys.has(c.row.key_id) ? ` (unknown key ${c.row.key_id})` : ''),
  });
  const badSig = (c: CpState, index: number) => fail(badSigBreak(c, index));

  // Retention checkpoints: contiguous deleted ranges from id 1; the chain starts after the last.
  let startId = 0;
  let expectedPrev = GENESIS_HASH;
  for (const c of cps) {
    if (c.row.kind !== 'retention') continue;
    if (!c.sigOk) return badSig(c, 0);
    report.retentionCheckpoints++;
    const from = Number(c.detail!.from_id);
    if (from !== startId + 1) {
      return fail({ kind: 'deleted', eventId: startId + 1, index: 0, checkpointId: c.row.id,
        message: `events ${startId + 1}..${from - 1} are missing: retention checkpoint ${c.row.id} starts at ${from}` });
    }
    startId = c.row.upto_id;
    expectedPrev = c.row.upto_hash;
  }
  report.prunedUpTo = startId;
  report.lastHash = expectedPrev;

  const periodic = cps.filter((c) => c.row.kind === 'periodic');
  let cpi = 0;
  for (; cpi < periodic.length && periodic[cpi]!.row.upto_id <= startId; cpi++) {
    const c = periodic[cpi]!;
    if (!c.sigOk) return badSig(c, 0);
    report.prunedCheckpoints++;
  }

  let expectedId = startId + 1;
  let index = 0;
  let lastCovered = startId;
  let found: VerifyBreak | undefined;
  let reorderCheck: { row: AuditEventRow; prev: string; index: number } | undefined;
  for (const r of input.rows(startId)) {
    // checkpoints pointing between the previous row and this one point to missing events
    while (cpi < periodic.length && periodic[cpi]!.row.upto_id < r.id) {
      const c = periodic[cpi]!;
      if (!c.sigOk) {
        found = badSigBreak(c, index);
        break;
      }
      found = { kind: 'deleted', eventId: c.row.upto_id, index, checkpointId: c.row.id,
        message: `event ${c.row.upto_id} is missing (signed checkpoint ${c.row.id} ends there)` };
      break;
    }
    if (found) break;
    const h = r.prev_hash !== null && r.hash !== null ? recompute(r, r.prev_hash) : undefined;
    if (h === undefined || h !== r.hash) {
      reorderCheck = { row: r, prev: expectedPrev, index };
      break;
    }
    if (r.prev_hash !== expectedPrev || r.id !== expectedId) {
      if (r.id > expectedId) {
        found = { kind: 'deleted', eventId: expectedId, index,
          message: r.id - 1 === expectedId ? `event ${expectedId} is missing` : `events ${expectedId}..${r.id - 1} are missing` };
      } else if (index > 0) {
        found = { kind: 'edited', eventId: expectedId - 1, index: index - 1,
          message: `event ${expectedId - 1} was rewritten: its hash no longer matches the prev_hash of event ${r.id}` };
      } else {
        found = { kind: 'edited', eventId: r.id, index, message: `event ${r.id} does not link to the start of the chain` };
      }
      break;
    }
    while (cpi < periodic.length && periodic[cpi]!.row.upto_id === r.id) {
      const c = periodic[cpi]!;
      if (!c.sigOk) {
        found = badSigBreak(c, index);
        break;
      }
      if (c.row.upto_hash !== r.hash) {
        found = { kind: 'edited', eventId: r.id, index, checkpointId: c.row.id,
          message: `the chain up to event ${r.id} differs from signed checkpoint ${c.row.id}: events up to it were rewritten` };
        break;
      }
      report.checkpoints++;
      lastCovered = r.id;
      cpi++;
    }
    if (found) break;
    report.firstId ??= r.id;
    report.lastId = r.id;
    report.lastHash = r.hash!;
    report.events++;
    expectedPrev = r.hash!;
    expectedId = r.id + 1;
    index++;
  }

  if (reorderCheck) {
    const { row, prev, index: at } = reorderCheck;
    const want = new Set([row.hash]);
    for (const c of input.lookahead(row.id, 1000)) {
      // The content only: a moved event_json no longer matches the columns of the row it is in.
      const h = eventHash(prev, row.id, c.event_json);
      if (want.has(h) || h === c.hash) {
        return fail({ kind: 'reordered', eventId: row.id, index: at,
          message: `event ${row.id} is out of order: the event that belongs at id ${row.id} is stored at id ${c.id}` });
      }
    }
    return fail({ kind: 'edited', eventId: row.id, index: at,
      message: `event ${row.id} was modified: its content, columns or hash do not match` });
  }
  if (found) return fail(found);

  const lastId = report.lastId ?? startId;
  if (cpi < periodic.length) {
    const c = periodic[cpi]!;
    if (!c.sigOk) return badSig(c, index);
    return fail({ kind: 'deleted', eventId: lastId + 1, index, checkpointId: c.row.id,
      message: `events ${lastId + 1}..${c.row.upto_id} are missing: signed checkpoint ${c.row.id} covers them, the log ends at ${lastId}` });
  }
  if (input.head && input.head.last_id > lastId) {
    return fail({ kind: 'deleted', eventId: lastId + 1, index,
      message: `events ${lastId + 1}..${input.head.last_id} are missing: the chain head says ${input.head.last_id} events were written` });
  }
  if (input.head && input.head.last_id === lastId && input.head.last_hash !== report.lastHash) {
    return fail({ kind: 'edited', eventId: lastId, index: Math.max(0, index - 1),
      message: `the last event ${lastId} does not match the recorded chain head` });
  }
  report.unsigned = report.events === 0 ? 0 : countAfter(report, lastCovered);
  return report;
}

// Ids are contiguous when the walk succeeded, so the unsigned tail is an id difference.
function countAfter(report: VerifyReport, lastCovered: number): number {
  return Math.max(0, (report.lastId ?? 0) - lastCovered);
}
