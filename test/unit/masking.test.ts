import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MaskRuleRef } from '../../src/core/types.ts';
import { DETECTORS as DETECTOR_NAMES, MASK_STRATEGIES } from '../../src/policy/schema.ts';
import { DETECTORS, cardBrand, ibanValid, luhnValid, ssnValid, type Detector } from '../../src/masking/detectors.ts';
import {
  REDACTED, STRICTNESS, applyStrategy, formatMask, hmacHash, keepLast4, stricter,
} from '../../src/masking/strategies.ts';
import { Masker, columnMatches, compileColumnPattern } from '../../src/masking/engine.ts';
import { MASKING_CORPUS } from '../fixtures/masking-corpus.ts';

const KEY = Buffer.from('0123456789abcdef0123456789abcdef');
const rule = (r: Omit<MaskRuleRef, 'policy'> & { policy?: string }): MaskRuleRef => ({ policy: 'p', ...r });
const masker = (...rules: MaskRuleRef[]) => new Masker(rules, { hashKey: KEY });

// ---------------------------------------------------------------------------------------------
// Detectors: corpus precision and recall

test('every detector named by the policy schema exists, and no other', () => {
  assert.deepEqual(Object.keys(DETECTORS).sort(), [...DETECTOR_NAMES].sort());
  for (const [name, d] of Object.entries(DETECTORS)) assert.equal(d.name, name);
});

test('corpus: precision and recall per detector and overall', () => {
  assert.ok(MASKING_CORPUS.length >= 200, `corpus has ${MASKING_CORPUS.length} entries`);
  for (const name of DETECTOR_NAMES) {
    assert.ok(MASKING_CORPUS.filter((e) => e.detector === name).length >= 5, `several positives for ${name}`);
  }
  const per = new Map<string, { tp: number; fp: number; fn: number }>(DETECTOR_NAMES.map((n) => [n, { tp: 0, fp: 0, fn: 0 }]));
  const misses: string[] = [];
  for (const e of MASKING_CORPUS) {
    assert.ok(e.negative !== (e.detector !== undefined), `entry is either negative or names a detector: ${e.text}`);
    for (const name of DETECTOR_NAMES) {
      const spans = DETECTORS[name].find(e.text);
      const c = per.get(name)!;
      if (e.detector === name) {
        let hit = spans.length > 0;
        if (e.secret !== undefined) {
          const s = e.text.indexOf(e.secret);
          assert.ok(s >= 0, `secret is part of the text: ${e.why}`);
          hit = spans.some(([a, b]) => a <= s && b >= s + e.secret!.length);
        }
        if (hit) c.tp++;
        else {
          c.fn++;
          misses.push(`missed ${name}: ${e.why}`);
        }
      } else if (spans.length > 0 && !e.also?.includes(name)) {
        c.fp++;
        misses.push(`false ${name}: ${e.why} (${JSON.stringify(e.text.slice(0, 60))})`);
      }
    }
  }
  const ratio = (a: number, b: number) => (b === 0 ? 1 : a / b);
  let tp = 0;
  let fp = 0;
  let fn = 0;
  const positives = MASKING_CORPUS.filter((e) => e.detector).length;
  console.log(`# masking corpus: ${MASKING_CORPUS.length} entries (${positives} positive, ${MASKING_CORPUS.length - positives} negative)`);
  for (const [name, c] of per) {
    tp += c.tp;
    fp += c.fp;
    fn += c.fn;
    console.log(`# masking ${name.padEnd(13)} precision ${ratio(c.tp, c.tp + c.fp).toFixed(3)} recall ${ratio(c.tp, c.tp + c.fn).toFixed(3)} (tp ${c.tp}, fp ${c.fp}, fn ${c.fn})`);
  }
  const precision = ratio(tp, tp + fp);
  const recall = ratio(tp, tp + fn);
  console.log(`# masking overall       precision ${precision.toFixed(3)} recall ${recall.toFixed(3)} (tp ${tp}, fp ${fp}, fn ${fn})`);
  for (const m of misses) console.log(`# masking   ${m}`);
  assert.ok(precision >= 0.97, `overall precision ${precision}`);
  assert.ok(recall >= 0.97, `overall recall ${recall}`);
});

test('the free-text card example is masked', () => {
  const m = masker(rule({ detect: ['credit_card'], with: 'last4' }));
  assert.equal(m.maskText('paid with 4111 1111 1111 1111 ok'), 'paid with **** **** **** 1111 ok');
  const r = masker(rule({ detect: ['credit_card'], with: 'redact' }));
  assert.equal(r.maskText('paid with 4111 1111 1111 1111 ok'), `paid with ${REDACTED} ok`);
});

test('validators: Luhn, card brands, IBAN mod-97, SSN ranges', () => {
  assert.ok(luhnValid('79927398713'));
  assert.ok(!luhnValid('79927398710'));
  assert.equal(cardBrand('4111111111111111'), 'visa');
  assert.equal(cardBrand('411111111111116'), undefined); // Visa prefix, 15 digits
  assert.equal(cardBrand('2720990000000007'), 'mastercard');
  assert.equal(cardBrand('2721000000000000'), undefined);
  assert.equal(cardBrand('378282246310005'), 'amex');
  assert.equal(cardBrand('6500000000000002'), 'discover');
  assert.equal(cardBrand('3589000000000000'), 'jcb');
  assert.equal(cardBrand('3600000000000000'), 'diners');
  assert.equal(cardBrand('6200000000000005'), 'unionpay');
  assert.ok(ibanValid('DE89370400440532013000'));
  assert.ok(!ibanValid('DE89370400440532013001'));
  assert.ok(!ibanValid('DE8937040044053201300')); // length
  assert.ok(ssnValid('536', '22', '8945'));
  for (const [a, g, s] of [['000', '12', '3456'], ['666', '12', '3456'], ['900', '12', '3456'], ['999', '12', '3456'], ['123', '00', '4567'], ['123', '45', '0000']]) {
    assert.ok(!ssnValid(a, g, s), `${a}-${g}-${s}`);
  }
});

test('detectors return exact spans', () => {
  const find = (name: keyof typeof DETECTORS, text: string) => DETECTORS[name].find(text).map(([a, b]) => text.slice(a, b));
  assert.deepEqual(find('credit_card', 'a 4111-1111-1111-1111 b'), ['4111-1111-1111-1111']);
  assert.deepEqual(find('email', 'x <bob@example.com>.'), ['bob@example.com']);
  assert.deepEqual(find('url_password', 'postgres://u:pw@h/db and mysql://r:x@y/z'), ['pw', 'x']);
  assert.deepEqual(find('ip', '1.2.3.4 and 1.2.3.4.5 and ::1'), ['1.2.3.4', '::1']);
  assert.deepEqual(find('iban', 'DE89 3704 0044 0532 0130 00 rest'), ['DE89 3704 0044 0532 0130 00']);
  assert.deepEqual(find('ssn', '536-22-8945 and 536228945'), ['536-22-8945']);
  const pem = ['-----BEGIN ', 'PRIVATE KEY-----\nAAAA\n-----END ', 'PRIVATE KEY-----'].join('');
  assert.deepEqual(find('private_key', `a ${pem} b`), [pem]);
  // A block without END: masked over what looks like key material only.
  const cut = ['-----BEGIN ', 'PRIVATE KEY-----\nAAAA+/BB\n'].join('');
  assert.deepEqual(find('private_key', `${cut}$ whoami`), [cut]);
});

test('detectors stay linear on hostile input', () => {
  const inputs = [
    'a'.repeat(200_000) + '@',
    '@'.repeat(50_000) + 'a'.repeat(50_000),
    '1 '.repeat(100_000),
    '4'.repeat(200_000),
    'ey' + 'A'.repeat(200_000) + '.',
    ':'.repeat(100_000) + 'f',
    '1.'.repeat(100_000),
    'http://'.repeat(30_000),
    ['-----BEGIN ', 'PRIVATE KEY-----'].join('').repeat(5_000),
  ];
  for (const text of inputs) {
    const t0 = performance.now();
    for (const d of Object.values(DETECTORS)) d.find(text);
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `${JSON.stringify(text.slice(0, 20))}... took ${ms.toFixed(0)} ms`);
  }
});

// ---------------------------------------------------------------------------------------------
// Strategies

test('strategies: exact outputs', () => {
  assert.equal(applyStrategy('redact', 'anything', KEY), '[REDACTED]');
  assert.equal(applyStrategy('null', 'anything', KEY), null);
  assert.equal(applyStrategy('null', 'anything', KEY, true), '[REDACTED]');
  assert.equal(keepLast4('4111 1111 1111 1234'), '**** **** **** 1234');
  assert.equal(applyStrategy('partial', '4111-1111-1111-1234', KEY), '****-****-****-1234');
  assert.equal(applyStrategy('last4', 'alice@example.com', KEY), '*****@******e.com');
  assert.equal(keepLast4('123456'), '****56'); // at least 4 hidden
  assert.equal(keepLast4('1234'), '****');
  assert.equal(keepLast4(''), '');
  assert.equal(keepLast4('---'), '---');
  assert.equal(formatMask('4111-1111-1111-1234'), '****-****-****-1234');
  assert.equal(formatMask('4111 1111 1111 1234'), '**** **** **** 1234');
  assert.equal(formatMask('123-45-6789'), '***-**-6789');
  assert.equal(formatMask('AB12 CD34 5678 9012'), '**** **** **** 9012');
  assert.equal(formatMask('alice@example.com'), '*****@*******.***');
  assert.equal(formatMask('+1 (415) 555-2671'), '+* (***) ***-2671');
  assert.equal(formatMask('Müller 12345678'), '****** ****5678');
  assert.equal(keepLast4('Grüße 12'), '****e 12'); // 7 letters/digits: 3 kept
});

test('format keeps the shape: same length and separators', () => {
  for (const v of ['4111-1111-1111-1234', '3782 822463 10005', 'DE89 3704 0044 0532 0130 00', '+44 (0)20 7946 0958', 'x']) {
    const out = formatMask(v);
    assert.equal(out.length, v.length);
    for (let i = 0; i < v.length; i++) {
      if (!/[A-Za-z0-9]/.test(v[i])) assert.equal(out[i], v[i]);
      else assert.ok(out[i] === '*' || out[i] === v[i]);
    }
    assert.ok(!/[A-Za-z]/.test(out));
  }
});

test('hash: deterministic, keyed, prefixed', () => {
  const a = hmacHash(KEY, 'alice@example.com');
  assert.match(a, /^hmac:[0-9a-f]{16}$/);
  assert.equal(hmacHash(KEY, 'alice@example.com'), a);
  assert.notEqual(hmacHash(KEY, 'bob@example.com'), a);
  assert.notEqual(hmacHash(Buffer.from('another key, another hash value'), 'alice@example.com'), a);
  assert.equal(applyStrategy('hash', 'alice@example.com', KEY), a);
});

test('strictness order: null > redact > hash > format > partial = last4', () => {
  const order = ['null', 'redact', 'hash', 'format', 'partial'] as const;
  for (let i = 0; i + 1 < order.length; i++) assert.ok(STRICTNESS[order[i]] > STRICTNESS[order[i + 1]]);
  assert.equal(STRICTNESS.partial, STRICTNESS.last4);
  assert.deepEqual(Object.keys(STRICTNESS).sort(), [...MASK_STRATEGIES].sort());
  assert.equal(stricter('last4', 'hash'), 'hash');
  assert.equal(stricter('null', 'redact'), 'null');
});

// ---------------------------------------------------------------------------------------------
// Rules and plans

test('column patterns: bare, table.column, schema.table.column, globs, case', () => {
  const m = (pattern: string, name: string, table?: string) => columnMatches(compileColumnPattern(pattern), { name, table });
  assert.ok(m('email', 'email', 'public.users'));
  assert.ok(m('email', 'email')); // bare: table unknown is fine
  assert.ok(m('EMAIL', 'Email', 'public.users'));
  assert.ok(!m('email', 'email2', 'public.users'));
  assert.ok(m('*_email', 'billing_email'));
  assert.ok(m('users.email', 'email', 'users'));
  assert.ok(m('users.email', 'email', 'public.users'));
  assert.ok(m('users.email', 'email', 'crm.users'));
  assert.ok(!m('users.email', 'email', 'public.customers'));
  assert.ok(!m('users.email', 'email')); // table unknown: only bare patterns apply
  assert.ok(m('public.users.email', 'email', 'public.users'));
  assert.ok(!m('public.users.email', 'email', 'crm.users'));
  assert.ok(!m('public.users.email', 'email', 'users'));
  assert.ok(m('public.*.email', 'email', 'public.orders'));
  assert.ok(m('*.card_number', 'card_number', 'public.customers'));
  assert.ok(m('customers.*', 'anything', 'sales.customers'));
  assert.ok(m('cust?mers.card', 'card', 'customers'));
  assert.ok(m('public.*', 'x', 'public.t')); // * spans dots
  assert.ok(!m('*.email', 'email'));
});

test('plan: column rules, strictest wins, detect everywhere, detect scoped to columns', () => {
  const m = masker(
    rule({ columns: ['customers.card_number'], with: 'last4' }),
    rule({ policy: 'q', columns: ['card_number'], with: 'hash' }),
    rule({ columns: ['ssn', '*.tax_id'], with: 'null' }),
    rule({ columns: ['notes'], detect: ['email'], with: 'redact' }),
    rule({ detect: ['credit_card'], with: 'format' }),
  );
  const plan = m.plan([
    { name: 'id', table: 'public.customers' },
    { name: 'card_number', table: 'public.customers' },
    { name: 'ssn' },
    { name: 'notes', table: 'public.customers' },
    { name: 'tax_id', table: 'hr.people' },
    { name: 'comment' },
  ]);
  assert.ok(plan.active);
  assert.deepEqual(plan.modes, ['scan', 'whole', 'whole', 'scan', 'whole', 'scan']);
  // hash (policy q) is stricter than last4 on the same column
  assert.equal(plan.mask(1, '4111111111111111'), hmacHash(KEY, '4111111111111111'));
  assert.equal(plan.mask(2, '536-22-8945'), null);
  assert.equal(plan.mask(4, '12-3456789'), null);
  // notes: email (scoped) and credit_card (global) detectors
  assert.equal(plan.mask(3, 'mail bob@example.com card 4111 1111 1111 1111'), `mail ${REDACTED} card **** **** **** 1111`);
  // comment: only the global credit_card rule
  assert.equal(plan.mask(5, 'mail bob@example.com card 4111111111111111'), 'mail bob@example.com card ************1111');
  // id: credit_card scan, nothing found
  assert.equal(plan.mask(0, '42'), '42');
});

test('plan: a column rule takes the whole value even when detect rules also apply', () => {
  const m = masker(rule({ columns: ['email'], with: 'format' }), rule({ detect: ['email'], with: 'null' }));
  const plan = m.plan([{ name: 'email', table: 'users' }, { name: 'other', table: 'users' }]);
  assert.deepEqual(plan.modes, ['whole', 'scan']);
  assert.equal(plan.mask(0, 'a@example.com'), '*@*******.***');
  assert.equal(plan.mask(1, 'x a@example.com'), null); // detect with null: the whole value becomes NULL
  assert.equal(plan.mask(1, 'nothing here'), 'nothing here');
});

test('same detector in several rules: strictest strategy; overlapping hits merge', () => {
  const m = masker(rule({ detect: ['email'], with: 'last4' }), rule({ detect: ['email', 'url_password'], with: 'hash' }));
  const out = m.maskText('to bob@example.com');
  assert.equal(out, `to ${hmacHash(KEY, 'bob@example.com')}`);
  const both = masker(rule({ detect: ['url_password'], with: 'redact' }), rule({ detect: ['ip'], with: 'last4' }));
  assert.equal(both.maskText('mysql://root:pw@10.0.0.1/db'), `mysql://root:${REDACTED}@**.*.*.1/db`);
});

test('maskText: every detect rule (column-scoped ones too), no column-only rules; null acts as redact', () => {
  const m = masker(
    rule({ columns: ['email'], with: 'redact' }),
    rule({ columns: ['notes'], detect: ['email'], with: 'null' }),
    rule({ detect: ['ssn'], with: 'format' }),
  );
  assert.equal(
    m.maskText('ERROR: Key (email)=(heidi@example.com) exists; ssn 536-22-8945'),
    `ERROR: Key (email)=(${REDACTED}) exists; ssn ***-**-8945`,
  );
  const columnsOnly = masker(rule({ columns: ['email'], with: 'redact' }));
  const text = 'ERROR: Key (email)=(heidi@example.com) exists';
  assert.equal(columnsOnly.maskText(text), text);
  assert.ok(!columnsOnly.empty);
});

test('empty and inactive fast paths', () => {
  const none = masker();
  assert.ok(none.empty);
  const p = none.plan([{ name: 'email', table: 'users' }]);
  assert.equal(p.active, false);
  assert.deepEqual(p.modes, ['none']);
  assert.equal(none.maskText('bob@example.com'), 'bob@example.com');

  const m = masker(rule({ columns: ['customers.card_number'], with: 'last4' }));
  assert.ok(!m.empty);
  const other = m.plan([{ name: 'id', table: 'public.orders' }, { name: 'card_number', table: 'public.orders' }]);
  assert.equal(other.active, false);
  assert.deepEqual(other.modes, ['none', 'none']);
  assert.equal(other.mask(1, '4111111111111111'), '4111111111111111');
  assert.deepEqual(other.stats(), []);
});

test('unchanged values are returned as they are; changed ones are new strings', () => {
  const m = masker(rule({ detect: ['email', 'credit_card'], with: 'redact' }));
  const plan = m.plan([{ name: 'c' }]);
  const plain = ['hello', '12345', '', 'alice at example', 'order 1234567812345670'];
  for (const v of plain) assert.equal(plan.mask(0, v), v);
  assert.notEqual(plan.mask(0, 'x bob@example.com'), 'x bob@example.com');
  assert.deepEqual(plan.stats(), [{ column: 'c', strategy: 'redact', values: 1 }]);
});

test('stats: per masked column, counts only, never values', () => {
  const m = masker(
    rule({ columns: ['users.email'], with: 'hash' }),
    rule({ detect: ['credit_card'], with: 'last4' }),
    rule({ detect: ['email'], with: 'redact' }),
  );
  const plan = m.plan([{ name: 'id', table: 'public.users' }, { name: 'email', table: 'public.users' }, { name: 'note' }]);
  plan.mask(0, '1');
  plan.mask(1, 'a@example.com');
  plan.mask(1, 'b@example.com');
  plan.mask(2, 'nothing');
  plan.mask(2, 'card 4111111111111111');
  plan.mask(2, 'mail b@example.com');
  const stats = plan.stats();
  assert.deepEqual(stats, [
    { column: 'public.users.email', strategy: 'hash', values: 2 },
    { column: 'note', strategy: 'redact,last4', values: 2 },
  ]);
  assert.ok(!JSON.stringify(stats).includes('example.com'));
  assert.ok(!JSON.stringify(stats).includes('4111'));
});

test('plan results are cached per column and plans are independent', () => {
  const m = masker(rule({ columns: ['email'], with: 'redact' }));
  const a = m.plan([{ name: 'email' }]);
  const b = m.plan([{ name: 'email' }]);
  a.mask(0, 'x@example.com');
  assert.equal(a.stats()[0].values, 1);
  assert.deepEqual(b.stats(), []);
});

test('constructor rejects unknown strategies and detectors, and hash without a key', () => {
  assert.throws(() => masker(rule({ columns: ['a'], with: 'shuffle' })), /unknown mask strategy "shuffle"/);
  assert.throws(() => masker(rule({ detect: ['passport'], with: 'redact' })), /unknown detector "passport"/);
  assert.throws(() => new Masker([rule({ columns: ['a'], with: 'hash' })], { hashKey: Buffer.alloc(0) }), /hash strategy needs a key/);
  assert.ok(new Masker([rule({ columns: ['a'], with: 'redact' })], { hashKey: Buffer.alloc(0) }));
});

test('custom detectors plug in by name', () => {
  const employeeId: Detector = {
    name: 'employee_id',
    find: (text) => [...text.matchAll(/\bEMP-\d{6}\b/g)].map((m) => [m.index, m.index + m[0].length]),
  };
  const m = new Masker([rule({ detect: ['employee_id', 'email'], with: 'redact' })], { hashKey: KEY, detectors: { employee_id: employeeId } });
  assert.equal(m.maskText('EMP-123456 is bob@example.com'), `${REDACTED} is ${REDACTED}`);
  // built-in names cannot be replaced
  const fake: Detector = { name: 'email', find: () => [] };
  const m2 = new Masker([rule({ detect: ['email'], with: 'redact' })], { hashKey: KEY, detectors: { email: fake } });
  assert.equal(m2.maskText('bob@example.com'), REDACTED);
});
