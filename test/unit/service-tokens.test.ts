import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  SERVICE_TOKEN_LENGTH,
  ServiceTokenError,
  generateServiceToken,
  hashSecret,
  looksLikeServiceToken,
  parseServiceToken,
  redactServiceTokens,
  secretMatches,
} from '../../src/identity/service-tokens.ts';

test('generateServiceToken: format alk_<12 base32>_<43 base64url>, hash of the secret', () => {
  const { id, token, secretHash } = generateServiceToken();
  assert.match(id, /^[a-z2-7]{12}$/);
  assert.match(token, /^alk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$/);
  assert.equal(token.length, SERVICE_TOKEN_LENGTH);
  assert.ok(token.startsWith(`alk_${id}_`));
  const secret = token.slice(`alk_${id}_`.length);
  assert.equal(Buffer.from(secret, 'base64url').length, 32);
  assert.equal(secretHash, createHash('sha256').update(secret).digest('hex'));
  assert.equal(secretHash, hashSecret(secret));
  assert.ok(!secretHash.includes(secret));
});

test('generateServiceToken: ids and secrets are unique', () => {
  const ids = new Set<string>();
  const tokens = new Set<string>();
  for (let i = 0; i < 2000; i++) {
    const t = generateServiceToken();
    ids.add(t.id);
    tokens.add(t.token);
  }
  assert.equal(ids.size, 2000);
  assert.equal(tokens.size, 2000);
});

test('parseServiceToken round-trips, including secrets that contain _ and -', () => {
  for (let i = 0; i < 500; i++) {
    const { id, token } = generateServiceToken();
    const p = parseServiceToken(token);
    assert.ok(p);
    assert.equal(p.id, id);
    assert.equal(`alk_${p.id}_${p.secret}`, token);
  }
  const id = 'abcdefgh2345';
  const secret = Buffer.alloc(32, 0xfb).toString('base64url'); // "-_-_..." style characters
  assert.match(secret, /[-_]/);
  assert.deepEqual(parseServiceToken(`alk_${id}_${secret}`), { id, secret });
});

test('parseServiceToken refuses malformed input without throwing', () => {
  const { id, token } = generateServiceToken();
  const secret = token.slice(17);
  const bad: unknown[] = [
    '',
    'alk_',
    'alk__',
    `ALK_${id}_${secret}`,
    `alx_${id}_${secret}`,
    `${id}_${secret}`,
    `alk_${id.toUpperCase()}_${secret}`, // id charset
    `alk_${id}0_${secret}`, // 0 and 1 are not base32
    `alk_${id.slice(1)}_${secret}`, // short id
    `alk_${id}_${secret.slice(1)}`, // short secret
    `alk_${id}_${secret}A`, // long secret
    `alk_${id}_${secret.slice(0, 42)}+`, // base64, not base64url
    `alk_${id}_${secret.slice(0, 41)}==`, // padding
    `alk_${id}-${secret}`,
    ` ${token}`,
    `${token} `,
    `${token}\n`,
    `alk_${id}_${'é'.repeat(43)}`,
    'alk_' + 'a'.repeat(10_000_000),
    'x'.repeat(10_000_000),
    null,
    undefined,
    42,
    {},
    ['alk_'],
  ];
  for (const b of bad) {
    assert.equal(parseServiceToken(b), null, `accepted: ${String(b).slice(0, 80)}`);
  }
  // A definitely non-canonical encoding: 43rd char with the low 2 bits set.
  const canonical = Buffer.alloc(32, 0).toString('base64url'); // 'AAAA...A'
  assert.equal(parseServiceToken(`alk_${id}_${canonical}`)?.id, id);
  assert.equal(parseServiceToken(`alk_${id}_${canonical.slice(0, 42)}B`), null);
});

test('looksLikeServiceToken routes alk_ tokens, not JWTs', () => {
  assert.equal(looksLikeServiceToken(generateServiceToken().token), true);
  assert.equal(looksLikeServiceToken('alk_whatever'), true);
  assert.equal(looksLikeServiceToken('eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln'), false);
  assert.equal(looksLikeServiceToken(''), false);
  assert.equal(looksLikeServiceToken(undefined), false);
});

test('secretMatches compares in constant time and tolerates bad stored hashes', () => {
  const { token, secretHash } = generateServiceToken();
  const secret = parseServiceToken(token)!.secret;
  assert.equal(secretMatches(secret, secretHash), true);
  assert.equal(secretMatches(secret.slice(0, -1) + (secret.endsWith('A') ? 'Q' : 'A'), secretHash), false);
  assert.equal(secretMatches(secret, ''), false);
  assert.equal(secretMatches(secret, 'zz'), false);
});

test('redactServiceTokens scrubs token secrets and keeps the id', () => {
  const { id, token } = generateServiceToken();
  assert.equal(redactServiceTokens(`SELECT '${token}'`), `SELECT 'alk_${id}_***'`);
  assert.equal(redactServiceTokens(`${token},${token}`), `alk_${id}_***,alk_${id}_***`);
  // truncated secret still scrubbed
  assert.equal(redactServiceTokens(`x ${token.slice(0, 40)} y`), `x alk_${id}_*** y`);
  // ordinary identifiers left alone
  for (const s of ['select * from alk_users_table_with_a_long_name', 'alk_', 'no tokens here']) {
    assert.equal(redactServiceTokens(s), s);
  }
});

test('ServiceTokenError carries a code and a safe message', () => {
  const e = new ServiceTokenError('revoked', 'abcdefgh2345');
  assert.ok(e instanceof Error);
  assert.equal(e.code, 'revoked');
  assert.equal(e.tokenId, 'abcdefgh2345');
  assert.equal(e.message, 'service token has been revoked');
});
