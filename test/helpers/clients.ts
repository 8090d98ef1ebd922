// Real clients (psql, pgbench) run as child processes; never spawnSync (the gateway shares our event loop).
import { spawn } from 'node:child_process';

export interface RunResult { code: number | null; stdout: string; stderr: string }

export function run(cmd: string, args: string[], opts: { env?: Record<string, string>; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** psql with no psqlrc, unaligned tuples-only output, stopping at the first error. */
export function psql(conninfo: string, token: string, sql: string, extraArgs: string[] = []): Promise<RunResult> {
  return run('psql', ['-X', '-At', '-v', 'ON_ERROR_STOP=1', ...extraArgs, '-c', sql, conninfo], { env: { PGPASSWORD: token, PGCONNECT_TIMEOUT: '10' } });
}
