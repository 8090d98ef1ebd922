// Value detectors: each finds sensitive spans inside a text and validates every candidate (Luhn,
// issuer ranges, mod-97, octet ranges, JSON headers...) so that it does not fire on every number.
// A detector is { name, find(text) -> spans }, plus an optional `quick` prefilter; custom
// detectors (from policy, later) only need to implement the same interface.
//
// Every regex here is linear in the length of the text: candidates start only at a boundary
// (look-behind), repetitions are bounded or cannot overlap, and the free-form parts (email,
// URL credentials, IBAN) are scanned by hand. Module-level /g regexes are reset before each use
// (find is synchronous, so sharing them is safe).
//
// What each detector finds and its limits are documented in docs/masking.md.

import { isIPv6 } from 'node:net';
import type { DetectorName } from '../policy/schema.ts';

/** A span [start, end) of the text to mask (UTF-16 offsets). */
export type Span = [start: number, end: number];

/** A byte prefilter: see Detector.quickUtf8. */
export type QuickUtf8 = (buf: Uint8Array, start: number, end: number) => boolean;

export interface Detector {
  readonly name: string;
  /** Optional cheap prefilter: when it does not match, `find` returns nothing. */
  readonly quick?: RegExp;
  /** Optional: texts shorter than this (in UTF-16 units) never contain a hit, so they are not even decoded. */
  readonly minLength?: number;
  /**
   * Optional prefilter over the UTF-8 bytes `buf[start, end)` of a text, so that the text need
   * not be decoded: false only when the decoded text cannot contain a hit. UTF-8 keeps every
   * ASCII character as one byte of the same value and encodes every other character (and every
   * invalid sequence, decoded as U+FFFD) with bytes >= 0x80 only, so a test on ASCII bytes is
   * exactly the same test on the decoded text.
   */
  readonly quickUtf8?: QuickUtf8;
  /** Spans to mask, in any order (they may overlap; the engine merges them). */
  find(text: string): Span[];
}

function each(re: RegExp, text: string, fn: (m: RegExpExecArray) => void): void {
  re.lastIndex = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    fn(m);
    if (m[0].length === 0) re.lastIndex++;
  }
}

function isDigitCode(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isAlnumCode(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
}

// ---------------------------------------------------------------------------------------------
// Byte prefilters (quickUtf8)

/** Above this many bytes, a native search over a view beats a loop (the view costs an allocation). */
const NATIVE_SEARCH_MIN = 256;

/**
 * A quickUtf8 that looks for ASCII strings (the alternatives of the detector's `quick`): one pass
 * over the bytes, the needles compared only where one of them starts.
 */
function asciiNeedles(...needles: string[]): QuickUtf8 {
  const bufs = needles.map((n) => Buffer.from(n, 'latin1'));
  const firsts = new Uint8Array(256);
  for (const n of bufs) firsts[n[0]] = 1;
  const at = (buf: Uint8Array, i: number, end: number, needle: Buffer): boolean => {
    if (end - i < needle.length) return false;
    for (let j = 1; j < needle.length; j++) if (buf[i + j] !== needle[j]) return false;
    return true;
  };
  if (bufs.length === 1 && bufs[0].length === 1) {
    const byte = bufs[0][0]; // one byte (`@`): the tightest loop
    return (buf, start, end) => {
      if (end - start > NATIVE_SEARCH_MIN) return Buffer.from(buf.buffer, buf.byteOffset + start, end - start).indexOf(byte) >= 0;
      for (let i = start; i < end; i++) if (buf[i] === byte) return true;
      return false;
    };
  }
  return (buf, start, end) => {
    if (end - start > NATIVE_SEARCH_MIN) {
      // Buffer#indexOf would search past `end`: search a view of the value instead.
      const view = Buffer.from(buf.buffer, buf.byteOffset + start, end - start);
      return bufs.some((n) => view.indexOf(n) >= 0);
    }
    for (let i = start; i < end; i++) {
      if (firsts[buf[i]] === 0) continue;
      for (const needle of bufs) if (needle[0] === buf[i] && at(buf, i, end, needle)) return true;
    }
    return false;
  };
}

// ---------------------------------------------------------------------------------------------
// credit_card

/** Luhn checksum over a string of digits. */
export function luhnValid(digits: string): boolean {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 48;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

/** Card brand by issuer identification number (IIN) and length; undefined when not a card. */
export function cardBrand(digits: string): string | undefined {
  const n = digits.length;
  const p1 = digits.charCodeAt(0) - 48;
  const p2 = Number(digits.slice(0, 2));
  const p3 = Number(digits.slice(0, 3));
  const p4 = Number(digits.slice(0, 4));
  if (p1 === 4) return n === 13 || n === 16 || n === 19 ? 'visa' : undefined;
  if ((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) return n === 16 ? 'mastercard' : undefined;
  if (p2 === 34 || p2 === 37) return n === 15 ? 'amex' : undefined;
  if (p4 === 6011 || p2 === 65 || (p3 >= 644 && p3 <= 649)) return n >= 16 && n <= 19 ? 'discover' : undefined;
  if (p4 >= 3528 && p4 <= 3589) return n >= 16 && n <= 19 ? 'jcb' : undefined;
  if ((p3 >= 300 && p3 <= 305) || p2 === 36 || p2 === 38) return n >= 14 && n <= 19 ? 'diners' : undefined;
  if (p2 === 62) return n >= 16 && n <= 19 ? 'unionpay' : undefined;
  return undefined;
}

// 13-19 digits, single spaces or dashes allowed between digits, not inside a longer run of
// digits/letters (nor continued by another separated group).
const CARD_RE = /(?<![0-9A-Za-z_]|\d[ -])\d(?:[ -]?\d){12,18}(?![0-9A-Za-z_]|[ -]\d)/g;

const creditCard: Detector = {
  name: 'credit_card',
  minLength: 13,
  // 13 digits, separated or not: most numbers in text are shorter.
  quick: /\d(?:[ -]?\d){12}/,
  quickUtf8(buf, start, end) {
    // `quick` over bytes: 13 digits, a single space or dash allowed between two of them.
    let run = 0;
    let sep = false;
    for (let i = start; i < end; i++) {
      const c = buf[i];
      if (c >= 48 && c <= 57) {
        if (++run === 13) return true;
        sep = false;
      } else if ((c === 32 || c === 45) && run > 0 && !sep) sep = true;
      else {
        run = 0;
        sep = false;
      }
    }
    return false;
  },
  find(text) {
    const spans: Span[] = [];
    each(CARD_RE, text, (m) => {
      const raw = m[0];
      const digits = raw.replace(/[ -]/g, '');
      if (digits.length !== raw.length) {
        // Grouped: every group has at least 3 digits (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3...).
        if (raw.split(/[ -]/).some((g) => g.length < 3)) return;
      }
      if (cardBrand(digits) === undefined || !luhnValid(digits)) return;
      spans.push([m.index, m.index + raw.length]);
    });
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// email

/** [A-Za-z0-9._%+-] */
function isLocalCode(c: number): boolean {
  return isAlnumCode(c) || c === 46 || c === 95 || c === 37 || c === 43 || c === 45;
}
/** [A-Za-z0-9.-] */
function isDomainCode(c: number): boolean {
  return isAlnumCode(c) || c === 46 || c === 45;
}
/**
 * Letters text[start, end) as a number, case-insensitive: 5 bits a letter (A/a = 1 ... Z/z = 26),
 * distinct for up to 6 letters. Lets a TLD be looked up without slicing and lower-casing it.
 */
function lettersKey(text: string, start: number, end: number): number {
  let key = 0;
  for (let i = start; i < end; i++) key = key * 32 + (text.charCodeAt(i) & 0x1f);
  return key;
}
/** File extensions that look like TLDs in `icon@2x.png` and friends (as lettersKey; all have at most 4 letters). */
const NOT_TLDS = new Set(['png', 'jpg', 'jpeg', 'gif', 'svg', 'webp', 'bmp', 'ico', 'tif', 'tiff', 'css', 'js', 'mjs', 'cjs', 'ts', 'map', 'json', 'yaml', 'yml', 'txt', 'md', 'html', 'htm']
  .map((ext) => lettersKey(ext, 0, ext.length)));

/** True when the `@` at `at` is inside the authority of a URL (`scheme://user:pw@host`): a host follows, not a mail domain. */
function inUrlAuthority(text: string, at: number): boolean {
  const slash = text.lastIndexOf('://', at);
  if (slash < 0 || at - slash > 300) return false;
  for (let i = slash + 3; i < at; i++) if (URL_AUTHORITY_END.has(text.charCodeAt(i))) return false;
  return true;
}
/** Characters that end a URL's authority: whitespace, / ? # and quotes/brackets. */
const URL_AUTHORITY_END = new Set([...' \t\n\r\f\v/?#"\'`<>\\'].map((c) => c.charCodeAt(0)));

/** text[start, end) is a local part: not empty, not ending with a dot, no `..` (leading dots are trimmed before). */
function validLocal(text: string, start: number, end: number): boolean {
  if (start >= end || text.charCodeAt(end - 1) === 46) return false;
  for (let i = start + 1; i < end; i++) if (text.charCodeAt(i) === 46 && text.charCodeAt(i - 1) === 46) return false;
  return true;
}

/**
 * text[start, end), made of domain characters only, is a domain of at least two labels (each
 * 1-63 letters, digits, inner dashes) ending in a plausible TLD. Indexes instead of slices: this
 * runs for every `@`.
 */
function validDomain(text: string, start: number, end: number): boolean {
  if (end - start > 253) return false;
  let label = start;
  let labels = 0;
  for (let i = start; i <= end; i++) {
    if (i < end && text.charCodeAt(i) !== 46) continue;
    const n = i - label;
    if (n < 1 || n > 63 || text.charCodeAt(label) === 45 || text.charCodeAt(i - 1) === 45) return false;
    labels++;
    if (i < end) label = i + 1;
  }
  return labels >= 2 && plausibleTld(text, label, end);
}

/** text[start, end), a valid label, is `[A-Za-z]{2,63}` but not a file extension, or `xn--[A-Za-z0-9-]{1,59}` (IDN). */
function plausibleTld(text: string, start: number, end: number): boolean {
  const n = end - start;
  if (n >= 5 && text.startsWith('xn--', start)) return true;
  if (n < 2) return false;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i) | 0x20; // lower case, for letters
    if (c < 97 || c > 122) return false;
  }
  return n > 4 || !NOT_TLDS.has(lettersKey(text, start, end));
}

const email: Detector = {
  name: 'email',
  minLength: 6, // a@b.cd
  quick: /@/,
  quickUtf8: asciiNeedles('@'),
  find(text) {
    const spans: Span[] = [];
    let at = text.indexOf('@');
    let floor = 0; // start of the text not yet covered by an accepted email
    while (at !== -1) {
      let s = at;
      while (s > floor && isLocalCode(text.charCodeAt(s - 1))) {
        s--;
        if (at - s > 64) break; // longer than a local part may be
      }
      const tooLong = at - s > 64;
      const fromStart = s === 0; // the text up to `@` is all local-part characters: no `://` before it
      let e = at + 1;
      while (e < text.length && e - at <= 256 && isDomainCode(text.charCodeAt(e))) e++;
      while (e > at + 1 && (text.charCodeAt(e - 1) === 46 || text.charCodeAt(e - 1) === 45)) e--; // . -
      while (s < at && text.charCodeAt(s) === 46) s++;
      const ok = !tooLong && validLocal(text, s, at) && validDomain(text, at + 1, e) && (fromStart || !inUrlAuthority(text, at));
      if (ok) {
        spans.push([s, e]);
        floor = e;
      }
      at = text.indexOf('@', Math.max(at + 1, ok ? e : 0));
    }
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// phone

// International: '+', country code, then digits with single separators (space, dot, dash,
// parentheses). Validated by hand (validIntl).
const PHONE_INTL_RE = /(?<![\w+])\+[1-9][\d ().-]{5,24}\d/g;
// The same with the 00 international call prefix instead of '+' (0049 30 1234567): separators
// required, so zero-padded numbers do not match.
const PHONE_INTL00_RE = /(?<![\w+().,:/-]|\d[ .-])00[1-9]\d{0,2}[ (-][\d ().-]{4,24}\d/g;
// North American Numbering Plan: (NPA) NXX-XXXX with separators; NPA and NXX start with 2-9.
const PHONE_NANP_RE = /(?<![\w+(.,/-]|\d[ .-])(?:1[ .-]?)?(?:\([2-9]\d\d\)[ .-]?|[2-9]\d\d[ .-])[2-9]\d\d[ .-]\d{4}(?![\w]|[.,:/-]?\d)/g;
// National numbers with a trunk 0 (most of Europe, UK, Australia...): groups separated by
// spaces or dashes, 9-12 digits in all.
const PHONE_TRUNK_RE = /(?<![\w+().,:/-]|\d[ .-])(?:\(0[1-9]\d{0,3}\)|0[1-9]\d{0,3})(?:[ -]\d{2,8}){1,5}(?![\w]|[.,:/-]?\d)/g;
// French dotted form: 06.12.34.56.78
const PHONE_DOTTED_RE = /(?<![\w+.])0[1-9](?:\.\d\d){4}(?![\w]|\.?\d)/g;

const PHONE_SEP_OK = new Set([' ', '-', '.', '(', ')', ' (', ') ', ')-', '-(', ').', '.(']);
const DATE_PREFIX = /^(?:\d{1,2}[ ./-]\d{1,2}[ ./-]\d{4}|\d{4}[ ./-]\d{1,2}[ ./-]\d{1,2})(?!\d)/;

function countDigits(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) if (isDigitCode(s.charCodeAt(i))) n++;
  return n;
}

/** Length of the valid prefix of an international candidate ('+' included), 0 if none. */
function validIntl(c: string): number {
  // Walk digit runs and separator runs; cut at the first separator run that is not allowed.
  let i = 1;
  let end = 1;
  let depth = 0;
  let closedParens = true;
  const seps = new Set<string>();
  let dots = 0;
  while (i < c.length) {
    let j = i;
    while (j < c.length && isDigitCode(c.charCodeAt(j))) j++;
    if (j === i) break;
    end = j;
    closedParens = depth === 0;
    if (j >= c.length) break;
    let k = j;
    while (k < c.length && !isDigitCode(c.charCodeAt(k))) k++;
    const sep = c.slice(j, k);
    if (!PHONE_SEP_OK.has(sep)) break;
    let bad = false;
    for (const ch of sep) {
      if (ch === '(') bad ||= depth++ !== 0;
      else if (ch === ')') bad ||= depth-- !== 1;
      else seps.add(ch);
      if (ch === '.') dots++;
    }
    if (bad) break;
    i = k;
  }
  let cand = c.slice(0, end);
  if (!closedParens) {
    const open = cand.lastIndexOf('(');
    cand = cand.slice(0, open).replace(/[ .-]+$/, '');
  }
  const digits = countDigits(cand);
  if (digits < 8 || digits > 15) return 0;
  if (seps.size === 1 && seps.has('.') && dots === 1) return 0; // +1234567.89: a signed decimal
  return cand.length;
}

const phone: Detector = {
  name: 'phone',
  quick: /\+\d|\d[ .)-]/,
  find(text) {
    const spans: Span[] = [];
    each(PHONE_INTL_RE, text, (m) => {
      const len = validIntl(m[0]);
      if (len === 0) return;
      const end = m.index + len;
      // Not followed by more digits or a decimal part.
      if (/^(?:[.,]?\d|\w)/.test(text.slice(end, end + 2))) return;
      spans.push([m.index, end]);
    });
    each(PHONE_INTL00_RE, text, (m) => {
      const len = validIntl(m[0].slice(1)); // '0' + rest, read like '+' + rest
      if (len === 0) return;
      const end = m.index + 1 + len;
      if (/^(?:[.,]?\d|\w)/.test(text.slice(end, end + 2))) return;
      spans.push([m.index, end]);
    });
    each(PHONE_NANP_RE, text, (m) => spans.push([m.index, m.index + m[0].length]));
    each(PHONE_TRUNK_RE, text, (m) => {
      const raw = m[0];
      const digits = countDigits(raw);
      if (digits < 9 || digits > 12) return;
      const body = raw.replace(/^\(0\d{1,4}\)/, '0');
      const separators = new Set(body.replace(/[\d]/g, ''));
      if (separators.size > 1) return; // mixed separators: "07-10-2024 12"
      if (DATE_PREFIX.test(raw)) return;
      spans.push([m.index, m.index + raw.length]);
    });
    each(PHONE_DOTTED_RE, text, (m) => spans.push([m.index, m.index + m[0].length]));
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// ssn

const SSN_DASH_RE = /(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w]|-\d)/g;
const SSN_BARE_RE = /(?<![\w-])(\d{3})( ?)(\d{2})\2(\d{4})(?![\w]|[ -]\d)/g;
const SSN_CONTEXT = /(?:(?<![a-z])ssn|(?<![a-z])ss#|social[\s_-]*security(?:[\s_-]*(?:number|no\.?|#))?)[^\d\n]{0,20}$/i;

/** US SSN validity: area not 000, 666 or 900-999; group not 00; serial not 0000. */
export function ssnValid(area: string, group: string, serial: string): boolean {
  const a = Number(area);
  if (a === 0 || a === 666 || a >= 900) return false;
  return group !== '00' && serial !== '0000';
}

const ssn: Detector = {
  name: 'ssn',
  quick: /\d{3}-\d\d-\d{4}|[Ss][Ss][Nn#]|[Ss]ocial|SOCIAL/,
  find(text) {
    const spans: Span[] = [];
    each(SSN_DASH_RE, text, (m) => {
      if (ssnValid(m[1], m[2], m[3])) spans.push([m.index, m.index + m[0].length]);
    });
    // Without dashes (spaces or nothing): only right after a context word (SSN, social security).
    each(SSN_BARE_RE, text, (m) => {
      if (!ssnValid(m[1], m[3], m[4])) return;
      if (!SSN_CONTEXT.test(text.slice(Math.max(0, m.index - 48), m.index))) return;
      spans.push([m.index, m.index + m[0].length]);
    });
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// iban

/** IBAN length by country (SWIFT IBAN registry). */
export const IBAN_LENGTHS: Readonly<Record<string, number>> = {
  AD: 24, AE: 23, AL: 28, AT: 20, AZ: 28, BA: 20, BE: 16, BG: 22, BH: 22, BI: 27, BR: 29, BY: 28,
  CH: 21, CR: 22, CY: 28, CZ: 24, DE: 22, DJ: 27, DK: 18, DO: 28, EE: 20, EG: 29, ES: 24, FI: 18,
  FK: 18, FO: 18, FR: 27, GB: 22, GE: 22, GI: 23, GL: 18, GR: 27, GT: 28, HR: 21, HU: 28, IE: 22,
  IL: 23, IQ: 23, IS: 26, IT: 27, JO: 30, KW: 30, KZ: 20, LB: 28, LC: 32, LI: 21, LT: 20, LU: 20,
  LV: 21, LY: 25, MC: 27, MD: 24, ME: 22, MK: 19, MN: 20, MR: 27, MT: 31, MU: 30, NI: 28, NL: 18,
  NO: 15, OM: 23, PK: 24, PL: 28, PS: 29, PT: 25, QA: 29, RO: 24, RS: 22, RU: 33, SA: 24, SC: 31,
  SD: 18, SE: 24, SI: 19, SK: 24, SM: 27, SO: 23, ST: 25, SV: 28, TL: 23, TN: 24, TR: 26, UA: 29,
  VA: 22, VG: 24, XK: 20,
};

/** ISO 13616 check: move the first 4 characters to the end, letters to numbers, mod 97 == 1. */
export function ibanValid(iban: string): boolean {
  const s = iban.toUpperCase();
  if (IBAN_LENGTHS[s.slice(0, 2)] !== s.length || !/^[A-Z]{2}\d{2}[A-Z0-9]+$/.test(s)) return false;
  const r = s.slice(4) + s.slice(0, 4);
  let rem = 0;
  for (let i = 0; i < r.length; i++) {
    const c = r.charCodeAt(i);
    if (c <= 57) rem = (rem * 10 + (c - 48)) % 97;
    else rem = (rem * 100 + (c - 55)) % 97;
  }
  return rem === 1;
}

const IBAN_START_RE = /(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}/g;

const iban: Detector = {
  name: 'iban',
  quick: /[A-Za-z]{2}\d\d/,
  find(text) {
    const spans: Span[] = [];
    IBAN_START_RE.lastIndex = 0;
    let m: RegExpExecArray | null;
    while ((m = IBAN_START_RE.exec(text)) !== null) {
      const want = IBAN_LENGTHS[m[0].slice(0, 2).toUpperCase()];
      if (want === undefined) continue;
      // Collect characters; a single space is allowed after every 4 (print form).
      let chars = m[0];
      let p = m.index + 4;
      while (chars.length < want && p < text.length) {
        const c = text.charCodeAt(p);
        if (isAlnumCode(c)) {
          chars += text[p];
          p++;
        } else if (c === 32 && chars.length % 4 === 0 && p + 1 < text.length && isAlnumCode(text.charCodeAt(p + 1))) {
          p++;
        } else break;
      }
      if (chars.length !== want || (p < text.length && isAlnumCode(text.charCodeAt(p)))) continue;
      if (!ibanValid(chars)) continue;
      spans.push([m.index, p]);
      IBAN_START_RE.lastIndex = p;
    }
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// ip

const OCTET = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
// Four octets 0-255 without leading zeros, not part of a longer dotted run (1.2.3.4.5).
const IPV4_RE = new RegExp(`(?<![\\w.]|\\d\\.)(?:${OCTET}\\.){3}${OCTET}(?![\\w]|\\.\\d)`, 'g');
/** Four-part version and section numbers look like addresses: skip after a version/section word. */
const VERSION_CONTEXT = /(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\bfirmware|\bchapter|\bsection|\bsec\.|§|\bclause|\bstep|\boid)\s*[:=#]?\s*$/i;
// IPv6 candidates: a run of hex digits, colons and dots with at least two colons; net.isIPv6
// decides.
const IPV6_RE = /(?<![\w:.])[0-9A-Fa-f:.]{2,45}(?![\w:.])/g;

const ip: Detector = {
  name: 'ip',
  quick: /\d\.\d|[0-9A-Fa-f]?::?[0-9A-Fa-f]/,
  find(text) {
    const spans: Span[] = [];
    each(IPV4_RE, text, (m) => {
      if (VERSION_CONTEXT.test(text.slice(Math.max(0, m.index - 16), m.index))) return;
      spans.push([m.index, m.index + m[0].length]);
    });
    if (text.includes(':')) {
      each(IPV6_RE, text, (m) => {
        let c = m[0];
        if (c.endsWith('.')) c = c.replace(/\.+$/, ''); // sentence end
        if (c.endsWith(':') && !c.endsWith('::')) c = c.slice(0, -1); // "address fe80::1:"? keep "::"
        let colons = 0;
        for (let i = 0; i < c.length; i++) if (c.charCodeAt(i) === 58) colons++;
        // A digit is required: hex words around `::` (cafe::babe, Feed::) are code, not addresses.
        if (colons < 2 || !/\d/.test(c) || !isIPv6(c)) return;
        spans.push([m.index, m.index + c.length]);
      });
    }
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// aws_key

const AWS_ACCESS_RE = /(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])/g;
// Secret access keys are 40 base64 characters with no marker of their own: a candidate counts
// only when an AWS context word (or an access key id) precedes it within 120 characters.
const AWS_SECRET_RE = /(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])/g;
const AWS_CONTEXT = /aws|secret[\s_-]*access[\s_-]*key|(?:AKIA|ASIA)[A-Z0-9]{16}/i;

const awsKey: Detector = {
  name: 'aws_key',
  quick: /A[KS]IA|[Aa][Ww][Ss]|[Ss]ecret.?[Aa]ccess|SECRET.?ACCESS/,
  find(text) {
    const spans: Span[] = [];
    each(AWS_ACCESS_RE, text, (m) => spans.push([m.index, m.index + 20]));
    each(AWS_SECRET_RE, text, (m) => {
      const k = m[0];
      // Random base64: has upper case, lower case and a digit (rules out hex digests and words).
      if (!/[a-z]/.test(k) || !/[A-Z]/.test(k) || !/\d/.test(k)) return;
      if (!AWS_CONTEXT.test(text.slice(Math.max(0, m.index - 120), m.index))) return;
      spans.push([m.index, m.index + 40]);
    });
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// github_token, gitlab_token, slack_token

const GITHUB_RE = /(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{30,255})(?![A-Za-z0-9_])/g;
const GITLAB_RE = /(?<![A-Za-z0-9_-])gl(?:pat|dt|rt|ptt|ft|cbt|oas|imt|soat|agent|ffct)-[A-Za-z0-9_-]{20,255}(?:\.[A-Za-z0-9_-]{2,64}){0,4}(?![A-Za-z0-9_-])/g;
const SLACK_RE = /(?<![A-Za-z0-9_-])(?:xox[abpors]-|xapp-)[A-Za-z0-9-]{10,250}(?![A-Za-z0-9_-])/g;

function prefixed(
  name: string, quick: RegExp, re: RegExp, valid?: (token: string) => boolean,
  quickUtf8?: QuickUtf8,
): Detector {
  return {
    name,
    quick,
    quickUtf8,
    find(text) {
      const spans: Span[] = [];
      each(re, text, (m) => {
        if (!valid || valid(m[0])) spans.push([m.index, m.index + m[0].length]);
      });
      return spans;
    },
  };
}

const githubToken = prefixed('github_token', /gh[pousr]_|github_pat_/, GITHUB_RE, undefined,
  asciiNeedles('ghp_', 'gho_', 'ghu_', 'ghs_', 'ghr_', 'github_pat_'));
const gitlabToken = prefixed('gitlab_token', /gl[a-z]{1,5}-/, GITLAB_RE, (t) => /\d/.test(t) || /[A-Z]/.test(t));
// Slack tokens carry numeric team/user ids: require a digit (rules out "xoxo-hugs-and-kisses").
const slackToken = prefixed('slack_token', /xox[abpors]-|xapp-/, SLACK_RE, (t) => /\d/.test(t.slice(5)),
  asciiNeedles('xoxa-', 'xoxb-', 'xoxp-', 'xoxo-', 'xoxr-', 'xoxs-', 'xapp-'));

// ---------------------------------------------------------------------------------------------
// jwt

// JWS: header.payload.signature (3 segments, signature may be empty); JWE: 5 segments.
const JWT_RE = /(?<![A-Za-z0-9_-])ey[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){2,4}/g;

function jwtHeaderValid(segment: string): boolean {
  try {
    const header: unknown = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
    return typeof header === 'object' && header !== null && !Array.isArray(header) &&
      typeof (header as { alg?: unknown }).alg === 'string';
  } catch {
    return false;
  }
}

const jwt: Detector = {
  name: 'jwt',
  quick: /ey[A-Za-z0-9_-]/,
  find(text) {
    const spans: Span[] = [];
    each(JWT_RE, text, (m) => {
      const parts = m[0].split('.');
      if (parts.length === 4) parts.pop(); // a JWS followed by ".something"
      if (parts.length === 3 && parts[1].length < 2) return; // JWS payload
      if (!jwtHeaderValid(parts[0])) return;
      spans.push([m.index, m.index + parts.join('.').length]);
    });
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------
// private_key

// A PEM (or PGP) private key block up to its END line. A block without an END line (cut off,
// or a placeholder such as `-----BEGIN PRIVATE KEY-----...`) is masked over what follows as long
// as it looks like key material: base64, whitespace, `\n` escapes and `Header: value` lines.
const PEM_RE = /-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----(?:[\s\S]*?-----END \1-----|(?:[A-Za-z0-9+/=\s.,:-]|\\[nr])*)/g;

const privateKey = prefixed('private_key', /PRIVATE KEY/, PEM_RE, undefined, asciiNeedles('PRIVATE KEY'));

// ---------------------------------------------------------------------------------------------
// url_password

const SCHEME_CHAR = /[A-Za-z0-9+.-]/;
const AUTHORITY_END = /[\s/?#"'`<>\\]/;

const urlPassword: Detector = {
  name: 'url_password',
  quick: /:\/\//,
  quickUtf8: asciiNeedles('://'),
  find(text) {
    const spans: Span[] = [];
    let i = text.indexOf('://');
    while (i !== -1) {
      let s = i;
      while (s > 0 && i - s < 64 && SCHEME_CHAR.test(text[s - 1])) s--;
      while (s < i && !/[A-Za-z]/.test(text[s])) s++;
      if (s < i) {
        const start = i + 3;
        let end = start;
        while (end < text.length && !AUTHORITY_END.test(text[end])) end++;
        let at = -1; // the last @ of the authority (a raw @ in the password comes before it)
        for (let k = start; k < end; k++) if (text.charCodeAt(k) === 64) at = k;
        if (at >= start) {
          const colon = text.indexOf(':', start);
          if (colon >= 0 && colon < at - 1) spans.push([colon + 1, at]);
        }
        i = text.indexOf('://', Math.max(end, i + 3));
      } else {
        i = text.indexOf('://', i + 3);
      }
    }
    return spans;
  },
};

// ---------------------------------------------------------------------------------------------

/** The built-in detectors, by the names policies use (`detect:` in mask rules). */
export const DETECTORS: Readonly<Record<DetectorName, Detector>> = {
  credit_card: creditCard,
  email,
  phone,
  ssn,
  iban,
  ip,
  aws_key: awsKey,
  github_token: githubToken,
  gitlab_token: gitlabToken,
  slack_token: slackToken,
  jwt,
  private_key: privateKey,
  url_password: urlPassword,
};
