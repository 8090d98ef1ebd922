// Syntax trees of statement texts (libpg-query), for comparing statements by meaning rather than
// by spelling. The parser must be loaded first (initClassifier).
import { parseSync } from 'libpg-query';

type Ast = Record<string, any>;

/** The raw statements of `sql`; undefined when it does not parse (or the parser is not loaded). */
export function parseStatements(sql: string): Ast[] | undefined {
  if (sql.includes('\0')) return undefined;
  try {
    const stmts = (parseSync(sql) as Ast)?.stmts;
    return Array.isArray(stmts) ? (stmts as Ast[]) : [];
  } catch {
    return undefined;
  }
}

// Positions differ between two spellings of the same statement (whitespace, comments, case).
const POSITION_KEYS = new Set(['location', 'stmt_location', 'stmt_len', 'name_location']);

export function withoutPositions(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withoutPositions);
  if (!node || typeof node !== 'object') return node;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) {
    if (!POSITION_KEYS.has(k)) out[k] = withoutPositions(v);
  }
  return out;
}

/**
 * The statement's meaning as text: its syntax trees without positions, so that whitespace,
 * comments and keyword case do not matter while every identifier and literal does. A text that
 * does not parse is its own normal form.
 */
export function normalizedStatement(sql: string): string {
  const stmts = parseStatements(sql);
  return stmts ? JSON.stringify(stmts.map((s) => withoutPositions(s.stmt))) : `unparsed:${sql}`;
}
