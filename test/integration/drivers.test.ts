// Real drivers of other languages through the gateway: psycopg2 (libpq, implicit transactions)
// and the PostgreSQL JDBC driver (extended protocol, server-side prepared statements after five
// executions, startup settings). Under a read-only policy they must work, and refusals must reach
// them as SQLSTATE 42501 with the session still usable.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createTestDb, type TestDb } from '../helpers/pgdb.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { run } from '../helpers/clients.ts';

const SYSTEM_PYTHON = '/usr/bin/python3'; // Debian's python3-psycopg2 belongs to the system interpreter
const JDBC_JAR = '/usr/share/java/postgresql.jar';

let db: TestDb;
let gw: TestGateway;
let token: string;
let dir: string;

before(async () => {
  db = await createTestDb();
  gw = await startTestGateway({
    policies: {
      'p.yaml': `
connections:
  - name: analytics
    type: postgres
policies:
  - name: read-only
    subjects: [{ group: ci }]
    connections: [analytics]
    allow:
      - sql: [select]
`,
    },
    connections: [{ name: 'analytics', url: db.url }],
  });
  token = (await gw.token('driver', ['ci'])).token;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-drivers-'));
});

after(async () => {
  await gw?.close();
  await db?.drop();
  fs.rmSync(dir, { recursive: true, force: true });
});

const customers = async () => Number((await db.query('SELECT count(*)::int AS n FROM customers')).rows[0].n);

test('psycopg2: reads in implicit transactions, a refused DELETE raises 42501, rollback, then reads again', async () => {
  const script = path.join(dir, 'probe.py');
  fs.writeFileSync(script, `
import json, os, psycopg2
conn = psycopg2.connect(host="127.0.0.1", port=${gw.port}, dbname="analytics", user="driver", password=os.environ["TOKEN"], sslmode="disable", application_name="psycopg-probe")
out = {}
cur = conn.cursor()
cur.execute("SELECT name FROM customers WHERE id = %s", (2,))
out["read"] = cur.fetchone()[0]
conn.commit()
try:
    cur.execute("DELETE FROM customers WHERE id = %s", (1,))
    out["delete"] = "ran"
except psycopg2.Error as e:
    out["delete"] = e.pgcode
    out["message"] = e.pgerror
    conn.rollback()
cur.execute("SELECT count(*) FROM orders")
out["after"] = cur.fetchone()[0]
conn.commit()
conn.close()
print(json.dumps(out))
`);
  const r = await run(SYSTEM_PYTHON, [script], { env: { TOKEN: token } });
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.read, 'Grace');
  assert.equal(out.delete, '42501');
  assert.match(out.message, /airlock: /);
  assert.equal(out.after, 30);
  assert.equal(await customers(), 3);
});

test('JDBC: server-side prepared statements, a refused DELETE as SQLException 42501, transactions', { timeout: 120_000 }, async () => {
  const source = path.join(dir, 'Probe.java');
  fs.writeFileSync(source, `
import java.sql.*;
public class Probe {
  public static void main(String[] a) throws Exception {
    String url = "jdbc:postgresql://127.0.0.1:${gw.port}/analytics?sslmode=disable&ApplicationName=jdbc-probe";
    try (Connection c = DriverManager.getConnection(url, "driver", System.getenv("TOKEN"))) {
      StringBuilder out = new StringBuilder();
      try (PreparedStatement ps = c.prepareStatement("SELECT email FROM customers WHERE id = ?")) {
        for (int i = 0; i < 8; i++) {      // from the 5th execution on, JDBC uses a named server-side statement
          ps.setInt(1, 1 + i % 3);
          try (ResultSet rs = ps.executeQuery()) { rs.next(); out.append(rs.getString(1)).append(i < 7 ? "," : ""); }
        }
      }
      System.out.println("reads=" + out);
      try (Statement st = c.createStatement()) {
        st.executeUpdate("DELETE FROM customers WHERE id = 1");
        System.out.println("delete=ran");
      } catch (SQLException e) {
        System.out.println("delete=" + e.getSQLState());
      }
      c.setAutoCommit(false);
      try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM orders")) {
        rs.next();
        System.out.println("in-transaction=" + rs.getInt(1));
      }
      c.commit();
    }
  }
}
`);
  const r = await run('java', ['-cp', JDBC_JAR, source], { env: { TOKEN: token }, timeoutMs: 110_000 });
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /^reads=ada@example\.com,grace@example\.com,alan@example\.org,ada@example\.com,grace@example\.com,alan@example\.org,ada@example\.com,grace@example\.com$/m);
  assert.match(r.stdout, /^delete=42501$/m);
  assert.match(r.stdout, /^in-transaction=30$/m);
  assert.equal(await customers(), 3);
  await gw.gw.store.flush();
  const events = await gw.gw.store.listAudit({ type: 'statement', subject: 'driver', limit: 200 });
  const reads = events.filter((e) => e.statement === 'SELECT email FROM customers WHERE id = $1' && e.decision === 'allow');
  assert.equal(reads.length, 8, 'every execution is judged and recorded, prepared or not');
  assert.ok(reads.every((e) => e.rows === 1 && !e.error), JSON.stringify(reads));
});
