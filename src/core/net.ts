// Network address helpers shared by the listeners and the identity verifiers.
import net from 'node:net';

/**
 * True for loopback addresses and names: 127.0.0.0/8, ::1, IPv4-mapped 127.x (::ffff:127.0.0.1),
 * `localhost` and `*.localhost`. Accepts bracketed IPv6 as found in URLs. Any other host name is
 * not loopback (a name such as `127.evil.example` is just a name).
 */
export function isLoopback(host: string | undefined): boolean {
  if (!host) return false;
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  const kind = net.isIP(h);
  if (kind === 4) return h.startsWith('127.');
  if (kind === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1' || /^::ffff:127\./.test(h);
  return false;
}
