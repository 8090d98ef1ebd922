// Custom detectors declared in policy files: compilation, matching, and the problems the loader
// reports for bad declarations and references.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { compileDetector } from '../../src/masking/custom.ts';
import type { Detector } from '../../src/masking/detectors.ts';
import { Masker } from '../../src/masking/engine.ts';
import { formatProblems, loadPolicyFiles, type PolicyProblem } from '../../src/policy/loader.ts';
import type { CustomDetectorDecl } from '../../src/policy/schema.ts';

function detector(decl: Omit<CustomDetectorDecl, 'name'>): Detector {
  const r = compileDetector({ name: 'd', ...decl });
  if ('error' in r) throw new Error(r.error);
  return r.detector;
}

/** The matched texts, in order. */
function found(d: Detector, text: string): string[] {
  return d.find(text).map(([s, e]) => text.slice(s, e));
}

const POLICY = `policies:
  - name: p
    subjects: [{ group: g }]
    connections: ["*"]
    mask:
      - detect: [employee_id]
        with: redact
`;

function load(files: Record<string, string>) {
  return loadPolicyFiles(Object.entries(files).map(([path, content]) => ({ path, content })));
}

/** Loads and returns the only problem, asserting there is exactly one. */
function oneProblem(files: Record<string, string>): PolicyProblem {
  const r = load(files);
  assert.equal(r.bundle, undefined);
  assert.equal(r.problems.length, 1, formatProblems(r.problems));
  return r.problems[0];
}

/** A file declaring one detector whose body (indented keys) is `body`. */
const declaring = (body: string) => `detectors:\n  - name: employee_id\n${body}`;

describe('regex detectors', () => {
  test('every match is a span; case-sensitive unless told otherwise', () => {
    const d = detector({ regex: 'EMP-[0-9]{6}' });
    assert.deepEqual(d.find('ids EMP-123456, EMP-000001.'), [[4, 14], [16, 26]]);
    assert.deepEqual(found(d, 'emp-123456 EMP-12345'), []);
    assert.deepEqual(found(detector({ regex: 'EMP-[0-9]{6}', case_sensitive: false }), 'emp-123456'), ['emp-123456']);
    assert.deepEqual(found(detector({ regex: '(?i)emp-[0-9]{6}' }), 'EMP-123456'), ['EMP-123456']);
  });

  test('offsets are UTF-16 offsets, as the engine expects', () => {
    const d = detector({ regex: 'EMP-[0-9]{6}' });
    const text = '😀 Müller EMP-123456';
    const [[s, e]] = d.find(text);
    assert.equal(text.slice(s, e), 'EMP-123456');
  });

  test('validators drop matches that fail them', () => {
    const cases: [CustomDetectorDecl['validator'], string, string, string][] = [
      ['luhn', '[0-9]{11}', '79927398713', '79927398710'],
      ['credit_card', '[0-9]{16}', '4111111111111111', '4111111111111112'],
      ['iban', '[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}', 'DE89370400440532013000', 'DE89370400440532013001'],
      ['ssn', '[0-9]{3}-[0-9]{2}-[0-9]{4}', '536-22-8945', '000-22-8945'],
    ];
    for (const [validator, regex, good, bad] of cases) {
      const d = detector({ regex, validator });
      assert.deepEqual(found(d, `a ${good} b ${bad} c`), [good], validator);
    }
    // Luhn over the digits of the match: separators inside it do not matter.
    assert.deepEqual(found(detector({ regex: 'ACCT [0-9 ]{13}', validator: 'luhn' }), 'ACCT 7992 7398 713'), ['ACCT 7992 7398 713']);
  });

  test('RE2 matching stays linear where a backtracking engine would not', () => {
    const d = detector({ regex: '(a+)+b' });
    const t = performance.now();
    assert.deepEqual(d.find('a'.repeat(100_000) + '!'), []);
    assert.ok(performance.now() - t < 2000, 'linear time');
  });

  test('plugs into the masking engine by name', () => {
    const m = new Masker([{ policy: 'p', detect: ['employee_id', 'email'], with: 'redact' }], {
      hashKey: Buffer.alloc(0),
      detectors: { employee_id: detector({ regex: 'EMP-[0-9]{6}' }) },
    });
    assert.equal(m.plan([{ name: 'note' }]).mask(0, 'EMP-123456 to ada@example.com'), '[REDACTED] to [REDACTED]');
    assert.equal(m.maskText('who is EMP-123456?'), 'who is [REDACTED]?');
    assert.throws(() => new Masker([{ policy: 'p', detect: ['codenames'], with: 'redact' }], { hashKey: Buffer.alloc(0) }),
      /unknown detector "codenames"/);
  });
});

describe('word detectors', () => {
  const birds = detector({ words: ['bluebird', 'nightjar'] });

  test('whole words only, any case by default', () => {
    assert.deepEqual(found(birds, 'Bluebird, NIGHTJAR and nightjar.'), ['Bluebird', 'NIGHTJAR', 'nightjar']);
    assert.deepEqual(found(birds, 'bluebirds xnightjar nightjar_2 bluebird9'), []);
    assert.deepEqual(found(birds, 'bluebird nightjar'), ['bluebird', 'nightjar'], 'adjacent words share a separator');
    assert.deepEqual(found(birds, 'bluebird'), ['bluebird']);
  });

  test('case_sensitive: true', () => {
    const d = detector({ words: ['Bluebird'], case_sensitive: true });
    assert.deepEqual(found(d, 'Bluebird bluebird BLUEBIRD'), ['Bluebird']);
  });

  test('letters of any script count for boundaries; punctuation in words is literal', () => {
    const d = detector({ words: ['Müller', 'c++', 'a.b'] });
    assert.deepEqual(found(d, 'herr MÜLLER, Müllers, c++ and axb, a.b'), ['MÜLLER', 'c++', 'a.b']);
    assert.deepEqual(found(d, 'Müllerová'), []);
  });

  test('the longest word wins at the same place', () => {
    const d = detector({ words: ['new', 'new york'] });
    assert.deepEqual(found(d, 'new york city'), ['new york']);
    assert.deepEqual(found(d, 'new yorker'), ['new']);
  });
});

describe('policy files', () => {
  test('a bundle carries its detectors, declared in any file and used from any other', () => {
    const r = load({
      'detectors.yaml': 'detectors:\n  - name: employee_id\n    regex: "EMP-[0-9]{6}"\n  - name: codenames\n    words: [bluebird]\n',
      'p.yaml': POLICY.replace('[employee_id]', '[employee_id, codenames, email]'),
    });
    assert.deepEqual(r.problems, [], formatProblems(r.problems));
    assert.deepEqual(Object.keys(r.bundle!.detectors).sort(), ['codenames', 'employee_id']);
    assert.equal(r.bundle!.origins?.['detector:codenames']?.line, 4);
    const m = new Masker([{ policy: 'p', detect: ['employee_id', 'codenames'], with: 'redact' }], {
      hashKey: Buffer.alloc(0), detectors: r.bundle!.detectors,
    });
    assert.equal(m.maskText('EMP-123456 flies bluebird'), '[REDACTED] flies [REDACTED]');
  });

  test('invalid declarations are problems at their place', () => {
    const cases: [string, number, number, RegExp][] = [
      ['    regex: "[a-"\n', 3, 12, /^detector "employee_id": invalid regex "\[a-": missing closing \]/],
      ['    regex: "[0-9]*"\n', 3, 12, /^detector "employee_id": regex "\[0-9\]\*" can match the empty string$/],
      ['    regex: "x|\\\\b"\n', 3, 12, /can match the empty string/],
      ['    regex: "x"\n    validator: crc32\n', 4, 16, /^unknown validator "crc32" \(valid: luhn, credit_card, iban, ssn\)$/],
      ['    regex: "x"\n    words: [y]\n', 2, 5, /^a detector needs exactly one of regex, words$/],
      ['    case_sensitive: true\n', 2, 5, /^a detector needs exactly one of regex, words$/],
      ['    words: [y]\n    validator: luhn\n', 4, 16, /^validator applies to regex detectors only$/],
      ['    words: []\n', 3, 12, /^words must not be empty$/],
      ['    regx: "x"\n', 3, 5, /^unknown key "regx"; did you mean "regex"\? \(allowed: name, description, regex, validator, words, case_sensitive\)$/],
    ];
    for (const [body, line, column, re] of cases) {
      const p = oneProblem({ 'd.yaml': declaring(body), 'p.yaml': POLICY });
      assert.deepEqual([p.file, p.line, p.column], ['d.yaml', line, column], `${body}: ${p.message}`);
      assert.match(p.message, re);
    }
  });

  test('backreferences and look-around are refused with the reason', () => {
    const cases: [string, RegExp][] = [
      ['(a)\\\\1', /^detector "employee_id": invalid regex "\(a\)\\\\1": backreferences are not supported \(RE2 syntax; invalid escape sequence: `\\1`\)$/],
      ['(?<=x)y', /: look-ahead and look-behind are not supported \(RE2 syntax; /],
      ['(?<!x)y', /: look-ahead and look-behind are not supported \(RE2 syntax; /],
      ['x(?=y)', /: look-ahead and look-behind are not supported \(RE2 syntax; /],
    ];
    for (const [regex, re] of cases) {
      const p = oneProblem({ 'd.yaml': declaring(`    regex: "${regex}"\n`), 'p.yaml': POLICY });
      assert.deepEqual([p.line, p.column], [3, 12], p.message);
      assert.match(p.message, re);
    }
  });

  test('names: lower-case, not a built-in, unique across files', () => {
    let p = oneProblem({ 'd.yaml': 'detectors:\n  - name: Employee-ID\n    regex: x\n', 'p.yaml': POLICY });
    assert.deepEqual([p.line, p.column], [2, 11]);
    assert.match(p.message, /^detector name must start with a lower-case letter/);

    p = oneProblem({ 'd.yaml': 'detectors:\n  - name: email\n    regex: x\n', 'p.yaml': POLICY });
    assert.deepEqual([p.line, p.column], [2, 11]);
    assert.equal(p.message, '"email" is the name of a built-in detector; choose another name');

    p = oneProblem({
      'a.yaml': declaring('    regex: "EMP-[0-9]{6}"\n'),
      'b.yaml': '# again\n' + declaring('    words: [emp]\n') + POLICY,
    });
    assert.deepEqual([p.file, p.line, p.column], ['b.yaml', 3, 11]);
    assert.equal(p.message, 'duplicate detector name "employee_id" (first declared at a.yaml:2:11)');
  });

  test('a mask rule naming an unknown detector is a problem listing the valid names', () => {
    const p = oneProblem({
      'd.yaml': 'detectors:\n  - name: codenames\n    words: [bluebird]\n',
      'p.yaml': POLICY.replace('[employee_id]', '[email, employee_id]'),
    });
    assert.deepEqual([p.file, p.line, p.column], ['p.yaml', 6, 25]);
    assert.match(p.message, /^unknown detector "employee_id" \(valid: credit_card, email, .*, url_password, codenames\)$/);
  });
});
