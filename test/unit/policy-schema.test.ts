import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SQL_KINDS } from '../../src/core/types.ts';
import { parseCidr, parseDuration, parseHours, parseIp, policyJsonSchema, PolicyFileSchema } from '../../src/policy/schema.ts';

const file = fileURLToPath(new URL('../../schema/policy.schema.json', import.meta.url));

test('schema/policy.schema.json is up to date (UPDATE_SCHEMA=1 rewrites it)', () => {
  const generated = JSON.stringify(policyJsonSchema(), null, 2) + '\n';
  if (process.env.UPDATE_SCHEMA === '1') writeFileSync(file, generated);
  assert.equal(readFileSync(file, 'utf8'), generated,
    'regenerate with: UPDATE_SCHEMA=1 node --import tsx --test test/unit/policy-schema.test.ts');
});

test('JSON Schema is strict and knows the SQL kinds', () => {
  const s = policyJsonSchema() as any;
  assert.equal(s.additionalProperties, false);
  const policy = s.properties.policies.items;
  assert.equal(policy.additionalProperties, false);
  assert.deepEqual(policy.required, ['name', 'subjects', 'connections']);
  assert.deepEqual(policy.properties.allow.items.properties.sql.items.enum, [...SQL_KINDS]);
  assert.equal(s.properties.connections.items.additionalProperties, false);
});

test('the zod schema accepts the documented example', () => {
  const r = PolicyFileSchema.safeParse({
    policies: [{
      name: 'ci-read-analytics',
      subjects: [{ group: 'ci' }, { claims: { repository: 'acme/*', ref: 'refs/heads/main', run_attempt: 1, tags: ['a', 'b'] } }],
      connections: ['analytics', 'prod-*', { tags: { env: 'prod' } }],
      allow: [{ sql: ['select'], tables: ['public.*'] }, { functions: ['nextval'] }],
      review: [{ sql: ['update'], approvers: ['group:dba', 'user:alice'], timeout: '10m', min_approvals: 2, grant: '1h30m' }],
      deny: [{ name: 'no-ddl', sql: ['drop'], message: 'no' }, { without_where: true }],
      mask: [{ columns: ['customers.card_number'], with: 'last4' }, { detect: ['email'], with: 'redact' }],
      when: { days: ['mon'], hours: '22:00-06:00', timezone: 'Europe/Berlin', source: ['10.0.0.0/8', '::1', '::ffff:127.0.0.1/128'] },
    }],
  });
  assert.ok(r.success, JSON.stringify(r.error?.issues));
});

test('duplicate rule names within a policy are rejected', () => {
  const r = PolicyFileSchema.safeParse({
    policies: [{ name: 'p', subjects: [{ group: 'g' }], connections: ['c'], allow: [{ name: 'r', sql: ['select'] }], deny: [{ name: 'r', sql: ['drop'] }] }],
  });
  assert.equal(r.success, false);
  assert.deepEqual(r.error!.issues[0].path, ['policies', 0, 'deny', 0, 'name']);
});

test('helpers: durations, hours, addresses', () => {
  assert.equal(parseDuration('10m'), 600_000);
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('2d'), 172_800_000);
  assert.equal(parseDuration('0s'), undefined);
  assert.equal(parseDuration('m'), undefined);
  assert.equal(parseDuration('10 minutes'), undefined);
  assert.deepEqual(parseHours('06:00-22:00'), [360, 1320]);
  assert.deepEqual(parseHours('22:00-06:00'), [1320, 360]);
  assert.deepEqual(parseHours('00:00-24:00'), [0, 1440]);
  assert.equal(parseHours('10:00-10:00'), undefined);
  assert.equal(parseHours('24:00-10:00'), undefined);
  assert.equal(parseHours('10:60-11:00'), undefined);
  assert.deepEqual([...parseIp('::ffff:127.0.0.1')!.bytes], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 127, 0, 0, 1]);
  assert.deepEqual([...parseIp('2001:db8::1')!.bytes], [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  assert.deepEqual([...parseIp('fe80::1%eth0')!.bytes].slice(0, 2), [0xfe, 0x80]);
  assert.equal(parseIp('999.1.1.1'), undefined);
  assert.equal(parseIp('not-an-ip'), undefined);
  assert.equal(parseCidr('10.0.0.0/8')!.prefix, 8);
  assert.equal(parseCidr('::1')!.prefix, 128);
  assert.equal(parseCidr('10.0.0.0/33'), undefined);
  assert.equal(parseCidr('::/129'), undefined);
  assert.equal(parseCidr('10.0.0.0/x'), undefined);
});

test('the examples in docs/policy.md are valid', async () => {
  const { loadPolicyFiles, formatProblems } = await import('../../src/policy/loader.ts');
  const doc = readFileSync(fileURLToPath(new URL('../../docs/policy.md', import.meta.url)), 'utf8');
  const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]).filter((b) => !b.includes('...'));
  const connections = 'connections:\n  - name: analytics\n    type: postgres\n  - name: app\n    type: postgres\n';
  let checked = 0;
  for (const block of blocks) {
    const files = [{ path: 'example.yaml', content: block }];
    if (!block.includes('connections:\n  -')) files.push({ path: 'connections.yaml', content: connections });
    if (!block.includes('policies:')) files.push({ path: 'p.yaml', content: 'policies:\n  - name: p\n    subjects: [{ group: g }]\n    connections: ["*"]\n' });
    const r = loadPolicyFiles(files);
    assert.deepEqual(r.problems, [], `${formatProblems(r.problems)}\n${block}`);
    checked++;
  }
  assert.ok(checked >= 5, `checked ${checked} examples`);
});
