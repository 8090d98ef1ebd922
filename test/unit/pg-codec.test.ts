import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  FrameReader, ProtocolError, decodeAuth, decodeBind, decodeErrorFields, decodeExecute, decodeParse, decodeQuery,
  decodeStartup, decodeTarget, encode, errorFields, rowsFromTag, decodeCommandTag, decodeReadyStatus, decodeBackendKey, decodeDataRow, decodeRowDescription,
} from '../../src/protocols/postgres/codec.ts';

function frames(reader: FrameReader) {
  const out = [];
  for (let f = reader.next(); f; f = reader.next()) out.push(f);
  return out;
}

test('startup packets: startup, SSLRequest, CancelRequest round-trip', () => {
  const r = new FrameReader({ typed: false });
  r.push(Buffer.concat([encode.sslRequest(), encode.startup({ user: 'ci', database: 'analytics' }), encode.cancelRequest(42, -7)]));
  const [ssl, startup, cancel] = frames(r).map(decodeStartup);
  assert.deepEqual(ssl, { kind: 'ssl' });
  assert.deepEqual(startup, { kind: 'startup', protocol: 196608, params: { user: 'ci', database: 'analytics' } });
  assert.deepEqual(cancel, { kind: 'cancel', processId: 42, secretKey: -7 });
});

test('unsupported protocol versions are refused', () => {
  const b = Buffer.alloc(8);
  b.writeInt32BE(8);
  b.writeInt32BE(2 << 16, 4);
  const r = new FrameReader({ typed: false });
  r.push(b);
  assert.throws(() => decodeStartup(r.next()!), ProtocolError);
});

test('frontend extended-protocol messages round-trip', () => {
  const r = new FrameReader({ typed: true });
  r.push(Buffer.concat([
    encode.query('select 1'),
    encode.parse('s1', 'select $1::int', [23]),
    encode.bind('p1', 's1', ['5', null, Buffer.from([1, 2])], [1]),
    encode.describe('P', 'p1'),
    encode.execute('p1', 10),
    encode.close('S', 's1'),
    encode.sync(),
  ]));
  const f = frames(r);
  assert.deepEqual(f.map((x) => x.type), ['Q', 'P', 'B', 'D', 'E', 'C', 'S']);
  assert.equal(decodeQuery(f[0].body), 'select 1');
  assert.deepEqual(decodeParse(f[1].body), { name: 's1', query: 'select $1::int', paramTypes: [23] });
  const bind = decodeBind(f[2].body);
  assert.equal(bind.portal, 'p1');
  assert.equal(bind.statement, 's1');
  assert.deepEqual(bind.params.map((p) => p && [...p]), [[0x35], null, [1, 2]]);
  assert.deepEqual(bind.resultFormats, [1]);
  assert.deepEqual(decodeTarget(f[3].body), { kind: 'P', name: 'p1' });
  assert.deepEqual(decodeExecute(f[4].body), { portal: 'p1', maxRows: 10 });
  assert.deepEqual(decodeTarget(f[5].body), { kind: 'S', name: 's1' });
});

test('backend messages: errors, tags, ready status, keys, auth requests', () => {
  const fields = errorFields('42501', 'no', { detail: 'd', hint: 'h' });
  const r = new FrameReader({ typed: true });
  r.push(Buffer.concat([
    encode.errorResponse(fields), encode.commandComplete('INSERT 0 3'), encode.readyForQuery('T'),
    encode.backendKeyData(1, 2), encode.authCleartext(),
  ]));
  const [e, c, z, k, a] = frames(r);
  assert.deepEqual(decodeErrorFields(e.body), fields);
  assert.equal(rowsFromTag(decodeCommandTag(c.body)), 3);
  assert.equal(rowsFromTag('BEGIN'), undefined);
  assert.equal(decodeReadyStatus(z.body), 'T');
  assert.deepEqual(decodeBackendKey(k.body), { processId: 1, secretKey: 2 });
  assert.deepEqual(decodeAuth(a.body), { kind: 'cleartext' });
});

test('frames split at every byte boundary reassemble identically', () => {
  const stream = Buffer.concat([encode.query('select 1'), encode.parse('', 'x'), encode.sync()]);
  for (let cut = 1; cut < stream.length; cut++) {
    const r = new FrameReader({ typed: true });
    r.push(stream.subarray(0, cut));
    const first = frames(r);
    r.push(stream.subarray(cut));
    const all = [...first, ...frames(r)];
    assert.deepEqual(all.map((f) => f.type), ['Q', 'P', 'S'], `cut at ${cut}`);
  }
});

test('a 1 GB length prefix is a protocol error, not an allocation', () => {
  const r = new FrameReader({ typed: true });
  const b = Buffer.from([0x51, 0x40, 0, 0, 0]);
  r.push(b);
  assert.throws(() => r.next(), /exceeds the limit/);
  const neg = new FrameReader({ typed: true });
  neg.push(Buffer.from([0x51, 0xff, 0xff, 0xff, 0xff]));
  assert.throws(() => neg.next(), /invalid message length/);
});

test('fuzz: random bytes never crash the decoders with anything but ProtocolError', () => {
  const decoders = [decodeQuery, decodeParse, decodeBind, decodeExecute, decodeTarget, decodeErrorFields, decodeAuth];
  let rejected = 0;
  for (let i = 0; i < 20_000; i++) {
    const body = randomBytes(Math.floor(Math.random() * 40));
    for (const d of decoders) {
      try {
        d(body);
      } catch (e) {
        assert.ok(e instanceof ProtocolError, `${d.name} threw ${(e as Error).name}: ${(e as Error).message}`);
        rejected++;
      }
    }
    const r = new FrameReader({ typed: i % 2 === 0, maxMessage: 1 << 20 });
    r.push(randomBytes(Math.floor(Math.random() * 64)));
    try {
      for (let f = r.next(); f; f = r.next()) if (!r.typed) decodeStartup(f);
    } catch (e) {
      assert.ok(e instanceof ProtocolError, (e as Error).message);
    }
  }
  assert.ok(rejected > 0);
});

test('DataRow round-trips through encode.dataRow/decodeDataRow, NULLs and empty values included', () => {
  const values = [Buffer.from('42'), null, Buffer.alloc(0), Buffer.from('héllo')];
  const r = new FrameReader({ typed: true });
  r.push(encode.dataRow(values));
  const f = r.next()!;
  assert.equal(f.type, 'D');
  assert.deepEqual(decodeDataRow(f.body).map((v) => v && v.toString()), ['42', null, '', 'héllo']);
});

test('RowDescription decodes names, table OIDs above 2^31, column numbers and formats', () => {
  const name = Buffer.from('card_number\0');
  const body = Buffer.alloc(2 + name.length + 18);
  body.writeInt16BE(1, 0);
  name.copy(body, 2);
  let off = 2 + name.length;
  body.writeUInt32BE(3_000_000_000, off); body.writeInt16BE(4, off + 4); body.writeUInt32BE(25, off + 6);
  body.writeInt16BE(-1, off + 10); body.writeInt32BE(-1, off + 12); body.writeInt16BE(1, off + 16);
  assert.deepEqual(decodeRowDescription(body), [{ name: 'card_number', tableOid: 3_000_000_000, column: 4, typeOid: 25, typeLen: -1, typeMod: -1, format: 1 }]);
});
