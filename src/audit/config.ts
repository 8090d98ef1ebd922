// From the `audit:` config key to the store's audit options (signing key, checkpoints, spool).
import path from 'node:path';
import type { AirlockConfig } from '../config/config.ts';
import type { AuditStoreOptions } from '../store/store.ts';
import { loadOrCreateSigningKeyFile, signerFromPem, type AuditSigner } from './signing.ts';

export const SIGNING_KEY_FILE = 'audit-signing.key';

/**
 * The checkpoint signing key: `audit.signing_key` (PEM, secret references already resolved), or
 * `<data_dir>/audit-signing.key`, generated once (PEM, mode 0600) and announced through `notice`.
 */
export function loadAuditSigner(config: AirlockConfig, notice: (message: string) => void = (m) => console.error(m)): AuditSigner {
  if (config.audit.signingKey) return signerFromPem(config.audit.signingKey);
  const file = path.join(config.dataDir, SIGNING_KEY_FILE);
  const { signer, generated } = loadOrCreateSigningKeyFile(file);
  if (generated) {
    notice(`generated the audit signing key ${file} (Ed25519, key id ${signer.keyId}); `
      + 'keep a copy of its public key to verify the audit log with `airlock audit verify --public-key`');
  }
  return signer;
}

export interface AuditOptionsFromConfig {
  /** Load (or generate) the signing key: processes that write checkpoints. Default true. */
  sign?: boolean;
  notice?: (message: string) => void;
}

/** Store options for `openStore(..., { audit })` from the config. */
export function auditStoreOptions(config: AirlockConfig, opts: AuditOptionsFromConfig = {}): AuditStoreOptions {
  return {
    signer: opts.sign === false ? undefined : loadAuditSigner(config, opts.notice),
    checkpointEvery: config.audit.checkpointEvery,
    checkpointIntervalMs: config.audit.checkpointIntervalMs,
    spoolMaxBytes: config.audit.spoolMaxBytes,
    onNotice: opts.notice,
  };
}

/**
 * `--since`: a duration back from now (90s, 30m, 1h, 2d, 1w2d) or an ISO-8601 time. Returns the
 * ISO time; undefined when the text is neither.
 */
export function parseSince(text: string, durationMs: (t: string) => number | undefined, now = Date.now()): string | undefined {
  const t = text.trim();
  const ms = /^\d+$/.test(t) ? undefined : durationMs(t); // a bare number is ambiguous: refuse
  if (ms !== undefined) return new Date(now - ms).toISOString();
  if (!/^\d{4}-\d{2}-\d{2}/.test(t)) return undefined;
  const at = Date.parse(t);
  return Number.isNaN(at) ? undefined : new Date(at).toISOString();
}
