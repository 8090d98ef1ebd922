import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildConfig, ConfigError, loadConfig, resolveSecrets, registerSecretBackend } from '../../src/config/config.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-config-'));

test('defaults: embedded store, listeners, policy folder, all relative to the config file', () => {
  const c = buildConfig({}, dir);
  assert.equal(c.storePath, path.join(dir, '.airlock', 'airlock.db'));
  assert.equal(c.policiesDir, path.join(dir, 'policies'));
  assert.deepEqual(c.listeners, { api: { host: '127.0.0.1', port: 8080 }, postgres: { host: '127.0.0.1', port: 15432 } });
  assert.equal(c.tls, undefined);
});

test('${VAR} and file: references resolve; errors name the key and the variable, never a value', () => {
  fs.writeFileSync(path.join(dir, 'pw.url'), 'postgres://u:from-file@db/x\n');
  const c = buildConfig({ agent: { connections: [
    { name: 'a', url: 'postgres://u:${PW}@db/x' },
    { name: 'b', url: 'file:pw.url' },
  ] } }, dir, { PW: 'from-env' });
  assert.equal(c.connections[0].url, 'postgres://u:from-env@db/x');
  assert.equal(c.connections[1].url, 'postgres://u:from-file@db/x');
  assert.throws(() => resolveSecrets('x${NOPE}', 'agent.connections[0].url', dir, {}),
    (e: Error) => e instanceof ConfigError && /agent\.connections\[0\]\.url: environment variable NOPE is not set/.test(e.message));
  assert.throws(() => resolveSecrets('file:missing', 'k', dir, {}), /cannot read secret file .*missing: ENOENT/);
});

test('unknown keys, bad addresses and duplicate connections are refused with the key named', () => {
  assert.throws(() => buildConfig({ listner: {} }, dir), /invalid configuration:[\s\S]*Unrecognized key[\s\S]*listner/);
  assert.throws(() => buildConfig({ listeners: { postgres: 'localhost' } }, dir), /listeners\.postgres: expected host:port/);
  assert.throws(() => buildConfig({ agent: { connections: [{ name: 'a', url: 'x' }, { name: 'a', url: 'y' }] } }, dir),
    /duplicate connection name "a"/);
});

test('loadConfig: withoutAgent ignores agent: (its secrets need not resolve); optional tolerates a missing file', () => {
  const file = path.join(dir, 'agent-unset.yaml');
  fs.writeFileSync(file, 'data_dir: ./d\nagent:\n  connections:\n    - name: a\n      url: postgres://u:${AIRLOCK_CONFIG_TEST_UNSET_VAR}@db/x\n');
  assert.throws(() => loadConfig(file), (e: Error) => e instanceof ConfigError
    && e.message === `${file}: agent.connections[0].url: environment variable AIRLOCK_CONFIG_TEST_UNSET_VAR is not set`);
  const c = loadConfig(file, { withoutAgent: true });
  assert.deepEqual(c.connections, []);
  assert.equal(c.storePath, path.join(dir, 'd', 'airlock.db'));
  // The rest of the file is still checked, and errors name the file.
  fs.writeFileSync(file, 'listner: {}\nagent: { connections: [] }\n');
  assert.throws(() => loadConfig(file, { withoutAgent: true }), (e: Error) => e instanceof ConfigError && e.message.startsWith(`${file}: invalid configuration:`));
  fs.writeFileSync(file, 'a: [\n');
  assert.throws(() => loadConfig(file, { withoutAgent: true }), (e: Error) => e instanceof ConfigError && e.message.startsWith(`${file}: `));

  const missing = path.join(dir, 'missing.yaml');
  assert.throws(() => loadConfig(missing, { withoutAgent: true }), /cannot read config file .*missing\.yaml: ENOENT/);
  assert.equal(loadConfig(missing, { optional: true, withoutAgent: true }).storePath, path.join(dir, '.airlock', 'airlock.db'));
});

test('secret backends plug in by scheme; other schemes (URLs) are plain values', () => {
  const vault: Record<string, string> = { 'db/analytics#password': 's3cret' };
  registerSecretBackend({
    scheme: 'test-vault',
    resolve(ref) {
      if (!(ref in vault)) throw new Error(`no secret at ${ref}`);
      return vault[ref];
    },
  });
  assert.equal(resolveSecrets('test-vault:db/analytics#password', 'agent.connections[0].url', '/', {}), 's3cret');
  assert.throws(() => resolveSecrets('test-vault:db/other', 'token', '/', {}), /^ConfigError: token: no secret at db\/other$/);
  assert.equal(resolveSecrets('postgres://u@h/db', 'url', '/', {}), 'postgres://u@h/db', 'an unregistered scheme is not a reference');
  assert.throws(() => registerSecretBackend({ scheme: 'Bad Scheme', resolve: () => '' }), /invalid secret backend scheme/);
});
