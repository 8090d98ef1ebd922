// Masking engine throughput: 100k rows x 5 columns (id, name, email, card number, free text),
// masked as an adapter would, per rule set: values as strings (ColumnPlan.mask) and as UTF-8
// bytes in one buffer per row (ColumnPlan.maskUtf8, decoded only when needed). Prints rows/s; no
// assertions.
//
//   node --import tsx bench/masking.ts [--rows 100000] [--rounds 3]
import { parseArgs } from 'node:util';
import type { MaskRuleRef } from '../src/core/types.ts';
import { DETECTORS } from '../src/policy/schema.ts';
import { Masker, type ColumnMeta } from '../src/masking/engine.ts';

const { values: args } = parseArgs({
  options: { rows: { type: 'string', default: '100000' }, rounds: { type: 'string', default: '3' } },
});
const ROWS = Number(args.rows);
const ROUNDS = Number(args.rounds);

const FIRST = ['Alice', 'Bob', 'Carol', 'Dave', 'Eve', 'Frank', 'Grace', 'Heidi', 'Ivan', 'Judy'];
const LAST = ['Smith', 'Jones', 'Müller', 'García', 'Dubois', 'Rossi', 'Nowak', 'Kim', 'Singh', 'Okafor'];
const CARDS = ['4111 1111 1111 1111', '5555-5555-5555-4444', '378282246310005', '6011111111111117', '4012888888881881'];
const NOTES = [
  'called about the late delivery, promised a refund',
  'VIP customer since 2019; prefers email',
  'paid with 4111 1111 1111 1111 ok',
  'reach at +1 415 555 2671 after 5pm',
  'order ORD-2024-000123 shipped 2024-03-05',
  '',
  'asked to change address to 221B Baker Street',
  'duplicate of ticket 48213',
];

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

const rand = seeded(42);
const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
const rows: string[][] = [];
for (let i = 0; i < ROWS; i++) {
  const first = pick(FIRST);
  const last = pick(LAST);
  rows.push([
    String(100000 + i),
    `${first} ${last}`,
    `${first.toLowerCase()}.${i}@example.com`,
    pick(CARDS),
    pick(NOTES),
  ]);
}
// The same rows as UTF-8 bytes: one buffer per row and the [start, end) of each value.
const encoded = rows.map((row) => {
  const parts = row.map((v) => Buffer.from(v, 'utf8'));
  const bounds: number[] = [];
  let off = 0;
  for (const p of parts) bounds.push(off, (off += p.length));
  return { buf: Buffer.concat(parts), bounds };
});
const columns: ColumnMeta[] = [
  { name: 'id', table: 'public.customers' },
  { name: 'name', table: 'public.customers' },
  { name: 'email', table: 'public.customers' },
  { name: 'card_number', table: 'public.customers' },
  { name: 'notes', table: 'public.customers' },
];

const p = (r: Omit<MaskRuleRef, 'policy'>): MaskRuleRef => ({ policy: 'bench', ...r });
const SCENARIOS: Array<[string, MaskRuleRef[]]> = [
  ['no rule applies (inactive plan)', [p({ columns: ['orders.secret'], with: 'redact' })]],
  ['column rules (email hash, card last4, notes redact)', [
    p({ columns: ['customers.email'], with: 'hash' }),
    p({ columns: ['customers.card_number'], with: 'last4' }),
    p({ columns: ['notes'], with: 'redact' }),
  ]],
  ['card last4 + detect email+credit_card (bench/masking-pg)', [
    p({ columns: ['customers.card_number'], with: 'last4' }),
    p({ detect: ['email', 'credit_card'], with: 'redact' }),
  ]],
  ['detect credit_card+email+phone+ssn on every column', [p({ detect: ['credit_card', 'email', 'phone', 'ssn'], with: 'redact' })]],
  ['detect all 13 detectors on every column', [p({ detect: [...DETECTORS], with: 'redact' })]],
  ['detect all, scoped to notes + column rules', [
    p({ columns: ['customers.email'], with: 'hash' }),
    p({ columns: ['customers.card_number'], with: 'format' }),
    p({ columns: ['notes'], detect: [...DETECTORS], with: 'redact' }),
  ]],
];

const key = Buffer.from('bench-key-bench-key-bench-key-32');
console.log(`masking bench: ${ROWS} rows x ${columns.length} columns, best of ${ROUNDS} rounds`);
for (const [label, rules] of SCENARIOS) {
  const masker = new Masker(rules, { hashKey: key });
  let best = Infinity;
  let masked = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now();
    const plan = masker.plan(columns);
    let changed = 0;
    if (plan.active) {
      for (const row of rows) {
        for (let i = 0; i < row.length; i++) if (plan.mask(i, row[i]) !== row[i]) changed++;
      }
    }
    best = Math.min(best, performance.now() - t0);
    masked = changed;
  }
  if (!new Masker(rules, { hashKey: key }).plan(columns).active) {
    console.log(`${label.padEnd(54)} skipped: plan inactive, rows forwarded untouched (${(best * 1000).toFixed(1)} us per plan)`);
    continue;
  }
  let bestUtf8 = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now();
    const plan = masker.plan(columns);
    let changed = 0;
    for (const { buf, bounds } of encoded) {
      for (let i = 0; i < columns.length; i++) if (plan.maskUtf8(i, buf, bounds[2 * i], bounds[2 * i + 1]) !== undefined) changed++;
    }
    bestUtf8 = Math.min(bestUtf8, performance.now() - t0);
    if (changed !== masked) throw new Error(`maskUtf8 masked ${changed} values, mask ${masked}`);
  }
  const rps = (ms: number) => Math.round(ROWS / (ms / 1000)).toLocaleString('en-US').padStart(12);
  console.log(`${label.padEnd(54)} ${rps(best)} rows/s  (${best.toFixed(0)} ms, ${masked} values masked)`);
  console.log(`${'  same, from UTF-8 bytes (maskUtf8)'.padEnd(54)} ${rps(bestUtf8)} rows/s  (${bestUtf8.toFixed(0)} ms)`);
}
