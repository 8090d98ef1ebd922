// The event hash of the audit chain, and the canonical JSON that checkpoint signatures cover.
// Pure functions: the store, `audit verify` and anyone checking an export (docs/audit.md)
// compute exactly the same bytes.
import { createHash } from 'node:crypto';

/** prev_hash of the first event ever written. */
export const GENESIS_HASH = '0'.repeat(64);

/**
 * JSON with object keys sorted (JavaScript's default sort: UTF-16 code units; for ASCII keys the
 * byte order), no whitespace, strings and numbers as JSON.stringify writes them. Properties whose
 * value is undefined, a function or a symbol are left out (as JSON.stringify does); in arrays
 * they become null. Throws on cycles and on non-finite numbers (checkpoint payloads
 * have neither).
 */
export function canonicalJson(value: unknown): string {
  const out: string[] = [];
  const stack = new Set<object>();
  const walk = (v: unknown): boolean => {
    switch (typeof v) {
      case 'string':
        out.push(JSON.stringify(v));
        return true;
      case 'number':
        if (!Number.isFinite(v)) throw new TypeError('canonicalJson: non-finite number');
        out.push(JSON.stringify(v));
        return true;
      case 'boolean':
        out.push(v ? 'true' : 'false');
        return true;
      case 'bigint':
        throw new TypeError('canonicalJson: bigint');
      case 'undefined':
      case 'function':
      case 'symbol':
        return false;
    }
    if (v === null) {
      out.push('null');
      return true;
    }
    const o = v as object & { toJSON?: () => unknown };
    if (typeof o.toJSON === 'function') return walk(o.toJSON());
    if (stack.has(o)) throw new TypeError('canonicalJson: cycle');
    stack.add(o);
    if (Array.isArray(o)) {
      out.push('[');
      o.forEach((x, i) => {
        if (i > 0) out.push(',');
        if (!walk(x)) out.push('null');
      });
      out.push(']');
    } else {
      out.push('{');
      let first = true;
      for (const k of Object.keys(o).sort()) {
        const x = (o as Record<string, unknown>)[k];
        if (x === undefined || typeof x === 'function' || typeof x === 'symbol') continue;
        out.push(first ? '' : ',', JSON.stringify(k), ':');
        first = false;
        walk(x);
      }
      out.push('}');
    }
    stack.delete(o);
    return true;
  };
  if (!walk(value)) return 'null';
  return out.join('');
}

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * `sha256(prev_hash + "\n" + id + "\n" + event_json)`, hex: the hash of an audit event, over
 * exactly the stored text of the event (the `event_json` column, UTF-8) and its decimal id.
 */
export function eventHash(prevHash: string, id: number, eventJson: string): string {
  return createHash('sha256').update(`${prevHash}\n${id}\n${eventJson}`).digest('hex');
}

export const isHash = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
