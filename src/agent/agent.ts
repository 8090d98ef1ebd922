// The agent holds target credentials and opens target connections on request. It never decides
// policy. Today it runs inside the gateway process (`airlock up`); the transport to a remote agent
// plugs in behind the same interface.
import { cancelTarget, connectTarget, parsePgUrl, type PgTarget, type TargetConnection } from '../protocols/postgres/target.ts';

export interface AgentLink {
  /** Names of the connections this agent serves. */
  serves(): string[];
  open(connection: string, clientParams: Record<string, string>): Promise<TargetConnection>;
  cancel(connection: string, processId: number, secretKey: number): Promise<void>;
}

export class LocalAgent implements AgentLink {
  private readonly targets = new Map<string, PgTarget>();

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

  private target(connection: string): PgTarget {
    const t = this.targets.get(connection);
    if (!t) throw new Error(`no agent serves connection "${connection}"`);
    return t;
  }
}
