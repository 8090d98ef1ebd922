// The masking engine: applies the mask rules of a decision to response values. Protocol-neutral:
// it sees values (text, or the UTF-8 bytes of a text) and column metadata, never wire framing,
// so the PostgreSQL adapter, SSH output, HTTP bodies and MySQL rows all use the same engine.
//
//   const masker = new Masker(decision.masks, { hashKey });
//   if (!masker.empty) {
//     const plan = masker.plan(columns);          // once per result set (RowDescription)
//     if (plan.active) cell = plan.mask(i, cell); // per value; === tells "unchanged"
//     // or, from UTF-8 bytes: decoded only when something may be found; undefined = unchanged
//     const masked = plan.maskUtf8(i, buf, start, end);
//   }
//   text = masker.maskText(text);                 // errors, notices, terminal output
//
// Rule semantics (documented in docs/masking.md):
// - `columns` only: the whole value of every matching column is replaced ('whole').
// - `detect` only: detectors scan every value and mask what they find ('scan'), and free text.
// - both: detectors scan only the named columns (and free text, which may echo those values).
// - several rules on one column (or one detector): the strictest strategy wins,
//   null > redact > hash > format > partial = last4. A column rule (whole value) takes
//   precedence over detectors on that column.

import type { MaskRuleRef } from '../core/types.ts';
import type { MaskStrategy } from '../policy/schema.ts';
import { DETECTORS, type Detector, type QuickUtf8, type Span } from './detectors.ts';
import { REDACTED, STRICTNESS, applyStrategy, isMaskStrategy, stricter } from './strategies.ts';

export interface ColumnMeta {
  name: string;
  /** 'schema.table' when known (or 'table'); absent for computed columns. */
  table?: string;
}

/** Per column, how many values were masked and how. Never the values. */
export interface MaskStats {
  column: string;
  strategy: string;
  values: number;
}

export interface ColumnPlan {
  /** False when nothing in this result set needs masking: the caller forwards rows untouched. */
  readonly active: boolean;
  /** Per column: 'none' | 'whole' (column rule: the whole value is replaced) | 'scan' (detectors look inside). */
  readonly modes: ReadonlyArray<'none' | 'whole' | 'scan'>;
  /**
   * Masks one value of column i (text form). Returns the masked text, or null when the strategy
   * is `null`. Unchanged values are returned as the same string, so callers can detect "no
   * change" with ===.
   */
  mask(i: number, value: string): string | null;
  /**
   * Masks one value of column i given as its UTF-8 bytes, `buf[start, end)` (for callers that
   * hold encoded values, such as the PostgreSQL adapter). Returns the masked text, null when the
   * strategy is `null`, or undefined when the value is unchanged. Always the same result as
   * `mask` on the decoded text, but a value that cannot hold a hit is not decoded at all: too
   * short, or ruled out by the detectors' byte prefilters (no `@` for email, no run of 13 digits
   * for credit_card...).
   */
  maskUtf8(i: number, buf: Buffer, start: number, end: number): string | null | undefined;
  /** Counts so far, per column that had at least one masked value. */
  stats(): MaskStats[];
}

export interface MaskerOptions {
  /** Key of the `hash` strategy (configured in airlock.yaml as `masking.hash_key`). */
  hashKey: Buffer;
  /** Extra detectors by name (custom detectors); built-in names cannot be replaced. */
  detectors?: Readonly<Record<string, Detector>>;
}

// ---------------------------------------------------------------------------------------------
// Column patterns

interface ColumnPattern {
  re: RegExp;
  /** No dot: matched against the column name alone. */
  bare: boolean;
  /** Exactly one dot (`table.column`): also matches `<schema>.table.column`. */
  twoPart: boolean;
}

function globSource(glob: string): string {
  let src = '';
  for (const ch of glob) {
    if (ch === '*') src += '[\\s\\S]*';
    else if (ch === '?') src += '[\\s\\S]';
    else src += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return src;
}

export function compileColumnPattern(glob: string): ColumnPattern {
  const dots = glob.split('.').length - 1;
  return { re: new RegExp(`^${globSource(glob)}$`, 'iu'), bare: dots === 0, twoPart: dots === 1 };
}

/**
 * `column`: the column name, whatever its table. `table.column`: the column's table is `table`
 * or `<any schema>.table`. `schema.table.column`: compared to the full name. Patterns with a dot
 * never match a column whose table is unknown. `*` spans dots; case-insensitive.
 */
export function columnMatches(p: ColumnPattern, col: ColumnMeta): boolean {
  if (p.bare) return p.re.test(col.name);
  if (!col.table) return false;
  if (p.re.test(`${col.table}.${col.name}`)) return true;
  if (!p.twoPart) return false;
  const dot = col.table.lastIndexOf('.');
  return dot >= 0 && p.re.test(`${col.table.slice(dot + 1)}.${col.name}`);
}

// ---------------------------------------------------------------------------------------------
// Detection plans: which detectors run, each with its strategy

interface DetectPlan {
  detectors: Detector[];
  strategies: MaskStrategy[];
  /** Shortest text any of the detectors can find something in. */
  minLength: number;
  /**
   * The detectors' byte prefilters (Detector.quickUtf8) when every detector has one and there are
   * at most SKIP_BITS of them: values given as bytes are then decoded only when one passes.
   * Undefined otherwise: such values are always decoded, as the `quick` regexes on the text cost
   * less than loops over the bytes.
   */
  quickUtf8?: QuickUtf8[];
  /** Per detector: its minLength (0 if none). */
  minLengths: number[];
  /** Label for stats: the strategies used, strictest first. */
  label: string;
}

function buildDetectPlan(byDetector: Map<string, { detector: Detector; strategy: MaskStrategy }>): DetectPlan {
  const entries = [...byDetector.values()];
  const detectors = entries.map((e) => e.detector);
  const strategies = entries.map((e) => e.strategy);
  const minLength = Math.min(...detectors.map((d) => d.minLength ?? 0));
  const label = [...new Set(strategies)].sort((a, b) => STRICTNESS[b] - STRICTNESS[a]).join(',');
  const quickUtf8 = detectors.map((d) => d.quickUtf8);
  return {
    detectors, strategies, minLength, label,
    quickUtf8: detectors.length <= SKIP_BITS && all(quickUtf8) ? quickUtf8 : undefined,
    minLengths: detectors.map((d) => d.minLength ?? 0),
  };
}

const all = <T>(xs: (T | undefined)[]): xs is T[] => xs.every((x) => x !== undefined);

/** Most detectors a plan may have for its byte prefilters to be used: one bit each in a skip mask. */
const SKIP_BITS = 30;

/**
 * The skip mask of the UTF-8 value buf[start, end) for a plan with byte prefilters: bit k set when
 * detector k cannot find anything in it, being shorter than its minLength (which counts UTF-16
 * units, and a UTF-8 text has at least as many bytes as units) or ruled out by its prefilter.
 */
function skippedDetectors(plan: DetectPlan, quickUtf8: QuickUtf8[], buf: Buffer, start: number, end: number): number {
  let skip = 0;
  for (let k = 0; k < quickUtf8.length; k++) {
    if (end - start < plan.minLengths[k] || !quickUtf8[k](buf, start, end)) skip |= 1 << k;
  }
  return skip;
}

interface Hit {
  start: number;
  end: number;
  strategy: MaskStrategy;
}

/**
 * Runs the plan's detectors over `value`. Returns `value` itself when nothing is found; null
 * when a hit's strategy is `null` and the value is a column value (`inText` false). `skip`, when
 * the value came as bytes and every detector has a byte prefilter: the mask from
 * skippedDetectors, bit k set when detector k finds nothing; the other detectors passed their
 * prefilter, which is their `quick` test, so it is not run again on the text.
 */
function scan(plan: DetectPlan, value: string, key: Buffer, inText: boolean, skip?: number): string | null {
  if (value.length < plan.minLength) return value;
  let hits: Hit[] | undefined;
  for (let k = 0; k < plan.detectors.length; k++) {
    const d = plan.detectors[k];
    if (skip === undefined ? d.quick && !d.quick.test(value) : skip & (1 << k)) continue;
    const spans: Span[] = d.find(value);
    for (let j = 0; j < spans.length; j++) {
      const start = spans[j][0];
      const end = spans[j][1];
      if (end > start) (hits ??= []).push({ start, end, strategy: plan.strategies[k] });
    }
  }
  if (!hits) return value;
  const merged = hits.length > 1 ? mergeHits(hits) : hits;
  if (!inText) for (const h of merged) if (h.strategy === 'null') return null;
  let out = '';
  let pos = 0;
  for (const h of merged) {
    out += value.slice(pos, h.start) + (applyStrategy(h.strategy, value.slice(h.start, h.end), key, true) ?? REDACTED);
    pos = h.end;
  }
  return pos === value.length ? out : out + value.slice(pos);
}

/** Sorts hits and merges overlapping ones; a merged hit takes the strictest strategy. */
function mergeHits(hits: Hit[]): Hit[] {
  hits.sort((a, b) => a.start - b.start || b.end - a.end);
  const merged = [{ ...hits[0] }];
  for (let h = 1; h < hits.length; h++) {
    const cur = hits[h];
    const last = merged[merged.length - 1];
    if (cur.start < last.end) {
      if (cur.end > last.end) last.end = cur.end;
      last.strategy = stricter(last.strategy, cur.strategy);
    } else merged.push({ ...cur });
  }
  return merged;
}

// ---------------------------------------------------------------------------------------------
// Rules

interface ColumnRule {
  patterns: ColumnPattern[];
  strategy: MaskStrategy;
}

interface ScopedDetectRule {
  /** Undefined: every column. */
  patterns?: ColumnPattern[];
  detectors: Detector[];
  strategy: MaskStrategy;
}

type Resolution =
  | { mode: 'none' }
  | { mode: 'whole'; strategy: MaskStrategy }
  | { mode: 'scan'; plan: DetectPlan };

const NONE: Resolution = { mode: 'none' };
const RESOLUTION_CACHE_MAX = 10_000;

export class Masker {
  readonly #key: Buffer;
  readonly #columnRules: ColumnRule[] = [];
  readonly #detectRules: ScopedDetectRule[] = [];
  readonly #textPlan?: DetectPlan;
  readonly #resolved = new Map<string, Resolution>();
  readonly #plans = new Map<string, DetectPlan>();

  constructor(rules: MaskRuleRef[], opts: MaskerOptions) {
    this.#key = opts.hashKey;
    const registry: Record<string, Detector> = { ...opts.detectors, ...DETECTORS };
    for (const rule of rules) {
      const where = `mask rule of policy "${rule.policy}"`;
      if (!isMaskStrategy(rule.with)) throw new Error(`${where}: unknown mask strategy "${rule.with}"`);
      const strategy = rule.with;
      if (strategy === 'hash' && this.#key.length === 0) {
        throw new Error(`${where}: the hash strategy needs a key (masking.hash_key)`);
      }
      const patterns = rule.columns?.length ? rule.columns.map(compileColumnPattern) : undefined;
      if (rule.detect?.length) {
        const detectors = rule.detect.map((name) => {
          const d = Object.hasOwn(registry, name) ? registry[name] : undefined;
          if (!d) throw new Error(`${where}: unknown detector "${name}"`);
          return d;
        });
        this.#detectRules.push({ patterns, detectors, strategy });
      } else if (patterns) {
        this.#columnRules.push({ patterns, strategy });
      }
    }
    // Free text: every detect rule, column-scoped ones included (errors echo column values).
    if (this.#detectRules.length) this.#textPlan = this.#detectPlanOf(this.#detectRules);
  }

  /** True when no rule can apply (callers skip all work). */
  get empty(): boolean {
    return this.#columnRules.length === 0 && this.#detectRules.length === 0;
  }

  /** Per result set: decides once per column which rule applies; cheap to call per RowDescription. */
  plan(columns: ColumnMeta[]): ColumnPlan {
    const res = columns.map((c) => (this.empty ? NONE : this.#resolve(c)));
    return new Plan(res, columns, this.#key);
  }

  /** Masks detector hits in free text (error/notice messages, terminal output). Uses every detect rule; column-only rules do not apply. */
  maskText(text: string): string {
    if (!this.#textPlan || text.length === 0) return text;
    return scan(this.#textPlan, text, this.#key, true) ?? REDACTED;
  }

  #resolve(col: ColumnMeta): Resolution {
    const cacheKey = `${col.table ?? ''}\u0000${col.name}`;
    let r = this.#resolved.get(cacheKey);
    if (r) return r;
    let whole: MaskStrategy | undefined;
    for (const rule of this.#columnRules) {
      if (rule.patterns.some((p) => columnMatches(p, col))) whole = whole ? stricter(whole, rule.strategy) : rule.strategy;
    }
    if (whole) r = { mode: 'whole', strategy: whole };
    else {
      const applicable = this.#detectRules.filter((d) => !d.patterns || d.patterns.some((p) => columnMatches(p, col)));
      r = applicable.length ? { mode: 'scan', plan: this.#detectPlanOf(applicable) } : NONE;
    }
    if (this.#resolved.size >= RESOLUTION_CACHE_MAX) this.#resolved.clear();
    this.#resolved.set(cacheKey, r);
    return r;
  }

  /** One plan per distinct (detector, strategy) set, shared by the columns that use it. */
  #detectPlanOf(rules: ScopedDetectRule[]): DetectPlan {
    const byDetector = new Map<string, { detector: Detector; strategy: MaskStrategy }>();
    for (const rule of rules) {
      for (const detector of rule.detectors) {
        const prev = byDetector.get(detector.name);
        byDetector.set(detector.name, { detector, strategy: prev ? stricter(prev.strategy, rule.strategy) : rule.strategy });
      }
    }
    const key = [...byDetector].map(([name, e]) => `${name}=${e.strategy}`).sort().join(',');
    let plan = this.#plans.get(key);
    if (!plan) this.#plans.set(key, (plan = buildDetectPlan(byDetector)));
    return plan;
  }
}

class Plan implements ColumnPlan {
  readonly active: boolean;
  readonly modes: ReadonlyArray<'none' | 'whole' | 'scan'>;
  readonly #res: Resolution[];
  readonly #columns: ColumnMeta[];
  readonly #key: Buffer;
  readonly #counts: number[];

  constructor(res: Resolution[], columns: ColumnMeta[], key: Buffer) {
    this.#res = res;
    this.#columns = columns;
    this.#key = key;
    this.modes = Object.freeze(res.map((r) => r.mode));
    this.active = res.some((r) => r.mode !== 'none');
    this.#counts = new Array<number>(res.length).fill(0);
  }

  mask(i: number, value: string): string | null {
    const r = this.#res[i];
    if (r === undefined || r.mode === 'none') return value;
    if (r.mode === 'whole') {
      this.#counts[i]++;
      return applyStrategy(r.strategy, value, this.#key);
    }
    const out = scan(r.plan, value, this.#key, false);
    if (out !== value) this.#counts[i]++;
    return out;
  }

  maskUtf8(i: number, buf: Buffer, start: number, end: number): string | null | undefined {
    const r = this.#res[i];
    if (r === undefined || r.mode === 'none') return undefined;
    if (r.mode === 'whole') {
      this.#counts[i]++;
      // redact and null do not look at the value: not decoded.
      if (r.strategy === 'redact' || r.strategy === 'null') return applyStrategy(r.strategy, '', this.#key);
      const value = buf.toString('utf8', start, end);
      const out = applyStrategy(r.strategy, value, this.#key);
      return out === value ? undefined : out;
    }
    if (end - start < r.plan.minLength) return undefined;
    let skip: number | undefined;
    const quickUtf8 = r.plan.quickUtf8;
    if (quickUtf8) {
      skip = skippedDetectors(r.plan, quickUtf8, buf, start, end);
      if (skip === 2 ** quickUtf8.length - 1) return undefined; // every detector ruled out: not decoded
    }
    const value = buf.toString('utf8', start, end);
    const out = scan(r.plan, value, this.#key, false, skip);
    if (out === value) return undefined;
    this.#counts[i]++;
    return out;
  }

  stats(): MaskStats[] {
    const out: MaskStats[] = [];
    for (let i = 0; i < this.#res.length; i++) {
      if (this.#counts[i] === 0) continue;
      const r = this.#res[i];
      const col = this.#columns[i];
      out.push({
        column: col.table ? `${col.table}.${col.name}` : col.name,
        strategy: r.mode === 'whole' ? r.strategy : r.mode === 'scan' ? r.plan.label : 'none',
        values: this.#counts[i],
      });
    }
    return out;
  }
}
