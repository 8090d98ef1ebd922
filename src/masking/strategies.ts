// Masking strategies: how a value (a whole column value, or a span found by a detector inside a
// text) is replaced. Pure functions of (value, key); no I/O. See docs/masking.md.

import { createHmac } from 'node:crypto';
import type { MaskStrategy } from '../policy/schema.ts';

/** The placeholder of `redact` (and of `null` inside free text, where a span cannot be NULL). */
export const REDACTED = '[REDACTED]';

/** Prefix of `hash` outputs. */
export const HASH_PREFIX = 'hmac:';

/** Number of characters `partial`/`last4` and `format` keep at most. */
export const KEEP = 4;

/**
 * How strict each strategy is: when several rules apply to the same column (or detector), the
 * highest rank wins. null > redact > hash > format > partial = last4.
 */
export const STRICTNESS: Readonly<Record<MaskStrategy, number>> = {
  null: 5,
  redact: 4,
  hash: 3,
  format: 2,
  partial: 1,
  last4: 1,
};

export function isMaskStrategy(s: string): s is MaskStrategy {
  return Object.hasOwn(STRICTNESS, s);
}

/** The stricter of two strategies (the first one on a tie). */
export function stricter(a: MaskStrategy, b: MaskStrategy): MaskStrategy {
  return STRICTNESS[b] > STRICTNESS[a] ? b : a;
}

const UNICODE_ALNUM = /^[\p{L}\p{N}\p{M}]$/u;
const UNICODE_DIGIT = /^\p{Nd}$/u;
const UNICODE_LETTER = /^[\p{L}\p{M}]$/u;

function isAsciiDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isAsciiLetter(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
}

/**
 * `partial` / `last4`: every letter and digit becomes `*` except the last 4 of them; other
 * characters (spaces, dashes, dots, `@`...) are kept. At least 4 letters/digits are always
 * hidden: a value with n < 8 of them keeps only n - 4 (none when n <= 4), so a short value is
 * never returned in clear.
 *   `4111 1111 1111 1234` -> `**** **** **** 1234`; `alice@example.com` -> `*****@******e.com`;
 *   `123456` -> `****56`; `1234` -> `****`.
 */
export function keepLast4(value: string): string {
  return maskChars(value, 'alnum');
}

/**
 * `format`: same shape. Digits become `*` except the last 4 digits; letters always become `*`;
 * everything else is kept. As with `last4`, at least 4 digits are hidden (a value with n < 8
 * digits keeps n - 4).
 *   `4111-1111-1111-1234` -> `****-****-****-1234`; `123-45-6789` -> `***-**-6789`;
 *   `AB12 CD34` -> `**** ****`; `alice@example.com` -> `*****@*******.***`.
 */
export function formatMask(value: string): string {
  return maskChars(value, 'digit');
}

function maskChars(value: string, keepKind: 'alnum' | 'digit'): string {
  const n = value.length;
  let total = 0;
  for (let i = 0; i < n; i++) {
    const c = value.charCodeAt(i);
    if (c > 0x7f) return maskCharsUnicode(value, keepKind);
    if (isAsciiDigit(c) || (keepKind === 'alnum' && isAsciiLetter(c))) total++;
  }
  const keep = Math.max(0, Math.min(KEEP, total - KEEP));
  const firstKept = total - keep; // index (among kept-kind characters) of the first one kept
  // Built as char codes: cheaper than growing a string one '*' at a time (a hot path).
  const codes = new Array<number>(n);
  let seen = 0;
  let masked = false;
  for (let i = 0; i < n; i++) {
    const c = value.charCodeAt(i);
    const digit = isAsciiDigit(c);
    const letter = !digit && isAsciiLetter(c);
    const countable = digit || (letter && keepKind === 'alnum');
    const star = (digit || letter) && !(countable && seen++ >= firstKept);
    codes[i] = star ? 42 /* '*' */ : c;
    masked ||= star;
  }
  if (!masked) return value;
  if (n <= 8192) return String.fromCharCode.apply(null, codes);
  let out = ''; // apply() takes a bounded number of arguments
  for (let i = 0; i < n; i += 8192) out += String.fromCharCode.apply(null, codes.slice(i, i + 8192));
  return out;
}

function maskCharsUnicode(value: string, keepKind: 'alnum' | 'digit'): string {
  const chars = Array.from(value);
  const isCounted = (ch: string) => (keepKind === 'alnum' ? UNICODE_ALNUM.test(ch) : UNICODE_DIGIT.test(ch));
  const total = chars.reduce((n, ch) => n + (isCounted(ch) ? 1 : 0), 0);
  const keep = Math.max(0, Math.min(KEEP, total - KEEP));
  const firstKept = total - keep;
  let seen = 0;
  let out = '';
  for (const ch of chars) {
    const counted = isCounted(ch);
    const maskable = counted || UNICODE_LETTER.test(ch) || UNICODE_DIGIT.test(ch);
    if (!maskable) out += ch;
    else if (counted && seen++ >= firstKept) out += ch;
    else out += '*';
  }
  return out;
}

/**
 * `hash`: `hmac:` + the first 16 hex digits (64 bits) of HMAC-SHA256(key, UTF-8 value).
 * Deterministic for a given key, so equal values stay equal (joins, GROUP BY, DISTINCT still
 * work on the masked output); without the key, a guessed value cannot be confirmed.
 */
export function hmacHash(key: Buffer, value: string): string {
  return HASH_PREFIX + createHmac('sha256', key).update(value, 'utf8').digest('hex').slice(0, 16);
}

/**
 * Applies a strategy to a whole value. Returns null for `null`. `inText`: the value is a span
 * inside a larger text (a detector hit in free text), where `null` cannot apply and behaves
 * like `redact`.
 */
export function applyStrategy(strategy: MaskStrategy, value: string, key: Buffer, inText = false): string | null {
  switch (strategy) {
    case 'null':
      return inText ? REDACTED : null;
    case 'redact':
      return REDACTED;
    case 'hash':
      return hmacHash(key, value);
    case 'format':
      return formatMask(value);
    case 'partial':
    case 'last4':
      return keepLast4(value);
  }
}
