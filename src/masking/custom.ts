// Custom detectors declared in policy files (`detectors:`): a regex, optionally with a named
// validator, or a list of words. Regexes are compiled with re2js (RE2 semantics: linear-time
// matching, no look-around, no backreferences), so a policy cannot bring catastrophic
// backtracking into the data path. Documented in docs/masking.md#custom-detectors.
//
// `find` first asks re2js's boolean test, which runs on its lazy DFA and is several times faster
// than a Matcher: most values contain nothing to mask.

import { RE2JS } from 're2js';
import type { CustomDetectorDecl, ValidatorName } from '../policy/schema.ts';
import { cardBrand, ibanValid, luhnValid, ssnValid, type Detector, type Span } from './detectors.ts';

const digitsOf = (s: string) => s.replace(/\D/g, '');

/** Validators over the matched text, by the names policies use. */
export const VALIDATORS: Readonly<Record<ValidatorName, (match: string) => boolean>> = {
  luhn: (m) => {
    const d = digitsOf(m);
    return d.length >= 2 && luhnValid(d);
  },
  credit_card: (m) => {
    const d = digitsOf(m);
    return cardBrand(d) !== undefined && luhnValid(d);
  },
  iban: (m) => ibanValid(m.replace(/\s/g, '')),
  ssn: (m) => {
    const d = digitsOf(m);
    return d.length === 9 && ssnValid(d.slice(0, 3), d.slice(3, 5), d.slice(5));
  },
};

/** Word characters for word-list boundaries: letters, combining marks, digits, `_` (any script). */
const WORD_CHAR = '\\p{L}\\p{M}\\p{N}_';

/** Texts that give an empty-width assertion (^ $ \b \B) every context it can test. */
const EMPTY_PROBES = ['', 'a', ' ', '\n', 'a a\n\n_0 '];

/** A detector, or what is wrong with the declaration's regex. */
export type CompiledDetector = { detector: Detector } | { error: string };

/** Builds the detector of a declaration (already checked by the schema). */
export function compileDetector(decl: CustomDetectorDecl): CompiledDetector {
  if (decl.words) return { detector: wordsDetector(decl.name, decl.words, decl.case_sensitive ?? false) };
  const source = decl.regex ?? '';
  let re: RE2JS;
  try {
    re = RE2JS.compile(source, decl.case_sensitive === false ? RE2JS.CASE_INSENSITIVE : 0);
  } catch (err) {
    return { error: regexError(source, err as Error) };
  }
  // The engine ignores empty spans, but such a regex is a mistake (`\d*` for `\d+`).
  if (matchesEmpty(re)) return { error: `regex ${JSON.stringify(source)} can match the empty string` };
  return { detector: regexDetector(decl.name, re, decl.validator && VALIDATORS[decl.validator]) };
}

function regexError(source: string, err: Error): string {
  const reason = err.message.replace(/^error parsing regexp: /, '');
  // RE2's own words for these ("invalid named capture", "invalid escape") do not say why.
  const unsupported = /\(\?<?[=!]/.test(source) ? 'look-ahead and look-behind are'
    : /\\[1-9]|\\k</.test(source) ? 'backreferences are' : undefined;
  return unsupported
    ? `invalid regex ${JSON.stringify(source)}: ${unsupported} not supported (RE2 syntax; ${reason})`
    : `invalid regex ${JSON.stringify(source)}: ${reason}`;
}

function matchesEmpty(re: RE2JS): boolean {
  return EMPTY_PROBES.some((probe) => {
    const m = re.matcher(probe);
    while (m.find()) if (m.start() === m.end()) return true;
    return false;
  });
}

/** Every match (not overlapping) is a span; a match its validator rejects is skipped. */
function regexDetector(name: string, re: RE2JS, valid?: (match: string) => boolean): Detector {
  return {
    name,
    find(text) {
      const spans: Span[] = [];
      if (!re.test(text)) return spans;
      const m = re.matcher(text);
      while (m.find()) {
        const start = m.start();
        const end = m.end();
        if (end > start && (!valid || valid(text.slice(start, end)))) spans.push([start, end]);
      }
      return spans;
    },
  };
}

/**
 * One alternation of the words between non-word characters (or the ends of the text). Longer
 * words come first, so that "new york" wins over "new" at the same place.
 */
function wordsDetector(name: string, words: string[], caseSensitive: boolean): Detector {
  const alternation = [...new Set(words)].sort((a, b) => b.length - a.length).map((w) => RE2JS.quote(w)).join('|');
  const re = RE2JS.compile(
    `(?:^|[^${WORD_CHAR}])(${alternation})(?:[^${WORD_CHAR}]|$)`,
    caseSensitive ? 0 : RE2JS.CASE_INSENSITIVE,
  );
  return {
    name,
    find(text) {
      const spans: Span[] = [];
      if (!re.test(text)) return spans;
      const m = re.matcher(text);
      // Resume right after the word: the separator it consumed may start the next match.
      let from = 0;
      while (m.find(from)) {
        spans.push([m.start(1), m.end(1)]);
        from = m.end(1);
      }
      return spans;
    },
  };
}
