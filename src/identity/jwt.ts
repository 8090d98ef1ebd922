// JWT / OIDC verification: turns a bearer JWT from a trusted issuer into an Identity.
//
// Flow: decode (unverified) header and payload -> refuse "none"/HMAC algorithms -> pick the
// trusted issuer by the exact `iss` -> get the issuer's keys (discovery document and JWKS,
// cached) -> jose `jwtVerify` (signature, exp, nbf, iss, aud; exp required) -> Identity.
//
// Keys: the discovery document is fetched once per issuer (a failure is not cached). The JWKS is
// cached for 10 minutes and refetched as soon as a token carries a `kid` that is not in the
// cached set (key rotation), at most once per cooldown (30 s) so that tokens with random kids
// cannot make Airlock hammer the issuer. When a refresh fails the previous keys keep being used
// for up to an hour (stale-if-error); without any keys the error is `jwks_unavailable`.
//
// Transport: issuer and JWKS URLs must be https, except on loopback hosts (127.0.0.0/8, ::1,
// localhost), where http is accepted automatically. `allowInsecureHttp` accepts http anywhere
// (development only).

import { isLoopback } from '../core/net.ts';
import {
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors as joseErrors,
  jwtVerify,
  type JSONWebKeySet,
  type JWSHeaderParameters,
  type FlattenedJWSInput,
  type JWTPayload,
} from 'jose';
import type { Identity } from '../core/types.ts';
import { AuthError } from './errors.ts';

export interface TrustedIssuer {
  /** Exact `iss` value. */
  issuer: string;
  /** Accepted `aud` values: the token's aud (string or array) must contain at least one. */
  audience: string | string[];
  /** Default: `jwks_uri` of `${issuer}/.well-known/openid-configuration`. */
  jwksUri?: string;
  /** Default "groups". Array or space/comma separated string; dotted path allowed ("realm_access.roles"). */
  groupsClaim?: string;
  /** Default "sub". Dotted path allowed. */
  subjectClaim?: string;
  /** Default: every asymmetric algorithm. HMAC and "none" are refused even if listed. */
  algorithms?: string[];
  /** Default 30. */
  clockToleranceSec?: number;
}

export interface JwtVerifierOptions {
  /** Replaces global fetch (tests, proxies). */
  fetch?: typeof fetch;
  /** Accept http:// issuer and JWKS URLs on any host. Loopback hosts are always accepted over http. */
  allowInsecureHttp?: boolean;
  /** Timeout of each discovery/JWKS fetch. Default 5000 ms. */
  timeoutMs?: number;
  /** Minimum interval between JWKS refreshes triggered by unknown kids. Default 30000 ms. */
  cooldownMs?: number;
  /** How long a fetched JWKS is used before it is refetched. Default 600000 ms (10 min). */
  cacheMaxAgeMs?: number;
}

/** Asymmetric JWS algorithms: the only ones ever accepted. */
export const ASYMMETRIC_ALGORITHMS: readonly string[] = [
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
  'ES256', 'ES384', 'ES512',
  'EdDSA', 'Ed25519',
];

const DEFAULT_TIMEOUT_MS = 5_000;
const DEFAULT_COOLDOWN_MS = 30_000;
const DEFAULT_CACHE_MAX_AGE_MS = 10 * 60_000;
const STALE_IF_ERROR_MS = 60 * 60_000;
const MAX_TOKEN_LENGTH = 64 * 1024;
const MAX_DOCUMENT_BYTES = 1024 * 1024;

type KeyResolver = ReturnType<typeof createLocalJWKSet>;

interface KeyCache {
  resolve: KeyResolver;
  fetchedAt: number;
}

interface IssuerState {
  issuer: string;
  audiences: string[];
  algorithms: string[];
  clockToleranceSec: number;
  groupsClaim: string;
  subjectClaim: string;
  configuredJwksUri?: string;
  discovery?: Promise<string>;
  keys?: KeyCache;
  refreshing?: Promise<KeyCache>;
  lastAttemptAt: number;
  lastUnknownKidRefreshAt: number;
}

export class JwtVerifier {
  private readonly issuers = new Map<string, IssuerState>();
  private readonly fetchImpl: typeof fetch;
  private readonly allowInsecureHttp: boolean;
  private readonly timeoutMs: number;
  private readonly cooldownMs: number;
  private readonly cacheMaxAgeMs: number;

  constructor(issuers: TrustedIssuer[], opts: JwtVerifierOptions = {}) {
    this.fetchImpl = opts.fetch ?? globalThis.fetch;
    this.allowInsecureHttp = opts.allowInsecureHttp ?? false;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.cooldownMs = opts.cooldownMs ?? DEFAULT_COOLDOWN_MS;
    this.cacheMaxAgeMs = opts.cacheMaxAgeMs ?? DEFAULT_CACHE_MAX_AGE_MS;

    for (const cfg of issuers) {
      if (typeof cfg.issuer !== 'string' || cfg.issuer === '') {
        throw new TypeError('trusted issuer: "issuer" must be a non-empty string');
      }
      if (this.issuers.has(cfg.issuer)) {
        throw new TypeError(`trusted issuer ${cfg.issuer}: listed twice`);
      }
      const audiences = (Array.isArray(cfg.audience) ? cfg.audience : [cfg.audience])
        .filter((a) => typeof a === 'string' && a !== '');
      if (audiences.length === 0) {
        throw new TypeError(`trusted issuer ${cfg.issuer}: at least one audience is required`);
      }
      const algorithms = cfg.algorithms ?? [...ASYMMETRIC_ALGORITHMS];
      const refused = algorithms.filter((a) => !ASYMMETRIC_ALGORITHMS.includes(a));
      if (refused.length > 0 || algorithms.length === 0) {
        throw new TypeError(
          `trusted issuer ${cfg.issuer}: algorithms must be asymmetric (${ASYMMETRIC_ALGORITHMS.join(', ')}); ` +
            `refused: ${refused.join(', ') || '(empty list)'}`,
        );
      }
      if (cfg.jwksUri !== undefined) {
        this.checkUrl(cfg.jwksUri, `trusted issuer ${cfg.issuer}: jwksUri`, (m) => new TypeError(m));
      } else {
        this.checkUrl(cfg.issuer, `trusted issuer ${cfg.issuer}: issuer (used for discovery)`, (m) => new TypeError(m));
      }
      this.issuers.set(cfg.issuer, {
        issuer: cfg.issuer,
        audiences,
        algorithms,
        clockToleranceSec: cfg.clockToleranceSec ?? 30,
        groupsClaim: cfg.groupsClaim ?? 'groups',
        subjectClaim: cfg.subjectClaim ?? 'sub',
        configuredJwksUri: cfg.jwksUri,
        lastAttemptAt: -Infinity,
        lastUnknownKidRefreshAt: -Infinity,
      });
    }
  }

  /** Three base64url segments whose first decodes to a JSON object (the JOSE header). */
  static looksLikeJwt(token: string): boolean {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH) return false;
    if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token)) return false;
    try {
      const header: unknown = JSON.parse(Buffer.from(token.slice(0, token.indexOf('.')), 'base64url').toString('utf8'));
      return header !== null && typeof header === 'object' && !Array.isArray(header);
    } catch {
      return false;
    }
  }

  async verify(token: string): Promise<Identity> {
    if (typeof token !== 'string' || token === '') throw new AuthError('malformed', 'token is empty');
    if (token.length > MAX_TOKEN_LENGTH) throw new AuthError('malformed', 'token is too large');
    if (token.split('.').length === 5) {
      throw new AuthError('malformed', 'encrypted tokens (JWE) are not supported');
    }
    if (!JwtVerifier.looksLikeJwt(token)) throw new AuthError('malformed', 'token is not a JWT');

    let header: JWSHeaderParameters;
    let unverified: JWTPayload;
    try {
      header = decodeProtectedHeader(token) as JWSHeaderParameters;
      unverified = decodeJwt(token);
    } catch {
      throw new AuthError('malformed', 'token is not a valid JWT: header or payload cannot be decoded');
    }

    const alg = header.alg;
    if (typeof alg !== 'string' || alg === '') throw new AuthError('malformed', 'token header has no "alg"');
    if (alg.toLowerCase() === 'none') {
      throw new AuthError('bad_signature', 'unsigned tokens (alg "none") are not accepted');
    }
    if (!ASYMMETRIC_ALGORITHMS.includes(alg)) {
      throw new AuthError(
        'bad_signature',
        `token signing algorithm ${quote(alg)} is not accepted: only asymmetric algorithms are (${ASYMMETRIC_ALGORITHMS.join(', ')})`,
      );
    }

    const iss = unverified.iss;
    if (typeof iss !== 'string' || iss === '') throw new AuthError('malformed', 'token has no "iss" claim');
    const state = this.issuers.get(iss);
    if (!state) throw new AuthError('untrusted_issuer', `token issuer is not trusted: ${quote(iss)}`);
    if (!state.algorithms.includes(alg)) {
      throw new AuthError(
        'bad_signature',
        `token signing algorithm ${quote(alg)} is not accepted for issuer ${iss} (allowed: ${state.algorithms.join(', ')})`,
      );
    }

    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, (h, t) => this.resolveKey(state, h, t), {
        issuer: state.issuer,
        audience: state.audiences,
        algorithms: state.algorithms,
        clockTolerance: state.clockToleranceSec,
        requiredClaims: ['exp'],
      }));
    } catch (err) {
      throw this.mapError(err, state, unverified, header);
    }

    const subject = getClaim(payload, state.subjectClaim);
    if (typeof subject !== 'string' || subject === '') {
      throw new AuthError('malformed', `token has no subject: claim ${quote(state.subjectClaim)} is missing or not a string`);
    }

    return {
      subject,
      kind: 'jwt',
      groups: toGroups(getClaim(payload, state.groupsClaim)),
      claims: { ...payload },
      issuer: iss,
      expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : undefined,
    };
  }

  // ---- keys ----

  private async resolveKey(state: IssuerState, header: JWSHeaderParameters, token: FlattenedJWSInput) {
    let keys = await this.currentKeys(state);
    try {
      return await keys.resolve(header, token);
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err;
      // Unknown kid: the issuer may have rotated its keys. A concurrent request may already be
      // refetching them (or have just done so): use that result.
      const latest = state.refreshing ? await state.refreshing : state.keys;
      if (latest && latest !== keys) return await latest.resolve(header, token);
      // Otherwise refetch, rate-limited.
      const now = Date.now();
      if (now - state.lastUnknownKidRefreshAt < this.cooldownMs) throw err;
      state.lastUnknownKidRefreshAt = now;
      keys = await this.refreshKeys(state);
      return await keys.resolve(header, token);
    }
  }

  private async currentKeys(state: IssuerState): Promise<KeyCache> {
    const now = Date.now();
    const cached = state.keys;
    if (cached && now - cached.fetchedAt < this.cacheMaxAgeMs) return cached;
    const usableStale = cached && now - cached.fetchedAt < this.cacheMaxAgeMs + STALE_IF_ERROR_MS;
    // A refresh failed recently: keep using the stale keys instead of retrying on every request.
    if (usableStale && now - state.lastAttemptAt < this.cooldownMs) return cached;
    try {
      return await this.refreshKeys(state);
    } catch (err) {
      if (usableStale) return cached;
      throw err;
    }
  }

  /** Fetches the JWKS (coalescing concurrent refreshes). Throws AuthError('jwks_unavailable'). */
  private refreshKeys(state: IssuerState): Promise<KeyCache> {
    state.refreshing ??= (async () => {
      state.lastAttemptAt = Date.now();
      try {
        const uri = await this.jwksUri(state);
        const doc = await this.fetchJson(uri, state, 'JWKS');
        let resolve: KeyResolver;
        try {
          resolve = createLocalJWKSet(doc as JSONWebKeySet);
        } catch (cause) {
          throw new AuthError('jwks_unavailable', `signing keys of issuer ${state.issuer} are unusable: the JWKS is malformed`, { cause });
        }
        state.keys = { resolve, fetchedAt: Date.now() };
        return state.keys;
      } finally {
        state.refreshing = undefined;
      }
    })();
    return state.refreshing;
  }

  private jwksUri(state: IssuerState): Promise<string> {
    if (state.configuredJwksUri) return Promise.resolve(state.configuredJwksUri);
    state.discovery ??= this.discover(state).catch((err: unknown) => {
      state.discovery = undefined; // do not cache failures
      throw err;
    });
    return state.discovery;
  }

  private async discover(state: IssuerState): Promise<string> {
    const url = `${state.issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
    const doc = await this.fetchJson(url, state, 'discovery document');
    const unavailable = (why: string) =>
      new AuthError('jwks_unavailable', `signing keys of issuer ${state.issuer} are unavailable: discovery document ${why}`);
    if (!isObject(doc)) throw unavailable('is not a JSON object');
    if (doc.issuer !== state.issuer) throw unavailable(`names a different issuer (${quote(String(doc.issuer))})`);
    if (typeof doc.jwks_uri !== 'string' || doc.jwks_uri === '') throw unavailable('has no jwks_uri');
    this.checkUrl(doc.jwks_uri, 'jwks_uri', (m) => unavailable(`is unusable: ${m}`));
    return doc.jwks_uri;
  }

  private async fetchJson(url: string, state: IssuerState, what: string): Promise<unknown> {
    const fail = (why: string, cause?: unknown) =>
      new AuthError('jwks_unavailable', `signing keys of issuer ${state.issuer} are unavailable: ${what} ${why}`, { cause });
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort();
        reject(fail(`fetch timed out after ${this.timeoutMs} ms (${url})`));
      }, this.timeoutMs);
    });
    try {
      return await Promise.race([
        (async () => {
          let res: Response;
          try {
            res = await this.fetchImpl(url, { signal: controller.signal, headers: { accept: 'application/json' } });
          } catch (cause) {
            throw fail(`could not be fetched (${url}): ${describe(cause)}`, cause);
          }
          if (res.url) this.checkUrl(res.url, `${what} (after redirect)`, (m) => fail(m));
          if (!res.ok) throw fail(`fetch failed with HTTP ${res.status} (${url})`);
          let text: string;
          try {
            text = await res.text();
          } catch (cause) {
            throw fail(`could not be read (${url}): ${describe(cause)}`, cause);
          }
          if (Buffer.byteLength(text) > MAX_DOCUMENT_BYTES) throw fail(`is too large (${url})`);
          try {
            return JSON.parse(text) as unknown;
          } catch (cause) {
            throw fail(`is not valid JSON (${url})`, cause);
          }
        })(),
        timeout,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private checkUrl(raw: string, what: string, toError: (message: string) => Error): void {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw toError(`${what} is not a URL: ${quote(raw)}`);
    }
    if (url.protocol === 'https:') return;
    if (url.protocol === 'http:' && (this.allowInsecureHttp || isLoopback(url.hostname))) return;
    throw toError(`${what} must use https (http is only accepted for loopback hosts or with allowInsecureHttp): ${raw}`);
  }

  // ---- errors ----

  private mapError(err: unknown, state: IssuerState, unverified: JWTPayload, header: JWSHeaderParameters): AuthError {
    if (err instanceof AuthError) return err;
    if (err instanceof joseErrors.JWTExpired) {
      const exp = typeof unverified.exp === 'number' ? ` at ${isoTime(unverified.exp)}` : '';
      return new AuthError('expired', `token expired${exp}`);
    }
    if (err instanceof joseErrors.JWTClaimValidationFailed) {
      switch (err.claim) {
        case 'nbf':
          return new AuthError(
            'not_yet_valid',
            typeof unverified.nbf === 'number'
              ? `token is not valid before ${isoTime(unverified.nbf)}`
              : 'token "nbf" claim is invalid',
          );
        case 'aud':
          return new AuthError('bad_audience', `token audience does not match: expected ${state.audiences.join(' or ')}`);
        case 'iss':
          return new AuthError('untrusted_issuer', 'token issuer is not trusted');
        case 'exp':
          return new AuthError(
            'malformed',
            err.reason === 'missing' ? 'token has no "exp" claim: tokens without expiry are not accepted' : 'token "exp" claim is invalid',
          );
        default:
          return new AuthError('malformed', `token ${quote(err.claim)} claim is invalid`);
      }
    }
    if (err instanceof joseErrors.JWKSNoMatchingKey) {
      const kid = typeof header.kid === 'string' ? ` (kid ${quote(header.kid)})` : '';
      return new AuthError('bad_signature', `no signing key of issuer ${state.issuer} matches the token${kid}`);
    }
    if (err instanceof joseErrors.JWKSInvalid) {
      return new AuthError('jwks_unavailable', `signing keys of issuer ${state.issuer} are unusable: the JWKS is malformed`, { cause: err });
    }
    if (err instanceof joseErrors.JWSSignatureVerificationFailed || err instanceof joseErrors.JOSEAlgNotAllowed) {
      return new AuthError('bad_signature', 'token signature is invalid');
    }
    if (err instanceof joseErrors.JOSENotSupported) {
      return new AuthError('bad_signature', 'token uses an unsupported algorithm or key type', { cause: err });
    }
    if (err instanceof joseErrors.JWSInvalid || err instanceof joseErrors.JWTInvalid) {
      return new AuthError('malformed', 'token is not a valid JWT', { cause: err });
    }
    return new AuthError('bad_signature', 'token could not be verified', { cause: err });
  }
}

// ---- helpers ----

/** Exact key first (claim names such as "https://example.com/groups" contain dots), then a dotted path. */
export function getClaim(payload: Record<string, unknown>, path: string): unknown {
  if (Object.hasOwn(payload, path)) return payload[path];
  let cur: unknown = payload;
  for (const part of path.split('.')) {
    if (!isObject(cur) || !Object.hasOwn(cur, part)) return undefined;
    cur = cur[part];
  }
  return cur;
}

/** Array of strings, or a space/comma separated string. Anything else: no groups. */
export function toGroups(value: unknown): string[] {
  let list: string[] = [];
  if (Array.isArray(value)) list = value.filter((v): v is string => typeof v === 'string').map((v) => v.trim());
  else if (typeof value === 'string') list = value.split(/[\s,]+/);
  return [...new Set(list.filter((v) => v !== ''))];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** JSON-quotes and truncates caller-controlled text for messages. */
function quote(s: string): string {
  return JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}...` : s);
}

function isoTime(epochSec: number): string {
  const d = new Date(epochSec * 1000);
  return Number.isNaN(d.getTime()) ? String(epochSec) : d.toISOString();
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    const code = isObject(cause) && typeof cause.code === 'string' ? ` (${cause.code})` : '';
    return `${err.message}${code}`;
  }
  return String(err);
}
