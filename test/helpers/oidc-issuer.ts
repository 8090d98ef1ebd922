// A real, in-process OIDC issuer for tests: the `oidc-provider` package on 127.0.0.1 (ephemeral
// port). Tokens are genuinely issued by the provider: a client_credentials grant for a registered
// client, with a resource indicator so the access token is a JWT for the requested audience.
//
//   const idp = await startOidcIssuer();
//   const token = await idp.mintToken({ sub: 'ci', aud: 'airlock', groups: ['ci'], repository: 'acme/api' });
//   await idp.rotateKeys();   // new signing key, unknown kid, old key still published
//   await idp.close();
//
// Per-token claims travel to the provider's hooks through a request header carrying a one-time
// id: `extraTokenClaims` adds the extra claims (groups, repository, ...), the JWT format
// customizer sets `sub` (the provider would use the client id), array audiences, `nbf`, and a
// past `exp` for expired tokens (the provider's TTL must be positive).

import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK } from 'jose';

export type IssuerAlg = 'RS256' | 'PS256' | 'ES256' | 'EdDSA';

export interface OidcIssuerOptions {
  /** Signing algorithm of the issuer's keys. Default RS256. */
  alg?: IssuerAlg;
  /** Audience when mintToken gets none. Default "airlock". */
  defaultAudience?: string;
  /** Port to listen on. Default: ephemeral. */
  port?: number;
}

export interface MintClaims {
  sub?: string;
  aud?: string | string[];
  groups?: string[] | string;
  [claim: string]: unknown;
}

export interface MintOptions {
  /** Seconds until expiry. Default 600. Zero or negative: the token is already expired. */
  expiresIn?: number;
  /** Seconds from now until the token becomes valid (`nbf`). */
  notBefore?: number;
}

export interface OidcIssuer {
  /** Issuer URL (`iss`), e.g. http://127.0.0.1:40123 */
  issuer: string;
  jwksUri: string;
  /** Issues an access token (JWT) through the provider's token endpoint. */
  mintToken(claims?: MintClaims, opts?: MintOptions): Promise<string>;
  /** New signing key (new kid) put first; previous keys stay published. */
  rotateKeys(): Promise<void>;
  /** Public JWKS as currently served. */
  publicJwks(): { keys: JWK[] };
  /** While true, the JWKS endpoint answers 503 (discovery still works). */
  setJwksDown(down: boolean): void;
  /** Requests served so far. */
  requests: { discovery: number; jwks: number; token: number };
  close(): Promise<void>;
}

const CLIENT_ID = 'airlock-test-client';
const CLIENT_SECRET = 'airlock-test-secret-which-is-long-enough';
const RESOURCE = 'urn:airlock:test-resource';
const MINT_HEADER = 'x-airlock-test-mint';

interface PendingMint {
  claims: MintClaims;
  opts: MintOptions;
}

type ProviderLike = { callback(): (req: IncomingMessage, res: ServerResponse) => void };
type ProviderCtor = new (issuer: string, config: Record<string, unknown>) => ProviderLike;
type Ctx = { get(header: string): string };

// oidc-provider ships no type declarations; a computed specifier keeps tsc from looking for them.
const OIDC_PROVIDER_MODULE: string = 'oidc-provider';

async function loadProvider(): Promise<ProviderCtor> {
  const mod = (await import(OIDC_PROVIDER_MODULE)) as { default?: ProviderCtor; Provider?: ProviderCtor };
  const ctor = mod.Provider ?? mod.default;
  if (!ctor) throw new Error('oidc-provider: no Provider export');
  return ctor;
}

// A minimal in-memory adapter (the provider's built-in one works too, but warns on every instance).
class MemoryAdapter {
  private static store = new Map<string, Record<string, unknown>>();
  constructor(private readonly model: string) {}
  private key(id: string): string {
    return `${this.model}:${id}`;
  }
  async upsert(id: string, payload: Record<string, unknown>): Promise<void> {
    MemoryAdapter.store.set(this.key(id), payload);
  }
  async find(id: string): Promise<Record<string, unknown> | undefined> {
    return MemoryAdapter.store.get(this.key(id));
  }
  async findByUid(): Promise<undefined> {
    return undefined;
  }
  async findByUserCode(): Promise<undefined> {
    return undefined;
  }
  async consume(id: string): Promise<void> {
    const v = MemoryAdapter.store.get(this.key(id));
    if (v) v.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id: string): Promise<void> {
    MemoryAdapter.store.delete(this.key(id));
  }
  async revokeByGrantId(): Promise<void> {}
}

async function newSigningKey(alg: IssuerAlg): Promise<JWK> {
  const { privateKey } =
    alg === 'EdDSA'
      ? await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true })
      : await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, alg, use: 'sig', kid: `k-${randomUUID()}` };
}

function publicPart(jwk: JWK): JWK {
  const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pub } = jwk;
  return pub;
}

export async function startOidcIssuer(options: OidcIssuerOptions = {}): Promise<OidcIssuer> {
  const Provider = await loadProvider();
  const alg = options.alg ?? 'RS256';
  const defaultAudience = options.defaultAudience ?? 'airlock';
  const pending = new Map<string, PendingMint>();
  const requests = { discovery: 0, jwks: 0, token: 0 };
  let keys: JWK[] = [await newSigningKey(alg)];
  let jwksDown = false;
  let handler: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;

  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/.well-known/openid-configuration') requests.discovery++;
    if (path === '/jwks') {
      requests.jwks++;
      if (jwksDown) {
        res.writeHead(503, { 'content-type': 'text/plain' }).end('unavailable');
        return;
      }
    }
    if (path === '/token') requests.token++;
    if (!handler) {
      res.writeHead(503).end();
      return;
    }
    handler(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const issuer = `http://127.0.0.1:${port}`;

  const mintFor = (ctx: Ctx): PendingMint | undefined => {
    const id = ctx.get(MINT_HEADER);
    return id ? pending.get(id) : undefined;
  };

  // A new Provider instance (same issuer, same HTTP server) whenever the keys change: the
  // provider builds its keystore at construction.
  const buildProvider = (): void => {
    const provider = new Provider(issuer, {
      adapter: MemoryAdapter,
      clients: [
        {
          client_id: CLIENT_ID,
          client_secret: CLIENT_SECRET,
          grant_types: ['client_credentials'],
          redirect_uris: [],
          response_types: [],
          token_endpoint_auth_method: 'client_secret_basic',
        },
      ],
      jwks: { keys },
      clientDefaults: { id_token_signed_response_alg: alg },
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => RESOURCE,
          useGrantedResource: () => true,
          getResourceServerInfo: (ctx: Ctx) => {
            const mint = mintFor(ctx);
            const aud = mint?.claims.aud;
            const expiresIn = mint?.opts.expiresIn ?? 600;
            return {
              scope: '',
              audience: Array.isArray(aud) ? (aud[0] ?? defaultAudience) : (aud ?? defaultAudience),
              accessTokenFormat: 'jwt',
              accessTokenTTL: expiresIn > 0 ? Math.ceil(expiresIn) : 1,
              jwt: { sign: { alg } },
            };
          },
        },
      },
      extraTokenClaims: (ctx: Ctx) => {
        const mint = mintFor(ctx);
        if (!mint) return undefined;
        const { sub: _sub, aud: _aud, ...extra } = mint.claims;
        return Object.keys(extra).length > 0 ? extra : undefined;
      },
      formats: {
        customizers: {
          jwt: (ctx: Ctx, _token: unknown, jwt: { payload: Record<string, unknown> }) => {
            const mint = mintFor(ctx);
            if (!mint) return;
            const { claims, opts } = mint;
            const now = Math.floor(Date.now() / 1000);
            if (claims.sub !== undefined) jwt.payload.sub = claims.sub;
            if (Array.isArray(claims.aud)) jwt.payload.aud = claims.aud;
            if (opts.notBefore !== undefined) jwt.payload.nbf = now + Math.floor(opts.notBefore);
            if (opts.expiresIn !== undefined && opts.expiresIn <= 0) {
              jwt.payload.exp = now + Math.floor(opts.expiresIn) - 1;
              jwt.payload.iat = Math.min(Number(jwt.payload.iat), Number(jwt.payload.exp) - 60);
            }
          },
        },
      },
      ttl: {
        ClientCredentials: (_ctx: unknown, token: { resourceServer?: { accessTokenTTL?: number } }) =>
          token.resourceServer?.accessTokenTTL ?? 600,
      },
    });
    handler = provider.callback();
  };
  buildProvider();

  const mintToken = async (claims: MintClaims = {}, opts: MintOptions = {}): Promise<string> => {
    const id = randomUUID();
    pending.set(id, { claims, opts });
    try {
      const res = await fetch(`${issuer}/token`, {
        method: 'POST',
        headers: {
          authorization: `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`,
          'content-type': 'application/x-www-form-urlencoded',
          [MINT_HEADER]: id,
        },
        body: new URLSearchParams({ grant_type: 'client_credentials', resource: RESOURCE }).toString(),
      });
      const body = (await res.json()) as { access_token?: string; error?: string; error_description?: string };
      if (!res.ok || typeof body.access_token !== 'string') {
        throw new Error(`oidc-provider token endpoint: HTTP ${res.status} ${body.error ?? ''} ${body.error_description ?? ''}`);
      }
      return body.access_token;
    } finally {
      pending.delete(id);
    }
  };

  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    mintToken,
    async rotateKeys() {
      keys = [await newSigningKey(alg), ...keys];
      buildProvider();
    },
    publicJwks: () => ({ keys: keys.map(publicPart) }),
    setJwksDown(down: boolean) {
      jwksDown = down;
    },
    requests,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
