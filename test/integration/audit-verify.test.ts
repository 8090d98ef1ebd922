// `airlock audit verify|export|prune|list` as an operator runs them: a child process per command,
// against a store file prepared (and tampered) here, through the real CLI (bin/airlock.js).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import Database from 'better-sqlite3';
import { run, type RunResult } from '../helpers/clients.ts';
import { loadConfig } from '../../src/config/config.ts';
import { auditStoreOptions } from '../../src/audit/config.ts';
import { openStore } from '../../src/store/store.ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-audit-verify-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const cli = (args: string[]): Promise<RunResult> => run(process.execPath, [path.resolve('bin/airlock.js'), ...args], { timeoutMs: 30_000 });
const show = (r: RunResult) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

const keyPem = () => generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

/** A config dir with its own data_dir and signing key file, and a store with `count` events. */
async function prepare(name: string, count: number, times?: (i: number) => string): Promise<{ config: string; db: string; dir: string }> {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'signing.pem'), keyPem(), { mode: 0o600 });
  const config = path.join(dir, 'airlock.yaml');
  fs.writeFileSync(config, `data_dir: ./data\naudit:\n  signing_key: file:signing.pem\n  checkpoint_every: 10\n  retention: 30d\n`);
  const c = loadConfig(config);
  const store = await openStore({ type: 'embedded', path: c.storePath }, { audit: auditStoreOptions(c, { notice: () => {} }) });
  for (let i = 1; i <= count; i++) {
    store.appendAudit({ time: times ? times(i) : new Date(Date.now() - (count - i) * 1000).toISOString(), type: 'statement',
      subject: `ci${i % 2}`, connection: 'main', decision: i % 7 ? 'allow' : 'deny', statement: `SELECT ${i}` });
  }
  await store.close();
  return { config, db: c.storePath, dir };
}

test('audit verify: OK with counts, exit 0', async () => {
  const { config } = await prepare('ok', 25);
  const r = await cli(['audit', 'verify', '--config', config]);
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /^OK: 25 events \(ids 1\.\.25\), 3 checkpoints/m, show(r));
  const j = await cli(['audit', 'verify', '--json', '--config', config]);
  assert.equal(j.code, 0, show(j));
  const report = JSON.parse(j.stdout);
  assert.equal(report.ok, true);
  assert.equal(report.events, 25);
});

test('audit verify: an edited event -> exit 1 with its position', async () => {
  const { config, db } = await prepare('edited', 25);
  const raw = new Database(db);
  raw.prepare(`UPDATE audit_events SET event_json = json_set(event_json, '$.statement', 'SELECT nothing') WHERE id = 17`).run();
  raw.close();
  const r = await cli(['audit', 'verify', '--config', config]);
  assert.equal(r.code, 1, show(r));
  assert.match(r.stdout, /^BROKEN: edited at event 17 \(index 16\)/m, show(r));
  const j = JSON.parse((await cli(['audit', 'verify', '--json', '--config', config])).stdout);
  assert.deepEqual([j.ok, j.break.kind, j.break.eventId, j.break.index], [false, 'edited', 17, 16]);
});

test('audit verify: deleted events (middle and tail) -> exit 1', async () => {
  const { config, db } = await prepare('deleted', 25);
  const raw = new Database(db);
  raw.prepare('DELETE FROM audit_events WHERE id = 5').run();
  raw.close();
  const r = await cli(['audit', 'verify', '--config', config]);
  assert.equal(r.code, 1, show(r));
  assert.match(r.stdout, /^BROKEN: deleted at event 5 \(index 4\)/m, show(r));

  const t = await prepare('tail', 25);
  const raw2 = new Database(t.db);
  raw2.prepare('DELETE FROM audit_events WHERE id > 22').run();
  raw2.close();
  const r2 = await cli(['audit', 'verify', '--config', t.config]);
  assert.equal(r2.code, 1, show(r2));
  assert.match(r2.stdout, /^BROKEN: deleted at event 23 \(index 22\)/m, show(r2));
});

test('audit verify --public-key: pins the signing key', async () => {
  const { config, dir } = await prepare('pinned', 12);
  const pub = await cli(['audit', 'public-key', '--config', config]);
  assert.equal(pub.code, 0, show(pub));
  assert.match(pub.stdout, /BEGIN PUBLIC KEY/);
  fs.writeFileSync(path.join(dir, 'pub.pem'), pub.stdout);
  const ok = await cli(['audit', 'verify', '--public-key', path.join(dir, 'pub.pem'), '--config', config]);
  assert.equal(ok.code, 0, show(ok));
  fs.writeFileSync(path.join(dir, 'other.pem'), keyPem());
  const bad = await cli(['audit', 'verify', '--public-key', path.join(dir, 'other.pem'), '--config', config]);
  assert.equal(bad.code, 1, show(bad));
  assert.match(bad.stdout, /^BROKEN: bad-signature at event 10 \(index 9\), checkpoint 1/m, show(bad));
});

test('audit export --format jsonl: one event per line with id, prev_hash, hash; --since; --output', async () => {
  const { config, dir } = await prepare('export', 15);
  const r = await cli(['audit', 'export', '--format', 'jsonl', '--config', config]);
  assert.equal(r.code, 0, show(r));
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, 15);
  assert.deepEqual(Object.keys(lines[0]).slice(0, 1), ['id']);
  for (const k of ['id', 'time', 'type', 'subject', 'prev_hash', 'hash']) assert.ok(k in lines[3], k);
  assert.equal(lines[0].prev_hash, '0'.repeat(64));
  assert.equal(lines[1].prev_hash, lines[0].hash);
  const since = await cli(['audit', 'export', '--since', lines[10].time, '--config', config]);
  assert.deepEqual(since.stdout.trim().split('\n').map((l) => JSON.parse(l).id), [11, 12, 13, 14, 15], show(since));
  const recent = await cli(['audit', 'export', '--since', '1h', '--config', config]);
  assert.equal(recent.stdout.trim().split('\n').length, 15, show(recent));
  const out = path.join(dir, 'out.jsonl');
  const f = await cli(['audit', 'export', '--output', out, '--config', config]);
  assert.equal(f.code, 0, show(f));
  assert.equal(fs.readFileSync(out, 'utf8').trim().split('\n').length, 15);
  assert.equal(fs.statSync(out).mode & 0o777, 0o600);
  const badSince = await cli(['audit', 'export', '--since', 'soon', '--config', config]);
  assert.notEqual(badSince.code, 0);
});

test('audit prune (default from audit.retention) then verify still OK; audit list --since', async () => {
  const day = 86_400_000;
  const now = Date.now();
  const { config } = await prepare('prune', 20, (i) => new Date(i <= 12 ? now - 40 * day + i * 1000 : now - (20 - i) * 1000).toISOString());
  const p = await cli(['audit', 'prune', '--config', config]);
  assert.equal(p.code, 0, show(p));
  assert.match(p.stdout, /pruned 12 events \(ids 1\.\.12\)/, show(p));
  const v = await cli(['audit', 'verify', '--config', config]);
  assert.equal(v.code, 0, show(v));
  assert.match(v.stdout, /^OK: 8 events \(ids 13\.\.20\).*pruned up to id 12/m, show(v));
  const l = await cli(['audit', 'list', '--since', '1h', '--json', '--config', config]);
  assert.equal(l.code, 0, show(l));
  assert.equal(l.stdout.trim().split('\n').length, 8);
  const bad = await cli(['audit', 'prune', '--older-than', 'nope', '--config', config]);
  assert.notEqual(bad.code, 0);
});
