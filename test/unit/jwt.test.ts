import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createPublicKey } from 'node:crypto';
import { exportJWK, generateKeyPair, jwtVerify, SignJWT, type CryptoKey, type JWK } from 'jose';
import { JwtVerifier, type TrustedIssuer } from '../../src/identity/jwt.ts';
import { AuthError } from '../../src/identity/errors.ts';
import { startOidcIssuer, type OidcIssuer } from '../helpers/oidc-issuer.ts';

async function assertAuthError(p: Promise<unknown>, code: string, token: string, message?: RegExp): Promise<AuthError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AuthError, `expected AuthError, got ${String(err)}`);
    assert.equal(err.code, code, `code (message: ${err.message})`);
    if (message) assert.match(err.message, message);
    assert.ok(!err.message.includes(token), 'message must not contain the token');
    const [, payload = '', sig = ''] = token.split('.');
    if (payload.length > 8) assert.ok(!err.message.includes(payload), 'message must not contain the token payload');
    if (sig.length > 8) assert.ok(!err.message.includes(sig), 'message must not contain the token signature');
    return err;
  }
  assert.fail(`expected AuthError ${code}, but verification succeeded`);
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

/** A tiny issuer we control fully (discovery + JWKS over HTTP), for tokens oidc-provider won't mint. */
async function startKeyServer(opts: { hang?: boolean } = {}) {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = 'own-key-1';
  const pub: JWK = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  let url = '';
  const server: Server = createServer((req, res) => {
    if (opts.hang) return; // never answers
    if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: url, jwks_uri: `${url}/jwks` }));
    } else if (req.url === '/jwks') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [pub] }));
    } else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer: url,
    sign: (claims: Record<string, unknown>, header: { kid?: string } = {}) =>
      new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: header.kid ?? kid }).sign(privateKey as CryptoKey),
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

describe('JwtVerifier against a real oidc-provider issuer', () => {
  let idp: OidcIssuer;
  let other: OidcIssuer;
  const trusted = (extra: Partial<TrustedIssuer> = {}): TrustedIssuer => ({ issuer: idp.issuer, audience: 'airlock', ...extra });

  before(async () => {
    idp = await startOidcIssuer();
    other = await startOidcIssuer();
  });
  after(async () => {
    await idp.close();
    await other.close();
  });

  test('valid token -> Identity with groups and claims', async () => {
    const v = new JwtVerifier([trusted()]);
    const token = await idp.mintToken({ sub: 'ci-deployer', groups: ['ci', 'deployers'], repository: 'acme/api', ref: 'refs/heads/main' });
    assert.ok(JwtVerifier.looksLikeJwt(token));
    const id = await v.verify(token);
    assert.equal(id.kind, 'jwt');
    assert.equal(id.subject, 'ci-deployer');
    assert.deepEqual(id.groups, ['ci', 'deployers']);
    assert.equal(id.issuer, idp.issuer);
    assert.equal(id.claims.repository, 'acme/api');
    assert.equal(id.claims.ref, 'refs/heads/main');
    assert.equal(id.claims.client_id, 'airlock-test-client');
    assert.equal(id.tokenId, undefined);
    assert.equal(id.expiresAt, (id.claims.exp as number) * 1000);
    assert.ok(id.expiresAt! > Date.now() + 500_000);
  });

  test('discovery is fetched once and the JWKS is cached', async () => {
    const v = new JwtVerifier([trusted()]);
    const d0 = idp.requests.discovery;
    const j0 = idp.requests.jwks;
    const tokens = await Promise.all([1, 2, 3].map((i) => idp.mintToken({ sub: `s${i}` })));
    await Promise.all(tokens.map((t) => v.verify(t)));
    await v.verify(tokens[0]);
    assert.equal(idp.requests.discovery - d0, 1);
    assert.equal(idp.requests.jwks - j0, 1);
  });

  test('audience: array in token, array in config; groups as string and dotted path', async () => {
    const v = new JwtVerifier([trusted({ audience: ['nope', 'airlock'], groupsClaim: 'realm_access.roles' })]);
    const t1 = await idp.mintToken({ sub: 'a', aud: ['something-else', 'airlock'], realm_access: { roles: ['r1', 'r2'] } });
    const id1 = await v.verify(t1);
    assert.deepEqual(id1.groups, ['r1', 'r2']);
    assert.deepEqual(id1.claims.aud, ['something-else', 'airlock']);

    const v2 = new JwtVerifier([trusted()]);
    const t2 = await idp.mintToken({ sub: 'b', groups: 'ci, deployers  readers,ci' });
    assert.deepEqual((await v2.verify(t2)).groups, ['ci', 'deployers', 'readers']);
    const t3 = await idp.mintToken({ sub: 'c' });
    assert.deepEqual((await v2.verify(t3)).groups, []);
  });

  test('subjectClaim can point elsewhere', async () => {
    const v = new JwtVerifier([trusted({ subjectClaim: 'repository' })]);
    const t = await idp.mintToken({ sub: 'x', repository: 'acme/api' });
    assert.equal((await v.verify(t)).subject, 'acme/api');
    const v2 = new JwtVerifier([trusted({ subjectClaim: 'workflow' })]);
    await assertAuthError(v2.verify(t), 'malformed', t, /subject/);
  });

  test('expired token', async () => {
    const v = new JwtVerifier([trusted()]);
    const t = await idp.mintToken({ sub: 'a' }, { expiresIn: -120 });
    await assertAuthError(v.verify(t), 'expired', t, /^token expired at \d{4}-/);
    // Within the clock tolerance: accepted.
    const t2 = await idp.mintToken({ sub: 'a' }, { expiresIn: -5 });
    await v.verify(t2);
    const strict = new JwtVerifier([trusted({ clockToleranceSec: 0 })]);
    await assertAuthError(strict.verify(t2), 'expired', t2);
  });

  test('not yet valid (nbf in the future)', async () => {
    const v = new JwtVerifier([trusted()]);
    const t = await idp.mintToken({ sub: 'a' }, { notBefore: 300 });
    await assertAuthError(v.verify(t), 'not_yet_valid', t, /not valid before/);
    const t2 = await idp.mintToken({ sub: 'a' }, { notBefore: 10 }); // within tolerance
    await v.verify(t2);
  });

  test('wrong audience', async () => {
    const v = new JwtVerifier([trusted()]);
    const t = await idp.mintToken({ sub: 'a', aud: 'some-other-service' });
    const err = await assertAuthError(v.verify(t), 'bad_audience', t);
    assert.equal(err.message, 'token audience does not match: expected airlock');
    const v2 = new JwtVerifier([trusted({ audience: ['airlock', 'airlock-staging'] })]);
    await assertAuthError(v2.verify(t), 'bad_audience', t, /expected airlock or airlock-staging$/);
  });

  test('untrusted issuer', async () => {
    const v = new JwtVerifier([trusted()]);
    const t = await other.mintToken({ sub: 'a' });
    const err = await assertAuthError(v.verify(t), 'untrusted_issuer', t);
    assert.equal(err.message, `token issuer is not trusted: "${other.issuer}"`);
  });

  test('alg "none" is refused', async () => {
    const v = new JwtVerifier([trusted()]);
    const now = Math.floor(Date.now() / 1000);
    const payload = { iss: idp.issuer, aud: 'airlock', sub: 'admin', exp: now + 600, iat: now };
    for (const alg of ['none', 'None', 'NONE']) {
      const t = `${b64({ alg, typ: 'JWT' })}.${b64(payload)}.`;
      assert.ok(JwtVerifier.looksLikeJwt(t));
      await assertAuthError(v.verify(t), 'bad_signature', t, /not accepted/);
    }
  });

  test('HS256 signed with the issuer public key (algorithm confusion) is refused', async () => {
    const v = new JwtVerifier([trusted()]);
    const genuine = await idp.mintToken({ sub: 'a' });
    await v.verify(genuine); // keys are cached and trusted
    const jwks = (await (await fetch(`${idp.issuer}/jwks`)).json()) as { keys: JWK[] };
    const jwk = jwks.keys[0];
    const pem = createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    const secret = new TextEncoder().encode(String(pem));
    const now = Math.floor(Date.now() / 1000);
    for (const alg of ['HS256', 'HS384', 'HS512']) {
      const forged = await new SignJWT({ sub: 'admin', groups: ['admins'] })
        .setProtectedHeader({ alg, kid: jwk.kid })
        .setIssuer(idp.issuer)
        .setAudience('airlock')
        .setIssuedAt(now)
        .setExpirationTime(now + 600)
        .sign(secret);
      // Sanity: the forgery is "valid" for a verifier that would use the public key bytes as an HMAC secret.
      await jwtVerify(forged, secret);
      await assertAuthError(v.verify(forged), 'bad_signature', forged, /HS\d{3}.*not accepted/);
    }
  });

  test('HMAC algorithms cannot be configured', () => {
    assert.throws(() => new JwtVerifier([trusted({ algorithms: ['RS256', 'HS256'] })]), /asymmetric/);
    assert.throws(() => new JwtVerifier([trusted({ algorithms: ['none'] })]), /asymmetric/);
  });

  test('algorithm not in the issuer list is refused', async () => {
    const v = new JwtVerifier([trusted({ algorithms: ['ES256'] })]);
    const t = await idp.mintToken({ sub: 'a' }); // RS256
    await assertAuthError(v.verify(t), 'bad_signature', t, /RS256.*not accepted/);
  });

  test('tampered payload or signature', async () => {
    const v = new JwtVerifier([trusted()]);
    const t = await idp.mintToken({ sub: 'reader', groups: ['readers'] });
    const [h, p, s] = t.split('.');
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const tampered = `${h}.${b64({ ...claims, groups: ['admins'] })}.${s}`;
    await assertAuthError(v.verify(tampered), 'bad_signature', tampered, /signature is invalid/);
    const badSig = `${h}.${p}.${s.slice(0, -6)}${s.slice(-6) === 'AAAAAA' ? 'BBBBBB' : 'AAAAAA'}`;
    await assertAuthError(v.verify(badSig), 'bad_signature', badSig);
  });

  test('malformed tokens', async () => {
    const v = new JwtVerifier([trusted()]);
    for (const t of ['', 'abc', 'a.b', 'a.b.c.d', 'a.b.c.d.e', '!!.??.##', `${b64([1])}.${b64({})}.x`, `${b64({ alg: 'RS256' })}.bm90IGpzb24.x`]) {
      await assertAuthError(v.verify(t), 'malformed', t || 'x.never.present');
    }
    assert.equal(JwtVerifier.looksLikeJwt('at_abcdef.ghijk.lmnop'), false); // header is not JSON
    assert.equal(JwtVerifier.looksLikeJwt('airlock_svc_abc'), false);
  });

  test('key rotation: a new kid is picked up on first sight', async () => {
    const v = new JwtVerifier([trusted()]);
    const before = await idp.mintToken({ sub: 'a' });
    await v.verify(before);
    const j0 = idp.requests.jwks;
    await idp.rotateKeys();
    const afterRotation = await idp.mintToken({ sub: 'b' });
    const hBefore = JSON.parse(Buffer.from(before.split('.')[0], 'base64url').toString()) as { kid: string };
    const hAfter = JSON.parse(Buffer.from(afterRotation.split('.')[0], 'base64url').toString()) as { kid: string };
    assert.notEqual(hBefore.kid, hAfter.kid);
    assert.equal((await v.verify(afterRotation)).subject, 'b');
    assert.equal(idp.requests.jwks - j0, 1, 'one refetch for the unknown kid');
    await v.verify(before); // old key still published: old tokens keep working
    await v.verify(await idp.mintToken({ sub: 'c' }));
    assert.equal(idp.requests.jwks - j0, 1, 'no further fetches');
  });

  test('key rotation under concurrent requests: one refetch, all accepted', async () => {
    const v = new JwtVerifier([trusted()]);
    await v.verify(await idp.mintToken({ sub: 'a' }));
    await idp.rotateKeys();
    const j0 = idp.requests.jwks;
    const tokens = await Promise.all([1, 2, 3, 4, 5].map((i) => idp.mintToken({ sub: `s${i}` })));
    const ids = await Promise.all(tokens.map((t) => v.verify(t)));
    assert.deepEqual(ids.map((i) => i.subject), ['s1', 's2', 's3', 's4', 's5']);
    assert.equal(idp.requests.jwks - j0, 1);
  });

  test('unknown-kid refreshes are rate limited', async () => {
    const v = new JwtVerifier([trusted()]);
    await v.verify(await idp.mintToken({ sub: 'a' }));
    const j0 = idp.requests.jwks;
    // A well-formed token for this issuer signed by a key the issuer never published.
    const { privateKey } = await generateKeyPair('RS256');
    const now = Math.floor(Date.now() / 1000);
    const forge = (kid: string) =>
      new SignJWT({ sub: 'x' }).setProtectedHeader({ alg: 'RS256', kid }).setIssuer(idp.issuer)
        .setAudience('airlock').setExpirationTime(now + 600).sign(privateKey);
    for (let i = 0; i < 5; i++) {
      const t = await forge(`random-${i}`);
      await assertAuthError(v.verify(t), 'bad_signature', t, /no signing key .* matches the token \(kid "random-\d"\)/);
    }
    assert.equal(idp.requests.jwks - j0, 1, 'a single refetch within the cooldown');
  });

  test('JWKS endpoint down -> jwks_unavailable', async () => {
    const v = new JwtVerifier([trusted()]);
    const t = await idp.mintToken({ sub: 'a' });
    idp.setJwksDown(true);
    try {
      await assertAuthError(v.verify(t), 'jwks_unavailable', t, /JWKS fetch failed with HTTP 503/);
    } finally {
      idp.setJwksDown(false);
    }
    // Recovers on the next request.
    assert.equal((await v.verify(t)).subject, 'a');
  });

  test('stale keys are used while the JWKS endpoint is down', async () => {
    const v = new JwtVerifier([trusted()], { cacheMaxAgeMs: 1 });
    const t = await idp.mintToken({ sub: 'a' });
    await v.verify(t);
    await new Promise((r) => setTimeout(r, 5));
    idp.setJwksDown(true);
    try {
      assert.equal((await v.verify(t)).subject, 'a');
    } finally {
      idp.setJwksDown(false);
    }
  });

  test('issuer unreachable -> jwks_unavailable, not a crash', async () => {
    const gone = await startOidcIssuer();
    const t = await gone.mintToken({ sub: 'a' });
    await gone.close();
    const v = new JwtVerifier([{ issuer: gone.issuer, audience: 'airlock' }]);
    await assertAuthError(v.verify(t), 'jwks_unavailable', t, /could not be fetched/);
    const v2 = new JwtVerifier([{ issuer: gone.issuer, audience: 'airlock', jwksUri: `${gone.issuer}/jwks` }]);
    await assertAuthError(v2.verify(t), 'jwks_unavailable', t, /JWKS could not be fetched/);
  });
});

describe('JwtVerifier with an issuer we control', () => {
  test('exp is required', async () => {
    const ks = await startKeyServer();
    try {
      const v = new JwtVerifier([{ issuer: ks.issuer, audience: 'airlock' }]);
      const t = await ks.sign({ iss: ks.issuer, aud: 'airlock', sub: 'a' });
      await assertAuthError(v.verify(t), 'malformed', t, /no "exp"/);
      const ok = await ks.sign({ iss: ks.issuer, aud: 'airlock', sub: 'a', exp: Math.floor(Date.now() / 1000) + 60 });
      assert.equal((await v.verify(ok)).subject, 'a');
    } finally {
      await ks.close();
    }
  });

  test('not yet valid, with a token signed by our own key', async () => {
    const ks = await startKeyServer();
    try {
      const v = new JwtVerifier([{ issuer: ks.issuer, audience: 'airlock', jwksUri: `${ks.issuer}/jwks` }]);
      const now = Math.floor(Date.now() / 1000);
      const t = await ks.sign({ iss: ks.issuer, aud: 'airlock', sub: 'a', nbf: now + 3600, exp: now + 7200 });
      await assertAuthError(v.verify(t), 'not_yet_valid', t);
    } finally {
      await ks.close();
    }
  });

  test('JWKS fetch timeout -> jwks_unavailable', async () => {
    const ks = await startKeyServer({ hang: true });
    try {
      const v = new JwtVerifier([{ issuer: ks.issuer, audience: 'airlock' }], { timeoutMs: 200 });
      const now = Math.floor(Date.now() / 1000);
      const t = await ks.sign({ iss: ks.issuer, aud: 'airlock', sub: 'a', exp: now + 60 });
      const started = Date.now();
      await assertAuthError(v.verify(t), 'jwks_unavailable', t, /timed out after 200 ms/);
      assert.ok(Date.now() - started < 2000);
    } finally {
      await ks.close();
    }
  });

  test('custom fetch that never settles still times out', async () => {
    const v = new JwtVerifier([{ issuer: 'https://idp.example.com', audience: 'airlock' }], {
      timeoutMs: 100,
      fetch: (() => new Promise(() => {})) as unknown as typeof fetch,
    });
    const now = Math.floor(Date.now() / 1000);
    const { privateKey } = await generateKeyPair('ES256');
    const t = await new SignJWT({ sub: 'a' }).setProtectedHeader({ alg: 'ES256' }).setIssuer('https://idp.example.com')
      .setAudience('airlock').setExpirationTime(now + 60).sign(privateKey);
    await assertAuthError(v.verify(t), 'jwks_unavailable', t, /timed out/);
  });
});

describe('JwtVerifier configuration', () => {
  test('https is required except on loopback or with allowInsecureHttp', () => {
    assert.throws(() => new JwtVerifier([{ issuer: 'http://idp.example.com', audience: 'a' }]), /must use https/);
    assert.throws(() => new JwtVerifier([{ issuer: 'https://idp.example.com', audience: 'a', jwksUri: 'http://idp.example.com/jwks' }]), /must use https/);
    new JwtVerifier([{ issuer: 'http://idp.example.com', audience: 'a' }], { allowInsecureHttp: true });
    new JwtVerifier([{ issuer: 'http://127.0.0.1:8080', audience: 'a' }]);
    new JwtVerifier([{ issuer: 'http://localhost:8080', audience: 'a' }]);
    new JwtVerifier([{ issuer: 'http://[::1]:8080', audience: 'a' }]);
    new JwtVerifier([{ issuer: 'https://idp.example.com', audience: 'a' }]);
    // A non-URL issuer is fine when the JWKS URL is given.
    new JwtVerifier([{ issuer: 'kubernetes/serviceaccount', audience: 'a', jwksUri: 'https://k8s.example.com/openid/v1/jwks' }]);
    assert.throws(() => new JwtVerifier([{ issuer: 'kubernetes/serviceaccount', audience: 'a' }]), /not a URL/);
  });

  test('audience and duplicates are checked', () => {
    assert.throws(() => new JwtVerifier([{ issuer: 'https://a.example', audience: [] }]), /audience/);
    assert.throws(
      () => new JwtVerifier([{ issuer: 'https://a.example', audience: 'x' }, { issuer: 'https://a.example', audience: 'y' }]),
      /twice/,
    );
  });

  test('discovery document must name the same issuer', async () => {
    const fakeFetch = (async (url: string | URL | Request) => {
      assert.equal(String(url), 'https://idp.example.com/.well-known/openid-configuration');
      return new Response(JSON.stringify({ issuer: 'https://evil.example.com', jwks_uri: 'https://evil.example.com/jwks' }), { status: 200 });
    }) as typeof fetch;
    const v = new JwtVerifier([{ issuer: 'https://idp.example.com', audience: 'airlock' }], { fetch: fakeFetch });
    const { privateKey } = await generateKeyPair('ES256');
    const t = await new SignJWT({ sub: 'a' }).setProtectedHeader({ alg: 'ES256' }).setIssuer('https://idp.example.com')
      .setAudience('airlock').setExpirationTime(Math.floor(Date.now() / 1000) + 60).sign(privateKey);
    await assertAuthError(v.verify(t), 'jwks_unavailable', t, /different issuer/);
  });
});
