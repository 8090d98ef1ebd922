// Gateway <-> agent transport: the agent dials out over TLS, authenticates with its token, and the
// gateway opens one HTTP/2 stream per client session through it (see tunnel-protocol.ts).
export { AgentHub, type AgentHubOptions, type AgentInfo, type AgentTokenInfo, type AgentHubEvents } from './tunnel-gateway.ts';
export { AgentClient, type AgentClientOptions, type AgentClientEvents } from './tunnel-agent.ts';
export {
  PREFACE_MAGIC, PREFACE_MAX_BYTES, ALPN_PROTOCOL, STREAM_WINDOW, SESSION_WINDOW, DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_MISSED,
  backoffDelay, normalizeFingerprint, type Announcement, type TunnelLogger,
} from './tunnel-protocol.ts';
