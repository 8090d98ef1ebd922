// The tricky-SQL corpus decided end to end: the real classifier, then the real policy evaluator
// under a read-only policy. Every entry's expected decision is fixed in the corpus.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { initClassifier, classifySql } from '../../src/protocols/postgres/classify.ts';
import { loadPolicyFiles } from '../../src/policy/loader.ts';
import { evaluate } from '../../src/policy/evaluate.ts';
import type { Identity, Request } from '../../src/core/types.ts';
import { SQL_CORPUS } from '../fixtures/sql-corpus.ts';

const READ_ONLY = `
connections:
  - name: analytics
    type: postgres
policies:
  - name: read-only
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select, show, explain, copy, listen, prepare]
`;

const identity: Identity = { subject: 'ci-runner', kind: 'service-token', groups: ['ci'], claims: {}, issuer: 'airlock' };

before(async () => {
  await initClassifier();
});

test(`corpus under a read-only policy: every statement gets its expected decision`, () => {
  const { bundle, problems } = loadPolicyFiles([{ path: 'p.yaml', content: READ_ONLY }]);
  assert.deepEqual(problems, []);
  const wrong: string[] = [];
  let allowed = 0;
  for (const entry of SQL_CORPUS) {
    const request: Request = { connection: bundle!.connections[0], source: '10.1.2.3', time: new Date(), sql: classifySql(entry.sql) };
    const decision = evaluate(bundle!, identity, request);
    const expected = entry.readOnlyAllowed ? 'allow' : 'deny';
    if (decision.action === 'allow') allowed++;
    if (decision.action !== expected) wrong.push(`${expected} expected, got ${decision.action} (${decision.reason}): ${entry.sql}  [${entry.why}]`);
  }
  console.log(`# read-only policy corpus: ${SQL_CORPUS.length} requests, ${allowed} allowed, ${SQL_CORPUS.length - allowed} denied, ${wrong.length} wrong`);
  assert.deepEqual(wrong, []);
  assert.ok(SQL_CORPUS.length >= 60);
});
