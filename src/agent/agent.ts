// The agent holds target credentials and opens target connections on request. It never decides
// policy. Today it runs inside the gateway process (`airlock up`); the transport to a remote agent
// plugs in behind the same interface.
import { cancelTarget, connectTarget, parsePgUrl, queryTarget, type PgTarget, type TargetConnection } from '../protocols/postgres/target.ts';

/** How long a looked-up table name is trusted (tables may be dropped and re-created). */
const TABLE_NAME_TTL_MS = 60_000;

export interface AgentLink {
  /** Names of the connections this agent serves. */
  serves(): string[];
  open(connection: string, clientParams: Record<string, string>): Promise<TargetConnection>;
  cancel(connection: string, processId: number, secretKey: number): Promise<void>;
  /**
   * `schema.table` and column names by attribute number for each table OID, from the target's
   * catalog (OIDs it does not know are left out). Result columns carry aliases; these are the real names.
   */
  tableNames(connection: string, oids: number[]): Promise<Map<number, TableInfo>>;
  /** Closes the agent's own connections (catalog lookups). */
  close(): void;
}

export interface TableInfo {
  name: string;
  columns: Map<number, string>;
}

/** One catalog connection per target, used for lookups one at a time. */
interface Catalog {
  conn?: Promise<TargetConnection>;
  queue: Promise<unknown>;
  names: Map<number, TableInfo & { at: number }>;
}

export class LocalAgent implements AgentLink {
  private readonly targets = new Map<string, PgTarget>();
  private readonly catalogs = new Map<string, Catalog>();

  constructor(connections: { name: string; url: string }[]) {
    for (const c of connections) {
      try {
        this.targets.set(c.name, parsePgUrl(c.url));
      } catch (e) {
        // The URL holds a secret: the messages of parsePgUrl and URL name the problem, never the URL.
        throw new Error(`agent connection "${c.name}": invalid url: ${(e as Error).message}`);
      }
    }
  }

  serves(): string[] {
    return [...this.targets.keys()];
  }

  open(connection: string, clientParams: Record<string, string>): Promise<TargetConnection> {
    return connectTarget(this.target(connection), clientParams);
  }

  cancel(connection: string, processId: number, secretKey: number): Promise<void> {
    return cancelTarget(this.target(connection), processId, secretKey);
  }

  async tableNames(connection: string, oids: number[]): Promise<Map<number, TableInfo>> {
    const target = this.target(connection);
    let catalog = this.catalogs.get(connection);
    if (!catalog) this.catalogs.set(connection, (catalog = { queue: Promise.resolve(), names: new Map() }));
    const now = Date.now();
    const out = new Map<number, TableInfo>();
    const missing: number[] = [];
    for (const oid of oids) {
      const hit = catalog.names.get(oid);
      if (hit && now - hit.at < TABLE_NAME_TTL_MS) out.set(oid, hit);
      else missing.push(oid);
    }
    if (missing.length === 0) return out;
    const c = catalog;
    const lookup = c.queue.then(async () => {
      c.conn ??= connectTarget(target, { application_name: 'airlock-agent-catalog' }).then(async (conn) => {
        conn.socket.on('close', () => (c.conn = undefined));
        await queryTarget(conn, undefined);
        return conn;
      });
      const conn = await c.conn.catch((e) => {
        c.conn = undefined;
        throw e;
      });
      const list = missing.map((o) => `${Math.trunc(o)}`).join(',');
      return queryTarget(conn, `SELECT c.oid::int8, n.nspname, c.relname, a.attnum, a.attname FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.oid IN (${list}) ORDER BY c.oid, a.attnum`);
    });
    c.queue = lookup.catch(() => undefined);
    for (const [oid, schema, table, attnum, attname] of await lookup) {
      const key = Number(oid);
      let info = c.names.get(key);
      if (!info || info.at !== now) c.names.set(key, (info = { name: `${schema}.${table}`, columns: new Map(), at: now }));
      if (attnum !== null && attname !== null) info.columns.set(Number(attnum), attname);
      out.set(key, info);
    }
    return out;
  }

  close(): void {
    for (const c of this.catalogs.values()) void c.conn?.then((conn) => conn.socket.destroy(), () => {});
    this.catalogs.clear();
  }

  private target(connection: string): PgTarget {
    const t = this.targets.get(connection);
    if (!t) throw new Error(`no agent serves connection "${connection}"`);
    return t;
  }
}
