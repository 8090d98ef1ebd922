// A client of the gateway's HTTP API for CLI commands: base URL from --api, AIRLOCK_API or the
// config's api listener; the caller's token from --token or AIRLOCK_TOKEN.
import http from 'node:http';
import https from 'node:https';
import type { X509Certificate } from 'node:crypto';

export interface ApiOptions {
  api?: string;
  token?: string;
  tlsFingerprint?: string;
  config: string;
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The API base URL: --api, AIRLOCK_API, else the config's api listener (https off loopback). */
async function apiBase(opts: ApiOptions): Promise<string> {
  const explicit = opts.api ?? process.env.AIRLOCK_API;
  if (explicit) return explicit.replace(/\/+$/, '');
  const { loadConfig } = await import('../config/config.ts');
  const { isLoopback } = await import('../core/net.ts');
  const { host, port } = loadConfig(opts.config, { optional: true, withoutAgent: true }).listeners.api;
  const h = host.includes(':') ? `[${host}]` : host;
  return `${isLoopback(host) ? 'http' : 'https'}://${h}:${port}`;
}

/** One JSON request. HTTPS is verified by the system CAs, or pinned with --tls-fingerprint. */
export async function call(opts: ApiOptions, method: 'GET' | 'POST', path: string, body?: object): Promise<unknown> {
  const token = opts.token ?? process.env.AIRLOCK_TOKEN;
  if (!token) throw new ApiError(0, 'no token: set AIRLOCK_TOKEN (or pass --token) to your Airlock token or JWT');
  const url = new URL(path, await apiBase(opts) + '/');
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const pin = opts.tlsFingerprint?.replace(/:/g, '').toUpperCase();
  const request = url.protocol === 'https:' ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method,
      headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(payload ? { 'content-type': 'application/json' } : {}) },
      timeout: 15_000,
      ...(pin ? {
        rejectUnauthorized: false, // replaced by the pin below
        checkServerIdentity: () => undefined,
      } : {}),
    }, (res) => {
      if (pin) {
        const cert = (res.socket as import('node:tls').TLSSocket).getPeerX509Certificate?.() as X509Certificate | undefined;
        if (!cert || cert.fingerprint256.replace(/:/g, '').toUpperCase() !== pin) {
          res.destroy();
          return reject(new ApiError(0, `the API's TLS certificate does not match --tls-fingerprint`));
        }
      }
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (data += d));
      res.on('end', () => {
        let json: { error?: string } | undefined;
        try {
          json = JSON.parse(data) as { error?: string };
        } catch {
          json = undefined;
        }
        if ((res.statusCode ?? 500) >= 400) return reject(new ApiError(res.statusCode ?? 500, json?.error ?? `HTTP ${res.statusCode}`));
        resolve(json);
      });
    });
    req.on('timeout', () => req.destroy(new Error('the API did not answer within 15 s')));
    req.on('error', (err) => reject(new ApiError(0, `cannot reach the Airlock API at ${url.origin}: ${err.message}`)));
    req.end(payload);
  });
}


/** Runs a command that calls the API: an ApiError becomes a message and exit status 1 (refused) or 3 (unreachable, unauthenticated). */
export async function runApiCommand(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    console.error(`airlock: ${err.message}`);
    process.exitCode = err.status === 0 || err.status === 401 ? 3 : 1;
  }
}
