// The codecs against the reference vectors (Google's protobuf, tests/fixtures/protocol.json)
// and the reconnect rules, without a network.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Command, DecodeError, json, proto, closeAction, backoffDelay, nodeUrl } from "../dist/index.js";

const vectors = JSON.parse(readFileSync(new URL("../../../tests/fixtures/protocol.json", import.meta.url)));
const messages = vectors.encode.filter((v) => v.type === "gatewayapi.v1.Message");
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (h) => new Uint8Array(Buffer.from(h, "hex"));
const vector = (name) => vectors.encode.find((v) => v.name === name);

test("every Message vector encodes to the reference bytes and JSON", () => {
  assert.ok(messages.length >= 9);
  for (const v of messages) {
    const message = json.decode(v.json);
    assert.equal(hex(proto.encode(message)), v.binary_hex, v.name);
    assert.deepEqual(JSON.parse(json.encode(message)), JSON.parse(v.json), v.name);
    assert.deepEqual(proto.decode(unhex(v.binary_hex)), message, v.name);
  }
});

test("JSON decoding takes enum numbers, URL-safe base64 and free whitespace", () => {
  for (const input of vectors.decode_inputs.filter((i) => !i.error && i.means)) {
    assert.deepEqual(json.decode(input.json), json.decode(input.means), input.note);
  }
  assert.throws(() => json.decode('{"cmd":"COMMAND_TYPE_NOPE"}'), DecodeError);
  assert.throws(() => json.decode('{"cmd":"COMMAND_TYPE_HEARTBEAT","key":5}'), DecodeError);
  assert.throws(() => json.decode("[1]"), DecodeError);
  assert.throws(() => json.decode(new Uint8Array([0xff, 0xfe])), DecodeError);
  assert.throws(() => proto.decode(new Uint8Array([0x0a, 0x05, 0x01])), DecodeError);
});

test("acks, errors and node lists decode in both serializers", () => {
  const ack = vector("upstream ack (body = JSON OnReceiveResponse)");
  const m = json.decode(ack.json);
  assert.equal(m.cmd, Command.UpstreamAck);
  assert.deepEqual(json.ack(m.key, m.body), { key: "3f2a-01", msgId: "1", bizId: "9999" });
  const r = vector("OnReceiveResponse");
  assert.deepEqual(proto.ack("k", unhex(r.binary_hex)), { key: "k", msgId: "1234567890123", bizId: "9999" });
  assert.deepEqual(json.ack("k", new TextEncoder().encode(r.json)), { key: "k", msgId: "1234567890123", bizId: "9999" });
  assert.deepEqual(proto.ack("k", new Uint8Array()), { key: "k", msgId: "0", bizId: "0" });

  const list = vector("NodeList");
  const fromProto = proto.nodes(unhex(list.binary_hex));
  const fromJson = json.nodes(new TextEncoder().encode(list.json));
  assert.deepEqual(fromProto, fromJson);
  assert.equal(fromProto[0].ip, "10.0.0.2");
  assert.equal(fromProto[0].port, 9002);

  const redirect = json.decode(vector("redirect (body = JSON NodeList)").json);
  assert.equal(redirect.cmd, Command.Redirect);
  assert.ok(json.nodes(redirect.body).length > 0);

  const err = new TextEncoder().encode('{"code":"CODE_NO_BACKEND","reason":"no backend"}');
  assert.deepEqual(json.error(err), { code: "CODE_NO_BACKEND", reason: "no backend" });
  // ErrorInfo{code: 3, reason: "x"} in binary
  assert.deepEqual(proto.error(new Uint8Array([0x08, 0x03, 0x12, 0x01, 0x78])), { code: "CODE_BACKEND_UNAVAILABLE", reason: "x" });
});

test("close codes map to reconnect, refresh or stop", () => {
  assert.equal(closeAction(1001, "going away"), "reconnect");
  assert.equal(closeAction(1001, "redirected"), "reconnect");
  assert.equal(closeAction(1006, ""), "reconnect");
  assert.equal(closeAction(1011, ""), "reconnect");
  assert.equal(closeAction(1008, "slow consumer"), "reconnect");
  assert.equal(closeAction(1008, "rate limit"), "reconnect");
  assert.equal(closeAction(1008, "account suspended"), "stop");
  assert.equal(closeAction(1000, "idle timeout"), "stop");
  assert.equal(closeAction(1007, "invalid message"), "stop");
  assert.equal(closeAction(1009, "message too big"), "stop");
  assert.equal(closeAction(4001, "token expired"), "refresh-token");
});

test("back-off grows to its ceiling with jitter between half and all of it", () => {
  assert.equal(backoffDelay(0, {}, () => 0), 250);
  assert.equal(backoffDelay(0, {}, () => 1), 500);
  assert.equal(backoffDelay(3, {}, () => 1), 4000);
  assert.equal(backoffDelay(20, {}, () => 0), 15_000);
  assert.equal(backoffDelay(20, { max: 1000 }, () => 1), 1000);
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(2, {})));
  assert.ok(spread.size > 10, "jitter spreads the delays");
});

test("a REDIRECT target keeps the scheme and path of the current URL", () => {
  const node = { id: "n2", ip: "10.0.0.2", port: 9102, weight: 1, location: "", labels: [] };
  assert.equal(nodeUrl("wss://gw.example.com/ws?app=1", node), "wss://10.0.0.2:9102/ws?app=1");
  assert.equal(nodeUrl("ws://127.0.0.1:9002/", { ...node, ip: "::1" }), "ws://[::1]:9102/");
});
