// The gatewayapi.v1 messages a client sees, in both of the gateway's serializers: canonical
// protobuf JSON (`protocol.serializer: json`, the default) and binary protobuf (`proto`).
// The binary wire format is read and written with @bufbuild/protobuf's reader and writer;
// this module only knows the field numbers of proto/gatewayapi/v1/gateway.proto.

import { BinaryReader, BinaryWriter, WireType, base64Decode, base64Encode } from "@bufbuild/protobuf/wire";

/** `Message.CommandType`: numbers never change; new values may be added after 8. */
export enum Command {
  InvalidUnspecified = 0,
  Heartbeat = 1,
  UpstreamMessage = 2,
  UpstreamAck = 3,
  DownstreamMessage = 4,
  DownstreamAck = 5,
  Redirect = 6,
  RateLimitExceeded = 7,
  Error = 8,
}

const COMMAND_NAMES = [
  "COMMAND_TYPE_INVALID_UNSPECIFIED",
  "COMMAND_TYPE_HEARTBEAT",
  "COMMAND_TYPE_UPSTREAM_MESSAGE",
  "COMMAND_TYPE_UPSTREAM_ACK",
  "COMMAND_TYPE_DOWNSTREAM_MESSAGE",
  "COMMAND_TYPE_DOWNSTREAM_ACK",
  "COMMAND_TYPE_REDIRECT",
  "COMMAND_TYPE_RATE_LIMIT_EXCEEDED",
  "COMMAND_TYPE_ERROR",
];

const ERROR_CODE_NAMES = [
  "CODE_UNSPECIFIED",
  "CODE_UNSUPPORTED_COMMAND",
  "CODE_NO_BACKEND",
  "CODE_BACKEND_UNAVAILABLE",
  "CODE_BAD_BODY",
  "CODE_INVALID_MESSAGE",
  "CODE_BACKEND_REJECTED",
];

/** One WebSocket message: `gatewayapi.v1.Message`. */
export interface Message {
  cmd: number;
  key: string;
  body: Uint8Array;
}

/** What the backend answered (`OnReceiveResponse`); 64-bit ids as decimal strings. */
export interface Ack {
  key: string;
  msgId: string;
  bizId: string;
}

/** `ErrorInfo`: why the gateway did not deliver an upstream message. */
export interface ErrorInfo {
  code: string;
  reason: string;
}

/** A node of a REDIRECT's `NodeList`: where to reconnect. */
export interface GatewayNode {
  id: string;
  ip: string;
  port: number;
  weight: number;
  location: string;
  labels: string[];
}

/** A serializer as the gateway speaks it; choose the one the node is configured with. */
export interface Serializer {
  readonly name: "json" | "proto";
  encode(message: Message): string | Uint8Array;
  decode(frame: string | Uint8Array): Message;
  ack(key: string, body: Uint8Array): Ack;
  error(body: Uint8Array): ErrorInfo;
  nodes(body: Uint8Array): GatewayNode[];
}

/** Thrown by `decode` for a frame that is not a gatewayapi.v1 message. */
export class DecodeError extends Error {
  override name = "DecodeError";
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

/** The name of a command (its number when unknown to this version). */
export function commandName(cmd: number): string {
  return COMMAND_NAMES[cmd] ?? String(cmd);
}

function commandNumber(value: unknown): number {
  if (typeof value === "number" && Number.isInteger(value)) return value;
  if (typeof value === "string") {
    const i = COMMAND_NAMES.indexOf(value);
    if (i >= 0) return i;
  }
  throw new DecodeError(`unknown command ${JSON.stringify(value)}`);
}

function parseJson(text: string | Uint8Array): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(typeof text === "string" ? text : fromUtf8.decode(text));
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      return value as Record<string, unknown>;
    }
  } catch (e) {
    throw new DecodeError(`not JSON: ${(e as Error).message}`);
  }
  throw new DecodeError("not a JSON object");
}

function str(value: unknown): string {
  return value === undefined || value === null ? "" : String(value);
}

function field(o: Record<string, unknown>, name: string, type: "string"): string {
  const value = o[name];
  if (value === undefined || value === null) return "";
  if (typeof value !== type) throw new DecodeError(`${name} is not a ${type}`);
  return value as string;
}

/** Canonical protobuf JSON: enum names, base64 bytes, int64 as strings, defaults omitted. */
export const json: Serializer = {
  name: "json",
  encode(m) {
    const out: Record<string, string> = { cmd: commandName(m.cmd) };
    if (m.key) out.key = m.key;
    if (m.body.length > 0) out.body = base64Encode(m.body);
    return JSON.stringify(out);
  },
  decode(frame) {
    const o = parseJson(frame);
    const body = base64Decode(field(o, "body", "string"));
    return { cmd: o.cmd === undefined ? 0 : commandNumber(o.cmd), key: field(o, "key", "string"), body };
  },
  ack(key, body) {
    const o = body.length > 0 ? parseJson(body) : {};
    return { key, msgId: str(o.msgId ?? "0"), bizId: str(o.bizId ?? "0") };
  },
  error(body) {
    const o = body.length > 0 ? parseJson(body) : {};
    const code = typeof o.code === "number" ? ERROR_CODE_NAMES[o.code] : o.code;
    return { code: str(code ?? "CODE_UNSPECIFIED"), reason: str(o.reason) };
  },
  nodes(body) {
    const list = parseJson(body).nodes;
    if (!Array.isArray(list)) return [];
    return list.map((n: Record<string, unknown>) => ({
      id: str(n.id),
      ip: str(n.ip),
      port: Number(n.port ?? 0),
      weight: Number(n.weight ?? 0),
      location: str(n.location),
      labels: Array.isArray(n.labels) ? n.labels.map(str) : [],
    }));
  },
};

/** Reads every field of a binary message, calling `field` for each (unknown ones skipped). */
function readFields(bytes: Uint8Array, field: (no: number, r: BinaryReader) => boolean): void {
  const r = new BinaryReader(bytes);
  try {
    while (r.pos < r.len) {
      const [no, wireType] = r.tag();
      if (!field(no, r)) r.skip(wireType, no);
    }
  } catch (e) {
    throw new DecodeError(`not protobuf: ${(e as Error).message}`);
  }
}

function readNode(bytes: Uint8Array): GatewayNode {
  const n: GatewayNode = { id: "", ip: "", port: 0, weight: 0, location: "", labels: [] };
  readFields(bytes, (no, r) => {
    if (no === 1) n.id = r.string();
    else if (no === 2) n.ip = r.string();
    else if (no === 3) n.port = r.int32();
    else if (no === 4) n.weight = r.int32();
    else if (no === 5) n.location = r.string();
    else if (no === 6) n.labels.push(r.string());
    else return false;
    return true;
  });
  return n;
}

/** Binary protobuf. */
export const proto: Serializer = {
  name: "proto",
  encode(m) {
    const w = new BinaryWriter();
    if (m.cmd !== 0) w.tag(1, WireType.Varint).int32(m.cmd);
    if (m.key) w.tag(2, WireType.LengthDelimited).string(m.key);
    if (m.body.length > 0) w.tag(3, WireType.LengthDelimited).bytes(m.body);
    return w.finish();
  },
  decode(frame) {
    const bytes = typeof frame === "string" ? utf8.encode(frame) : frame;
    const m: Message = { cmd: 0, key: "", body: new Uint8Array() };
    readFields(bytes, (no, r) => {
      if (no === 1) m.cmd = r.int32();
      else if (no === 2) m.key = r.string();
      else if (no === 3) m.body = r.bytes();
      else return false;
      return true;
    });
    return m;
  },
  ack(key, body) {
    const a: Ack = { key, msgId: "0", bizId: "0" };
    readFields(body, (no, r) => {
      if (no === 1) a.msgId = String(r.int64());
      else if (no === 2) a.bizId = String(r.int64());
      else return false;
      return true;
    });
    return a;
  },
  error(body) {
    const e: ErrorInfo = { code: "CODE_UNSPECIFIED", reason: "" };
    readFields(body, (no, r) => {
      if (no === 1) {
        const code = r.int32();
        e.code = ERROR_CODE_NAMES[code] ?? String(code);
      } else if (no === 2) e.reason = r.string();
      else return false;
      return true;
    });
    return e;
  },
  nodes(body) {
    const nodes: GatewayNode[] = [];
    readFields(body, (no, r) => {
      if (no !== 1) return false;
      nodes.push(readNode(r.bytes()));
      return true;
    });
    return nodes;
  },
};

/** The serializer called `name`. */
export function serializer(name: "json" | "proto"): Serializer {
  return name === "proto" ? proto : json;
}

/** UTF-8 bytes of `text` (bodies are bytes on the wire). */
export function encodeText(text: string): Uint8Array {
  return utf8.encode(text);
}
