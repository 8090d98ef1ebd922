// Small rules of the PostgreSQL adapter that integration tests cannot reach from this machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isSafeClientEncoding } from '../../src/protocols/postgres/adapter.ts';
import { isLoopback } from '../../src/core/net.ts';

test('only loopback peers may skip TLS', () => {
  for (const a of ['127.0.0.1', '127.10.0.3', '::1', '[::1]', '::ffff:127.0.0.1', 'localhost', 'api.localhost']) assert.equal(isLoopback(a), true, a);
  for (const a of ['10.0.0.1', '192.168.1.2', '::ffff:10.0.0.1', 'fe80::1', '1127.0.0.1', '127.evil.example', '', undefined]) {
    assert.equal(isLoopback(a), false, String(a));
  }
});

test('only client encodings the gateway reads exactly as the target does are accepted', () => {
  for (const e of ['SJIS', 'sjis', 'S.JIS', 'Shift_JIS', 'BIG5', 'GBK', 'UHC', 'GB18030', 'WIN932', 'windows-936', 'JOHAB', 'LATIN1', 'WIN1252', 'EUC_JP']) {
    assert.equal(isSafeClientEncoding(e), false, e);
  }
  for (const e of ['UTF8', 'utf-8', 'UNICODE', 'SQL_ASCII', 'sql-ascii']) assert.equal(isSafeClientEncoding(e), true, e);
});
