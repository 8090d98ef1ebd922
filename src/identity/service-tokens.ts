// Airlock service tokens: format, generation, hashing and verification helpers.
//
// Format: `alk_<id>_<secret>`
//   <id>     12 characters of lowercase RFC 4648 base32 (a-z, 2-7): public, used to list,
//            revoke and look the token up. 60 random bits: collisions are retried by the store.
//   <secret> 32 random bytes, base64url without padding (43 characters).
//
// At rest only sha256(secret) is kept. The secret is 256 bits of CSPRNG output, so a fast
// hash is enough: nobody can brute-force a 2^256 space whatever the hash speed, and a slow
// KDF (bcrypt, scrypt, argon2) would only make every connection and every per-statement
// check slower. Slow hashes exist for low-entropy human passwords, which these are not.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

export const SERVICE_TOKEN_PREFIX = 'alk_';
export const SERVICE_TOKEN_ID_LENGTH = 12;
export const SERVICE_TOKEN_SECRET_BYTES = 32;
/** base64url length of 32 bytes, no padding. */
export const SERVICE_TOKEN_SECRET_LENGTH = 43;
/** Exact length of a well-formed token: `alk_` + id + `_` + secret. */
export const SERVICE_TOKEN_LENGTH =
  SERVICE_TOKEN_PREFIX.length + SERVICE_TOKEN_ID_LENGTH + 1 + SERVICE_TOKEN_SECRET_LENGTH;

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
const TOKEN_RE = /^alk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$/;
const ID_RE = /^[a-z2-7]{12}$/;

export type ServiceTokenErrorCode = 'malformed' | 'unknown_token' | 'revoked' | 'expired';

const MESSAGES: Record<ServiceTokenErrorCode, string> = {
  malformed: 'malformed service token',
  unknown_token: 'unknown service token',
  revoked: 'service token has been revoked',
  expired: 'service token has expired',
};

/**
 * Refusal of a service token. `message` never contains the token or its secret and is safe
 * to show to the client; `code` is stable for programs and audit.
 */
export class ServiceTokenError extends Error {
  readonly code: ServiceTokenErrorCode;
  /** Token id, when the token parsed (public; safe to log). */
  readonly tokenId?: string;
  constructor(code: ServiceTokenErrorCode, tokenId?: string) {
    super(MESSAGES[code]);
    this.name = 'ServiceTokenError';
    this.code = code;
    if (tokenId !== undefined) this.tokenId = tokenId;
  }
}

/** A new random token id (12 chars, lowercase base32). */
export function generateTokenId(): string {
  const bytes = randomBytes(SERVICE_TOKEN_ID_LENGTH);
  let id = '';
  // 256 is a multiple of 32, so `b & 31` is uniform.
  for (const b of bytes) id += BASE32[b & 31];
  return id;
}

export function isValidTokenId(id: unknown): id is string {
  return typeof id === 'string' && ID_RE.test(id);
}

/** sha256 of the secret part (its base64url text, UTF-8), hex. The only thing kept at rest. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/**
 * A fresh token. `token` is to be shown once to the person who asked for it and never stored;
 * `secretHash` is what the store keeps.
 */
export function generateServiceToken(): { id: string; token: string; secretHash: string } {
  const id = generateTokenId();
  const secret = randomBytes(SERVICE_TOKEN_SECRET_BYTES).toString('base64url');
  return { id, token: `${SERVICE_TOKEN_PREFIX}${id}_${secret}`, secretHash: hashSecret(secret) };
}

/** Splits a token into id and secret; null for anything that is not exactly a well-formed token. */
export function parseServiceToken(token: unknown): { id: string; secret: string } | null {
  if (typeof token !== 'string' || token.length !== SERVICE_TOKEN_LENGTH) return null;
  const m = TOKEN_RE.exec(token);
  if (!m) return null;
  const id = m[1]!;
  const secret = m[2]!;
  // Canonical base64url of exactly 32 bytes (the last character carries 2 unused bits).
  const bytes = Buffer.from(secret, 'base64url');
  if (bytes.length !== SERVICE_TOKEN_SECRET_BYTES || bytes.toString('base64url') !== secret) return null;
  return { id, secret };
}

/**
 * Cheap check used to route a presented credential to the service-token verifier rather than
 * the JWT verifier (JWTs never start with `alk_`). Does not validate the secret.
 */
export function looksLikeServiceToken(token: unknown): boolean {
  return typeof token === 'string' && token.startsWith(SERVICE_TOKEN_PREFIX) && !token.includes('.');
}

/** Constant-time comparison of a presented secret with a stored hex hash. */
export function secretMatches(secret: string, storedHashHex: string): boolean {
  const presented = createHash('sha256').update(secret, 'utf8').digest();
  const stored = Buffer.from(storedHashHex, 'hex');
  if (stored.length !== presented.length) {
    // Still do the comparison work so the failure path costs the same.
    timingSafeEqual(presented, presented);
    return false;
  }
  return timingSafeEqual(presented, stored);
}

// Anything that looks like a token, lenient about the secret's length so that a truncated or
// slightly mistyped token is still caught; strict about the id so ordinary identifiers that
// merely start with "alk_" are left alone.
const SCRUB_RE = /alk_([a-z2-7]{12})_[A-Za-z0-9_-]{16,}/g;

/** Replaces every `alk_<id>_<secret>` in `text` with `alk_<id>_***`. */
export function redactServiceTokens(text: string): string {
  if (!text.includes(SERVICE_TOKEN_PREFIX)) return text;
  return text.replace(SCRUB_RE, 'alk_$1_***');
}
