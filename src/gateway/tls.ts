// The gateway's TLS material: the configured cert/key, or a self-signed pair generated once and
// kept in the data directory so that its fingerprint stays stable across restarts.
import fs from 'node:fs';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { generate } from 'selfsigned';

export interface TlsMaterial {
  cert: string;
  key: string;
  /** SHA-256 fingerprint of the certificate, colon-separated hex. */
  fingerprint: string;
  generated: boolean;
  certFile: string;
}

export async function loadOrCreateTls(configured: { cert: string; key: string } | undefined, dataDir: string): Promise<TlsMaterial> {
  if (configured) {
    const cert = fs.readFileSync(configured.cert, 'utf8');
    const key = fs.readFileSync(configured.key, 'utf8');
    return { cert, key, fingerprint: new X509Certificate(cert).fingerprint256, generated: false, certFile: configured.cert };
  }
  const dir = path.join(dataDir, 'tls');
  const certFile = path.join(dir, 'gateway.crt');
  const keyFile = path.join(dir, 'gateway.key');
  if (fs.existsSync(certFile) && fs.existsSync(keyFile)) {
    const cert = fs.readFileSync(certFile, 'utf8');
    const x509 = new X509Certificate(cert);
    if (new Date(x509.validTo).getTime() > Date.now() + 24 * 3600_000) {
      return { cert, key: fs.readFileSync(keyFile, 'utf8'), fingerprint: x509.fingerprint256, generated: false, certFile };
    }
  }
  const notAfter = new Date(Date.now() + 365 * 24 * 3600_000);
  const pems = await generate([{ name: 'commonName', value: 'airlock-gateway' }], {
    keyType: 'ec',
    curve: 'P-256',
    notAfterDate: notAfter,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }, { type: 7, ip: '::1' }] },
    ],
  } as Parameters<typeof generate>[1]);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(keyFile, pems.private, { mode: 0o600 });
  fs.writeFileSync(certFile, pems.cert, { mode: 0o644 });
  return { cert: pems.cert, key: pems.private, fingerprint: new X509Certificate(pems.cert).fingerprint256, generated: true, certFile };
}
