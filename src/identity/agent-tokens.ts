// Agent tokens are Airlock service tokens (stored hashed like any token) in a reserved group, with
// the agent's name as subject. They let an agent dial in; they never open a client session.

/** The group that marks an agent token. */
export const AGENT_GROUP = 'airlock:agent';
/** Agent tokens carry the agent's name as `agent:<name>`. */
export const AGENT_SUBJECT_PREFIX = 'agent:';
