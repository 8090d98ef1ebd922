// HTTP API for approvals: list, show, approve, reject. Every call carries the caller's Airlock
// token or OIDC JWT as a Bearer token; a caller sees the requests it made or may decide on.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ApprovalRecord, ApprovalStatus, Identity } from '../core/types.ts';
import { ApprovalError, approverMatches, sameIdentity, type Approvals } from '../approvals/service.ts';
import { AuthError } from '../identity/errors.ts';
import { ServiceTokenError } from '../identity/service-tokens.ts';

export interface ApprovalApiDeps {
  approvals: Approvals;
  authenticate(token: string): Promise<Identity>;
  isIdentityActive(id: Identity): Promise<boolean>;
}

const STATUSES: ApprovalStatus[] = ['pending', 'approved', 'rejected', 'expired', 'cancelled', 'used'];

/** The requester, or someone a requirement names as approver. */
function canSee(rec: ApprovalRecord, who: Identity): boolean {
  if (sameIdentity(rec.requester, who)) return true;
  return rec.terms.requirements.some((q) => q.approvers.some((a) => approverMatches(a, who)));
}

/** The caller of an API request, from its Bearer token; undefined after a 401 was sent. */
export async function bearerIdentity(req: FastifyRequest, reply: FastifyReply,
  deps: Pick<ApprovalApiDeps, 'authenticate' | 'isIdentityActive'>): Promise<Identity | undefined> {
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  if (!m) {
    void reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'an Airlock token or a JWT is required (Authorization: Bearer ...)' });
    return undefined;
  }
  try {
    const id = await deps.authenticate(m[1]);
    if (await deps.isIdentityActive(id)) return id;
    throw new AuthError('revoked', 'the token was revoked or has expired');
  } catch (err) {
    void reply.code(401).send({ error: err instanceof AuthError || err instanceof ServiceTokenError ? err.message : 'authentication failed' });
    return undefined;
  }
}

export function registerApprovalRoutes(api: FastifyInstance, deps: ApprovalApiDeps): void {
  const caller = (req: FastifyRequest, reply: FastifyReply) => bearerIdentity(req, reply, deps);

  api.get('/api/approvals', async (req, reply) => {
    const who = await caller(req, reply);
    if (!who) return reply;
    const q = req.query as { status?: string; limit?: string };
    const status = q.status ? q.status.split(',') : undefined;
    const bad = status?.find((s) => !STATUSES.includes(s as ApprovalStatus));
    if (bad) return reply.code(400).send({ error: `unknown status "${bad}" (valid: ${STATUSES.join(', ')})` });
    const all = await deps.approvals.list(status as ApprovalStatus[] | undefined, q.limit ? Number(q.limit) : undefined);
    return { approvals: all.filter((r) => canSee(r, who)) };
  });

  api.get('/api/approvals/:id', async (req, reply) => {
    const who = await caller(req, reply);
    if (!who) return reply;
    const { id } = req.params as { id: string };
    const rec = await deps.approvals.get(id);
    // Not visible and unknown look the same: ids are not an oracle.
    if (!rec || !canSee(rec, who)) return reply.code(404).send({ error: `no approval request ${id}` });
    return { approval: rec };
  });

  for (const verdict of ['approve', 'reject'] as const) {
    api.post(`/api/approvals/:id/${verdict}`, async (req, reply) => {
      const who = await caller(req, reply);
      if (!who) return reply;
      const { id } = req.params as { id: string };
      const body = (req.body ?? {}) as { reason?: unknown };
      if (body.reason !== undefined && typeof body.reason !== 'string') return reply.code(400).send({ error: 'reason must be a string' });
      try {
        return { approval: await deps.approvals.decide(id, who, verdict, body.reason) };
      } catch (err) {
        if (err instanceof ApprovalError) return reply.code(err.status).send({ error: err.message });
        throw err;
      }
    });
  }
}
