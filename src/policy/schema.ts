// Schemas of the policy folder: connection declarations, custom detectors and policies.
// Every object is strict: an unknown key is an error, so a typo never silently widens or
// narrows a policy. The same schemas produce `schema/policy.schema.json` for editors.

import { isIP } from 'node:net';
import { z } from 'zod';
import { SQL_KINDS } from '../core/types.ts';

export const MASK_STRATEGIES = ['redact', 'partial', 'last4', 'hash', 'null', 'format'] as const;
export type MaskStrategy = (typeof MASK_STRATEGIES)[number];

export const DETECTORS = [
  'credit_card', 'email', 'phone', 'ssn', 'iban', 'ip', 'aws_key', 'github_token',
  'gitlab_token', 'slack_token', 'jwt', 'private_key', 'url_password',
] as const;
export type DetectorName = (typeof DETECTORS)[number];

/** Named checks a custom regex detector can apply to its matches (src/masking/custom.ts). */
export const VALIDATORS = ['luhn', 'credit_card', 'iban', 'ssn'] as const;
export type ValidatorName = (typeof VALIDATORS)[number];

export const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
export type Day = (typeof DAYS)[number];

export const CONNECTION_TYPES = ['postgres'] as const;

/** Defaults of review rules, applied by the approvals feature. */
export const REVIEW_DEFAULTS = { timeout: '10m', min_approvals: 1 } as const;

/**
 * Keys that people put in connection entries by habit but that must never be in the policy
 * folder: addresses and credentials live in the agent's configuration.
 */
export const CONNECTION_SECRET_KEYS = [
  'url', 'uri', 'dsn', 'connection_string', 'connectionstring', 'conninfo', 'host', 'hostname',
  'hostaddr', 'port', 'database', 'dbname', 'db', 'user', 'username', 'password', 'passwd', 'pass',
  'secret', 'token', 'key', 'api_key', 'sslkey', 'sslcert', 'sslrootcert', 'sslpassword',
  'credentials', 'auth', 'passfile',
];

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$/;
const CONNECTION_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const DETECTOR_NAME_RE = /^[a-z][a-z0-9_]{0,63}$/;
const DURATION_RE = /^(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?$/;
const DURATION_UNITS = { w: 604_800_000, d: 86_400_000, h: 3_600_000, m: 60_000, s: 1000 } as const;
const HOURS_RE = /^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$/;
const APPROVER_RE = /^(group|user):\S+$/;

const list = (values: readonly string[]) => values.join(', ');

// ---------------------------------------------------------------------------------------------
// Helpers shared by the schema and the evaluator

/**
 * Milliseconds of a duration such as `10m`, `1h30m`, `45s`, `2d`, `2w` (units in this order,
 * each at most once); a bare number is seconds. 0 for a zero duration (`0s`, `0`), undefined
 * when invalid. Policies use `parseDuration`; the CLI's `--ttl` uses this to tell "zero" from
 * "invalid".
 */
export function durationMs(text: string): number | undefined {
  if (!text) return undefined;
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  if (!DURATION_RE.test(text)) return undefined;
  let ms = 0;
  for (const m of text.matchAll(/(\d+)([wdhms])/g)) ms += Number(m[1]) * DURATION_UNITS[m[2] as keyof typeof DURATION_UNITS];
  return ms;
}

/** Milliseconds of a positive duration (see `durationMs`); undefined when invalid or zero. */
export function parseDuration(text: string): number | undefined {
  const ms = durationMs(text);
  return ms !== undefined && ms > 0 ? ms : undefined;
}

/** `[start, end]` minutes of the day of an `HH:MM-HH:MM` window; undefined when invalid. */
export function parseHours(text: string): [number, number] | undefined {
  const m = HOURS_RE.exec(text);
  if (!m) return undefined;
  const [h1, m1, h2, m2] = [m[1], m[2], m[3], m[4]].map(Number);
  if (h1 > 23 || m1 > 59 || m2 > 59 || h2 > 24 || (h2 === 24 && m2 !== 0)) return undefined;
  const start = h1 * 60 + m1;
  const end = h2 * 60 + m2;
  if (start === end) return undefined;
  return [start, end];
}

const tzCache = new Map<string, boolean>();
/** True when `tz` is an IANA time zone name known to this Node. */
export function isValidTimeZone(tz: string): boolean {
  let ok = tzCache.get(tz);
  if (ok === undefined) {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: tz });
      ok = true;
    } catch {
      ok = false;
    }
    tzCache.set(tz, ok);
  }
  return ok;
}

/** An address range: `10.0.0.0/8`, `::1/128`, or a single address. */
export interface Cidr {
  v4: boolean;
  bytes: Uint8Array;
  prefix: number;
}

/** Parses an IPv4 or IPv6 address (zone id and brackets tolerated) into bytes. */
export function parseIp(text: string): { v4: boolean; bytes: Uint8Array } | undefined {
  let s = text.trim();
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  const kind = isIP(s);
  if (kind === 4) return { v4: true, bytes: Uint8Array.from(s.split('.').map(Number)) };
  if (kind !== 6) return undefined;
  const bytes = new Uint8Array(16);
  // Embedded IPv4 tail (::ffff:1.2.3.4)
  let tail: number[] = [];
  const lastColon = s.lastIndexOf(':');
  if (s.slice(lastColon + 1).includes('.')) {
    tail = s.slice(lastColon + 1).split('.').map(Number);
    s = s.slice(0, lastColon + 1) + '0:0';
  }
  const [head, rest] = s.includes('::') ? s.split('::') : [s, undefined];
  const headParts = head ? head.split(':') : [];
  const restParts = rest === undefined ? [] : rest ? rest.split(':') : [];
  const groups: number[] = headParts.map((h) => parseInt(h, 16));
  if (rest !== undefined) {
    const fill = 8 - headParts.length - restParts.length;
    for (let i = 0; i < fill; i++) groups.push(0);
  }
  for (const r of restParts) groups.push(parseInt(r, 16));
  if (groups.length !== 8) return undefined;
  groups.forEach((g, i) => {
    bytes[i * 2] = g >> 8;
    bytes[i * 2 + 1] = g & 0xff;
  });
  if (tail.length === 4) bytes.set(tail, 12);
  return { v4: false, bytes };
}

/** Parses `addr/prefix` or a bare address; undefined when invalid. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const addr = parseIp(slash >= 0 ? text.slice(0, slash) : text);
  if (!addr) return undefined;
  const max = addr.v4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p)) return undefined;
    prefix = Number(p);
    if (prefix > max) return undefined;
  }
  return { v4: addr.v4, bytes: addr.bytes, prefix };
}

// ---------------------------------------------------------------------------------------------
// Schemas

const nonEmpty = (what: string) => z.string().min(1, { error: `${what} must not be empty` });
const globList = (what: string) =>
  z.array(nonEmpty(what)).min(1, { error: `${what} list must not be empty` });

const sqlKind = z
  .enum(SQL_KINDS, {
    error: (iss) => `unknown SQL kind ${JSON.stringify(iss.input)} (valid: ${list(SQL_KINDS)})`,
  })
  .describe('SQL statement kind');

const dayName = z.enum(DAYS, {
  error: (iss) => `unknown day ${JSON.stringify(iss.input)} (valid: ${list(DAYS)})`,
});

const nameString = (what: string) =>
  z.string().regex(NAME_RE, {
    error: `${what} must start with a letter or digit and contain only letters, digits and _ . : @ / -`,
  });

export const WhenSchema = z
  .strictObject({
    days: z.array(dayName).min(1, { error: 'days must not be empty' }).optional()
      .describe('Days of the week (in `timezone`) on which this applies: sun, mon, ... sat'),
    hours: z
      .string()
      .refine((s) => parseHours(s) !== undefined, {
        error: 'hours must look like "HH:MM-HH:MM" (24-hour clock, end 24:00 at most, start != end), e.g. "06:00-22:00" or "22:00-06:00"',
      })
      .optional()
      .describe('Time window "HH:MM-HH:MM" in `timezone`; start inclusive, end exclusive; may wrap midnight ("22:00-06:00")'),
    timezone: z
      .string()
      .refine(isValidTimeZone, {
        error: (iss) => `unknown time zone ${JSON.stringify(iss.input)} (use an IANA name such as UTC or Europe/Berlin)`,
      })
      .optional()
      .describe('IANA time zone name for days and hours (default UTC)'),
    source: z
      .array(
        z.string().refine((s) => parseCidr(s) !== undefined, {
          error: (iss) => `invalid address range ${JSON.stringify(iss.input)} (expected CIDR such as 10.0.0.0/8 or ::1/128, or a single address)`,
        }),
      )
      .min(1, { error: 'source must not be empty' })
      .optional()
      .describe('Caller address ranges (CIDR, IPv4 or IPv6); IPv4-mapped IPv6 callers match IPv4 ranges'),
  })
  .describe('Conditions: every listed condition must hold');
export type When = z.infer<typeof WhenSchema>;

const claimScalar = z.union([z.string(), z.number(), z.boolean()]);
const claimValue = z.union([claimScalar, z.array(claimScalar).min(1, { error: 'claim value list must not be empty' })]);

export const SubjectMatcherSchema = z
  .strictObject({
    subject: nonEmpty('subject').optional().describe('Glob on the identity subject'),
    group: nonEmpty('group').optional().describe('Glob: the identity has a group matching it'),
    issuer: nonEmpty('issuer').optional().describe('Glob on the token issuer ("airlock" for service tokens)'),
    kind: z.enum(['service-token', 'jwt'], {
      error: (iss) => `unknown identity kind ${JSON.stringify(iss.input)} (valid: service-token, jwt)`,
    }).optional().describe('How the identity was proven'),
    claims: z
      .record(z.string(), claimValue)
      .refine((r) => Object.keys(r).length > 0, { error: 'claims must not be empty' })
      .optional()
      .describe('Every listed claim must match (strings are globs; a list means any of; arrays in the token: any element)'),
  })
  .refine((m) => m.subject !== undefined || m.group !== undefined || m.issuer !== undefined || m.kind !== undefined || m.claims !== undefined, {
    error: 'a subject matcher needs at least one of subject, group, issuer, kind, claims',
  })
  .describe('All listed fields must match');
export type SubjectMatcher = z.infer<typeof SubjectMatcherSchema>;

export const TagSelectorSchema = z.strictObject({
  tags: z
    .record(z.string(), z.string())
    .refine((r) => Object.keys(r).length > 0, { error: 'tags must not be empty' })
    .describe('Every listed tag must match (values are globs)'),
});
export const ConnectionSelectorSchema = z
  .union([nonEmpty('connection'), TagSelectorSchema])
  .describe('A connection name, a glob on names, or { tags: {...} }');
export type ConnectionSelector = z.infer<typeof ConnectionSelectorSchema>;

const ruleBase = {
  name: nameString('rule name').optional().describe('Rule id in decisions (default allow[0], deny[1], ...)'),
  message: z.string().optional().describe('Reason shown to the caller when this rule decides'),
  when: WhenSchema.optional(),
  sql: z.array(sqlKind).min(1, { error: 'sql must not be empty' }).optional().describe('Statement kinds (operations) this rule covers'),
  tables: globList('tables').optional().describe('Table globs; a pattern without a dot also matches the bare name of a schema-qualified table'),
  functions: globList('functions').optional().describe('Function globs; a pattern without a dot also matches the bare name of a schema-qualified function'),
  without_where: z.boolean().optional().describe('Only UPDATE/DELETE without a WHERE clause'),
};
const hasSelector = (r: { sql?: unknown; tables?: unknown; functions?: unknown; without_where?: boolean }) =>
  r.sql !== undefined || r.tables !== undefined || r.functions !== undefined || r.without_where === true;
const selectorError = { error: 'a rule needs at least one of sql, tables, functions, without_where: true' };

export const AllowRuleSchema = z.strictObject(ruleBase).refine(hasSelector, selectorError);
export type AllowRule = z.infer<typeof AllowRuleSchema>;

export const DenyRuleSchema = z.strictObject(ruleBase).refine(hasSelector, selectorError);
export type DenyRule = z.infer<typeof DenyRuleSchema>;

const duration = (what: string) =>
  z.string().refine((s) => parseDuration(s) !== undefined, {
    error: (iss) => `${what} ${JSON.stringify(iss.input)} is not a duration (e.g. 30s, 10m, 1h30m, 2d)`,
  });

export const ReviewRuleSchema = z
  .strictObject({
    ...ruleBase,
    approvers: z
      .array(
        z.string().regex(APPROVER_RE, {
          error: (iss) => `invalid approver ${JSON.stringify(iss.input)} (expected group:<name> or user:<subject>)`,
        }),
      )
      .min(1, { error: 'approvers must not be empty' })
      .describe('Who may approve: group:<name> or user:<subject>'),
    timeout: duration('timeout').optional().describe(`How long a request waits for approval (default ${REVIEW_DEFAULTS.timeout})`),
    min_approvals: z.number().int({ error: 'min_approvals must be a whole number' })
      .min(1, { error: 'min_approvals must be at least 1' }).optional()
      .describe('Approvals needed (default 1)'),
    grant: duration('grant').optional().describe('After approval, matching statements are allowed for this long'),
  })
  .refine(hasSelector, selectorError);
export type ReviewRule = z.infer<typeof ReviewRuleSchema>;

export const MaskRuleSchema = z
  .strictObject({
    name: nameString('rule name').optional(),
    columns: globList('columns').optional().describe('Column globs: "table.column", "schema.table.column" or "column"'),
    // Names are checked by the loader: custom detectors are declared in any file of the folder.
    // The built-in names are examples, so editors still offer them.
    detect: z
      .array(nonEmpty('detector name').meta({ examples: [...DETECTORS] }))
      .min(1, { error: 'detect must not be empty' })
      .optional()
      .describe(`Value detectors applied to every returned value: built-in (${list(DETECTORS)}) or declared under \`detectors\``),
    with: z.enum(MASK_STRATEGIES, {
      error: (iss) => iss.input === undefined
        ? `missing required key "with" (one of: ${list(MASK_STRATEGIES)})`
        : `unknown mask strategy ${JSON.stringify(iss.input)} (valid: ${list(MASK_STRATEGIES)})`,
    }).describe('Masking strategy'),
  })
  .refine((m) => m.columns !== undefined || m.detect !== undefined, {
    error: 'a mask rule needs columns or detect',
  });
export type MaskRule = z.infer<typeof MaskRuleSchema>;

export const PolicySchema = z
  .strictObject({
    name: nameString('policy name').describe('Unique across the policy folder'),
    description: z.string().optional(),
    subjects: z.array(SubjectMatcherSchema).min(1, { error: 'subjects must not be empty' })
      .describe('Who this policy applies to: any of these matchers'),
    connections: z.array(ConnectionSelectorSchema).min(1, { error: 'connections must not be empty' })
      .describe('Which connections: any of these selectors'),
    when: WhenSchema.optional(),
    allow: z.array(AllowRuleSchema).optional(),
    review: z.array(ReviewRuleSchema).optional(),
    deny: z.array(DenyRuleSchema).optional(),
    mask: z.array(MaskRuleSchema).optional(),
    record: z.enum(['statements', 'results'], { error: 'record must be statements (the default) or results' }).optional()
      .describe('What sessions record: statements (default), or statements and their result rows after masking'),
  })
  .superRefine((p, ctx) => {
    const seen = new Set<string>();
    for (const section of ['allow', 'review', 'deny', 'mask'] as const) {
      (p[section] ?? []).forEach((r, i) => {
        if (r.name === undefined) return;
        if (seen.has(r.name)) {
          ctx.addIssue({ code: 'custom', path: [section, i, 'name'], message: `duplicate rule name "${r.name}" in policy "${p.name}"` });
        }
        seen.add(r.name);
      });
    }
  });
export type Policy = z.infer<typeof PolicySchema>;

export const ConnectionSchema = z.strictObject({
  name: z.string().regex(CONNECTION_NAME_RE, {
    error: 'connection name must start with a letter or digit and contain only letters, digits and _ . -',
  }).describe('Unique across the policy folder; callers use it as the database name'),
  type: z.enum(CONNECTION_TYPES, {
    error: (iss) => iss.input === undefined
      ? `missing required key "type" (one of: ${list(CONNECTION_TYPES)})`
      : `unknown connection type ${JSON.stringify(iss.input)} (valid: ${list(CONNECTION_TYPES)})`,
  }),
  tags: z.record(z.string(), z.string()).optional().describe('Labels for tag selectors in policies'),
  description: z.string().optional(),
}).describe('A connection: no addresses or credentials (those live with the agent)');
export type ConnectionDecl = z.infer<typeof ConnectionSchema>;

export const CustomDetectorSchema = z
  .strictObject({
    name: z.string()
      .regex(DETECTOR_NAME_RE, {
        error: 'detector name must start with a lower-case letter and contain only a-z, 0-9 and _ (at most 64 characters)',
      })
      .refine((n) => !(DETECTORS as readonly string[]).includes(n), {
        error: (iss) => `${JSON.stringify(iss.input)} is the name of a built-in detector; choose another name`,
      })
      .describe('Unique across the policy folder; mask rules name it in `detect`'),
    description: z.string().optional(),
    regex: nonEmpty('regex').max(1000, { error: 'regex must be at most 1000 characters' }).optional()
      .describe('RE2 syntax (no look-around, no backreferences); every match is masked'),
    validator: z.enum(VALIDATORS, {
      error: (iss) => `unknown validator ${JSON.stringify(iss.input)} (valid: ${list(VALIDATORS)})`,
    }).optional().describe('Check applied to each regex match; matches that fail it are not masked'),
    words: z.array(nonEmpty('word')).min(1, { error: 'words must not be empty' })
      .max(10_000, { error: 'words must have at most 10000 entries' }).optional()
      .describe('Whole words (or phrases) to mask'),
    case_sensitive: z.boolean().optional()
      .describe('Default: true for regex, false for words'),
  })
  .refine((d) => (d.regex === undefined) !== (d.words === undefined), {
    error: 'a detector needs exactly one of regex, words',
  })
  .refine((d) => d.validator === undefined || d.regex !== undefined, {
    error: 'validator applies to regex detectors only', path: ['validator'],
  })
  .describe('A custom masking detector: a regex or a word list');
export type CustomDetectorDecl = z.infer<typeof CustomDetectorSchema>;

export const PolicyFileSchema = z.strictObject({
  connections: z.array(ConnectionSchema).optional(),
  detectors: z.array(CustomDetectorSchema).optional(),
  policies: z.array(PolicySchema).optional(),
});
export type PolicyFile = z.infer<typeof PolicyFileSchema>;

/** Keys allowed in each kind of object, for "unknown key" messages. */
export const ALLOWED_KEYS = {
  file: Object.keys(PolicyFileSchema.shape),
  connection: Object.keys(ConnectionSchema.shape),
  detector: Object.keys(CustomDetectorSchema.shape),
  policy: Object.keys(PolicySchema.shape),
  subject: Object.keys(SubjectMatcherSchema.shape),
  selector: Object.keys(TagSelectorSchema.shape),
  allow: Object.keys(AllowRuleSchema.shape),
  review: Object.keys(ReviewRuleSchema.shape),
  deny: Object.keys(DenyRuleSchema.shape),
  mask: Object.keys(MaskRuleSchema.shape),
  when: Object.keys(WhenSchema.shape),
} as const;

/** JSON Schema of a policy folder file, for editors (`schema/policy.schema.json`). */
export function policyJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(PolicyFileSchema, { io: 'input', target: 'draft-7' }) as Record<string, unknown>;
  return {
    $schema: schema.$schema,
    title: 'Airlock policy file',
    description: 'A file of the Airlock policy folder: connections (no secrets), custom masking detectors and/or policies. See docs/policy.md.',
    ...Object.fromEntries(Object.entries(schema).filter(([k]) => k !== '$schema')),
  };
}
