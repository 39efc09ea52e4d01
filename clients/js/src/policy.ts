// What a client does after a close, and how long it waits before the next attempt. Pure
// functions, so the rules are tested without a network.

import type { GatewayNode } from "./codec.js";

/** After a close: connect again, connect again with a fresh token, or give up. */
export type CloseAction = "reconnect" | "refresh-token" | "stop";

/**
 * The gateway's close codes (README, "Close codes") mapped to what a client should do:
 *
 * | code | gateway's reason | action |
 * |---|---|---|
 * | 1000 | `idle timeout` | stop (the node closed an idle connection on purpose) |
 * | 1001 | `going away` (drain), `redirected`, `pong timeout` | reconnect |
 * | 1005, 1006 | none: the network or the handshake failed | reconnect |
 * | 1008 | `slow consumer`, `rate limit` | reconnect (with back-off) |
 * | 1008 | anything else: an operator's kick (`wsgw kick --reason …`) | stop |
 * | 1002, 1003, 1007, 1009, 1010 | protocol error, invalid message, too big | stop: sending the same again would fail again |
 * | 1011–1014 | server error, restart, try again later | reconnect |
 * | 4001 | `token expired` | fetch a new token, then reconnect |
 * | other | | reconnect |
 */
export function closeAction(code: number, reason: string): CloseAction {
  switch (code) {
    case 1000:
      return "stop";
    case 1002:
    case 1003:
    case 1007:
    case 1009:
    case 1010:
      return "stop";
    case 1008:
      return reason === "slow consumer" || reason === "rate limit" ? "reconnect" : "stop";
    case 4001:
      return "refresh-token";
    default:
      return "reconnect";
  }
}

/** Exponential back-off. */
export interface Backoff {
  /** First delay in ms (default 500). */
  initial?: number;
  /** Largest delay in ms (default 30 000). */
  max?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
}

/**
 * The delay before attempt `attempt` (0 = the first retry): exponential up to `max`, with
 * "equal jitter" (between half and all of it), so clients that lost the same node do not all
 * come back in the same millisecond.
 */
export function backoffDelay(attempt: number, backoff: Backoff = {}, random = Math.random): number {
  const { initial = 500, max = 30_000, factor = 2 } = backoff;
  const ceiling = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * The URL of a REDIRECT target: the node's address with the scheme, path and query of the
 * URL the client is on (a node behind `wss://` redirects to `wss://` peers).
 */
export function nodeUrl(current: string, node: GatewayNode): string {
  const url = new URL(current);
  url.hostname = node.ip.includes(":") && !node.ip.startsWith("[") ? `[${node.ip}]` : node.ip;
  url.port = String(node.port);
  return url.toString();
}
