import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { loadModule, parseSync } from 'libpg-query';
import {
  copyOutFormat,
  copyQueryText,
  decodeCopyRow,
  describeCopyQuery,
  encodeCopyRow,
  forceQuoteMask,
  parseCopyStatement,
  sameQuery,
  type CopyFormat,
} from '../../src/protocols/postgres/copy-out.ts';
import { ADMIN_URL } from '../helpers/pgdb.ts';

await loadModule();

type Row = (string | null)[];

function copyStmtOf(sql: string): any {
  return parseSync(sql).stmts[0].stmt.CopyStmt;
}

function formatOf(sql: string): CopyFormat {
  const f = copyOutFormat(copyStmtOf(sql));
  if ('error' in f) throw new Error(`${sql}: ${f.error}`);
  return f;
}

function formatError(sql: string): string {
  const f = copyOutFormat(copyStmtOf(sql));
  assert.ok('error' in f, `${sql} should be refused`);
  return f.error;
}

const TEXT: CopyFormat = { kind: 'text', delimiter: '\t', null: '\\N', quote: '"', escape: '"', header: false, forceQuote: undefined };
const CSV: CopyFormat = { kind: 'csv', delimiter: ',', null: '', quote: '"', escape: '"', header: false, forceQuote: undefined };

const line = (s: string) => Buffer.from(s, 'utf8');

// ---------------------------------------------------------------------------------------------
// The real server: COPY output through psql (the pg driver cannot read COPY), values through pg

let client: pg.Client;

before(async () => {
  client = new pg.Client({ connectionString: ADMIN_URL });
  await client.connect();
});

after(async () => {
  await client?.end();
});

/** The exact bytes PostgreSQL sends for a COPY ... TO STDOUT (psql writes them out unchanged). */
function psqlCopy(sql: string): Buffer {
  return execFileSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', ADMIN_URL, '-c', sql], {
    env: { ...process.env, PGCLIENTENCODING: 'UTF8' },
    maxBuffer: 64 * 1024 * 1024,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

// Every value as PostgreSQL's text output, unparsed.
const rawTypes = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

async function pgRows(query: string): Promise<{ names: string[]; rows: Row[] }> {
  const r = await client.query({ text: query, rowMode: 'array', types: rawTypes });
  return { names: r.fields.map((f) => f.name), rows: r.rows as Row[] };
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** A literal for any string, free of quoting questions. */
function lit(v: string | null): string {
  return v === null ? 'NULL::text' : `convert_from(decode('${Buffer.from(v, 'utf8').toString('hex')}', 'hex'), 'UTF8')`;
}

function valuesQuery(rows: Row[], names: string[]): string {
  const tuples = rows.map((r, i) => `(${i}, ${r.map(lit).join(', ')})`).join(', ');
  const cols = names.map(quoteIdent).join(', ');
  return `SELECT ${cols} FROM (VALUES ${tuples}) AS v(ord, ${cols}) ORDER BY ord`;
}

/** Text format cannot tell a value spelt like the null string from NULL (NULL '' and ''): PostgreSQL's own ambiguity. */
function asDecoded(row: Row, f: CopyFormat): Row {
  if (f.kind !== 'text') return row;
  const nullBytes = encodeCopyRow([null], f);
  return row.map((v) => (v !== null && encodeCopyRow([v], f).equals(nullBytes) ? null : v));
}

/**
 * Runs `COPY (query) TO STDOUT options` on the server and checks both directions: encoding the
 * values PostgreSQL has gives PostgreSQL's exact bytes, and decoding PostgreSQL's bytes row by row
 * gives the values back.
 */
async function checkAgainstPostgres(query: string, options: string): Promise<void> {
  const copySql = `COPY (${query}) TO STDOUT ${options}`;
  const f = formatOf(copySql);
  const { names, rows } = await pgRows(query);
  const bytes = psqlCopy(copySql);
  const force = forceQuoteMask(f, names);
  const expected: { line: Buffer; values: Row }[] = [];
  if (f.header) expected.push({ line: encodeCopyRow(names, f, names.map(() => false)), values: names });
  for (const r of rows) expected.push({ line: encodeCopyRow(r, f, force), values: asDecoded(r, f) });
  const all = Buffer.concat(expected.map((e) => e.line));
  assert.equal(JSON.stringify(bytes.toString('utf8')), JSON.stringify(all.toString('utf8')), copySql);
  assert.ok(bytes.equals(all), copySql);
  // PostgreSQL sends one row per CopyData message: slice its output the same way.
  let at = 0;
  for (const e of expected) {
    const row = bytes.subarray(at, at + e.line.length);
    at += e.line.length;
    assert.deepEqual(decodeCopyRow(row, f), e.values, `${copySql}: ${JSON.stringify(row.toString('utf8'))}`);
  }
}

const AWKWARD: (string | null)[] = [
  null, '', 'plain', ' padded ', 'tab\there', 'new\nline', 'cr\rhere', 'crlf\r\nend', 'back\\slash', '\\', '\\\\',
  '\\N', 'N', '\\.', '.', '\\n not a newline', '\\x41', '\\101', '"', '"quoted"', 'say "hi"', "it's", "''", ',', 'a,b',
  ';', 'a;b', '|', 'a|b', 'X', 'aXb', '!', 'a!b', '!"', 'NULL', 'null', 'nil', 'x', '\b\f\v', '\x01\x1f\x7f', 'a\x01b',
  'é ü ß 日本語 😀', '\uFEFFbom', 'trailing\\', '\t', '\n', '\r', ' ',
];

const NAMES = ['c1', 'We;ird', 'quo"te', 'tab\tname', 'Ünï'];

/** Rows of `width` values, each value once in every column, plus a row of NULLs and one of empty strings. */
function spreadRows(values: (string | null)[], width: number): Row[] {
  const rows: Row[] = [];
  for (let shift = 0; shift < width; shift++) {
    const rotated = values.slice(shift).concat(values.slice(0, shift));
    for (let i = 0; i < rotated.length; i += width) {
      const row = rotated.slice(i, i + width);
      while (row.length < width) row.push(null);
      rows.push(row);
    }
  }
  rows.push(new Array<null>(width).fill(null), new Array<string>(width).fill(''));
  return rows;
}

const AWKWARD_QUERY = valuesQuery(spreadRows(AWKWARD, NAMES.length), NAMES);

const FORMATS = [
  '',
  '(FORMAT text)',
  "(FORMAT text, DELIMITER ';', NULL 'NULL')",
  "(FORMAT text, DELIMITER '|', NULL '', HEADER)",
  "(DELIMITER E'\\x01')",
  "(DELIMITER 'X', NULL 'nil', HEADER true)",
  "WITH DELIMITER ',' NULL ''",
  '(FORMAT csv)',
  '(FORMAT csv, HEADER)',
  "(FORMAT csv, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\\')",
  '(FORMAT csv, FORCE_QUOTE *)',
  "(FORMAT csv, FORCE_QUOTE (c1, \"We;ird\"), NULL '\\N', HEADER)",
  "(FORMAT csv, QUOTE '|', ESCAPE '!', DELIMITER E'\\t')",
  "(FORMAT csv, DELIMITER ' ', ENCODING 'UTF-8')",
  "WITH CSV HEADER DELIMITER AS '|' NULL AS 'x' QUOTE AS '\"' ESCAPE AS '\"' FORCE QUOTE *",
  "WITH CSV QUOTE '!' ESCAPE '\\' FORCE QUOTE \"quo\"\"te\"",
];

for (const options of FORMATS) {
  test(`awkward values round-trip through real PostgreSQL output: ${options || 'text defaults'}`, async () => {
    await checkAgainstPostgres(AWKWARD_QUERY, options);
  });
}

test('a single column: \\. alone is quoted in CSV (an end-of-data marker to older readers)', async () => {
  const query = valuesQuery([['\\.'], ['.'], [null], [''], ['\\.x']], ['only']);
  for (const options of ['', '(FORMAT csv)', '(FORMAT csv, HEADER)', "(FORMAT csv, NULL '\\.')"]) await checkAgainstPostgres(query, options);
});

test('values of other types (arrays, records, json, bytea) round-trip through real PostgreSQL output', async () => {
  const query = String.raw`SELECT 1 AS i, NULL::int AS ni, 3.14::numeric AS n, true AS b, '\x00ff5c0a2c22'::bytea AS by,
    ARRAY['a"b', 'c\d', NULL, '', 'e,f', 'NULL'] AS arr, '{}'::text[] AS empty,
    '{"k": "line\nbreak \\ \"q\"", "t": "tab\t"}'::jsonb AS j, ROW(1, 'x y', NULL, '"') AS rec,
    '2024-01-02 03:04:05.678'::timestamp AS ts, point(1, 2) AS p, interval '1 day 2 hours' AS iv, 'a b'::tsvector AS tv`;
  // (The FORCE_QUOTE column lists name columns this query does not have.)
  for (const options of FORMATS.filter((o) => !/FORCE.QUOTE ["(]/.test(o))) await checkAgainstPostgres(query, options);
});

/** A small deterministic generator, so a failure can be reproduced. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPHABET = ['a', 'Z', '0', '7', 'x', 'N', '.', ' ', 'é', '😀', '\\', '"', "'", ',', ';', '|', '!', '\t', '\n', '\r', '\b', '\f', '\v', '\x01'];

function randomRows(seed: number, count: number, width: number): Row[] {
  const rnd = prng(seed);
  const value = () => {
    if (rnd() < 0.1) return null;
    let s = '';
    for (let n = Math.floor(rnd() * 10); n > 0; n--) s += ALPHABET[Math.floor(rnd() * ALPHABET.length)];
    return s;
  };
  return Array.from({ length: count }, () => Array.from({ length: width }, value));
}

test('random values round-trip through real PostgreSQL output', async () => {
  const query = valuesQuery(randomRows(42, 300, 4), ['a', 'b', 'c', 'd']);
  const formats = [
    '',
    "(DELIMITER ';', NULL 'N')",
    '(FORMAT csv)',
    "(FORMAT csv, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\\')",
    '(FORMAT csv, FORCE_QUOTE (b, d))',
  ];
  for (const options of formats) await checkAgainstPostgres(query, options);
});

test('random values round-trip through encode and decode in every format', () => {
  const rows = randomRows(7, 2000, 3);
  for (const options of FORMATS) {
    const f = formatOf(`COPY t TO STDOUT ${options}`);
    const force = forceQuoteMask(f, ['c1', 'We;ird', 'quo"te']);
    for (const r of rows) assert.deepEqual(decodeCopyRow(encodeCopyRow(r, f, force), f), asDecoded(r, f), `${options}: ${JSON.stringify(r)}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Decoding and encoding, by hand

test('text rows: escapes, octal and hex bytes, the null marker matched before unescaping', () => {
  assert.deepEqual(decodeCopyRow(line('a\\tb\tc\\\\d\t\\N\t\\\\N\tx\\Ny\n'), TEXT), ['a\tb', 'c\\d', null, '\\N', 'xNy']);
  assert.deepEqual(decodeCopyRow(line('\\b\\f\\n\\r\\t\\v\t\\101\\x41\\x4g\\q\\\t\\303\\251\\7\n'), TEXT), ['\b\f\n\r\t\v', 'AA\x04gq\t\u00e9\x07']);
  assert.deepEqual(decodeCopyRow(line('\\1011\t\\x414\n'), TEXT), ['A1', 'A4']);
  assert.deepEqual(decodeCopyRow(line('\n'), TEXT), ['']);
  assert.deepEqual(decodeCopyRow(line('\t\n'), TEXT), ['', '']);
  assert.deepEqual(decodeCopyRow(line('\uFEFFbom\n'), TEXT), ['\uFEFFbom']);
  const semi = { ...TEXT, delimiter: ';', null: 'NULL' };
  assert.deepEqual(decodeCopyRow(line('a\\;b;NULL;\\N;\\\\\n'), semi), ['a;b', null, 'N', '\\']);
});

test('text rows: PostgreSQL escapes control characters, backslashes and the delimiter', () => {
  assert.equal(encodeCopyRow(['a\tb', 'c\\d', null, '\\N', '\b\f\n\r\v', '\x01', 'é'], TEXT).toString(), 'a\\tb\tc\\\\d\t\\N\t\\\\N\t\\b\\f\\n\\r\\v\t\x01\té\n');
  assert.equal(encodeCopyRow(['a;b', 'x\ty', null], { ...TEXT, delimiter: ';', null: '' }).toString(), 'a\\;b;x\\ty;\n');
  assert.equal(encodeCopyRow(['a\x01b'], { ...TEXT, delimiter: '\x01' }).toString(), 'a\\\x01b\n');
  assert.equal(encodeCopyRow([], TEXT).toString(), '\n');
});

test('CSV rows: quoting, doubled quotes, the escape character, NULL only when unquoted', () => {
  assert.deepEqual(decodeCopyRow(line('a,"b,c","say ""hi""",,"",x\n'), CSV), ['a', 'b,c', 'say "hi"', null, '', 'x']);
  assert.deepEqual(decodeCopyRow(line('"multi\nline\r\n",2\n'), CSV), ['multi\nline\r\n', '2']);
  assert.deepEqual(decodeCopyRow(line('\n'), CSV), [null]);
  assert.deepEqual(decodeCopyRow(line('""\n'), CSV), ['']);
  const custom: CopyFormat = { ...CSV, delimiter: ';', null: 'NULL', quote: "'", escape: '\\' };
  assert.deepEqual(decodeCopyRow(line("'it\\'s';NULL;'NULL';a\\b;'c\\\\d';'e\\f'\n"), custom), ["it's", null, 'NULL', 'a\\b', 'c\\d', 'e\\f']);
  assert.equal(encodeCopyRow(["it's", null, 'NULL', 'a\\b', 'c;d'], custom).toString(), "'it\\'s';NULL;'NULL';a\\b;'c;d'\n");
  assert.equal(encodeCopyRow(['a', 'b,c', 'say "hi"', null, '', 'x\ny', 'cr\r'], CSV).toString(), 'a,"b,c","say ""hi""",,"","x\ny","cr\r"\n');
  assert.equal(encodeCopyRow(['\\.'], CSV).toString(), '"\\."\n');
  assert.equal(encodeCopyRow(['\\.', '\\.'], CSV).toString(), '\\.,\\.\n');
});

test('CSV FORCE_QUOTE: * quotes every non-null value; a column list needs the column flags', () => {
  const star = { ...CSV, forceQuote: '*' as const };
  assert.equal(encodeCopyRow(['a', null, ''], star).toString(), '"a",,""\n');
  const listed = { ...CSV, forceQuote: ['b'] };
  assert.throws(() => encodeCopyRow(['a', 'b'], listed), /forceQuoteMask/);
  assert.deepEqual(forceQuoteMask(listed, ['a', 'b']), [false, true]);
  assert.equal(encodeCopyRow(['a', 'b'], listed, forceQuoteMask(listed, ['a', 'b'])).toString(), 'a,"b"\n');
  assert.deepEqual(forceQuoteMask(star, ['a', 'b']), [true, true]);
  assert.deepEqual(forceQuoteMask(TEXT, ['a']), [false]);
});

test('malformed rows are refused (the caller fails closed)', () => {
  const bad: [string | Buffer, CopyFormat][] = [
    ['no newline', TEXT],
    ['', TEXT],
    ['ends with \\\n', TEXT],
    ['raw\rcr\n', TEXT],
    ['raw\nnewline\n', TEXT],
    [Buffer.from([0x61, 0xff, 0x0a]), TEXT],
    ['\\377\n', TEXT],
    ['\\303\n', TEXT],
    ['"unterminated\n', CSV],
    ['"a"b\n', CSV],
    ['a"b\n', CSV],
    ['a\rb\n', CSV],
    [Buffer.from([0x22, 0xc3, 0x22, 0x0a]), CSV],
    ['no newline', CSV],
  ];
  for (const [input, f] of bad) {
    assert.throws(() => decodeCopyRow(typeof input === 'string' ? line(input) : input, f), Error, JSON.stringify(input.toString()));
  }
  assert.throws(() => decodeCopyRow(line('a\n'), { ...TEXT, delimiter: '' }));
  assert.throws(() => encodeCopyRow(['a'], { ...CSV, delimiter: ';;' }));
});

// ---------------------------------------------------------------------------------------------
// The format of a COPY statement

test('copyOutFormat: PostgreSQL defaults for text and CSV', () => {
  assert.deepEqual(formatOf('COPY t TO STDOUT'), TEXT);
  assert.deepEqual(formatOf('COPY (select 1) TO STDOUT (FORMAT text)'), TEXT);
  assert.deepEqual(formatOf('COPY t TO STDOUT (FORMAT csv)'), CSV);
  assert.deepEqual(formatOf("COPY t TO STDOUT (FORMAT csv, QUOTE '''')"), { ...CSV, quote: "'", escape: "'" });
  assert.deepEqual(formatOf("COPY t TO STDOUT (FORMAT csv, ESCAPE '\\')"), { ...CSV, escape: '\\' });
  assert.deepEqual(formatOf('COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE (a, "B"))').forceQuote, ['a', 'B']);
  assert.deepEqual(formatOf("COPY t TO STDOUT (DELIMITER 1, FORMAT csv)").delimiter, '1');
});

test('copyOutFormat: the legacy syntax gives the same format as the option list', () => {
  const pairs: [string, string][] = [
    ["COPY t TO STDOUT WITH CSV HEADER DELIMITER ';'", "COPY t TO STDOUT (FORMAT csv, HEADER, DELIMITER ';')"],
    ["COPY t TO STDOUT CSV QUOTE AS '''' ESCAPE AS '\\' NULL AS 'x' FORCE QUOTE *", "COPY t TO STDOUT (FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'x', FORCE_QUOTE *)"],
    ['COPY t TO STDOUT CSV FORCE QUOTE a, b', 'COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE (a, b))'],
    ["COPY t TO STDOUT DELIMITER AS '|' NULL AS ''", "COPY t TO STDOUT (DELIMITER '|', NULL '')"],
    ["COPY t TO STDOUT WITH ENCODING 'utf8' CSV", "COPY t TO STDOUT (ENCODING 'UTF8', FORMAT csv)"],
  ];
  for (const [legacy, modern] of pairs) assert.deepEqual(formatOf(legacy), formatOf(modern), legacy);
});

test('copyOutFormat: HEADER takes the Boolean spellings PostgreSQL takes', () => {
  for (const h of ['HEADER', 'HEADER true', 'HEADER on', "HEADER 'TRUE'", 'HEADER 1']) assert.equal(formatOf(`COPY t TO STDOUT (${h})`).header, true, h);
  for (const h of ['HEADER false', 'HEADER off', 'HEADER 0', "HEADER 'Off'"]) assert.equal(formatOf(`COPY t TO STDOUT (${h})`).header, false, h);
  for (const h of ['HEADER match', 'HEADER 2', 'HEADER -1', 'HEADER yes']) assert.match(formatError(`COPY t TO STDOUT (${h})`), /HEADER/, h);
  assert.equal(formatOf('COPY t TO STDOUT WITH CSV HEADER').header, true);
});

test('copyOutFormat: binary output and other encodings are refused', () => {
  const binary = 'binary COPY output cannot be masked: use FORMAT text or csv';
  for (const sql of ['COPY t TO STDOUT (FORMAT binary)', 'COPY t TO STDOUT BINARY', 'COPY BINARY t TO STDOUT', 'COPY t TO STDOUT WITH BINARY']) {
    assert.equal(formatError(sql), binary, sql);
  }
  assert.match(formatError("COPY t TO STDOUT (ENCODING 'latin1')"), /encoding "latin1".*UTF8/);
  assert.match(formatError("COPY t TO STDOUT (FORMAT csv, ENCODING 'SJIS')"), /SJIS/);
  for (const e of ['utf8', 'UTF-8', 'Unicode', 'utf_8']) assert.equal(formatOf(`COPY t TO STDOUT (ENCODING '${e}')`).kind, 'text', e);
});

test('copyOutFormat: options PostgreSQL refuses are refused, COPY FROM options are ignored', () => {
  const refused = [
    "COPY t TO STDOUT (FORMAT 'CSV')",
    'COPY t TO STDOUT ("FORMAT" csv)',
    "COPY t TO STDOUT (FORMAT 'json')",
    'COPY t TO STDOUT (FORMAT csv, FORMAT csv)',
    'COPY t TO STDOUT (HEADER, HEADER false)',
    'COPY t TO STDOUT (bogus 1)',
    "COPY t TO STDOUT (QUOTE '\"')",
    "COPY t TO STDOUT (ESCAPE '\\')",
    'COPY t TO STDOUT (FORCE_QUOTE *)',
    "COPY t TO STDOUT (DELIMITER 'ab')",
    "COPY t TO STDOUT (DELIMITER 'é', FORMAT csv)",
    "COPY t TO STDOUT (DELIMITER '')",
    "COPY t TO STDOUT (DELIMITER E'\\n')",
    "COPY t TO STDOUT (DELIMITER 'a')",
    "COPY t TO STDOUT (DELIMITER '\\')",
    "COPY t TO STDOUT (DELIMITER '.')",
    "COPY t TO STDOUT (NULL E'x\\ry')",
    "COPY t TO STDOUT (DELIMITER ',', NULL 'a,b')",
    "COPY t TO STDOUT (DELIMITER 'N')",
    "COPY t TO STDOUT (FORMAT csv, QUOTE ',')",
    "COPY t TO STDOUT (FORMAT csv, NULL 'a\"')",
    "COPY t TO STDOUT (FORMAT csv, ESCAPE '')",
    "COPY t TO STDOUT (FORMAT csv, QUOTE 'ab')",
  ];
  for (const sql of refused) formatError(sql);
  assert.deepEqual(formatOf('COPY t FROM STDIN (FORMAT csv, FORCE_NOT_NULL (a), FORCE_NULL *, FREEZE)'), CSV);
  assert.deepEqual(formatOf("COPY t TO STDOUT (DELIMITER 'a', FORMAT csv)").delimiter, 'a');
});

test('copyOutFormat agrees with the server on what it refuses', () => {
  for (const opts of ["(FORMAT 'CSV')", '(HEADER yes)', '(HEADER match)', "(DELIMITER 'a')", "(DELIMITER ',', NULL 'a,b')", "(FORMAT csv, NULL 'a\"')", "(QUOTE '\"')"]) {
    const sql = `COPY (SELECT 1 AS a) TO STDOUT ${opts}`;
    formatError(sql);
    assert.throws(() => psqlCopy(sql), Error, sql);
  }
});

test('copyOutFormat accepts a CopyStmt with or without its wrapper', () => {
  const raw = parseSync('COPY t TO STDOUT (FORMAT csv)').stmts[0].stmt;
  assert.deepEqual(copyOutFormat(raw), CSV);
  assert.deepEqual(copyOutFormat(raw.CopyStmt), CSV);
});

// ---------------------------------------------------------------------------------------------
// The query of a COPY

test('copyQueryText: the query between the outer parentheses, past comments and literals', () => {
  const cases: [string, string][] = [
    ['COPY (SELECT 1) TO STDOUT', 'SELECT 1'],
    ['copy(select 1)to stdout', 'select 1'],
    ['  /* lead ( */ -- also ( \n COPY /* ) */ (select 2) TO STDOUT', 'select 2'],
    ["COPY (select ')' AS \")\"\"(\", 'it''s )' FROM t) TO STDOUT", "select ')' AS \")\"\"(\", 'it''s )' FROM t"],
    ["COPY (select E'\\') )', e'\\\\', E'''') TO STDOUT", "select E'\\') )', e'\\\\', E''''"],
    ["COPY (select $$ ) $$, $q$ $$ ) ' $q$, $_1$)$_1$) TO STDOUT", "select $$ ) $$, $q$ $$ ) ' $q$, $_1$)$_1$"],
    ['COPY (select 1 as a$$, 2 as b) TO STDOUT', 'select 1 as a$$, 2 as b'],
    ["COPY (select datE'\\', ')') TO STDOUT", "select datE'\\', ')'"],
    ['COPY (select (1), (select (2)) where x in (select y from z where w = (3))) TO STDOUT', 'select (1), (select (2)) where x in (select y from z where w = (3))'],
    ['COPY (select 1 /* ) /* nested ) */ still ) */ -- )\n) TO STDOUT', 'select 1 /* ) /* nested ) */ still ) */ -- )\n'],
    ['COPY (select 1 - -2, 4/2, U&"d\\0061t)") TO STDOUT', 'select 1 - -2, 4/2, U&"d\\0061t)"'],
    ['COPY ((select 1)) TO STDOUT', '(select 1)'],
    ['COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT', 'INSERT INTO t VALUES (1) RETURNING *'],
  ];
  for (const [sql, text] of cases) {
    assert.equal(copyQueryText(sql), text, sql);
    assert.ok(sameQuery(copyStmtOf(sql), text), sql);
  }
});

test('copyQueryText: undefined when the statement is not COPY ( ... )', () => {
  for (const sql of [
    'COPY t TO STDOUT',
    'COPY t (a, b) TO STDOUT',
    'SELECT 1',
    'copyx (select 1) TO STDOUT',
    'COPY (select 1 TO STDOUT',
    "COPY (select ')' TO STDOUT",
    'COPY (select "x TO STDOUT',
    'COPY (select $$ ) TO STDOUT',
    '/* COPY (select 1) */',
    '/* unterminated COPY (select 1)',
    'COPY (select 1 /* ) TO STDOUT',
    "COPY (select E'\\') TO STDOUT",
    '',
  ]) {
    assert.equal(copyQueryText(sql), undefined, sql);
  }
});

test('sameQuery: only the very same query, whatever its spacing', () => {
  const stmt = copyStmtOf('COPY (SELECT a, b FROM t WHERE c = 1) TO STDOUT');
  assert.ok(sameQuery(stmt, 'SELECT a, b FROM t WHERE c = 1'));
  assert.ok(sameQuery(stmt, '  select a,b  from t  where c=1 -- comment'));
  assert.ok(!sameQuery(stmt, 'SELECT a, b FROM t WHERE c = 2'));
  assert.ok(!sameQuery(stmt, 'SELECT b, a FROM t WHERE c = 1'));
  assert.ok(!sameQuery(stmt, 'SELECT a, b FROM t WHERE c = 1; SELECT 1'));
  assert.ok(!sameQuery(stmt, 'SELECT a, b FROM'));
  assert.ok(!sameQuery(stmt, 'SELECT a, b FROM t WHERE c = 1\0'));
  assert.ok(!sameQuery(copyStmtOf('COPY t TO STDOUT'), 'SELECT * FROM t'));
  // JSON_TABLE paths carry a name_location of their own.
  const jt = "SELECT * FROM JSON_TABLE('[]'::jsonb, '$[*]' AS p COLUMNS (a int PATH '$.a'))";
  assert.ok(sameQuery(copyStmtOf(`COPY (${jt}) TO STDOUT`), `  ${jt}`));
});

test('describeCopyQuery: the query of COPY (query) TO, verified against the statement', () => {
  const sql = "/* x */ COPY (SELECT a AS \"Mixed)\" FROM s.t WHERE b = ')') TO STDOUT (FORMAT csv)";
  assert.deepEqual(describeCopyQuery(sql, copyStmtOf(sql)), { text: "SELECT a AS \"Mixed)\" FROM s.t WHERE b = ')'" });
  // The text and the tree disagree: refused.
  assert.ok('error' in describeCopyQuery('COPY (SELECT 1) TO STDOUT', copyStmtOf('COPY (SELECT 2) TO STDOUT')));
  assert.ok('error' in describeCopyQuery('COPY t TO STDOUT', copyStmtOf('COPY (SELECT 2) TO STDOUT')));
});

test('describeCopyQuery: a SELECT of the table, names quoted as written', () => {
  const cases: [string, string][] = [
    ['COPY t TO STDOUT', 'SELECT * FROM "t"'],
    ['COPY Foo TO STDOUT (FORMAT csv)', 'SELECT * FROM "foo"'],
    ['COPY public.Foo (A, "bB") TO STDOUT', 'SELECT "a", "bB" FROM "public"."foo"'],
    ['COPY "My Schema"."Mixed""Case" ("Col A", "x""y") TO STDOUT', 'SELECT "Col A", "x""y" FROM "My Schema"."Mixed""Case"'],
    ['COPY db.s.t TO STDOUT', 'SELECT * FROM "db"."s"."t"'],
  ];
  for (const [sql, text] of cases) assert.deepEqual(describeCopyQuery(sql, copyStmtOf(sql)), { text }, sql);
});

test('describeCopyQuery: COPY FROM, TO PROGRAM and TO a file are refused', () => {
  for (const sql of ['COPY t FROM STDIN', "COPY t TO PROGRAM 'cat'", "COPY t TO '/tmp/x'", "COPY (SELECT 1) TO '/tmp/x'", 'COPY t FROM STDIN (FORMAT csv)']) {
    assert.ok('error' in describeCopyQuery(sql, copyStmtOf(sql)), sql);
  }
  assert.ok('error' in describeCopyQuery('', undefined));
});

test('parseCopyStatement: the CopyStmt of a single COPY statement', () => {
  assert.equal(parseCopyStatement('COPY t TO STDOUT;')?.relation?.relname, 't');
  assert.ok(parseCopyStatement('/* c */ COPY (SELECT 1) TO STDOUT')?.query);
  assert.equal(parseCopyStatement('COPY t TO STDOUT; SELECT 1'), undefined);
  assert.equal(parseCopyStatement('SELECT 1'), undefined);
  assert.equal(parseCopyStatement('COPY t TO'), undefined);
  assert.equal(parseCopyStatement('COPY t TO STDOUT\0'), undefined);
});

test('describeCopyQuery on the server: the described columns are the COPY columns', async () => {
  const schema = `Air Copy ${randomBytes(4).toString('hex')}`;
  const table = `${quoteIdent(schema)}."Mixed""Case"`;
  await client.query(`CREATE SCHEMA ${quoteIdent(schema)}`);
  try {
    await client.query(`CREATE TABLE ${table} ("Col A" text, b int, g int GENERATED ALWAYS AS (b * 2) STORED)`);
    await client.query(`INSERT INTO ${table} ("Col A", b) VALUES ('x,y', 1), (NULL, 2)`);
    const header = (sql: string) => {
      const out = psqlCopy(sql);
      return decodeCopyRow(out.subarray(0, out.indexOf('\n') + 1), formatOf(sql));
    };
    const described = async (sql: string) => {
      const d = describeCopyQuery(sql, copyStmtOf(sql));
      if ('error' in d) throw new Error(d.error);
      return (await pgRows(`${d.text} LIMIT 0`)).names;
    };

    const listed = `COPY ${table} ("Col A", b) TO STDOUT (FORMAT csv, HEADER)`;
    assert.deepEqual(await described(listed), ['Col A', 'b']);
    assert.deepEqual(header(listed), ['Col A', 'b']);

    const query = `COPY (SELECT b AS "Out", "Col A" FROM ${table} ORDER BY b) TO STDOUT (HEADER)`;
    assert.deepEqual(await described(query), ['Out', 'Col A']);
    assert.deepEqual(header(query), ['Out', 'Col A']);

    // COPY table TO leaves out generated columns, SELECT * does not: the caller must compare widths.
    const whole = `COPY ${table} TO STDOUT (FORMAT csv, HEADER)`;
    assert.deepEqual(await described(whole), ['Col A', 'b', 'g']);
    assert.deepEqual(header(whole), ['Col A', 'b']);
  } finally {
    await client.query(`DROP SCHEMA ${quoteIdent(schema)} CASCADE`);
  }
});
