// pgbench -S: direct vs `airlock up` (gateway + in-process agent) vs `airlock gateway` + `airlock
// agent` (two processes, the tunnel between them), interleaved round by round in one run. Every
// Airlock process is a real CLI child; its CPU per transaction is read from /proc.
//
//   node --import tsx bench/tunnel.ts [--rounds 3] [--seconds 6] [--clients 8]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { parseArgs } from 'node:util';
import { pgbench as runPgbench } from './pgbench-run.ts';
import { createTestDb } from '../test/helpers/pgdb.ts';

const { values: args } = parseArgs({
  options: { rounds: { type: 'string', default: '3' }, seconds: { type: 'string', default: '6' }, clients: { type: 'string', default: '8' } },
});
const pgbench = (conninfo: string, password?: string) => runPgbench(conninfo, { clients: args.clients!, seconds: args.seconds!, password });
const CLI = path.resolve('bin/airlock.js');
const TICK_US = 1e6 / Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim() || 100);


/** user + system CPU of a process so far, in microseconds. */
function cpuUs(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_US;
}

function start(argv: string[], env: Record<string, string> = {}): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [CLI, ...argv], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return { child, output: () => out };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 300 && !cond(); i++) await new Promise((r) => setTimeout(r, 100));
  if (!cond()) throw new Error(`timed out waiting until ${what}`);
}

const db = await createTestDb('airlock_bench');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-bench-tunnel-'));
const children: ChildProcess[] = [];
try {
  const directUrl = db.url.replace(/\?.*$/, '');
  spawnSync('pgbench', ['-i', '-q', '-s', '10', directUrl], { stdio: 'ignore' });
  fs.mkdirSync(path.join(dir, 'policies'));
  fs.writeFileSync(path.join(dir, 'policies', 'p.yaml'), `
connections:
  - name: bench
    type: postgres
policies:
  - name: bench
    subjects: [{ group: bench }]
    connections: [bench]
    allow:
      - sql: [select]
`);
  fs.writeFileSync(path.join(dir, 'bench.url'), db.url, { mode: 0o600 });
  const common = `policies: ./policies\nlog: { level: error }\n`;
  fs.mkdirSync(path.join(dir, 'up'));
  fs.mkdirSync(path.join(dir, 'gw'));
  fs.writeFileSync(path.join(dir, 'up.yaml'), `data_dir: ./up\n${common}listeners: { postgres: 127.0.0.1:0, api: 127.0.0.1:0 }\nagent:\n  connections:\n    - name: bench\n      url: file:bench.url\n`);
  fs.writeFileSync(path.join(dir, 'gw.yaml'), `data_dir: ./gw\n${common}listeners: { postgres: 127.0.0.1:0, api: 127.0.0.1:0, agents: 127.0.0.1:0 }\n`);
  const token = (file: string, argv: string[]) => spawnSync(process.execPath, [CLI, ...argv, '--config', path.join(dir, file)]).stdout.toString().trim();
  const upToken = token('up.yaml', ['token', 'create', '--subject', 'bench', '--groups', 'bench', '--ttl', '1h']);
  const gwToken = token('gw.yaml', ['token', 'create', '--subject', 'bench', '--groups', 'bench', '--ttl', '1h']);
  const agentToken = token('gw.yaml', ['agent-token', 'create', '--name', 'bench-agent']);

  const up = start(['up', '--config', path.join(dir, 'up.yaml')]);
  const gw = start(['gateway', '--config', path.join(dir, 'gw.yaml')]);
  children.push(up.child, gw.child);
  await until(() => /postgres\s+127\.0\.0\.1:\d+/.test(up.output()) && /agents\s+127\.0\.0\.1:\d+/.test(gw.output()), 'the gateways are up');
  const port = (out: string, what: string) => Number(new RegExp(`${what}\\s+127\\.0\\.0\\.1:(\\d+)`).exec(out)![1]);
  const fingerprint = /sha256 ([0-9A-F:]{95})/.exec(gw.output())![1];
  fs.writeFileSync(path.join(dir, 'agent.yaml'), `gateway: 127.0.0.1:${port(gw.output(), 'agents')}\ntoken: \${T}\ntls: { fingerprint: "${fingerprint}" }\n` +
    `connections:\n  - name: bench\n    url: file:bench.url\nlog: { level: error }\n`);
  const agent = start(['agent', '--config', path.join(dir, 'agent.yaml')], { T: agentToken });
  children.push(agent.child);
  await until(() => /serving bench/.test(agent.output()), 'the agent is up');
  await new Promise((r) => setTimeout(r, 1000));

  const direct = `${directUrl.replace('postgres://', 'postgresql://')}?sslmode=disable`;
  const via = (out: string) => `host=127.0.0.1 port=${port(out, 'postgres')} dbname=bench user=bench sslmode=disable`;
  const rows: Record<string, number>[] = [];
  for (let round = 1; round <= Number(args.rounds); round++) {
    const d = await pgbench(direct);
    let c0 = cpuUs(up.child.pid!);
    const u = await pgbench(via(up.output()), upToken);
    const upCpu = (cpuUs(up.child.pid!) - c0) / (u * Number(args.seconds));
    c0 = cpuUs(gw.child.pid!);
    const a0 = cpuUs(agent.child.pid!);
    const t = await pgbench(via(gw.output()), gwToken);
    const txns = t * Number(args.seconds);
    rows.push({
      round, direct: Math.round(d), up: Math.round(u), 'gateway+agent': Math.round(t),
      'up/direct': +(u / d).toFixed(3), 'tunnel/up': +(t / u).toFixed(3),
      'up us/txn': +upCpu.toFixed(1), 'gateway us/txn': +((cpuUs(gw.child.pid!) - c0) / txns).toFixed(1),
      'agent us/txn': +((cpuUs(agent.child.pid!) - a0) / txns).toFixed(1),
    });
    console.error(`round ${round} done`);
  }
  console.log(`pgbench -S -c ${args.clients} -j 2, ${args.seconds} s per run, ${args.rounds} interleaved rounds (TPS; CPU per transaction from /proc)`);
  console.table(rows);
  const median = (k: string) => [...rows.map((r) => r[k])].sort((a, b) => a - b)[Math.floor(rows.length / 2)];
  console.log(`median: up/direct ${median('up/direct')}, gateway+agent/up ${median('tunnel/up')}; ` +
    `CPU per transaction: up ${median('up us/txn')} us, gateway ${median('gateway us/txn')} us + agent ${median('agent us/txn')} us`);
} finally {
  for (const c of children) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 500));
  await db.drop();
  fs.rmSync(dir, { recursive: true, force: true });
}
