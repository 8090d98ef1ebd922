// What recording costs.
//   1. The recorder alone: statement events per second appended to the embedded store and
//      written (batched, hash-chained), in this process.
//   2. pgbench -S through Airlock with recording on vs off (the store's appendAudit replaced by
//      a no-op), interleaved round by round in one run; the ratio is what recording costs.
//
//   node --import tsx bench/recording.ts [--events 200000] [--rounds 3] [--seconds 6] [--clients 8]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pgbench as runPgbench, startBenchGateway } from './pgbench-run.ts';
import { openStore } from '../src/store/store.ts';
import type { AuditEvent } from '../src/core/types.ts';

const { values: args } = parseArgs({
  options: {
    events: { type: 'string', default: '200000' },
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '6' },
    clients: { type: 'string', default: '8' },
  },
});
const pgbench = (conninfo: string, password?: string) => runPgbench(conninfo, { clients: args.clients!, seconds: args.seconds!, password });

// 1. The recorder alone.
{
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-rec-'));
  const store = await openStore({ type: 'embedded', path: path.join(dir, 'bench.db') });
  const n = Number(args.events);
  const event = (i: number): AuditEvent => ({
    time: new Date().toISOString(), type: 'statement', sessionId: `s${i % 64}`, subject: 'bench', issuer: 'airlock',
    connection: 'bench', source: '127.0.0.1', statement: `SELECT abalance FROM pgbench_accounts WHERE aid = ${i}`,
    classification: { kinds: ['select'], tablesRead: ['public.pgbench_accounts'], tablesWritten: [], functions: [] },
    decision: 'allow', policy: 'bench-read', rule: 'allow[0]', reason: 'select on table pgbench_accounts allowed by policy bench-read rule allow[0]',
    bundleVersion: 'sha256:0123456789abcdef', durationMs: 0.123, rows: 1,
  });
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < n; i++) store.appendAudit(event(i));
  await store.flush();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`recorder: ${n} statement events appended and written in ${Math.round(ms)} ms: ` +
    `${Math.round(n / (ms / 1000)).toLocaleString('en-US')} events/s, ${((cpu.user + cpu.system) / n).toFixed(1)} us CPU per event`);
}

// 2. pgbench with recording on vs off.

const { gw, token, airlock: conninfo, close } = await startBenchGateway('10');
try {
  const store = gw.gw.store;
  const record = store.appendAudit.bind(store);
  const rows: Record<string, number>[] = [];
  for (let round = 1; round <= Number(args.rounds); round++) {
    store.appendAudit = record;
    const on = await pgbench(conninfo, token);
    store.appendAudit = () => {};
    const off = await pgbench(conninfo, token);
    rows.push({ round, 'recording on': Math.round(on), 'recording off': Math.round(off), 'on/off': +(on / off).toFixed(3) });
    console.error(`round ${round} done`);
  }
  store.appendAudit = record;
  console.log(`pgbench -S -c ${args.clients} -j 2, ${args.seconds} s per run, ${args.rounds} interleaved rounds, TPS through Airlock`);
  console.table(rows);
  const ratios = rows.map((r) => r['on/off']).sort((a, b) => a - b);
  console.log(`median on/off = ${ratios[Math.floor(ratios.length / 2)]} (target: recording costs under 10%, i.e. >= 0.9)`);
} finally {
  await close();
}
