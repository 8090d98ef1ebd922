// Authentication failures.
//
// An AuthError's `message` is meant for the caller: it says what is wrong with the credential
// ("token audience does not match: expected airlock") and never contains the credential itself.
// Internal details (network errors, library errors) go in `cause`, for logs only.

/** Codes used by the JWT verifier. Other verifiers may add their own codes. */
export type JwtAuthErrorCode =
  | 'untrusted_issuer' // `iss` is not a configured trusted issuer
  | 'expired' // `exp` is in the past (beyond the clock tolerance)
  | 'not_yet_valid' // `nbf` is in the future (beyond the clock tolerance)
  | 'bad_audience' // no `aud` value matches the issuer's accepted audiences
  | 'bad_signature' // signature invalid, no matching key, or a refused algorithm (none, HS*)
  | 'malformed' // not a JWT, undecodable, or missing a required claim (exp, subject)
  | 'jwks_unavailable'; // the issuer's discovery document or JWKS could not be fetched

// `string & {}` keeps editor completion for the known codes while allowing other verifiers'
// codes (e.g. revoked service tokens).
export type AuthErrorCode = JwtAuthErrorCode | (string & {});

export class AuthError extends Error {
  override readonly name = 'AuthError';
  readonly code: AuthErrorCode;

  constructor(code: AuthErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  static is(err: unknown): err is AuthError {
    return err instanceof AuthError;
  }

  /** What may be shown to the caller. */
  toJSON(): { code: AuthErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}
