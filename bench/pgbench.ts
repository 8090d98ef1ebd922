// pgbench through Airlock vs direct, interleaved round by round (the machines are shared and noisy).
// Reports TPS per target, the ratio to direct per round, and the gateway's CPU per transaction.
//
//   npm run bench                      # 3 rounds of 8 s, pgbench -S -c 8 -j 2, simple protocol
//   npm run bench -- --rounds 5 --seconds 10 --mode prepared --clients 1
//
// The gateway runs in this process (gateway + in-process agent, full enforcement: token checks,
// parsed statements, policy, audit); pgbench and PostgreSQL are separate processes.
import { parseArgs } from 'node:util';
import { pgbench as runPgbench, startBenchGateway } from './pgbench-run.ts';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '8' },
    clients: { type: 'string', default: '8' },
    mode: { type: 'string', default: 'simple' },
    scale: { type: 'string', default: '10' },
  },
});
const pgbench = (conninfo: string, password?: string) => runPgbench(conninfo, { clients: args.clients!, seconds: args.seconds!, mode: args.mode, password });

const { token, direct, airlock, close } = await startBenchGateway(args.scale!);
try {
  const rows: { round: number; direct: number; airlock: number; ratio: number; cpuUsPerTxn: number }[] = [];
  for (let round = 1; round <= Number(args.rounds); round++) {
    const d = await pgbench(direct);
    const cpu0 = process.cpuUsage();
    const a = await pgbench(airlock, token);
    const cpu = process.cpuUsage(cpu0);
    const txns = a * Number(args.seconds);
    rows.push({ round, direct: Math.round(d), airlock: Math.round(a), ratio: +(a / d).toFixed(3),
      cpuUsPerTxn: +((cpu.user + cpu.system) / txns).toFixed(1) });
    console.error(`round ${round}: direct ${Math.round(d)} tps, airlock ${Math.round(a)} tps`);
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  console.log(`pgbench -S -M ${args.mode} -c ${args.clients} -j 2, ${args.seconds} s per run, ${args.rounds} interleaved rounds`);
  console.table(rows);
  console.log(`median: airlock/direct = ${median(rows.map((r) => r.ratio))}, gateway CPU per transaction = ${median(rows.map((r) => r.cpuUsPerTxn))} us`);
} finally {
  await close();
}
