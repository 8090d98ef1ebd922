// Gateway side of the PostgreSQL adapter: terminates the client's protocol, authenticates it,
// asks policy about every statement and enforces the answer in PostgreSQL's own terms.
//
// Refusals are enforced by sending the target a "poison" message in place of the refused one:
// one that is certain to fail and names a random marker (`airlock_refused_<hex>`). The target
// then behaves exactly as if the refused statement had failed: an open transaction is aborted,
// the rest of an extended batch is skipped until Sync, and ReadyForQuery carries the true
// transaction state. The gateway swaps the target's error for its own 42501 refusal. This keeps
// gateway and target in lockstep under pipelining without emulating the backend's state machine;
// `Pipeline` follows the target's answers to know what each statement and portal name means.
import net from 'node:net';
import tls from 'node:tls';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import type { AuditEvent, ConnectionInfo, Decision, Identity, MaskRuleRef, Request, SqlRequestInfo } from '../../core/types.ts';
import type { ColumnPlan, Masker } from '../../masking/engine.ts';
import {
  DEFAULT_MAX_MESSAGE, FrameReader, ProtocolError, decodeBackendKey, decodeBind, decodeCommandTag, dataRowCells, decodeErrorFields,
  decodeExecute, decodeParameterStatus, decodeParse, decodeQuery, decodeReadyStatus, decodeRowDescription, decodeStartup, decodeTarget, encode,
  errorFields, rowsFromTag, type ErrorFields, type FieldDescription, type Frame,
} from './codec.ts';
import type { TargetConnection } from './target.ts';
import type { Duplex } from 'node:stream';
import type { TableInfo } from '../../agent/agent.ts';
import { Pipeline, type Lookup, type Tracked } from './pipeline.ts';
import { normalizedStatement } from './syntax.ts';
import type { Approvals } from '../../approvals/service.ts';
import { copyOutFormat, decodeCopyRow, describeCopyQuery, encodeCopyRow, forceQuoteMask, parseCopyStatement, type CopyFormat } from './copy-out.ts';
import { isLoopback } from '../../core/net.ts';

export interface PgAdapterDeps {
  /** Verifies the token the client sent as its password. Throws an error whose message is safe to show. */
  authenticate(token: string): Promise<Identity>;
  /** Re-checked before every statement: false once a token is revoked or expired. */
  isIdentityActive(identity: Identity): Promise<boolean>;
  connection(database: string): ConnectionInfo | undefined;
  classify(text: string): SqlRequestInfo;
  decide(identity: Identity, request: Request): Decision;
  /** Version of the policy bundle in force (for refusals that no rule decides). */
  policyVersion(): string;
  /** Opens an authenticated target connection through the agent serving `connection`. */
  openTarget(connection: string, clientParams: Record<string, string>): Promise<TargetConnection>;
  cancelTarget(connection: string, processId: number, secretKey: number): Promise<void>;
  /** `schema.table` by table OID, from the target's catalog (through the agent). */
  tableNames(connection: string, oids: number[]): Promise<Map<number, TableInfo>>;
  /** The masking engine for a decision's mask rules (undefined when there are none). */
  masker(rules: MaskRuleRef[]): Masker | undefined;
  /** Just-in-time approvals: where statements that need approval wait. */
  approvals: Approvals;
  /** Why sessions cannot be recorded right now (the audit spool is full), or undefined when they can. */
  recordingUnavailable(): string | undefined;
  audit(event: AuditEvent): void;
  log: { info(o: object, msg?: string): void; warn(o: object, msg?: string): void };
  /** TLS for clients; when absent, SSLRequest is declined (and only loopback clients can connect). */
  tls?: tls.SecureContextOptions;
}

/** A statement on its way to the target: recorded when the pipeline reports it finished. */
interface Recorded extends Tracked {
  event: AuditEvent;
  /** Masking for this statement's results, when its decision carries mask rules. */
  masker?: Masker;
  /** Column plans of the statement's result sets; the last one is for the rows arriving now... */
  plans?: ColumnPlan[];
  /** ...and was made for these columns. */
  planFields?: FieldDescription[];
  /** For a masked `COPY ... TO STDOUT`: how its rows are written, and their columns' plan. */
  copy?: CopyMasking;
  /** A policy says `record: results`: the rows the client received, per result set. */
  results?: RecordedResults[];
  recordResults?: boolean;
}

interface RecordedResults {
  columns: string[];
  rows: (string | null)[][];
  /** The session's budget for recorded rows ran out: later rows were not recorded. */
  truncated?: boolean;
}

interface CopyMasking {
  format: CopyFormat;
  plan: ColumnPlan;
  forceQuote: boolean[];
  /** The next row is the header line (column names): passed as it is. */
  header: boolean;
}

/** Longest statement text the gateway classifies; longer ones are refused (parsing runs on the shared event loop). */
export const MAX_STATEMENT_CHARS = 1024 * 1024;
/** PostgreSQL's own limit for startup packets; the password message before authentication gets a similar bound. */
const MAX_STARTUP_PACKET = 10_000;
const MAX_PASSWORD_MESSAGE = 64 * 1024;
/** Time a client has to complete startup and authentication. */
const STARTUP_TIMEOUT_MS = 30_000;

/** Session registry keyed by the BackendKeyData the gateway handed out, for CancelRequest routing. */
const sessionsByKey = new Map<string, PgSession>();

export interface PgServer {
  server: net.Server;
  /** Stops accepting and ends every open session with FATAL 57P01 (their session.end events are recorded synchronously). */
  close(): Promise<void>;
}

export function createPgServer(deps: PgAdapterDeps): PgServer {
  const secureContext = deps.tls ? tls.createSecureContext(deps.tls) : undefined;
  const open = new Set<PgSession>();
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    const session = new PgSession(socket, deps, secureContext, () => open.delete(session));
    open.add(session);
    session.start();
  });
  return {
    server,
    async close() {
      server.close();
      for (const s of open) s.shutdown();
      open.clear();
    },
  };
}

let sessionCounter = 0;

class PgSession {
  readonly id = `pg-${Date.now().toString(36)}-${(++sessionCounter).toString(36)}-${randomBytes(3).toString('hex')}`;
  private client: net.Socket | tls.TLSSocket;
  private target?: Duplex;
  private readonly source: string;
  private readonly clientReader: FrameReader;
  private readonly targetReader = new FrameReader({ typed: true });
  private identity?: Identity;
  private connection?: ConnectionInfo;
  private tlsActive = false;
  private phase: 'startup' | 'password' | 'connecting' | 'ready' | 'closed' = 'startup';
  private startupParams: Record<string, string> = {};
  private processing = false;
  private targetKey?: { processId: number; secretKey: number };
  private gatewayKey?: string;
  private readonly pipeline = new Pipeline({
    finished: (t) => this.recordCompleted(t as Recorded),
    released: () => this.releaseBarrier(),
    forget: (marker) => this.refusals.delete(marker),
  });
  private readonly refusals = new Map<string, ErrorFields>(); // poison marker -> refusal to show
  /** Set after a statement that may change how later statements are parsed (see holdAfter). */
  private barrier: 'none' | 'until-sync' | 'until-ready' = 'none';
  private barrierReleased?: () => void;
  private discardUntilSync = false;
  private targetBusy = false;
  /** Tables (name, column names) by OID for this session's target, filled on demand for masking. */
  private readonly tables = new Map<number, TableInfo | undefined>();
  /** Mask rules of the latest allowed statement: applied to notices and errors that carry values. */
  private lastMasker?: Masker;
  /** Set while the target answers the gateway's own Describe (for COPY masking): those answers are not the client's. */
  private own?: { fields?: FieldDescription[]; error?: string; done: () => void };
  /** Resolved when the target has answered everything the client sent. */
  private idleWaiter?: () => void;
  /** The approval request this session is waiting on. */
  private held?: string;
  private counts = { statements: 0, denied: 0 };
  /** Bytes of result values still recordable in this session (`record: results`). */
  private resultBudget = MAX_RECORDED_RESULT_BYTES;
  private readonly startedAt = Date.now();
  private startupTimer?: NodeJS.Timeout;

  constructor(socket: net.Socket, private readonly deps: PgAdapterDeps, private readonly secureContext: tls.SecureContext | undefined,
    private readonly onClosed: () => void) {
    this.client = socket;
    this.source = (socket.remoteAddress ?? 'unknown').replace(/^::ffff:/, '');
    this.clientReader = new FrameReader({ typed: false, maxMessage: MAX_STARTUP_PACKET });
  }

  start(): void {
    this.attachClient(this.client);
    this.startupTimer = setTimeout(() => this.fatal('08006', 'startup and authentication did not complete in time'), STARTUP_TIMEOUT_MS);
  }

  private attachClient(sock: net.Socket | tls.TLSSocket): void {
    sock.on('data', (d: Buffer) => this.onClientData(d));
    sock.on('error', () => this.close());
    sock.on('close', () => this.close());
    sock.on('drain', () => this.target?.resume());
  }

  // ---------- client -> gateway ----------

  private onClientData(chunk: Buffer): void {
    this.clientReader.push(chunk);
    void this.processClient();
  }

  /** Handles client frames strictly in order; statements may await token checks. */
  private async processClient(): Promise<void> {
    if (this.processing) return;
    this.processing = true;
    try {
      let frame: Frame | undefined;
      while (this.phase !== 'closed' && (frame = this.clientReader.next())) {
        if (this.phase === 'startup') await this.onStartupPacket(frame);
        else if (this.phase === 'password') await this.onPassword(frame);
        else if (this.phase === 'ready') await this.onClientMessage(frame);
        else throw new ProtocolError('unexpected data while the connection is being set up');
      }
    } catch (err) {
      if (err instanceof ProtocolError) {
        this.auditProtocolError(err.message);
        this.fatal('08P01', `protocol violation: ${err.message}`);
      } else {
        this.deps.log.warn({ err, session: this.id }, 'postgres session failed');
        this.fatal('XX000', `internal gateway error: ${(err as Error).message}`);
      }
    } finally {
      this.processing = false;
    }
  }

  private async onStartupPacket(frame: Frame): Promise<void> {
    const pkt = decodeStartup(frame);
    if (pkt.kind === 'ssl' || pkt.kind === 'gssenc') {
      const accept = pkt.kind === 'ssl' && !!this.secureContext && !this.tlsActive;
      if (accept && this.clientReader.buffered > 0) {
        // Bytes sent before the TLS handshake would be taken as if they had come encrypted.
        throw new ProtocolError('received unencrypted data after SSL request');
      }
      this.client.write(encode.sslResponse(accept));
      if (accept) this.upgradeToTls();
      return;
    }
    if (pkt.kind === 'cancel') {
      const session = sessionsByKey.get(`${pkt.processId}:${pkt.secretKey}`);
      if (session) await session.cancel();
      this.close();
      return;
    }
    this.startupParams = pkt.params;
    // The gateway speaks protocol 3.0 (as its target connections do): a client asking for a later
    // minor version or for protocol options is told so, as PostgreSQL itself does.
    const options = Object.keys(pkt.params).filter((k) => k.startsWith('_pq_.'));
    if ((pkt.protocol & 0xffff) > 0 || options.length) this.client.write(encode.negotiateProtocolVersion(0, options));
    if (!this.tlsActive && !isLoopback(this.client.remoteAddress)) {
      return this.fatal('28000', 'TLS is required for connections from other hosts (use sslmode=require)');
    }
    if (pkt.params.replication && pkt.params.replication !== 'false') {
      return this.fatal('28000', 'replication connections are not supported through Airlock');
    }
    if (pkt.params.client_encoding && !isSafeClientEncoding(pkt.params.client_encoding)) {
      return this.fatal('22023', `client_encoding ${pkt.params.client_encoding} is not supported through Airlock (use UTF8)`);
    }
    const database = pkt.params.database ?? pkt.params.user ?? '';
    this.connection = this.deps.connection(database);
    this.clientReader.typed = true;
    this.clientReader.maxMessage = MAX_PASSWORD_MESSAGE;
    this.phase = 'password';
    this.client.write(encode.authCleartext());
  }

  private upgradeToTls(): void {
    const plain = this.client;
    plain.removeAllListeners('data');
    plain.removeAllListeners('error');
    plain.removeAllListeners('close');
    plain.removeAllListeners('drain');
    const secure = new tls.TLSSocket(plain, { isServer: true, secureContext: this.secureContext });
    this.client = secure;
    this.tlsActive = true;
    this.attachClient(secure);
  }

  private async onPassword(frame: Frame): Promise<void> {
    if (frame.type !== 'p') throw new ProtocolError(`expected a password message, got '${frame.type}'`);
    const token = frame.body.subarray(0, Math.max(0, frame.body.length - 1)).toString('utf8');
    try {
      this.identity = await this.deps.authenticate(token);
    } catch (err) {
      const reason = (err as Error).message;
      this.deps.audit({ ...this.eventBase('auth.failure'), reason,
        detail: { user: this.startupParams.user, tokenId: (err as { tokenId?: string }).tokenId } });
      return this.fatal('28P01', `authentication failed: ${reason}`);
    }
    if (this.phase !== 'password') return; // the client left while its token was being checked
    const id = this.identity;
    if (!this.connection) {
      this.auditSessionRefused(`unknown connection "${this.startupParams.database ?? ''}"`);
      return this.fatal('3D000', `connection "${this.startupParams.database ?? ''}" is not declared in the policy folder`);
    }
    // A session that cannot be recorded does not start: fail closed.
    const unrecordable = this.deps.recordingUnavailable();
    if (unrecordable) {
      this.deps.log.warn({ session: this.id, reason: unrecordable }, 'session refused: it cannot be recorded');
      return this.fatal('53400', `airlock: new sessions are refused while the audit log cannot be written (${unrecordable})`);
    }
    // Refuse right away when no policy lets this identity use the connection at all.
    const gate = this.deps.decide(id, this.request({ text: '', statements: [] }));
    if (gate.action === 'deny') {
      this.auditSessionRefused(gate.reason, gate);
      return this.fatal('42501', `airlock: ${gate.reason}`);
    }
    this.phase = 'connecting';
    this.clientReader.maxMessage = DEFAULT_MAX_MESSAGE;
    this.client.pause();
    let conn: TargetConnection;
    try {
      conn = await this.deps.openTarget(this.connection.name, this.startupParams);
    } catch (err) {
      const targetSaid = (err as { fields?: Record<string, string> }).fields?.M;
      this.deps.log.warn({ session: this.id, connection: this.connection.name, err: (err as Error).message, targetSaid }, 'cannot open target connection');
      this.auditSessionRefused(`target unavailable: ${(err as Error).message}${targetSaid ? ` (target: ${targetSaid})` : ''}`);
      // Where the target is and what it said stay in the log and the audit, not with the caller.
      const code = (err as { fields?: Record<string, string> }).fields?.C;
      return this.fatal('08006', `airlock: cannot open connection "${this.connection.name}"${code ? ` (target SQLSTATE ${code})` : ''}; the gateway log has the details`);
    }
    if (this.phase !== 'connecting') {
      conn.socket.destroy();
      return;
    }
    clearTimeout(this.startupTimer);
    this.target = conn.socket;
    this.phase = 'ready';
    this.deps.audit({ ...this.eventBase('session.start'), detail: { user: this.startupParams.user, tokenId: id.tokenId,
      application: this.startupParams.application_name, tls: this.tlsActive, claims: id.claims, groups: id.groups } });
    this.deps.log.info({ session: this.id, subject: id.subject, connection: this.connection.name, source: this.source }, 'postgres session opened');
    this.client.write(encode.authOk());
    this.target.on('data', (d: Buffer) => this.onTargetData(d));
    this.target.on('error', () => this.onTargetLost());
    this.target.on('close', () => this.onTargetLost());
    this.target.on('drain', () => this.client.resume());
    if (conn.leftover.length) this.onTargetData(conn.leftover);
    this.client.resume();
  }

  private async onClientMessage(frame: Frame): Promise<void> {
    // After a refusal inside an extended-protocol batch the target skips everything up to Sync;
    // the gateway drops those messages instead of judging (and recording) what will never run.
    if (this.discardUntilSync && frame.type !== 'S' && frame.type !== 'X') return;
    if (STATEMENT_MESSAGES.has(frame.type) && this.barrier !== 'none') {
      if (this.barrier === 'until-sync') {
        // The target may already parse this message under changed settings: it cannot be judged.
        return this.refuseUnjudged(frame.type, '<statement after a session-state change>',
          'a statement that changes session settings must be followed by Sync before the next statement');
      }
      await new Promise<void>((resolve) => (this.barrierReleased = resolve));
      if (this.phase !== 'ready') return;
    }
    switch (frame.type) {
      case 'Q': {
        const text = decodeQuery(frame.body);
        const decision = await this.check(text, { copyMaskable: true, review: 'hold' });
        if (!decision) return;
        if (decision.verdict.action !== 'allow') return this.refuse(frame.type, decision.verdict, decision.info);
        const tracked = this.tracked(decision.event, decision.verdict);
        if (tracked?.masker && hasCopy(decision.info)) {
          const refusal = await this.prepareCopyMasking(text, tracked);
          if (this.phase !== 'ready') return;
          if (refusal) {
            const verdict: Decision = { ...decision.verdict, action: 'deny', rule: 'mask', reason: refusal };
            this.recordRefusal(text, decision.info, verdict);
            return this.refuse(frame.type, verdict, decision.info);
          }
        }
        const holds = changesSessionState(decision.info);
        if (holds) this.barrier = 'until-ready';
        this.pipeline.query(tracked, undefined, holds);
        this.toTarget(frame.raw);
        return;
      }
      case 'P': {
        const parse = decodeParse(frame.body);
        // Parsing runs nothing: a statement that needs approval is held when it is executed.
        const decision = await this.check(parse.query, { auditAllowed: false, review: 'pass' });
        if (!decision) return;
        if (decision.verdict.action !== 'allow') return this.refuse(frame.type, decision.verdict, decision.info);
        this.pipeline.parse(parse.name, parse.query);
        this.toTarget(frame.raw);
        return;
      }
      case 'B': {
        const bind = decodeBind(frame.body);
        const params = frame.body.subarray(Buffer.byteLength(bind.portal) + Buffer.byteLength(bind.statement) + 2);
        this.pipeline.bind(bind.portal, await this.resolve(() => this.pipeline.statement(bind.statement)), bind.statement, bind.resultFormats, params);
        this.toTarget(frame.raw);
        return;
      }
      case 'E': {
        const exec = decodeExecute(frame.body);
        const text = await this.resolve(() => this.pipeline.portal(exec.portal));
        if (text === undefined) {
          // A portal the gateway did not see bound from an allowed statement (its Parse was refused,
          // or it came from elsewhere): nothing the gateway has not judged may run.
          return this.refuseUnjudged(frame.type, `<execute portal "${exec.portal}">`,
            `portal "${exec.portal}" was not bound from a statement Airlock allowed`);
        }
        const params = this.pipeline.portalParams(exec.portal);
        const decision = await this.check(text, { review: 'hold', params });
        if (!decision) return;
        if (decision.verdict.action !== 'allow') return this.refuse(frame.type, decision.verdict, decision.info);
        if (changesSessionState(decision.info)) this.barrier = 'until-sync';
        this.pipeline.execute(this.tracked(decision.event, decision.verdict), undefined, exec.portal);
        this.toTarget(frame.raw);
        return;
      }
      case 'C': {
        const target = decodeTarget(frame.body);
        this.pipeline.close(target.kind, target.name);
        this.toTarget(frame.raw);
        return;
      }
      case 'S': {
        this.discardUntilSync = false;
        const releases = this.barrier === 'until-sync';
        if (releases) this.barrier = 'until-ready';
        this.pipeline.sync(releases);
        this.toTarget(frame.raw);
        return;
      }
      case 'D': {
        const target = decodeTarget(frame.body);
        this.pipeline.describe(target.kind, target.name);
        this.toTarget(frame.raw);
        return;
      }
      case 'H': case 'd': case 'c': case 'f':
        this.toTarget(frame.raw);
        return;
      case 'F':
        // Fast-path function calls name a function by OID with no SQL to inspect: always refused.
        return this.refuseUnjudged(frame.type, '<fast-path function call>', 'fast-path function calls are not allowed through Airlock');
      case 'X':
        this.target?.end(frame.raw);
        this.target = undefined; // ended gracefully: close() must not destroy it before Terminate is sent
        this.close();
        return;
      default:
        throw new ProtocolError(`unknown message type '${printable(frame.type)}'`);
    }
  }

  /**
   * Classifies and decides one statement text. Returns undefined when the session was ended
   * (token revoked or expired).
   */
  private async check(text: string, opts: { auditAllowed?: boolean; copyMaskable?: boolean; review?: 'hold' | 'pass'; params?: Buffer } = {}): Promise<{ verdict: Decision; info: SqlRequestInfo; event?: AuditEvent } | undefined> {
    const identity = this.identity!;
    if (!(await this.deps.isIdentityActive(identity))) {
      this.deps.audit({ ...this.eventBase('statement'), statement: auditText(text), decision: 'deny', reason: 'token revoked or expired' });
      this.fatal('28000', 'airlock: the token of this session was revoked or has expired');
      return undefined;
    }
    const info = text.length > MAX_STATEMENT_CHARS
      ? { text, statements: [], parseError: `statement of ${text.length} characters is longer than the ${MAX_STATEMENT_CHARS} Airlock inspects` }
      : this.deps.classify(text);
    let verdict = this.deps.decide(identity, this.request(info));
    if (verdict.action === 'allow' && verdict.masks.length && hasCopy(info) && !(opts.copyMaskable && info.statements.length === 1)) {
      // The gateway learns a COPY's columns by describing its query before it runs, which it
      // does only for a lone COPY sent as a simple query.
      const by = [...new Set(verdict.masks.map((m) => m.policy))].join(', ');
      verdict = { ...verdict, action: 'deny', policy: verdict.masks[0].policy, rule: 'mask',
        reason: `policy ${by} requires masking: COPY output is masked only for a single COPY ... TO STDOUT sent as a simple query` };
    }
    if (verdict.action === 'review' && opts.review === 'pass') return { verdict: { ...verdict, action: 'allow' }, info };
    if (verdict.action === 'review' && opts.review === 'hold') {
      const after = await this.holdForApproval(this.deps.approvals, text, info, verdict, opts.params);
      if (!after) return undefined;
      verdict = after;
      if (!(await this.deps.isIdentityActive(identity))) {
        this.fatal('28000', 'airlock: the token of this session was revoked or has expired');
        return undefined;
      }
    }
    if (verdict.action !== 'allow') {
      this.recordRefusal(text, info, verdict);
      return { verdict, info };
    }
    const event = opts.auditAllowed === false ? undefined : this.statementEvent(text, info, verdict);
    return { verdict, info, event };
  }

  /**
   * Holds a statement that needs approval: an open grant window lets it run at once; otherwise
   * the client is told (NoticeResponse) what is held and how to approve it, and the session waits
   * for the outcome. Returns the verdict to enforce (allow or deny), or undefined when the
   * session ended meanwhile.
   */
  private async holdForApproval(approvals: Approvals, text: string, info: SqlRequestInfo, verdict: Decision, params?: Buffer): Promise<Decision | undefined> {
    const identity = this.identity!;
    const connection = this.connection!.name;
    const grant = await approvals.grantFor(identity, connection, verdict);
    if (grant && (await approvals.use(grant.id, this.id))) {
      return { ...verdict, action: 'allow', approvalId: grant.id, reason: `${verdict.reason}: approved (grant ${grant.id} open until ${grant.grantUntil})` };
    }
    // The bound parameters (extended protocol) are part of what an approval is for: hashed here, only for held statements.
    const paramsHash = params && createHash('sha256').update(params).digest('hex');
    const held = await approvals.request({ identity, connection, statement: text, normalized: normalizedStatement(text), paramsHash, decision: verdict });
    const id = held.record.id;
    if (held.record.status === 'pending') {
      const how = approvals.approveHow(id);
      this.client.write(encode.notice(errorFields(HELD_NOTICE_CODE, `airlock: statement held for approval ${id}: ${verdict.reason}`, {
        severity: 'NOTICE',
        detail: `approve with: ${how.command}${how.url ? `
or: POST ${how.url}/approve` : ''}`,
        hint: `expires at ${held.record.expiresAt}`,
      })));
    }
    this.held = id;
    const outcome = await held.outcome;
    this.held = undefined;
    if (this.phase !== 'ready') return undefined;
    const denied = (reason: string): Decision => ({ ...verdict, action: 'deny', approvalId: id, reason });
    const last = outcome.record.decisions.at(-1);
    switch (outcome.status) {
      case 'rejected':
        return denied(`approval ${id} was rejected by ${last?.by ?? 'an approver'}${last?.reason ? `: ${last.reason}` : ''}`);
      case 'expired':
        return denied(`approval ${id} timed out: nobody approved it before ${outcome.record.expiresAt}`);
      case 'cancelled':
        return denied(`approval ${id} was cancelled`);
    }
    // A policy that changed while the statement waited wins when it now denies it.
    const now = this.deps.decide(identity, this.request(info));
    if (now.action === 'deny') return { ...now, approvalId: id };
    if (!(await approvals.use(id, this.id))) return denied(`approval ${id} was already used`);
    const by = [...new Set(outcome.record.decisions.filter((d) => d.verdict === 'approve').map((d) => d.by))].join(', ');
    return { ...verdict, action: 'allow', approvalId: id, reason: `${verdict.reason}: approved by ${by} (${id})` };
  }

  /** Waits while a name's meaning depends on an earlier batch's answer, then returns its text. */
  private async resolve(lookup: () => Lookup): Promise<string | undefined> {
    for (;;) {
      const r = lookup();
      if ('text' in r) return r.text;
      await r.wait;
    }
  }

  private tracked(event: AuditEvent | undefined, verdict: Decision): Recorded | undefined {
    if (!event) return undefined;
    const masker = verdict.masks.length ? this.deps.masker(verdict.masks) : undefined;
    if (masker) this.lastMasker = masker;
    return { event, started: performance.now(), masker, recordResults: verdict.recordResults };
  }

  private request(sql: SqlRequestInfo): Request {
    return { connection: this.connection!, source: this.source, time: new Date(), sql };
  }

  /**
   * Sends the target, in place of the refused message, one that is certain to fail with a marker
   * the target echoes back in its error (swapped for the refusal on the way back). Messages that
   * get their own ReadyForQuery (Query, FunctionCall) are replaced by a Query, extended-protocol
   * messages by an Execute of a portal that does not exist.
   */
  private refuse(messageType: string, verdict: Decision, info?: SqlRequestInfo): void {
    const marker = `${MARKER_PREFIX}${randomBytes(12).toString('hex')}`;
    this.refusals.set(marker, refusalFields(verdict, info));
    if (messageType === 'Q' || messageType === 'F') {
      this.pipeline.query(undefined, marker);
      this.toTarget(encode.query(marker));
    } else {
      this.pipeline.execute(undefined, marker);
      this.toTarget(encode.execute(marker));
      this.discardUntilSync = true;
    }
  }

  /** Refuses a message no policy rule can judge; recorded like any refusal. */
  private refuseUnjudged(messageType: string, label: string, reason: string): void {
    const verdict: Decision = { action: 'deny', reason, bundleVersion: this.deps.policyVersion(), masks: [] };
    this.recordRefusal(label, undefined, verdict);
    this.refuse(messageType, verdict);
  }

  // ---------- target -> client ----------

  private onTargetData(chunk: Buffer): void {
    this.targetReader.push(chunk);
    void this.pumpTarget();
  }

  /** Forwards target messages in order; pauses only to look up table names for masking. */
  private async pumpTarget(): Promise<void> {
    if (this.targetBusy) return;
    this.targetBusy = true;
    const out: Buffer[] = [];
    try {
      let frame: Frame | undefined;
      while (this.phase !== 'closed' && (frame = this.targetReader.next())) {
        if (this.own && frame.type !== 'S') {
          this.onOwnAnswer(frame);
          continue;
        }
        if (frame.type === 'D') {
          const missing = this.tablesToLookUp();
          if (missing) {
            this.flushToClient(out);
            this.target?.pause();
            await this.lookUpTables(missing);
            this.target?.resume();
          }
        }
        out.push(this.onTargetMessage(frame));
        if (this.idleWaiter && this.pipeline.pending === 0) {
          const idle = this.idleWaiter;
          this.idleWaiter = undefined;
          idle();
        }
      }
      this.flushToClient(out);
    } catch (err) {
      if (err instanceof SessionGuardError) {
        this.deps.audit({ ...this.eventBase('protocol.error'), error: err.message, detail: { phase: 'session-guard' } });
        return this.fatal('22023', `airlock: ${err.message}`);
      }
      this.deps.log.warn({ err, session: this.id }, 'target sent an invalid message');
      return this.fatal('08P01', 'airlock: the target sent an invalid message');
    } finally {
      this.targetBusy = false;
    }
  }

  private flushToClient(out: Buffer[]): void {
    if (out.length === 0) return;
    if (!this.client.write(joinContiguous(out))) this.target?.pause();
    out.length = 0;
  }

  /** Table OIDs the current result's masking needs and the session has not looked up yet. */
  private tablesToLookUp(): number[] | undefined {
    const cur = this.pipeline.current();
    const rec = cur?.tracked as Recorded | undefined;
    if (!rec?.masker || !cur?.fields || rec.planFields === cur.fields) return undefined;
    const missing = this.unknownTables(cur.fields);
    return missing.length ? missing : undefined;
  }

  /** Table OIDs of these columns the session has not looked up yet. */
  private unknownTables(fields: FieldDescription[]): number[] {
    return [...new Set(fields.map((f) => f.tableOid).filter((oid) => oid !== 0 && !this.tables.has(oid)))];
  }

  /** A masking plan for these result columns. A column carries its alias; rules are about the table's real column. */
  private planFor(masker: Masker, fields: FieldDescription[]): ColumnPlan {
    return masker.plan(fields.map((f) => {
      const table = this.tables.get(f.tableOid);
      return { name: table?.columns.get(f.column) ?? f.name, table: table?.name };
    }));
  }

  /** The mask rules in force for what the target sends now: the current statement's, else the latest allowed one's. */
  private currentMasker(): Masker | undefined {
    return (this.pipeline.current()?.tracked as Recorded | undefined)?.masker ?? this.lastMasker;
  }

  private async lookUpTables(oids: number[]): Promise<void> {
    const names = await this.deps.tableNames(this.connection!.name, oids).catch((err: Error) => {
      throw new SessionGuardError(`cannot resolve the tables of a result that must be masked (${err.message})`);
    });
    // An OID the catalog does not know stays unnamed: only bare-column rules apply to it.
    for (const oid of oids) this.tables.set(oid, names.get(oid));
  }

  /** Masks one DataRow for the statement whose results are arriving; returns the bytes to send. */
  private maskRow(frame: Frame): Buffer {
    const cur = this.pipeline.current();
    const rec = cur?.tracked as Recorded | undefined;
    if (!rec?.masker) return frame.raw;
    const fields = cur!.fields;
    if (!fields) {
      // Rows whose columns were never described cannot be matched to mask rules: fail closed.
      throw new SessionGuardError('rows arrived for a statement whose columns were not described, so they cannot be masked (Describe the portal before Execute)');
    }
    if (rec.planFields !== fields) {
      (rec.plans ??= []).push(this.planFor(rec.masker, fields));
      rec.planFields = fields;
    }
    const plan = rec.plans!.at(-1)!;
    if (!plan.active) return frame.raw;
    const body = frame.body;
    const cells = dataRowCells(body);
    if (cells.length !== 2 * fields.length) throw new SessionGuardError('a row does not have the columns its description announced, so it cannot be masked');
    let changes: (Buffer | string | null | undefined)[] | undefined;
    for (let i = 0; i < fields.length; i++) {
      if (cells[2 * i + 1] < 0 || plan.modes[i] === 'none') continue;
      const masked = maskValue(plan, i, fields[i], body, cells[2 * i], cells[2 * i + 1]);
      if (masked !== undefined) (changes ??= [])[i] = masked;
    }
    return changes ? encode.dataRowPatched(body, cells, changes) : frame.raw;
  }

  /**
   * Before a masked `COPY ... TO STDOUT` runs, learns its columns: describes its query on the
   * session itself (same search_path, temporary tables and privileges; nothing is executed) and
   * plans the masking of its rows. Returns why it cannot be masked, or undefined when it can.
   */
  private async prepareCopyMasking(text: string, rec: Recorded): Promise<string | undefined> {
    const stmt = parseCopyStatement(text);
    if (!stmt) return 'COPY output can be masked only for a single COPY statement';
    if (stmt.is_from === true) return undefined; // COPY FROM sends the client no rows
    const format = copyOutFormat(stmt);
    if ('error' in format) return format.error;
    const query = describeCopyQuery(text, stmt);
    if ('error' in query) return query.error;
    const described = await this.describeOwn(query.text);
    if (described.error !== undefined) return `the columns of this COPY cannot be described, so its output cannot be masked (${described.error})`;
    const fields = described.fields ?? [];
    const missing = this.unknownTables(fields);
    if (missing.length) await this.lookUpTables(missing);
    const plan = this.planFor(rec.masker!, fields);
    (rec.plans ??= []).push(plan);
    const forceQuote = forceQuoteMask(format, fields.map((f) => f.name));
    rec.copy = { format, plan, forceQuote, header: format.header };
    return undefined;
  }

  /** Sends the target the gateway's own Parse/Describe/Close/Sync once the client's messages are all answered. */
  private async describeOwn(query: string): Promise<{ fields?: FieldDescription[]; error?: string }> {
    if (this.pipeline.pending > 0) await new Promise<void>((resolve) => (this.idleWaiter = resolve));
    if (this.phase !== 'ready') return { error: 'session closed' };
    const name = `airlock_describe_${randomBytes(8).toString('hex')}`;
    return new Promise((resolve) => {
      const own: NonNullable<typeof this.own> = { done: () => resolve(own) };
      this.own = own;
      this.toTarget(Buffer.concat([encode.parse(name, query), encode.describe('S', name), encode.close('S', name), encode.sync()]));
    });
  }

  /** Answers to describeOwn: kept by the gateway, never forwarded (ParameterStatus excepted). */
  private onOwnAnswer(frame: Frame): void {
    const own = this.own!;
    if (frame.type === 'T') own.fields = decodeRowDescription(frame.body);
    else if (frame.type === 'E') own.error ??= this.maskText(decodeErrorFields(frame.body).M ?? 'error');
    else if (frame.type === 'Z') {
      this.own = undefined;
      own.done();
    }
  }

  /** Masks one row of a masked COPY's output (one CopyData message is one row). */
  private maskCopyData(frame: Frame): Buffer {
    const rec = this.pipeline.current()?.tracked as Recorded | undefined;
    if (!rec?.masker) return frame.raw;
    const copy = rec.copy;
    if (!copy) throw new SessionGuardError('COPY output arrived for a statement whose columns are not known, so it cannot be masked');
    if (copy.header) {
      copy.header = false;
      return frame.raw;
    }
    let values: (string | null)[];
    try {
      values = decodeCopyRow(frame.body, copy.format);
    } catch (err) {
      throw new SessionGuardError(`a COPY row could not be read, so it cannot be masked (${(err as Error).message})`);
    }
    if (values.length !== copy.plan.modes.length) throw new SessionGuardError('a COPY row does not have the columns its query described, so it cannot be masked');
    let changed = false;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || copy.plan.modes[i] === 'none') continue;
      const masked = copy.plan.mask(i, v);
      if (masked !== v) {
        values[i] = masked;
        changed = true;
      }
    }
    return changed ? encode.copyData(encodeCopyRow(values, copy.format, copy.forceQuote)) : frame.raw;
  }

  private maskText(text: string): string {
    return this.currentMasker()?.maskText(text) ?? text;
  }

  /**
   * Records one row as the client receives it (after masking) when a policy says
   * `record: results`, within the session's budget. Binary values are kept as \x hex.
   */
  private recordRow(message: Buffer): void {
    const cur = this.pipeline.current();
    const rec = cur?.tracked as Recorded | undefined;
    if (!rec?.recordResults || !cur?.fields) return;
    const fields = cur.fields;
    const sets = (rec.results ??= []);
    let set = sets.at(-1);
    if (!set || set.columns.length !== fields.length || set.columns.some((c, i) => c !== fields[i].name)) {
      sets.push((set = { columns: fields.map((f) => f.name), rows: [] }));
    }
    if (this.resultBudget <= 0) {
      set.truncated = true;
      return;
    }
    const body = message.subarray(5);
    const cells = dataRowCells(body);
    const row: (string | null)[] = [];
    for (let i = 0; 2 * i < cells.length; i++) {
      const [start, len] = [cells[2 * i], cells[2 * i + 1]];
      if (len < 0) row.push(null);
      else row.push(fields[i]?.format === 1 ? `\\x${body.toString('hex', start, start + len)}` : body.toString('utf8', start, start + len));
      this.resultBudget -= Math.max(0, len);
    }
    set.rows.push(row);
  }

  /** Masks detector hits in the text of an error or notice (values leak through messages such as unique violations). */
  private maskMessage(type: 'E' | 'N', fields: ErrorFields, raw: Buffer): Buffer {
    let changed = false;
    if (fields.C === HELD_NOTICE_CODE) {
      // Only the gateway says a statement is held: the target (a function raising a notice)
      // must not be able to make clients believe it.
      fields.C = '01000';
      changed = true;
    }
    const masker = this.currentMasker();
    for (const k of masker ? ['M', 'D', 'H', 'W'] as const : []) {
      const text = fields[k];
      if (text === undefined) continue;
      const masked = masker!.maskText(text);
      if (masked !== text) {
        fields[k] = masked;
        changed = true;
      }
    }
    if (!changed) return raw;
    return type === 'E' ? encode.errorResponse(fields) : encode.notice(fields);
  }

  /** Returns the bytes to send to the client for one target message. */
  private onTargetMessage(frame: Frame): Buffer {
    switch (frame.type) {
      case 'K': {
        this.targetKey = decodeBackendKey(frame.body);
        const processId = randomInt(1, 2 ** 31 - 1);
        const secretKey = randomInt(-(2 ** 31), 2 ** 31 - 1);
        this.gatewayKey = `${processId}:${secretKey}`;
        sessionsByKey.set(this.gatewayKey, this);
        return encode.backendKeyData(processId, secretKey);
      }
      case '1': case '2': case '3':
        this.pipeline.confirmed(frame.type);
        return frame.raw;
      case 'T':
        this.pipeline.described(decodeRowDescription(frame.body));
        return frame.raw;
      case 'n':
        this.pipeline.described(undefined);
        return frame.raw;
      case 'D': {
        const out = this.maskRow(frame);
        this.recordRow(out);
        return out;
      }
      case 'd':
        return this.maskCopyData(frame);
      case 'H':
        if ((this.pipeline.current()?.tracked as Recorded | undefined)?.masker && frame.body[0] !== 0) {
          throw new SessionGuardError('binary COPY output cannot be masked');
        }
        return frame.raw;
      case 'N':
        return this.maskMessage('N', decodeErrorFields(frame.body), frame.raw);
      case 'C':
        this.pipeline.completed(rowsFromTag(decodeCommandTag(frame.body)), true);
        return frame.raw;
      case 'I': case 's':
        this.pipeline.completed(undefined, true);
        return frame.raw;
      case 'E': {
        const fields = decodeErrorFields(frame.body);
        const marker = MARKER_PATTERN.exec(fields.M ?? '')?.[0];
        const refusal = marker ? this.refusals.get(marker) : undefined;
        const out = refusal ? encode.errorResponse(refusal) : this.maskMessage('E', fields, frame.raw);
        this.pipeline.failed(refusal ? 'refused' : `${fields.C ?? ''} ${fields.M ?? ''}`.trim());
        return out;
      }
      case 'Z':
        this.pipeline.ready(decodeReadyStatus(frame.body) === 'I');
        return frame.raw;
      case 'S': {
        // Statements are classified as UTF-8 text with standard_conforming_strings on; a session
        // that leaves either could smuggle statements past the classifier, so it is ended.
        const { name, value } = decodeParameterStatus(frame.body);
        if (name === 'client_encoding' && !isSafeClientEncoding(value)) {
          throw new SessionGuardError(`client_encoding ${value} is not supported through Airlock (use UTF8)`);
        }
        if (name === 'standard_conforming_strings' && value !== 'on') {
          throw new SessionGuardError('standard_conforming_strings must stay on through Airlock');
        }
        return frame.raw;
      }
      default:
        return frame.raw;
    }
  }

  /** Records a statement the target completed, failed or skipped. */
  private recordCompleted(t: Recorded): void {
    this.counts.statements++;
    t.event.durationMs = Math.round((performance.now() - t.started) * 1000) / 1000;
    if (t.rows !== undefined) t.event.rows = t.rows;
    if (t.error) t.event.error = t.error;
    if (t.skipped) t.event.error = 'not executed: an earlier message of its batch failed';
    const masked = (t.plans ?? []).flatMap((p) => p.stats());
    if (masked.length) t.event.detail = { ...t.event.detail, masked };
    if (t.results) t.event.detail = { ...t.event.detail, results: t.results };
    this.deps.audit(t.event);
  }

  // ---------- helpers ----------

  private toTarget(bytes: Buffer): void {
    if (this.target && !this.target.write(bytes)) this.client.pause();
  }

  private eventBase(type: AuditEvent['type']): AuditEvent {
    return {
      time: new Date().toISOString(), type, sessionId: this.id, subject: this.identity?.subject,
      issuer: this.identity?.issuer, connection: this.connection?.name ?? this.startupParams.database, source: this.source,
      bundleVersion: this.deps.policyVersion(),
    };
  }

  private statementEvent(text: string, info: SqlRequestInfo | undefined, verdict: Decision): AuditEvent {
    return {
      ...this.eventBase('statement'), statement: auditText(text), classification: info && summarize(info),
      decision: verdict.action, policy: verdict.policy, rule: verdict.rule, reason: verdict.reason, bundleVersion: verdict.bundleVersion,
      detail: verdict.approvalId ? { approval: verdict.approvalId } : undefined,
    };
  }

  private recordRefusal(text: string, info: SqlRequestInfo | undefined, verdict: Decision): void {
    this.counts.statements++;
    this.counts.denied++;
    this.deps.audit(this.statementEvent(text, info, verdict));
  }

  private auditSessionRefused(reason: string, verdict?: Decision): void {
    this.deps.audit({ ...this.eventBase('session.end'), decision: 'deny', reason, policy: verdict?.policy,
      rule: verdict?.rule, bundleVersion: verdict?.bundleVersion, detail: { outcome: 'refused', user: this.startupParams.user } });
  }

  private auditProtocolError(message: string): void {
    this.deps.audit({ ...this.eventBase('protocol.error'), error: message, detail: { phase: this.phase } });
  }

  private async cancel(): Promise<void> {
    if (this.held) return this.deps.approvals.cancel(this.held, 'cancelled by the client');
    if (!this.targetKey || !this.connection) return;
    await this.deps.cancelTarget(this.connection.name, this.targetKey.processId, this.targetKey.secretKey).catch((err) =>
      this.deps.log.warn({ err, session: this.id }, 'cancel request failed'));
  }

  private fatal(code: string, msg: string): void {
    if (this.phase === 'closed') return;
    if (this.client.writable) this.client.end(encode.errorResponse(errorFields(code, msg, { severity: 'FATAL' })));
    this.close();
  }

  private onTargetLost(): void {
    if (this.phase !== 'ready') return;
    this.fatal('08006', 'airlock: the connection to the target was lost');
  }

  shutdown(): void {
    this.fatal('57P01', 'airlock: the gateway is shutting down');
  }

  private releaseBarrier(): void {
    this.barrier = 'none';
    const release = this.barrierReleased;
    this.barrierReleased = undefined;
    release?.();
  }

  private close(): void {
    if (this.phase === 'closed') return;
    const wasReady = this.phase === 'ready';
    this.phase = 'closed';
    this.onClosed();
    this.releaseBarrier();
    this.idleWaiter?.();
    this.own?.done();
    if (this.held) void this.deps.approvals.cancel(this.held, 'the client disconnected while waiting').catch(() => {});
    clearTimeout(this.startupTimer);
    if (this.gatewayKey) sessionsByKey.delete(this.gatewayKey);
    this.pipeline.abandon();
    if (wasReady) {
      this.deps.audit({ ...this.eventBase('session.end'), durationMs: Date.now() - this.startedAt,
        detail: { outcome: 'closed', statements: this.counts.statements, denied: this.counts.denied } });
    }
    this.target?.destroy();
    // Give a pending FATAL message time to leave before the socket goes.
    if (!this.client.destroyed) setTimeout(() => this.client.destroy(), 1000).unref();
  }
}

const STATEMENT_MESSAGES = new Set(['Q', 'P', 'E', 'F']);
/** Result values a session records at most under `record: results` (documented in docs/sessions.md). */
export const MAX_RECORDED_RESULT_BYTES = 1024 * 1024;
/** SQLSTATE of the notice that says a statement is held for approval (class 01: warning). */
export const HELD_NOTICE_CODE = '01AL0';
const MARKER_PREFIX = 'airlock_refused_';
const MARKER_PATTERN = /airlock_refused_[0-9a-f]{24}/;

class SessionGuardError extends Error {}

/**
 * Client encodings whose bytes the gateway reads exactly as the target does: UTF-8 (the classifier
 * decodes statements as UTF-8) and SQL_ASCII (no conversion; a UTF-8 database still requires
 * valid UTF-8). In any other encoding the target would read characters, or even statement
 * boundaries, differently from what the gateway judged.
 */
export function isSafeClientEncoding(name: string): boolean {
  // PostgreSQL ignores every non-alphanumeric character in encoding names ("UTF-8" is UTF8).
  return ['UTF8', 'UNICODE', 'SQLASCII'].includes(name.toUpperCase().replace(/[^A-Z0-9]/g, ''));
}

/**
 * Statements after which the gateway waits for the target's ReadyForQuery before judging the next
 * statement, because they may change session settings that affect parsing (client_encoding,
 * standard_conforming_strings): non-baseline SET, DO, CALL, set_config() and functions whose
 * effects are unknown.
 */
function hasCopy(info: SqlRequestInfo): boolean {
  return info.statements.some((st) => st.operations.some((op) => op.type === 'sql' && op.kind === 'copy'));
}

function changesSessionState(info: SqlRequestInfo): boolean {
  return info.statements.some((st) =>
    (!st.baseline && (st.kind === 'set' || st.kind === 'do' || st.kind === 'call')) ||
    st.operations.some((op) => op.type === 'function' && (op.effect === 'unknown' || op.name.replace(/^pg_catalog\./, '') === 'set_config')));
}

/** The client-facing ErrorResponse for a refused statement. */
function refusalFields(verdict: Decision, info?: SqlRequestInfo): ErrorFields {
  const by = verdict.policy ? `policy "${verdict.policy}"${verdict.rule ? `, rule ${verdict.rule}` : ''}` : 'default deny';
  const what = verdict.reason;
  const kinds = info?.statements.map((s) => s.kind).join(', ');
  return errorFields('42501', `airlock: ${what}`, {
    detail: `Refused by ${by}${kinds ? ` (statement: ${kinds})` : ''}. Policy version ${verdict.bundleVersion}.`,
    hint: 'Ask the owner of the Airlock policy repository if you need this access.',
  });
}

function summarize(info: SqlRequestInfo) {
  return {
    kinds: info.statements.map((s) => s.kind),
    tablesRead: [...new Set(info.statements.flatMap((s) => s.tablesRead))],
    tablesWritten: [...new Set(info.statements.flatMap((s) => s.tablesWritten))],
    functions: [...new Set(info.statements.flatMap((s) => s.functions))],
    readOnly: info.statements.every((s) => s.readOnly),
    parseError: info.parseError,
  };
}

/** Statement text as recorded: very long texts are cut, with the length they had. */
const MAX_AUDITED_CHARS = 64 * 1024;
const auditText = (text: string) =>
  text.length <= MAX_AUDITED_CHARS ? text : `${text.slice(0, MAX_AUDITED_CHARS)}… [${text.length} characters in all]`;

/** Joins buffers that are adjacent views of one allocation without copying; copies otherwise. */
function joinContiguous(parts: Buffer[]): Buffer {
  if (parts.length === 1) return parts[0];
  const first = parts[0];
  let end = first.byteOffset + first.length;
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i];
    if (p.buffer !== first.buffer || p.byteOffset !== end) return Buffer.concat(parts);
    end += p.length;
  }
  return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
}

const printable = (t: string) => (/^[\x20-\x7e]$/.test(t) ? t : `0x${t.charCodeAt(0).toString(16)}`);

/** Types whose binary format is their text bytes (jsonb: a version byte, then the text). */
const TEXT_LIKE_TYPES = new Set([25 /* text */, 1043 /* varchar */, 1042 /* bpchar */, 19 /* name */, 114 /* json */, 705 /* unknown */]);
const JSONB = 3802;
const INT_TYPES: Record<number, number> = { 21: 2, 23: 4, 20: 8 };

/**
 * Masks one non-null value, the `len` bytes of `body` at `start`. Returns the replacement
 * (undefined: unchanged). Text format and text-like binary types are masked as text, handed to
 * the engine as UTF-8 bytes: it decodes only values that may hold something to mask. Binary
 * integers are read as decimal text for the detectors and sent as NULL when anything in them must
 * be masked (a masked text cannot be encoded back into an integer). Other binary values are sent
 * as NULL when a column rule names them, and passed when only detectors apply (they are not text).
 */
function maskValue(plan: ColumnPlan, i: number, field: FieldDescription, body: Buffer, start: number, len: number): Buffer | string | null | undefined {
  if (field.format === 0 || TEXT_LIKE_TYPES.has(field.typeOid)) return plan.maskUtf8(i, body, start, start + len);
  if (field.typeOid === JSONB && len > 0 && body[start] === 1) {
    const masked = plan.maskUtf8(i, body, start + 1, start + len);
    return masked === undefined || masked === null ? masked : Buffer.concat([body.subarray(start, start + 1), Buffer.from(masked, 'utf8')]);
  }
  const size = INT_TYPES[field.typeOid];
  if (size && len === size) {
    const text = (size === 2 ? body.readInt16BE(start) : size === 4 ? body.readInt32BE(start) : body.readBigInt64BE(start)).toString();
    return plan.mask(i, text) === text ? undefined : null;
  }
  return plan.modes[i] === 'whole' ? null : undefined;
}
