// Runs a gateway in the foreground for `airlock up` and `airlock gateway`: start, banner, SIGHUP
// reloads policies, Ctrl-C / SIGTERM stops.
import type { AgentLink } from '../agent/agent.ts';
import type { AirlockConfig } from '../config/config.ts';
import { formatProblems } from '../policy/loader.ts';
import { printBanner, waitForStop } from './format.ts';

export async function serveGateway(config: AirlockConfig, localAgent: AgentLink): Promise<void> {
  const { startGateway, PolicyInvalidError } = await import('../gateway/gateway.ts');
  const gw = await startGateway(config, localAgent).catch((err: unknown) => {
    // Name the folder: problem paths are relative to it.
    if (err instanceof PolicyInvalidError) {
      throw new Error(`the policy folder ${config.policiesDir} is invalid:\n${formatProblems(err.problems, config.policiesDir)}`);
    }
    throw err;
  });
  printBanner(gw.addresses, gw.tls, gw.policies.current.version, localAgent.serves());
  process.on('SIGHUP', () => gw.reloadPolicies());
  const signal = await waitForStop();
  console.log(`stopping (${signal})`);
  await gw.close();
}
