// Ed25519 keys and signatures of audit checkpoints.
import fs from 'node:fs';
import path from 'node:path';
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { canonicalJson, sha256Hex } from './canonical.ts';

export type CheckpointKind = 'periodic' | 'retention';

/** What a checkpoint's signature covers (signed as canonical JSON). */
export interface CheckpointPayload {
  upto_id: number;
  upto_hash: string;
  time: string;
  kind: CheckpointKind;
  detail: Record<string, unknown>;
}

export interface AuditSigner {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** SPKI PEM of the public key, as recorded in `audit_keys`. */
  publicKeyPem: string;
  /** First 16 hex digits of sha256 over the public key's SPKI DER bytes. */
  keyId: string;
}

export function keyIdOf(publicKey: KeyObject): string {
  return sha256Hex(publicKey.export({ type: 'spki', format: 'der' })).slice(0, 16);
}

/** A signer from a PEM private key (Ed25519). */
export function signerFromPem(pem: string): AuditSigner {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (e) {
    throw new Error(`audit signing key: not a PEM private key (${(e as Error).message})`);
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new Error(`audit signing key: expected an Ed25519 key, got ${privateKey.asymmetricKeyType ?? 'unknown'}`);
  }
  const publicKey = createPublicKey(privateKey);
  return {
    privateKey,
    publicKey,
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyId: keyIdOf(publicKey),
  };
}

/** A public key from a PEM file's text (an SPKI public key, or a private key whose public half is used). */
export function publicKeyFromPem(pem: string): KeyObject {
  const key = createPublicKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`expected an Ed25519 public key, got ${key.asymmetricKeyType ?? 'unknown'}`);
  return key;
}

/**
 * The key kept in `file` (PEM, mode 0600), generated on first use. Two processes starting at once
 * end up with the same key: the file is created with link(2), which fails if it exists.
 */
export function loadOrCreateSigningKeyFile(file: string): { signer: AuditSigner; generated: boolean } {
  try {
    return { signer: signerFromPem(fs.readFileSync(file, 'utf8')), generated: false };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  fs.writeFileSync(tmp, pem, { mode: 0o600 });
  try {
    fs.linkSync(tmp, file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    return { signer: signerFromPem(fs.readFileSync(file, 'utf8')), generated: false }; // another process won
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return { signer: signerFromPem(pem), generated: true };
}

export const payloadBytes = (p: CheckpointPayload): Buffer =>
  Buffer.from(canonicalJson({ upto_id: p.upto_id, upto_hash: p.upto_hash, time: p.time, kind: p.kind, detail: p.detail }), 'utf8');

/** Base64 Ed25519 signature of the canonical JSON of the payload. */
export function signCheckpoint(signer: AuditSigner, p: CheckpointPayload): string {
  return sign(null, payloadBytes(p), signer.privateKey).toString('base64');
}

export function checkCheckpointSignature(publicKey: KeyObject, p: CheckpointPayload, signature: string): boolean {
  try {
    return verify(null, payloadBytes(p), publicKey, Buffer.from(signature, 'base64'));
  } catch {
    return false;
  }
}
