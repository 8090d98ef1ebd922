// Loads a policy folder into a PolicyBundle, or reports every problem with its file, line and
// column. A bundle exists only when there are no problems.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node as YamlNode } from 'yaml';
import type { ConnectionInfo } from '../core/types.ts';
import { compileDetector } from '../masking/custom.ts';
import type { Detector } from '../masking/detectors.ts';
import {
  ALLOWED_KEYS, CONNECTION_SECRET_KEYS, DETECTORS, PolicyFileSchema, type ConnectionDecl, type Policy,
} from './schema.ts';

export interface PolicyProblem {
  /** Path relative to the policy folder ("." for problems of the folder itself). */
  file: string;
  /** 1-based; 0 when the problem is not about a place in a file. */
  line: number;
  column: number;
  message: string;
}

export interface SourceLocation {
  file: string;
  line: number;
  column: number;
}

export interface PolicyBundle {
  /** Absolute path of the folder. */
  dir: string;
  /** `git:<commit>` when the folder is a clean git checkout, else `sha256:<16 hex>` of the files. */
  version: string;
  connections: ConnectionInfo[];
  /** In file order (files sorted by path), then in order within each file. */
  policies: Policy[];
  /** Custom detectors declared in the folder (`detectors:`), by name; mask rules use them. */
  detectors: Readonly<Record<string, Detector>>;
  /** Files read, relative to `dir`, sorted. */
  files: string[];
  /** Where each policy, connection and detector is defined, keyed `policy:<name>`, `connection:<name>`, `detector:<name>`. */
  origins?: Record<string, SourceLocation>;
}

export interface PolicyLoadResult {
  bundle?: PolicyBundle;
  problems: PolicyProblem[];
}

export interface PolicySourceFile {
  /** Path relative to the folder, with forward slashes. */
  path: string;
  content: string;
}

const GLOB_CHARS = /[*?]/;

// ---------------------------------------------------------------------------------------------
// Folder

/** The policy files of a folder, relative and sorted: *.yaml / *.yml, recursive, skipping
 * dotfiles, dot-directories and directories named `tests`. */
export function listPolicyFiles(dir: string): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  const walk = (abs: string, rel: string) => {
    let real: string;
    try {
      real = realpathSync(abs);
    } catch {
      return;
    }
    if (seen.has(real)) return;
    seen.add(real);
    for (const name of readdirSync(abs).sort()) {
      if (name.startsWith('.')) continue;
      const childAbs = join(abs, name);
      const childRel = rel ? `${rel}/${name}` : name;
      let st;
      try {
        st = statSync(childAbs);
      } catch {
        continue; // dangling symlink
      }
      if (st.isDirectory()) {
        if (name === 'tests' || name === 'node_modules') continue;
        walk(childAbs, childRel);
      } else if (st.isFile() && /\.ya?ml$/i.test(name)) {
        out.push(childRel);
      }
    }
  };
  walk(dir, '');
  return out.sort();
}

/** Loads every policy file of `dir`. Never throws. */
export function loadPolicyDir(dir: string): PolicyLoadResult {
  const abs = resolve(dir);
  let st;
  try {
    st = statSync(abs);
  } catch {
    return { problems: [{ file: '.', line: 0, column: 0, message: `policy directory ${abs} does not exist` }] };
  }
  if (!st.isDirectory()) {
    return { problems: [{ file: '.', line: 0, column: 0, message: `${abs} is not a directory` }] };
  }
  let paths: string[];
  try {
    paths = listPolicyFiles(abs);
  } catch (err) {
    return { problems: [{ file: '.', line: 0, column: 0, message: `cannot read policy directory ${abs}: ${(err as Error).message}` }] };
  }
  if (paths.length === 0) {
    return { problems: [{ file: '.', line: 0, column: 0, message: `no policy files (*.yaml, *.yml) in ${abs}` }] };
  }
  const files: PolicySourceFile[] = [];
  const problems: PolicyProblem[] = [];
  for (const path of paths) {
    try {
      files.push({ path, content: readFileSync(join(abs, path), 'utf8') });
    } catch (err) {
      problems.push({ file: path, line: 0, column: 0, message: `cannot read: ${(err as Error).message}` });
    }
  }
  if (problems.length) return { problems };
  return loadPolicyFiles(files, { dir: abs, version: () => folderVersion(abs, files) });
}

/**
 * Loads policy files given in memory (used by loadPolicyDir; handy in tests and tools).
 * `version` defaults to the content hash.
 */
export function loadPolicyFiles(
  files: PolicySourceFile[],
  opts: { dir?: string; version?: string | (() => string) } = {},
): PolicyLoadResult {
  const dir = opts.dir ?? '.';
  const sorted = sortByPath(files);
  const problems: PolicyProblem[] = [];
  const connections: ConnectionInfo[] = [];
  const policies: Policy[] = [];
  const detectors: Record<string, Detector> = {};
  const origins: Record<string, SourceLocation> = {};
  const refs: { policy: string; name: string; loc: SourceLocation }[] = [];
  const detectorRefs: { name: string; loc: SourceLocation }[] = [];

  for (const f of sorted) {
    const lc = new LineCounter();
    const doc = parseDocument(f.content, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
    if (doc.errors.length) {
      // Only the first: later syntax errors are mostly consequences of it.
      const e = [...doc.errors].sort((a, b) => a.pos[0] - b.pos[0])[0];
      const pos = lc.linePos(e.pos[0]);
      problems.push({ file: f.path, line: pos.line, column: pos.col, message: `YAML syntax error: ${firstLine(e.message)}` });
      continue;
    }
    let data: unknown;
    try {
      data = doc.toJS({ maxAliasCount: 1000 });
    } catch (err) {
      problems.push({ file: f.path, line: 1, column: 1, message: `YAML error: ${(err as Error).message}` });
      continue;
    }
    if (data === null || data === undefined) continue; // empty file
    const locator = new Locator(doc, lc, f.path);
    const parsed = PolicyFileSchema.safeParse(data);
    if (!parsed.success) {
      const issues = parsed.error.issues as Issue[];
      // "needs at least one of ..." is noise next to an unknown key (a typo) in the same object.
      const typoAt = new Set(issues.filter((i) => i.code === 'unrecognized_keys').map((i) => JSON.stringify(i.path)));
      for (const issue of issues) {
        if (issue.code === 'custom' && typoAt.has(JSON.stringify(issue.path))) continue;
        problems.push(...issueProblems(issue, [], data, locator));
      }
      continue;
    }
    (parsed.data.connections ?? []).forEach((c: ConnectionDecl, i) => {
      const loc = locator.at(['connections', i, 'name']);
      const prev = origins[`connection:${c.name}`];
      if (prev) {
        problems.push({ ...loc, message: `duplicate connection name "${c.name}" (first declared at ${fmtLoc(prev)})` });
        return;
      }
      origins[`connection:${c.name}`] = loc;
      connections.push({ name: c.name, type: c.type, tags: { ...(c.tags ?? {}) } });
    });
    (parsed.data.detectors ?? []).forEach((d, i) => {
      const loc = locator.at(['detectors', i, 'name']);
      const prev = origins[`detector:${d.name}`];
      if (prev) {
        problems.push({ ...loc, message: `duplicate detector name "${d.name}" (first declared at ${fmtLoc(prev)})` });
        return;
      }
      origins[`detector:${d.name}`] = loc;
      const compiled = compileDetector(d);
      if ('error' in compiled) problems.push({ ...locator.at(['detectors', i, 'regex']), message: `detector "${d.name}": ${compiled.error}` });
      else detectors[d.name] = compiled.detector;
    });
    (parsed.data.policies ?? []).forEach((p: Policy, i) => {
      const loc = locator.at(['policies', i, 'name']);
      const prev = origins[`policy:${p.name}`];
      if (prev) {
        problems.push({ ...loc, message: `duplicate policy name "${p.name}" (first defined at ${fmtLoc(prev)})` });
        return;
      }
      origins[`policy:${p.name}`] = loc;
      policies.push(p);
      p.connections.forEach((sel, j) => {
        if (typeof sel === 'string' && !GLOB_CHARS.test(sel)) {
          refs.push({ policy: p.name, name: sel, loc: locator.at(['policies', i, 'connections', j]) });
        }
      });
      (p.mask ?? []).forEach((m, j) => m.detect?.forEach((name, k) => {
        detectorRefs.push({ name, loc: locator.at(['policies', i, 'mask', j, 'detect', k]) });
      }));
    });
  }

  // Skipped when a file is broken: its connections and detectors are unknown, so these would be noise.
  const broken = problems.length > 0;
  const declared = new Set(connections.map((c) => c.name));
  for (const r of broken ? [] : refs) {
    if (!declared.has(r.name)) {
      const known = [...declared].sort();
      problems.push({
        ...r.loc,
        message: `policy "${r.policy}" refers to unknown connection "${r.name}" (declared: ${known.length ? known.join(', ') : 'none'})`,
      });
    }
  }
  const detectorNames = new Set<string>([...DETECTORS, ...Object.keys(detectors)]);
  for (const r of broken ? [] : detectorRefs) {
    if (!detectorNames.has(r.name)) {
      problems.push({ ...r.loc, message: `unknown detector "${r.name}" (valid: ${[...detectorNames].join(', ')})` });
    }
  }
  if (problems.length === 0 && policies.length === 0) {
    problems.push({
      file: '.', line: 0, column: 0,
      message: `no policies found (read ${sorted.length} file${sorted.length === 1 ? '' : 's'}): everything would be denied`,
    });
  }
  if (problems.length) return { problems: sortProblems(problems) };

  const version = typeof opts.version === 'function' ? opts.version() : opts.version ?? hashSorted(sorted);
  return {
    bundle: { dir, version, connections, policies, detectors, files: sorted.map((f) => f.path), origins },
    problems: [],
  };
}

/** `file:line:column: message` lines (`file: message` for problems without a place). */
export function formatProblems(problems: PolicyProblem[], dir?: string): string {
  return problems
    .map((p) => {
      const file = dir ? (p.file === '.' ? dir : join(dir, p.file)) : p.file;
      return p.line > 0 ? `${file}:${p.line}:${p.column}: ${p.message}` : `${file}: ${p.message}`;
    })
    .join('\n');
}

// ---------------------------------------------------------------------------------------------
// Version

/** A copy of `files` sorted by path (code unit order, as `Array.prototype.sort()` sorts paths). */
function sortByPath(files: PolicySourceFile[]): PolicySourceFile[] {
  return [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** `sha256:<first 16 hex>` of the sorted relative paths and contents. */
export function contentVersion(files: PolicySourceFile[]): string {
  return hashSorted(sortByPath(files));
}

/** `contentVersion` of files already sorted by path. */
function hashSorted(sorted: PolicySourceFile[]): string {
  const h = createHash('sha256');
  for (const f of sorted) h.update(f.path).update('\0').update(f.content).update('\0');
  return `sha256:${h.digest('hex').slice(0, 16)}`;
}

function git(dir: string, args: string[]): string | undefined {
  try {
    return execFileSync('git', ['-C', dir, '--no-optional-locks', ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 5000,
      env: { ...process.env, GIT_TERMINAL_PROMPT: '0', LC_ALL: 'C' },
    });
  } catch {
    return undefined;
  }
}

/** `git:<sha>` when `dir` is in a git work tree with nothing uncommitted under it and every
 * loaded file tracked; otherwise the content hash. Tolerates git being absent. */
export function folderVersion(dir: string, files: PolicySourceFile[]): string {
  const head = git(dir, ['rev-parse', '--verify', '-q', 'HEAD'])?.trim();
  if (head && /^[0-9a-f]{40,64}$/.test(head)) {
    const status = git(dir, ['status', '--porcelain', '--untracked-files=all', '--', '.']);
    if (status === '') {
      const tracked = git(dir, ['ls-files', '-z', '--', '.']);
      if (tracked !== undefined) {
        const set = new Set(tracked.split('\0').filter(Boolean));
        if (files.every((f) => set.has(f.path))) return `git:${head}`;
      }
    }
  }
  return contentVersion(files);
}

// ---------------------------------------------------------------------------------------------
// Mapping schema issues to places

interface Issue {
  code: string;
  path: PropertyKey[];
  message: string;
  keys?: string[];
  errors?: Issue[][];
  expected?: string;
  minimum?: number | bigint;
  origin?: string;
}

type Path = (string | number)[];

class Locator {
  constructor(
    private doc: Document,
    private lc: LineCounter,
    private file: string,
  ) {}

  private pos(offset: number): SourceLocation {
    const p = this.lc.linePos(offset);
    return { file: this.file, line: p.line, column: p.col };
  }

  /** The deepest node along `path` (for a missing or empty value: its key, or the parent). */
  at(path: Path, key?: string): SourceLocation {
    let node: unknown = this.doc.contents;
    let keyNode: YamlNode | undefined;
    let last: YamlNode | undefined = isNode(node) ? node : undefined;
    const steps = key === undefined ? path : [...path, key];
    for (let i = 0; i < steps.length; i++) {
      if (isAlias(node)) node = node.resolve(this.doc);
      const seg = steps[i];
      if (isMap(node)) {
        const pair = node.items.find((it) => (isScalar(it.key) ? String(it.key.value) : String(it.key)) === String(seg));
        if (!pair) break;
        keyNode = isNode(pair.key) ? pair.key : undefined;
        if (key !== undefined && i === steps.length - 1) return keyNode?.range ? this.pos(keyNode.range[0]) : this.fallback(last);
        node = pair.value;
        if (isNode(node) && !(isScalar(node) && node.value === null && node.range && node.range[0] === node.range[1])) {
          last = node;
        } else {
          last = keyNode;
          node = undefined;
        }
      } else if (isSeq(node) && typeof seg === 'number') {
        const item = node.items[seg];
        if (!isNode(item)) break;
        node = item;
        last = item;
      } else {
        break;
      }
    }
    return this.fallback(last);
  }

  private fallback(node: YamlNode | undefined): SourceLocation {
    if (node?.range) return this.pos(node.range[0]);
    return { file: this.file, line: 1, column: 1 };
  }
}

function isNode(x: unknown): x is YamlNode {
  return !!x && typeof x === 'object' && 'range' in (x as object);
}

function getAt(data: unknown, path: Path): unknown {
  let v = data;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

function describeValue(v: unknown): string {
  if (v === null) return 'nothing (null)';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `the string ${JSON.stringify(v)}`;
  return `${typeof v} ${String(v)}`;
}

const EXPECTED: Record<string, string> = {
  array: 'a list', object: 'a mapping', record: 'a mapping', string: 'a string',
  number: 'a number', boolean: 'true or false', int: 'a whole number',
};

/** `policies[0].allow[1].sql` */
function pathLabel(path: Path): string {
  let s = '';
  for (const seg of path) s += typeof seg === 'number' ? `[${seg}]` : s ? `.${seg}` : seg;
  return s || 'file';
}

/** Which kind of object lives at `path`, for the list of allowed keys. */
function objectKind(path: Path): keyof typeof ALLOWED_KEYS | undefined {
  const p = path.map((s) => (typeof s === 'number' ? '#' : s)).join('/');
  if (p === '') return 'file';
  if (p === 'connections/#') return 'connection';
  if (p === 'detectors/#') return 'detector';
  if (p === 'policies/#') return 'policy';
  if (p === 'policies/#/subjects/#') return 'subject';
  if (p === 'policies/#/connections/#') return 'selector';
  const m = /^policies\/#\/(allow|review|deny|mask)\/#$/.exec(p);
  if (m) return m[1] as 'allow' | 'review' | 'deny' | 'mask';
  if (p.endsWith('/when')) return 'when';
  return undefined;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

function unknownKeyMessage(path: Path, key: string, data: unknown): string {
  const kind = objectKind(path);
  if (kind === 'connection' && CONNECTION_SECRET_KEYS.includes(key.toLowerCase())) {
    const name = getAt(data, [...path, 'name']);
    const which = typeof name === 'string' ? `connection "${name}"` : 'a connection';
    return `"${key}" is not allowed in ${which}: the policy folder must not contain credentials or addresses (they live in the agent's configuration); a connection has only name, type, tags, description`;
  }
  const allowed: readonly string[] = kind ? ALLOWED_KEYS[kind] : [];
  const close = allowed.filter((k) => editDistance(k, key) <= Math.max(1, Math.floor(k.length / 3)));
  const hint = close.length ? `; did you mean "${close[0]}"?` : '';
  const where = kind === 'file' ? ' at the top level' : '';
  return `unknown key "${key}"${where}${hint}${allowed.length ? ` (allowed: ${allowed.join(', ')})` : ''}`;
}

function issueProblems(issue: Issue, base: Path, data: unknown, loc: Locator): PolicyProblem[] {
  const path: Path = [...base, ...(issue.path as Path)];
  const at = (p: Path = path, key?: string) => loc.at(p, key);
  switch (issue.code) {
    case 'unrecognized_keys':
      return (issue.keys ?? []).map((k) => ({ ...at(path, k), message: unknownKeyMessage(path, k, data) }));
    case 'invalid_union': {
      const branches = issue.errors ?? [];
      // Prefer the branch whose issues are not about the value's type itself.
      const fitting = branches.filter((b) => !b.some((i) => i.code === 'invalid_type' && i.path.length === 0));
      if (fitting.length >= 1) return fitting[0].flatMap((i) => issueProblems(i, path, data, loc));
      const expected = [...new Set(branches.flatMap((b) => b.filter((i) => i.code === 'invalid_type').map((i) => EXPECTED[i.expected ?? ''] ?? i.expected)))];
      const value = getAt(data, path);
      const what = path.length && path[0] === 'policies' && path[2] === 'connections'
        ? 'a connection name or { tags: {...} }'
        : expected.join(' or ');
      return [{ ...at(), message: `${pathLabel(path)}: expected ${what}, got ${describeValue(value)}` }];
    }
    case 'invalid_type': {
      const value = getAt(data, path);
      const last = path[path.length - 1];
      if (value === undefined && typeof last === 'string') {
        return [{ ...at(path.slice(0, -1)), message: `missing required key "${last}"` }];
      }
      const expected = EXPECTED[issue.expected ?? ''] ?? issue.expected ?? 'something else';
      const quote = issue.expected === 'string' && (typeof value === 'number' || typeof value === 'boolean')
        ? ` (quote it: "${String(value)}")` : '';
      return [{ ...at(), message: `${pathLabel(path)}: expected ${expected}, got ${describeValue(value)}${quote}` }];
    }
    case 'too_small':
      if (issue.origin === 'array' || issue.origin === 'string') {
        const custom = !/^Too small/.test(issue.message);
        return [{ ...at(), message: custom ? issue.message : `${pathLabel(path)} must not be empty` }];
      }
      return [{ ...at(), message: `${pathLabel(path)}: ${issue.message}` }];
    default:
      return [{ ...at(), message: issue.message }];
  }
}

function firstLine(s: string): string {
  return s.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
}

function fmtLoc(l: SourceLocation): string {
  return `${l.file}:${l.line}:${l.column}`;
}

function sortProblems(problems: PolicyProblem[]): PolicyProblem[] {
  return problems.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line || a.column - b.column));
}
