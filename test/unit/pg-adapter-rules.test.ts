// Small rules of the PostgreSQL adapter that integration tests cannot reach from this machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isLoopback, isSafeClientEncoding } from '../../src/protocols/postgres/adapter.ts';

test('only loopback peers may skip TLS', () => {
  for (const a of ['127.0.0.1', '127.10.0.3', '::1', '::ffff:127.0.0.1']) assert.equal(isLoopback(a), true, a);
  for (const a of ['10.0.0.1', '192.168.1.2', '::ffff:10.0.0.1', 'fe80::1', '1127.0.0.1', '', undefined]) assert.equal(isLoopback(a), false, String(a));
});

test('client encodings that can hide a quote or backslash inside a multi-byte character are refused', () => {
  for (const e of ['SJIS', 'sjis', 'S.JIS', 'Shift_JIS', 'BIG5', 'GBK', 'UHC', 'GB18030', 'WIN932', 'windows-936', 'JOHAB']) assert.equal(isSafeClientEncoding(e), false, e);
  for (const e of ['UTF8', 'utf-8', 'UNICODE', 'LATIN1', 'SQL_ASCII', 'EUC_JP', 'WIN1252']) assert.equal(isSafeClientEncoding(e), true, e);
});
