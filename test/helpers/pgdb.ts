// Test databases on the real PostgreSQL server (127.0.0.1:5432, trust auth on the project's machines).
import pg from 'pg';
import { randomBytes } from 'node:crypto';

export const ADMIN_URL = process.env.AIRLOCK_TEST_PG_ADMIN ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export interface TestDb {
  name: string;
  /** URL the agent uses (superuser on the test server). */
  url: string;
  query<T extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<T>>;
  drop(): Promise<void>;
}

export const SAMPLE_SQL = `
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL, card_number text NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id), amount numeric(10,2) NOT NULL);
CREATE TABLE audit_probe (id int);
INSERT INTO customers (name, email, card_number) VALUES
  ('Ada', 'ada@example.com', '4111 1111 1111 1111'),
  ('Grace', 'grace@example.com', '5500 0000 0000 0004'),
  ('Alan', 'alan@example.org', '3400 0000 0000 009');
INSERT INTO orders (customer_id, amount) SELECT 1 + i % 3, i * 1.5 FROM generate_series(1, 30) i;
CREATE SEQUENCE ticket_seq;
`;

export async function createTestDb(prefix = 'airlock_t'): Promise<TestDb> {
  const name = `${prefix}_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const u = new URL(ADMIN_URL);
  u.pathname = `/${name}`;
  u.searchParams.set('sslmode', 'disable');
  const url = u.toString();
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  await pool.query(SAMPLE_SQL);
  return {
    name,
    url,
    query: (sql, params) => pool.query(sql, params as unknown[]),
    async drop() {
      await pool.end();
      const c = new pg.Client({ connectionString: ADMIN_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}
