// A SELECT of 100k rows x 5 columns: direct, through Airlock unmasked, and through Airlock with
// masking (a column rule and detectors), interleaved round by round in one run.
//
//   node --import tsx bench/masking-pg.ts [--rows 100000] [--rounds 3]
//
// The gateway runs in this process; the client is the pg driver in a child process so that the
// gateway's CPU is not shared with the client's.
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { createTestDb } from '../test/helpers/pgdb.ts';
import { startTestGateway } from '../test/helpers/gateway.ts';

const { values: args } = parseArgs({ options: { rows: { type: 'string', default: '100000' }, rounds: { type: 'string', default: '3' } } });
const ROWS = Number(args.rows);

const CLIENT = `
const pg = require('pg');
(async () => {
  const c = new pg.Client(JSON.parse(process.argv[1]));
  await c.connect();
  const t = performance.now();
  const r = await c.query('SELECT id, name, email, card_number, note FROM people');
  const ms = performance.now() - t;
  await c.end();
  console.log(JSON.stringify({ rows: r.rowCount, ms, sample: r.rows[1] }));
})().catch((e) => { console.error(e.message); process.exit(1); });
`;

function fetchAll(config: object): Promise<{ rows: number; ms: number; sample: Record<string, string> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', CLIENT, JSON.stringify(config)], { cwd: process.cwd() });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(err))));
  });
}

const db = await createTestDb('airlock_bench');
await db.query(`CREATE TABLE people AS SELECT i AS id, 'Person ' || i AS name, 'user' || i || '@example.com' AS email,
  '4111 1111 1111 ' || lpad((i % 10000)::text, 4, '0') AS card_number, 'order ' || i || ' shipped' AS note
  FROM generate_series(1, ${ROWS}) i`);
const gw = await startTestGateway({
  policies: {
    'p.yaml': `
connections:
  - name: bench
    type: postgres
policies:
  - name: clear
    subjects: [{ group: clear }]
    connections: [bench]
    allow: [{ sql: [select] }]
  - name: masked
    subjects: [{ group: masked }]
    connections: [bench]
    allow: [{ sql: [select] }]
    mask:
      - columns: ["people.card_number"]
        with: last4
      - detect: [email, credit_card]
        with: redact
`,
  },
  connections: [{ name: 'bench', url: db.url }],
});
try {
  const clear = (await gw.token('bench-clear', ['clear'])).token;
  const masked = (await gw.token('bench-masked', ['masked'])).token;
  const u = new URL(db.url);
  const direct = { host: u.hostname, port: Number(u.port), user: decodeURIComponent(u.username), database: db.name };
  const via = (password: string) => ({ host: '127.0.0.1', port: gw.port, user: 'bench', database: 'bench', password });
  const rows: Record<string, number | string>[] = [];
  // The gateway runs in this process: its CPU time per row is read around each fetch.
  const viaGateway = async (password: string) => {
    const cpu = process.cpuUsage();
    const r = await fetchAll(via(password));
    const used = process.cpuUsage(cpu);
    return { ...r, cpuUsPerRow: (used.user + used.system) / r.rows };
  };
  // One warm-up round (JIT, catalog cache), not counted.
  await fetchAll(direct);
  await viaGateway(clear);
  await viaGateway(masked);
  for (let round = 1; round <= Number(args.rounds); round++) {
    const d = await fetchAll(direct);
    const c = await viaGateway(clear);
    const m = await viaGateway(masked);
    if (m.sample.card_number === d.sample.card_number) throw new Error('masking did not apply');
    const rps = (x: { rows: number; ms: number }) => Math.round(x.rows / (x.ms / 1000));
    rows.push({ round, direct: rps(d), unmasked: rps(c), masked: rps(m),
      'masked/unmasked': +(rps(m) / rps(c)).toFixed(3), 'unmasked/direct': +(rps(c) / rps(d)).toFixed(3),
      'cpu us/row unmasked': +c.cpuUsPerRow.toFixed(2), 'cpu us/row masked': +m.cpuUsPerRow.toFixed(2) });
    console.error(`round ${round} done`);
  }
  console.log(`SELECT of ${ROWS} rows x 5 columns, rows/s, ${args.rounds} interleaved rounds (masked: card_number last4 + email/credit_card detectors on every column)`);
  console.table(rows);
  const median = (k: string) => [...rows.map((r) => Number(r[k]))].sort((a, b) => a - b)[Math.floor(rows.length / 2)];
  console.log(`median masked/unmasked = ${median('masked/unmasked')}, unmasked/direct = ${median('unmasked/direct')}, ` +
    `gateway CPU per row: unmasked ${median('cpu us/row unmasked')} us, masked ${median('cpu us/row masked')} us`);
} finally {
  await gw.close();
  await db.drop();
}
