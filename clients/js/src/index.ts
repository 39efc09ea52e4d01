// @wsgw/client: a client for the wsgw WebSocket gateway (gatewayapi.v1), for browsers and Node.

export { WsgwClient, WsgwError } from "./client.js";
export type { ClientOptions, Events, Push, State, WebSocketConstructor, WebSocketLike } from "./client.js";
export { Command, DecodeError, commandName, encodeText, json, proto, serializer } from "./codec.js";
export type { Ack, ErrorInfo, GatewayNode, Message, Serializer } from "./codec.js";
export { backoffDelay, closeAction, nodeUrl } from "./policy.js";
export type { Backoff, CloseAction } from "./policy.js";
