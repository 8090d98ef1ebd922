import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PolicyHolder } from '../../src/policy/watch.ts';
import type { PolicyBundle, PolicyProblem } from '../../src/policy/loader.ts';

const CONNECTIONS = 'connections:\n  - name: app\n    type: postgres\n';
const policy = (kinds: string) =>
  `policies:\n  - name: p\n    subjects: [{ group: ci }]\n    connections: [app]\n    allow:\n      - sql: [${kinds}]\n`;

function withTimeout<T>(p: Promise<T>, ms = 5000): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`no event within ${ms} ms`)), ms).unref())]);
}

test('hot reload: a change reloads, a broken file keeps the last good bundle', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-watch-'));
  const holder = new PolicyHolder(dir);
  try {
    writeFileSync(join(dir, 'connections.yaml'), CONNECTIONS);
    writeFileSync(join(dir, 'p.yaml'), policy('select'));
    assert.throws(() => holder.current, /no valid policy bundle/);
    const first = holder.load();
    assert.deepEqual(first.problems, []);
    const v1 = holder.current.version;
    holder.watch();

    const reloaded = once(holder, 'reloaded');
    writeFileSync(join(dir, 'p.yaml'), policy('select, show'));
    const [bundle, previous] = (await withTimeout(reloaded)) as [PolicyBundle, PolicyBundle];
    assert.notEqual(bundle.version, v1);
    assert.equal(previous.version, v1);
    assert.equal(holder.current, bundle);
    assert.deepEqual(holder.current.policies[0].allow?.[0].sql, ['select', 'show']);

    const invalid = once(holder, 'invalid');
    writeFileSync(join(dir, 'p.yaml'), policy('select, selec'));
    const [problems] = (await withTimeout(invalid)) as [PolicyProblem[]];
    assert.equal(problems[0].file, 'p.yaml');
    assert.equal(problems[0].line, 6);
    assert.match(problems[0].message, /unknown SQL kind "selec"/);
    assert.equal(holder.current, bundle, 'still enforcing the last good bundle');

    const again = once(holder, 'reloaded');
    writeFileSync(join(dir, 'p.yaml'), policy('select'));
    await withTimeout(again);
    assert.equal(holder.current.version, v1, 'same content, same version');

    // New files in new subfolders are picked up too.
    const sub = once(holder, 'reloaded');
    mkdirSync(join(dir, 'team'));
    writeFileSync(join(dir, 'team', 'q.yaml'), policy('show').replace('name: p', 'name: q'));
    await withTimeout(sub);
    if (holder.current.policies.length < 2) await withTimeout(once(holder, 'reloaded'));
    assert.deepEqual(holder.current.policies.map((p) => p.name), ['p', 'q']);
  } finally {
    holder.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('reload() on demand (SIGHUP) emits and returns the result', () => {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-watch-'));
  const holder = new PolicyHolder(dir);
  try {
    writeFileSync(join(dir, 'p.yaml'), CONNECTIONS + policy('select'));
    holder.load();
    const good = holder.current;
    const events: string[] = [];
    holder.on('reloaded', () => events.push('reloaded'));
    holder.on('invalid', () => events.push('invalid'));
    writeFileSync(join(dir, 'p.yaml'), CONNECTIONS + policy('select') + '    oops: true\n');
    const bad = holder.reload();
    assert.equal(bad.bundle, undefined);
    assert.match(bad.problems[0].message, /unknown key "oops"/);
    assert.equal(holder.current, good);
    rmSync(join(dir, 'p.yaml'));
    assert.match(holder.reload().problems[0].message, /no policy files/);
    writeFileSync(join(dir, 'p.yaml'), CONNECTIONS + policy('show'));
    const ok = holder.reload();
    assert.equal(holder.current, ok.bundle);
    assert.deepEqual(events, ['invalid', 'invalid', 'reloaded']);
  } finally {
    holder.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an invalid initial load leaves no current bundle', () => {
  const holder = new PolicyHolder(join(tmpdir(), 'airlock-missing-' + process.pid));
  const r = holder.load();
  assert.match(r.problems[0].message, /does not exist/);
  assert.throws(() => holder.current);
  holder.watch(); // missing folder: no throw, no 'error' listener needed
  holder.close();
});
