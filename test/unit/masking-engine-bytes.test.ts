// ColumnPlan.maskUtf8 (values as UTF-8 bytes) must give exactly what ColumnPlan.mask gives on the
// decoded text: the byte prefilters (Detector.quickUtf8) only decide what need not be decoded,
// and a value that could hold a hit must never skip detection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MaskRuleRef } from '../../src/core/types.ts';
import { DETECTORS as DETECTOR_NAMES, MASK_STRATEGIES, type MaskStrategy } from '../../src/policy/schema.ts';
import { DETECTORS } from '../../src/masking/detectors.ts';
import { compileDetector } from '../../src/masking/custom.ts';
import { Masker, type ColumnPlan } from '../../src/masking/engine.ts';
import { MASKING_CORPUS } from '../fixtures/masking-corpus.ts';

const KEY = Buffer.from('0123456789abcdef0123456789abcdef');
const rule = (r: Omit<MaskRuleRef, 'policy'>): MaskRuleRef => ({ policy: 'p', ...r });
const COLUMNS = [{ name: 'v', table: 'public.t' }];

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

// Pieces that make detectors (and their prefilters) fire or nearly fire, multi-byte characters
// (2, 3 and 4 bytes) and separators.
const PIECES = [
  'a', 'Z', 'x', '0', '1', '4', '9', ' ', '-', '.', '@', ':', '/', '_', '+', '(', ')', '\n',
  'é', 'ß', '€', '中', '😀', '\u0301', '١', '４',
  '4111 1111 1111 1111', '4111-1111-1111-1111', '4111111111111111', '378282246310005', '4111 1111 1111 111',
  '411111111111', '1234567890123', 'alice@example.com', 'bob.smith@mail.example.co.uk', 'icon@2x.png',
  'user@xn--bcher-kva.example', 'a@b.cd', '@example.com', 'user@', 'https://', 'postgres://app:s3cret@db:5432/x',
  '://', 'PRIVATE KEY', '-----BEGIN PRIVATE KEY-----', 'ghp_', 'github_pat_', 'xoxb-', 'xapp-', 'gho_abc',
  '+1 415 555 2671', '123-45-6789', 'SSN ', 'DE89370400440532013000', '192.168.1.1', 'fe80::1', 'AKIA',
  'aws ', 'eyJhbGciOiJIUzI1NiJ9', 'glpat-', '0612345678',
];

function randomText(rand: () => number): string {
  let s = '';
  const n = Math.floor(rand() * 12);
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(rand() * PIECES.length)];
  return s;
}

/** Texts for the comparisons: the whole corpus, edge cases and random texts. */
function texts(count: number, seed: number): string[] {
  const rand = seeded(seed);
  const out = MASKING_CORPUS.map((e) => e.text);
  out.push('', 'a', 'a@b.c', 'a@b.cd', '4111111111111', '4111 1111 1111 1', '1'.repeat(12), '1-'.repeat(13), '€'.repeat(20));
  for (let i = 0; i < count; i++) out.push(randomText(rand));
  return out;
}

/**
 * Asserts maskUtf8 == mask for `text`, with the value alone in its buffer and inside a larger
 * buffer whose surrounding bytes would fire prefilters (they must read only [start, end)).
 */
function assertSame(plan: ColumnPlan, text: string, what: string): void {
  const expected = plan.mask(0, text);
  const want = expected === text ? undefined : expected;
  const bytes = Buffer.from(text, 'utf8');
  assert.equal(plan.maskUtf8(0, bytes, 0, bytes.length), want, `${what}: ${JSON.stringify(text)}`);
  const around = Buffer.from('x@y.example 4111 1111 1111 1111 ://PRIVATE KEY ghp_ xoxb- ');
  const framed = Buffer.concat([around, bytes, around]);
  assert.equal(plan.maskUtf8(0, framed, around.length, around.length + bytes.length), want, `${what} (framed): ${JSON.stringify(text)}`);
}

const custom = (() => {
  const r = compileDetector({ name: 'employee_id', regex: 'EMP-[0-9]{6}' });
  assert.ok('detector' in r);
  return r.detector;
})();

test('quickUtf8 is exactly `quick` on the decoded text, and never false when find finds something', () => {
  const withBytes = Object.values(DETECTORS).filter((d) => d.quickUtf8);
  assert.deepEqual(withBytes.map((d) => d.name).sort(), ['credit_card', 'email', 'github_token', 'private_key', 'slack_token', 'url_password']);
  for (const text of texts(20_000, 1)) {
    const bytes = Buffer.from(text, 'utf8');
    for (const d of withBytes) {
      const q = d.quickUtf8!(bytes, 0, bytes.length);
      assert.equal(q, d.quick!.test(text), `${d.name} quickUtf8 vs quick on ${JSON.stringify(text)}`);
      if (d.find(text).length > 0) assert.ok(q, `${d.name} finds something in ${JSON.stringify(text)}`);
    }
  }
});

test('quickUtf8 on long values (native search) looks only inside [start, end)', () => {
  for (const d of Object.values(DETECTORS).filter((x) => x.quickUtf8)) {
    const filler = Buffer.alloc(1000, 'x');
    const needle = Buffer.from({ credit_card: '4111 1111 1111 1111', email: '@', url_password: '://', private_key: 'PRIVATE KEY', github_token: 'github_pat_', slack_token: 'xapp-' }[d.name]!);
    const buf = Buffer.concat([needle, filler, needle]);
    assert.equal(d.quickUtf8!(buf, needle.length, needle.length + filler.length), false, `${d.name}: needles only outside`);
    assert.equal(d.quickUtf8!(buf, 0, buf.length), true, d.name);
    assert.equal(d.quickUtf8!(buf, 1, buf.length), true, `${d.name}: needle at the very end`);
    // A needle cut short by the end of the value is not there.
    const cut = Buffer.concat([filler, d.name === 'credit_card' ? Buffer.from('4111 1111 111') : needle.subarray(0, needle.length - 1), needle]);
    assert.equal(d.quickUtf8!(cut, 0, cut.length - needle.length), false, `${d.name}: needle cut by the end`);
  }
});

test('maskUtf8 gives the same result as mask: each detector alone, every strategy', () => {
  const all = texts(3_000, 2);
  for (const name of DETECTOR_NAMES) {
    for (const strategy of MASK_STRATEGIES) {
      const plan = new Masker([rule({ detect: [name], with: strategy })], { hashKey: KEY }).plan(COLUMNS);
      for (const text of all) assertSame(plan, text, `${name}/${strategy}`);
    }
  }
});

test('maskUtf8 gives the same result as mask: all detectors, mixed strategies, custom detectors', () => {
  const plans: Array<[string, ColumnPlan]> = [
    ['all/redact', new Masker([rule({ detect: [...DETECTOR_NAMES], with: 'redact' })], { hashKey: KEY }).plan(COLUMNS)],
    ['email+card/redact', new Masker([rule({ detect: ['email', 'credit_card'], with: 'redact' })], { hashKey: KEY }).plan(COLUMNS)],
    ['mixed', new Masker([
      rule({ detect: ['email', 'url_password'], with: 'last4' }),
      rule({ detect: ['credit_card', 'phone'], with: 'hash' }),
      rule({ detect: ['private_key', 'github_token', 'slack_token'], with: 'null' }),
    ], { hashKey: KEY }).plan(COLUMNS)],
    ['custom+email', new Masker([rule({ detect: ['employee_id', 'email'], with: 'format' })], { hashKey: KEY, detectors: { employee_id: custom } }).plan(COLUMNS)],
  ];
  const all = [...texts(20_000, 3), 'EMP-123456', 'id EMP-654321 of a@b.cd'];
  for (const [what, plan] of plans) for (const text of all) assertSame(plan, text, what);
});

test('maskUtf8 on arbitrary bytes (invalid UTF-8 included) matches mask of their decoding', () => {
  const rand = seeded(4);
  const plan = new Masker([rule({ detect: [...DETECTOR_NAMES], with: 'last4' })], { hashKey: KEY }).plan(COLUMNS);
  const ascii = Buffer.from('4111 1111 1111 1111 a@b.cd ://x:y@h PRIVATE KEY ghp_ xoxb-');
  for (let i = 0; i < 20_000; i++) {
    const n = Math.floor(rand() * 40);
    const bytes = Buffer.alloc(n);
    for (let j = 0; j < n; j++) {
      const r = rand();
      // Mostly text that could hit, interleaved with stray continuation/lead bytes.
      bytes[j] = r < 0.6 ? ascii[Math.floor(rand() * ascii.length)] : r < 0.8 ? 0x80 + Math.floor(rand() * 0x40) : 0xc0 + Math.floor(rand() * 0x40);
    }
    const text = bytes.toString('utf8');
    const expected = plan.mask(0, text);
    assert.equal(plan.maskUtf8(0, bytes, 0, n), expected === text ? undefined : expected, JSON.stringify([...bytes]));
  }
});

test('maskUtf8: whole-column rules and columns without rules; stats count the same values', () => {
  const cols = [{ name: 'secret', table: 'public.t' }, { name: 'free', table: 'public.t' }, { name: 'other', table: 'public.t' }];
  const rules = (strategy: MaskStrategy) => [rule({ columns: ['t.secret'], with: strategy }), rule({ columns: ['t.free'], detect: ['email'], with: 'redact' })];
  for (const strategy of MASK_STRATEGIES) {
    const byText = new Masker(rules(strategy), { hashKey: KEY }).plan(cols);
    const byBytes = new Masker(rules(strategy), { hashKey: KEY }).plan(cols);
    for (const text of ['4111 1111 1111 1111', 'Müller', '', 'a@b.cd and 😀', 'x', '[REDACTED]', '****']) {
      const bytes = Buffer.from(text);
      for (let i = 0; i < cols.length; i++) {
        // A whole-value redact is not decoded: it may be returned even when the value already was `[REDACTED]`.
        const got = byBytes.maskUtf8(i, bytes, 0, bytes.length);
        assert.equal(got === undefined ? text : got, byText.mask(i, text), `${strategy} col ${i} ${text}`);
      }
    }
    assert.deepEqual(byBytes.stats(), byText.stats(), strategy);
  }
});

test('email: file extensions are not TLDs (any case, up to 4 letters); other TLDs and IDNs are', () => {
  const found = (text: string) => DETECTORS.email.find(text).map(([s, e]) => text.slice(s, e));
  for (const text of ['icon@2x.png', 'logo@3x.JPEG', 'a@b.json', 'a@b.Html', 'x@y.webp', 'x@y.ts', 'x@y.md', 'x@y.tiff']) {
    assert.deepEqual(found(text), [], text);
  }
  for (const text of ['a@b.cd', 'a@b.com', 'a@b.COM', 'a@b.info', 'a@b.jsonx', 'a@b.png.example.org', 'a@b.xn--p1ai', 'a@b.museum']) {
    assert.deepEqual(found(text), [text], text);
  }
  for (const text of ['a@b.c', 'a@b.c0m', 'a@b.XN--p1ai', 'a@-b.com', 'a@b-.com', 'a..b@c.com', 'a.@b.com', 'http://a@b.com']) {
    assert.deepEqual(found(text), [], text);
  }
});

test('maskUtf8 with more detectors than a skip mask holds (all with byte prefilters) still matches mask', () => {
  // 31 detectors, each finding one letter: more than the engine's skip mask has bits for.
  const letters = 'abcdefghijklmnopqrstuvwxyzABCDE';
  const detectors = Object.fromEntries([...letters].map((ch, k) => [`letter_${k}`, {
    name: `letter_${k}`,
    quick: new RegExp(ch),
    quickUtf8: (buf: Uint8Array, start: number, end: number) => buf.subarray(start, end).includes(ch.charCodeAt(0)),
    find: (text: string) => [...text.matchAll(new RegExp(ch, 'g'))].map((m): [number, number] => [m.index, m.index + 1]),
  }]));
  const plan = new Masker([rule({ detect: Object.keys(detectors), with: 'redact' }), rule({ detect: ['email'], with: 'last4' })],
    { hashKey: KEY, detectors }).plan(COLUMNS);
  for (const text of ['', 'zzz', '123', 'E', 'x@y.cd', 'é😀E', ...texts(500, 5)]) assertSame(plan, text, '32 detectors');
});
