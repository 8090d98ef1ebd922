// The examples in examples/ stay valid: the policy folder loads and the config builds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import YAML from 'yaml';
import { loadPolicyDir } from '../../src/policy/loader.ts';
import { buildConfig } from '../../src/config/config.ts';

test('examples/policies is a valid policy folder', () => {
  const { bundle, problems } = loadPolicyDir('examples/policies');
  assert.deepEqual(problems, []);
  assert.deepEqual(bundle!.policies.map((p) => p.name).sort(), ['ci-token-reads', 'dba-maintain', 'gha-main-reads-analytics']);
});

test('examples/airlock.yaml builds, with its secret taken from the environment', () => {
  const raw = YAML.parse(fs.readFileSync('examples/airlock.yaml', 'utf8'));
  const config = buildConfig(raw, path.resolve('examples'), { ANALYTICS_PASSWORD: 's3cret' });
  assert.equal(config.policiesDir, path.resolve('examples/policies'));
  assert.match(config.connections[0].url, /airlock_reader:s3cret@/);
  assert.throws(() => buildConfig(raw, path.resolve('examples'), {}), /ANALYTICS_PASSWORD is not set/);
});
