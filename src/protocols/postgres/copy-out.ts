// COPY ... TO STDOUT output, row by row, so that it can be masked like a query's rows: the format a
// COPY statement asks for, one CopyData row decoded into values and values encoded back exactly as
// PostgreSQL writes them, and the SELECT whose RowDescription describes the COPY's columns.
// Pure: no I/O. Parsing (sameQuery, describeCopyQuery) needs the libpg-query module loaded
// (initClassifier). See https://www.postgresql.org/docs/current/sql-copy.html
//
// Everything here fails closed: an option, a row or a statement shape that is not understood is an
// error, never a guess, because a misread row could let a sensitive value through unmasked.

import { Buffer } from 'node:buffer';
import { isDeepStrictEqual } from 'node:util';
import { parseStatements, withoutPositions } from './syntax.ts';

/** How a COPY TO writes its rows (text or CSV; binary output cannot be masked). */
export interface CopyFormat {
  kind: 'text' | 'csv';
  /** One ASCII character. */
  delimiter: string;
  /** The string written for SQL NULL. */
  null: string;
  /** CSV only (one ASCII character); '"' for text, where it has no meaning. */
  quote: string;
  /** CSV only (one ASCII character); '"' for text, where it has no meaning. */
  escape: string;
  /** A header row (column names) is sent first, as its own CopyData message. */
  header: boolean;
  /** CSV FORCE_QUOTE: every column, or the named ones. */
  forceQuote: '*' | string[] | undefined;
}

// The JSON syntax tree from libpg-query: nodes are { TypeName: { ...fields } }.
type Ast = Record<string, any>;
type Result<T> = T | { error: string };

const LF = 0x0a;
const CR = 0x0d;
const BACKSLASH = 0x5c;

// ---------------------------------------------------------------------------------------------
// The format a COPY statement asks for

// Options that only COPY FROM uses; PostgreSQL rejects them with COPY TO, so they change no output.
const FROM_ONLY_OPTIONS = new Set(['force_not_null', 'force_null', 'freeze', 'on_error', 'log_verbosity', 'default', 'reject_limit']);
const OUTPUT_OPTIONS = new Set(['format', 'delimiter', 'null', 'quote', 'escape', 'header', 'force_quote', 'encoding']);

/**
 * The output format of a COPY statement, from its options (the CopyStmt node, with or without its
 * `{ CopyStmt: ... }` wrapper). The legacy syntax (`WITH CSV HEADER`, `BINARY`) parses to the same
 * options. Repeats PostgreSQL's own checks (ProcessCopyOptions) so that an accepted format always
 * has the single-character delimiter, quote and escape the row codec relies on.
 */
export function copyOutFormat(copyStmt: any): CopyFormat | { error: string } {
  const options = optionMap(unwrapCopyStmt(copyStmt)?.options);
  if ('error' in options) return options;
  const o = options.map;
  const kind = formatKind(o.get('format'));
  if (typeof kind !== 'string') return kind;
  const csv = kind === 'csv';
  if (!csv) {
    for (const name of ['quote', 'escape', 'force_quote']) {
      if (o.has(name)) return { error: `COPY ${name.toUpperCase()} requires CSV mode` };
    }
  }
  const encoding = checkEncoding(o.get('encoding'));
  if (encoding) return encoding;
  const header = headerChoice(o.get('header'));
  if (typeof header !== 'boolean') return header;
  const delimiter = stringOption(o.get('delimiter'), csv ? ',' : '\t');
  const nul = stringOption(o.get('null'), csv ? '' : '\\N');
  const quote = csv ? stringOption(o.get('quote'), '"') : '"';
  if (typeof delimiter !== 'string') return delimiter;
  if (typeof nul !== 'string') return nul;
  if (typeof quote !== 'string') return quote;
  const escape = csv ? stringOption(o.get('escape'), quote) : '"';
  if (typeof escape !== 'string') return escape;
  const forceQuote = forceQuoteOption(o.get('force_quote'));
  if (forceQuote && 'error' in forceQuote) return forceQuote;
  const f: CopyFormat = { kind, delimiter, null: nul, quote, escape, header, forceQuote: forceQuote?.value };
  return checkFormat(f) ?? f;
}

function unwrapCopyStmt(node: any): Ast | undefined {
  if (!node || typeof node !== 'object') return undefined;
  return (node.CopyStmt ?? node) as Ast;
}

function optionMap(options: unknown): { map: Map<string, Ast> } | { error: string } {
  const map = new Map<string, Ast>();
  for (const item of Array.isArray(options) ? options : []) {
    const d = item?.DefElem as Ast | undefined;
    if (!d || typeof d.defname !== 'string') return { error: 'unrecognized COPY option' };
    // Option names are matched exactly, as PostgreSQL does ("FORMAT" in quotes is not "format").
    if (!OUTPUT_OPTIONS.has(d.defname) && !FROM_ONLY_OPTIONS.has(d.defname)) {
      return { error: `COPY option "${d.defname}" is not supported` };
    }
    // PostgreSQL refuses repeated options ("conflicting or redundant options").
    if (map.has(d.defname)) return { error: `COPY option "${d.defname}" is given twice` };
    map.set(d.defname, d);
  }
  return { map };
}

/** PostgreSQL's defGetString: the option's argument as text; undefined when it has none or is not scalar. */
function defString(d: Ast): string | undefined {
  const a = d.arg as Ast | undefined;
  if (!a) return undefined;
  if (a.String) return String(a.String.sval ?? '');
  if (a.Integer) return String(a.Integer.ival ?? 0);
  if (a.Float) return String(a.Float.fval ?? '');
  if (a.Boolean) return a.Boolean.boolval === true ? 'true' : 'false';
  return undefined;
}

function stringOption(d: Ast | undefined, fallback: string): Result<string> {
  if (!d) return fallback;
  const s = defString(d);
  return s === undefined ? { error: `COPY ${d.defname.toUpperCase()} requires a string` } : s;
}

function formatKind(d: Ast | undefined): Result<'text' | 'csv'> {
  if (!d) return 'text';
  const s = defString(d);
  if (s === 'binary') return { error: 'binary COPY output cannot be masked: use FORMAT text or csv' };
  // Compared case-sensitively, like PostgreSQL (FORMAT 'CSV' is an error there).
  if (s === 'text' || s === 'csv') return s;
  return { error: `COPY format "${s ?? ''}" cannot be masked: use FORMAT text or csv` };
}

/** PostgreSQL's defGetCopyHeaderChoice for COPY TO: a Boolean (HEADER MATCH is for COPY FROM). */
function headerChoice(d: Ast | undefined): Result<boolean> {
  if (!d) return false;
  if (!d.arg) return true;
  if (d.arg.Integer) {
    const v = d.arg.Integer.ival ?? 0;
    if (v === 0 || v === 1) return v === 1;
  } else {
    const s = defString(d)?.toLowerCase();
    if (s === 'true' || s === 'on') return true;
    if (s === 'false' || s === 'off') return false;
  }
  return { error: 'COPY HEADER requires a Boolean value' };
}

function forceQuoteOption(d: Ast | undefined): { value: '*' | string[] } | { error: string } | undefined {
  if (!d) return undefined;
  if (d.arg?.A_Star) return { value: '*' };
  const items = d.arg?.List?.items;
  if (!Array.isArray(items)) return { error: 'COPY FORCE_QUOTE requires a column list or *' };
  const names: string[] = [];
  for (const item of items) {
    if (typeof item?.String?.sval !== 'string') return { error: 'COPY FORCE_QUOTE requires a column list or *' };
    names.push(item.String.sval);
  }
  return { value: names };
}

// Rows are decoded as UTF-8; other encodings could hide a delimiter inside a multibyte character.
function checkEncoding(d: Ast | undefined): { error: string } | undefined {
  if (!d) return undefined;
  const name = defString(d);
  // PostgreSQL's clean_encoding_name: case and punctuation are ignored ('UTF-8' is UTF8).
  const clean = name?.toLowerCase().replace(/[^a-z0-9]/g, '');
  if (clean === 'utf8' || clean === 'unicode') return undefined;
  return { error: `COPY output in encoding "${name ?? ''}" cannot be masked: use UTF8` };
}

/** The checks of PostgreSQL's ProcessCopyOptions that concern COPY TO. */
function checkFormat(f: CopyFormat): { error: string } | undefined {
  if (!isOneAscii(f.delimiter)) return { error: 'COPY delimiter must be a single one-byte character' };
  if (f.delimiter === '\r' || f.delimiter === '\n') return { error: 'COPY delimiter cannot be newline or carriage return' };
  if (/[\r\n]/.test(f.null)) return { error: 'COPY null representation cannot use newline or carriage return' };
  // Text format: a backslash, dot, lower-case letter or digit would clash with the escapes.
  if (f.kind === 'text' && '\\.abcdefghijklmnopqrstuvwxyz0123456789'.includes(f.delimiter)) {
    return { error: `COPY delimiter cannot be "${f.delimiter}"` };
  }
  if (f.null.includes(f.delimiter)) return { error: 'COPY delimiter character must not appear in the NULL specification' };
  if (f.kind === 'csv') {
    if (!isOneAscii(f.quote)) return { error: 'COPY quote must be a single one-byte character' };
    if (!isOneAscii(f.escape)) return { error: 'COPY escape must be a single one-byte character' };
    if (f.quote === f.delimiter) return { error: 'COPY delimiter and quote must be different' };
    if (f.null.includes(f.quote)) return { error: 'CSV quote character must not appear in the NULL specification' };
  }
  return undefined;
}

function isOneAscii(s: string): boolean {
  return s.length === 1 && s.charCodeAt(0) < 0x80;
}

// ---------------------------------------------------------------------------------------------
// Decoding one row

// ignoreBOM keeps a leading U+FEFF as data (the default would silently drop it).
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function utf8(bytes: Uint8Array): string {
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    throw new Error('COPY row is not valid UTF-8');
  }
}

/**
 * The values of one COPY TO row: one CopyData payload, which PostgreSQL sends per row (and per
 * header line), including its trailing newline. Throws on anything PostgreSQL would not write.
 * A row of one empty text value and a row of no columns look the same ("\n"): this returns [''].
 */
export function decodeCopyRow(line: Buffer, f: CopyFormat): (string | null)[] {
  if (line.length === 0 || line[line.length - 1] !== LF) throw new Error('COPY row does not end with a newline');
  const body = line.subarray(0, line.length - 1);
  return f.kind === 'text' ? decodeTextRow(body, f) : decodeCsvRow(utf8(body), f);
}

function decodeTextRow(body: Buffer, f: CopyFormat): (string | null)[] {
  const delim = asciiCode(f.delimiter, 'delimiter');
  const nullRaw = Buffer.from(f.null, 'utf8');
  const fields: (string | null)[] = [];
  let start = 0;
  for (let i = 0; i <= body.length; i++) {
    if (i === body.length || body[i] === delim) {
      fields.push(decodeTextField(body.subarray(start, i), nullRaw));
      start = i + 1;
    } else if (body[i] === BACKSLASH) {
      // The escaped byte is data, even when it is the delimiter.
      if (i + 1 === body.length) throw new Error('COPY text row ends with a lone backslash');
      i++;
    }
    if (i < body.length && (body[i] === LF || body[i] === CR)) throw new Error('COPY text row holds a raw newline');
  }
  return fields;
}

const TEXT_UNESCAPES: Record<number, number> = { 0x62: 0x08, 0x66: 0x0c, 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09, 0x76: 0x0b };

// PostgreSQL's CopyReadAttributesText: the null marker is matched on the raw field, before
// unescaping, so '\N' is NULL while '\\N' is the two characters \N. Escapes make bytes (octal, hex),
// hence the work on bytes and one UTF-8 check at the end.
function decodeTextField(raw: Buffer, nullRaw: Buffer): string | null {
  if (raw.equals(nullRaw)) return null;
  if (!raw.includes(BACKSLASH)) return utf8(raw);
  const out = Buffer.allocUnsafe(raw.length);
  let n = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (c !== BACKSLASH) {
      out[n++] = c;
      continue;
    }
    const e = raw[++i];
    if (e === undefined) throw new Error('COPY text field ends with a lone backslash');
    if (isOctal(e)) {
      let v = e - 0x30;
      for (let k = 0; k < 2 && isOctal(raw[i + 1]); k++) v = v * 8 + raw[++i] - 0x30;
      out[n++] = v & 0xff;
    } else if (e === 0x78 && hexValue(raw[i + 1]) >= 0) {
      let v = hexValue(raw[++i]);
      if (hexValue(raw[i + 1]) >= 0) v = v * 16 + hexValue(raw[++i]);
      out[n++] = v;
    } else {
      // \b \f \n \r \t \v, or any other character standing for itself.
      out[n++] = TEXT_UNESCAPES[e] ?? e;
    }
  }
  return utf8(out.subarray(0, n));
}

function isOctal(c: number | undefined): boolean {
  return c !== undefined && c >= 0x30 && c <= 0x37;
}

function hexValue(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

// PostgreSQL's CopyReadAttributesCSV, limited to what CopyAttributeOutCSV writes: a field is quoted
// as a whole or not at all. Only an unquoted field can be NULL.
function decodeCsvRow(s: string, f: CopyFormat): (string | null)[] {
  const { delimiter: delim, quote, escape } = f;
  asciiCode(delim, 'delimiter');
  asciiCode(quote, 'quote');
  asciiCode(escape, 'escape');
  const fields: (string | null)[] = [];
  let i = 0;
  for (;;) {
    if (s[i] === quote) {
      const [value, end] = readQuotedCsv(s, i + 1, quote, escape);
      if (end < s.length && s[end] !== delim) throw new Error('COPY CSV row has data after a closing quote');
      fields.push(value);
      i = end;
    } else {
      let end = i;
      while (end < s.length && s[end] !== delim) {
        const c = s[end];
        if (c === quote || c === '\n' || c === '\r') throw new Error('COPY CSV row has a quote or newline in an unquoted field');
        end++;
      }
      const value = s.slice(i, end);
      fields.push(value === f.null ? null : value);
      i = end;
    }
    if (i >= s.length) return fields;
    i++; // the delimiter
  }
}

/** Reads a quoted CSV field from just after its opening quote; returns the value and the index after the closing quote. */
function readQuotedCsv(s: string, from: number, quote: string, escape: string): [string, number] {
  let value = '';
  let chunk = from;
  for (let i = from; i < s.length; i++) {
    const c = s[i];
    // The escape test comes first: with escape = quote, a doubled quote is data, a single one closes.
    if (c === escape && (s[i + 1] === quote || s[i + 1] === escape)) {
      value += s.slice(chunk, i) + s[i + 1];
      chunk = ++i + 1;
    } else if (c === quote) {
      return [value + s.slice(chunk, i), i + 1];
    }
  }
  throw new Error('COPY CSV row has an unterminated quoted field');
}

function asciiCode(s: string, what: string): number {
  if (!isOneAscii(s)) throw new Error(`COPY ${what} must be one ASCII character`);
  return s.charCodeAt(0);
}

// ---------------------------------------------------------------------------------------------
// Encoding one row

/**
 * One COPY TO row as PostgreSQL writes it (with its trailing newline). `forceQuoteColumns` marks the
 * CSV columns FORCE_QUOTE applies to (see forceQuoteMask); without it FORCE_QUOTE * quotes every
 * column and a FORCE_QUOTE column list is an error. The header row should be forwarded untouched
 * (FORCE_QUOTE does not apply to it).
 */
export function encodeCopyRow(values: (string | null)[], f: CopyFormat, forceQuoteColumns?: boolean[]): Buffer {
  asciiCode(f.delimiter, 'delimiter');
  let fields: string[];
  if (f.kind === 'text') {
    const escaper = textEscaper(f.delimiter);
    fields = values.map((v) => (v === null ? f.null : escaper(v)));
  } else {
    const force = forceQuoteColumns ?? defaultForceQuote(f, values.length);
    const single = values.length === 1;
    fields = values.map((v, i) => (v === null ? f.null : encodeCsvField(v, f, force[i] === true, single)));
  }
  return Buffer.from(fields.join(f.delimiter) + '\n', 'utf8');
}

/** The FORCE_QUOTE flag of each output column, given the columns' names (from RowDescription). */
export function forceQuoteMask(f: CopyFormat, columnNames: readonly string[]): boolean[] {
  const fq = f.forceQuote;
  if (f.kind !== 'csv' || fq === undefined) return columnNames.map(() => false);
  return columnNames.map((name) => fq === '*' || fq.includes(name));
}

function defaultForceQuote(f: CopyFormat, columns: number): boolean[] {
  if (f.kind !== 'csv' || f.forceQuote === undefined) return [];
  if (f.forceQuote === '*') return new Array<boolean>(columns).fill(true);
  throw new Error('COPY FORCE_QUOTE by column name needs the forced columns (forceQuoteMask)');
}

// PostgreSQL's CopyAttributeOutText: \b \f \n \r \t \v in C notation, and a backslash before a
// backslash or the delimiter; other control characters are written as they are.
const TEXT_ESCAPES: Record<string, string> = { '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\v': '\\v', '\\': '\\\\' };
const textEscapers = new Map<string, (v: string) => string>();

function textEscaper(delimiter: string): (v: string) => string {
  let escaper = textEscapers.get(delimiter);
  if (!escaper) {
    const re = new RegExp(`[\\\\\\b\\f\\n\\r\\t\\v${regexClassChar(delimiter)}]`, 'g');
    const replace = (c: string) => TEXT_ESCAPES[c] ?? `\\${c}`;
    escaper = (v: string) => v.replace(re, replace);
    textEscapers.set(delimiter, escaper);
  }
  return escaper;
}

function regexClassChar(c: string): string {
  return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
}

// PostgreSQL's CopyAttributeOutCSV: quoted when forced, when equal to the null string, when it
// holds the delimiter, the quote, CR or LF, or (single column) when it is \. which older readers
// take for the end of data. Inside quotes, the quote and the escape character are escaped.
function encodeCsvField(v: string, f: CopyFormat, force: boolean, single: boolean): string {
  const quoted =
    force ||
    v === f.null ||
    (single && v === '\\.') ||
    v.includes(f.delimiter) ||
    v.includes(f.quote) ||
    v.includes('\n') ||
    v.includes('\r');
  if (!quoted) return v;
  let body = '';
  let chunk = 0;
  for (let i = 0; i < v.length; i++) {
    if (v[i] === f.quote || v[i] === f.escape) {
      body += v.slice(chunk, i) + f.escape;
      chunk = i;
    }
  }
  return f.quote + body + v.slice(chunk) + f.quote;
}

// ---------------------------------------------------------------------------------------------
// The query a COPY runs

/**
 * For `COPY ( <query> ) TO ...`, the exact source text of <query>, found by matching parentheses
 * while skipping comments, string literals (standard, E'', dollar-quoted) and quoted identifiers.
 * Undefined when the text does not start (after whitespace and comments) with COPY ( ... ).
 * The caller must still check the result with sameQuery.
 */
export function copyQueryText(sql: string): string | undefined {
  let i = skipSpace(sql, 0);
  if (i === undefined || !/^copy(?![A-Za-z0-9_$\u0080-\uffff])/i.test(sql.slice(i, i + 5))) return undefined;
  i = skipSpace(sql, i + 4);
  if (i === undefined || sql[i] !== '(') return undefined;
  const close = matchParen(sql, i);
  return close === undefined ? undefined : sql.slice(i + 1, close);
}

/** Index of the first character after whitespace and comments; undefined in an unterminated comment. */
function skipSpace(sql: string, i: number): number | undefined {
  for (;;) {
    // PostgreSQL's whitespace; other Unicode spaces are identifier characters to it.
    while (i < sql.length && ' \t\n\r\f\v'.includes(sql[i])) i++;
    const next = skipComment(sql, i);
    if (next === i || next === undefined) return next;
    i = next;
  }
}

/** Index after a comment starting at i (i itself if there is none); undefined if unterminated. */
function skipComment(sql: string, i: number): number | undefined {
  if (sql.startsWith('--', i)) {
    const end = sql.indexOf('\n', i);
    return end < 0 ? sql.length : end + 1;
  }
  if (!sql.startsWith('/*', i)) return i;
  // Block comments nest in PostgreSQL.
  let depth = 0;
  while (i < sql.length) {
    if (sql.startsWith('/*', i)) {
      depth++;
      i += 2;
    } else if (sql.startsWith('*/', i)) {
      depth--;
      i += 2;
      if (depth === 0) return i;
    } else {
      i++;
    }
  }
  return undefined;
}

const IDENT_CONT = /[A-Za-z0-9_$\u0080-\uffff]/;
const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y;

/** Index of the parenthesis closing the one at `open`; undefined if there is none. */
function matchParen(sql: string, open: number): number | undefined {
  let depth = 0;
  let i: number | undefined = open;
  while (i !== undefined && i < sql.length) {
    const c = sql[i];
    if (c === '(') {
      depth++;
      i++;
    } else if (c === ')') {
      if (--depth === 0) return i;
      i++;
    } else if (c === '-' || c === '/') {
      const next = skipComment(sql, i);
      i = next === i ? i + 1 : next;
    } else if (c === "'") {
      i = skipQuoted(sql, i, "'", false);
    } else if (c === '"') {
      i = skipQuoted(sql, i, '"', false);
    } else if (c === '$') {
      i = skipDollar(sql, i);
    } else if (IDENT_CONT.test(c)) {
      i = skipWord(sql, i);
    } else {
      i++;
    }
  }
  return undefined;
}

/** Skips an identifier, keyword or number; an identifier `E` right before a quote starts an E'' string. */
function skipWord(sql: string, i: number): number | undefined {
  const start = i;
  // A number does not run into a following $ (1$$x$$ is 1 then a dollar-quoted string).
  const cont = /[0-9]/.test(sql[i]) ? /[A-Za-z0-9_.\u0080-\uffff]/ : IDENT_CONT;
  while (i < sql.length && cont.test(sql[i])) i++;
  if (i - start === 1 && (sql[start] === 'e' || sql[start] === 'E') && sql[i] === "'") return skipQuoted(sql, i, "'", true);
  return i;
}

/** Index after a literal or quoted identifier opened at i; doubled quotes (and \ escapes in E'') are data. */
function skipQuoted(sql: string, i: number, q: string, backslash: boolean): number | undefined {
  for (i++; i < sql.length; i++) {
    if (backslash && sql[i] === '\\') i++;
    else if (sql[i] === q) {
      if (sql[i + 1] !== q) return i + 1;
      i++;
    }
  }
  return undefined;
}

/** Index after a dollar-quoted string $tag$...$tag$ at i, or after a lone $ (a parameter like $1). */
function skipDollar(sql: string, i: number): number | undefined {
  DOLLAR_TAG.lastIndex = i;
  const m = DOLLAR_TAG.exec(sql);
  if (!m) return i + 1;
  const end = sql.indexOf(m[0], i + m[0].length);
  return end < 0 ? undefined : end + m[0].length;
}

/** The CopyStmt node when `sql` is exactly one COPY statement; undefined otherwise (or when it does not parse). */
export function parseCopyStatement(sql: string): Ast | undefined {
  const stmts = parseStatements(sql);
  if (stmts?.length !== 1) return undefined;
  const copy = stmts[0]?.stmt?.CopyStmt;
  return copy && typeof copy === 'object' ? (copy as Ast) : undefined;
}

/**
 * Whether `text` parses to exactly the COPY's query (one statement, same syntax tree apart from
 * positions). False when the text does not parse, or when the parser is not loaded.
 */
export function sameQuery(copyStmt: any, text: string): boolean {
  const query = unwrapCopyStmt(copyStmt)?.query;
  if (!query) return false;
  const stmts = parseStatements(text);
  if (stmts?.length !== 1) return false;
  return isDeepStrictEqual(withoutPositions(stmts[0].stmt), withoutPositions(query));
}

/**
 * A statement whose RowDescription describes the COPY's output columns, to be parsed and described
 * (never executed: COPY (INSERT ... RETURNING) TO is allowed). For COPY (query) TO, the query's own
 * text; for COPY table [(columns)] TO, a SELECT of those columns or *. Beware: COPY table TO leaves
 * out generated columns and SELECT * does not, so the caller must check that the row width matches
 * the described column count.
 */
export function describeCopyQuery(sql: string, copyStmt: any): { text: string } | { error: string } {
  const stmt = unwrapCopyStmt(copyStmt);
  if (!stmt) return { error: 'not a COPY statement' };
  if (stmt.is_from === true) return { error: 'COPY FROM sends no rows to the client' };
  if (stmt.is_program === true) return { error: 'COPY TO PROGRAM writes on the database server, not to the client' };
  if (typeof stmt.filename === 'string') return { error: 'COPY TO a file writes on the database server, not to the client' };
  if (stmt.query) {
    const text = copyQueryText(sql);
    if (text === undefined) return { error: 'the query of the COPY statement could not be found in its text' };
    if (!sameQuery(stmt, text)) return { error: 'the query of the COPY statement could not be verified' };
    return { text };
  }
  if (stmt.relation) return tableSelect(stmt.relation as Ast, stmt.attlist);
  return { error: 'COPY statement has neither a table nor a query' };
}

function tableSelect(rel: Ast, attlist: unknown): { text: string } | { error: string } {
  if (typeof rel.relname !== 'string') return { error: 'COPY statement has no table name' };
  // Only the qualifiers that were written, so the search path resolves the name as COPY does.
  const parts = [rel.catalogname, rel.schemaname, rel.relname].filter((p): p is string => typeof p === 'string');
  const columns: string[] = [];
  for (const item of Array.isArray(attlist) ? attlist : []) {
    const name = item?.String?.sval;
    if (typeof name !== 'string') return { error: 'COPY column list could not be read' };
    columns.push(quoteIdent(name));
  }
  const list = columns.length > 0 ? columns.join(', ') : '*';
  return { text: `SELECT ${list} FROM ${parts.map(quoteIdent).join('.')}` };
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
