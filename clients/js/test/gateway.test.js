// The client against real gateways: `wsgw serve` processes, the example backend, and pushes
// sent with `wsgw push`. Cluster tests need the Redis and etcd of scripts/services.sh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { WsgwClient, WsgwError } from "../dist/index.js";
import { startNode, stopNode, startBackend, token, push, metric, until, wsgw, TOKENS } from "./support.js";

let backend, node, protoNode, strictNode;
const clients = [];

function client(options) {
  const c = new WsgwClient({ WebSocket, heartbeatInterval: 1000, heartbeatTimeout: 2000, backoff: { initial: 100, max: 1000 }, ...options });
  clients.push(c);
  return c;
}

/** Resolves with the next `event` value of `c` that passes `accept`. */
function next(c, event, accept = () => true, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    const off = c.on(event, (v) => {
      if (!accept(v)) return;
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

before(async () => {
  backend = await startBackend(9999);
  const backends = [{ biz_id: 9999, endpoints: [backend.addr] }];
  [node, protoNode, strictNode] = await Promise.all([
    startNode("js-main", { backends, downstream: { retry_interval: "500ms" }, auth: { jwt: { leeway: "0s" } } }),
    startNode("js-proto", { backends, protocol: { serializer: "proto" } }),
    startNode("js-strict", { backends, limits: { message_rate: 1, message_burst: 2 } }),
  ]);
});

after(async () => {
  for (const c of clients) c.close();
  await Promise.all([node, protoNode, strictNode].filter(Boolean).map(stopNode));
  backend?.child.kill();
});

test("the token travels as a subprotocol: sends are acknowledged with the backend's answer", async () => {
  const c = client({ url: node.url, token: await token(101) });
  await c.connect();
  assert.ok(!c.url.includes("token="), "the token stays out of the URL");
  const ack = await c.send("hello", "js-k1");
  assert.equal(ack.key, "js-k1");
  assert.equal(ack.bizId, "9999");
  assert.ok(Number(ack.msgId) > 0);
  // its log line is read from its stdout, which may trail the ACK
  await until(() => backend.lines().some((l) => l.includes(" js-k1 ")), 5_000, "the backend saw the message");
});

test("the token in the query works too (the original gateway's clients)", async () => {
  const c = client({ url: node.url, token: await token(102), tokenIn: "query" });
  await c.connect();
  assert.ok(c.url.includes("token="));
  assert.equal((await c.send("hi")).bizId, "9999");
});

test("binary protobuf: sends and pushes on a node with protocol.serializer: proto", async () => {
  const c = client({ url: protoNode.url, token: await token(103), serializer: "proto" });
  await c.connect();
  const ack = await c.send(new Uint8Array([0, 1, 2, 255]));
  assert.equal(ack.bizId, "9999");
  const pushed = next(c, "push");
  await push(protoNode, 103, "über", "js-proto-push");
  const p = await pushed;
  assert.equal(p.key, "js-proto-push");
  assert.equal(p.text(), "über");
});

test("a push sent with wsgw push arrives once per key and is acknowledged", async () => {
  const c = client({ url: node.url, token: await token(104) });
  const seen = [];
  c.on("push", (p) => seen.push(p));
  await c.connect();
  const acked = await metric(node, 'websocket_gateway_pushes_total{event="acked"}');
  await push(node, 104, "first", "js-p1");
  await push(node, 104, "again", "js-p1"); // the same key: delivered, acked, not shown twice
  await push(node, 104, "second", "js-p2");
  await until(() => seen.length >= 2, 10_000, "two pushes");
  await until(async () => (await metric(node, 'websocket_gateway_pushes_total{event="acked"}')) >= acked + 3, 10_000, "acks");
  assert.deepEqual(seen.map((p) => [p.key, p.text()]), [["js-p1", "first"], ["js-p2", "second"]]);
  // acknowledged: nothing is retransmitted after the 500 ms retry interval
  await new Promise((r) => setTimeout(r, 1200));
  assert.equal(await metric(node, 'websocket_gateway_pushes_total{event="retried"}'), 0);
});

test("a message in flight is sent again with the same key after a reconnect; the backend sees it once", async () => {
  const c = client({ url: node.url, token: await token(105) });
  await c.connect();
  const sent = c.send("survives", "js-resend");
  c.reconnect(); // the first socket is dropped at once; the new one resends
  const ack = await sent;
  assert.equal(ack.key, "js-resend");
  // The backend's log line is read from its stdout, which may trail the ACK: wait for it, then
  // make sure no second call follows.
  const calls = () => backend.lines().filter((l) => l.includes(" js-resend ")).length;
  await until(() => calls() >= 1, 5_000, "the backend's log line");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(calls(), 1);
  // sends while disconnected wait for the next connection
  c.reconnect();
  assert.equal((await c.send("queued")).bizId, "9999");
});

test("gateway errors and rate limits reject the send with their code", async () => {
  const nobody = client({ url: node.url, token: await token(106, 7777) });
  await nobody.connect();
  await assert.rejects(nobody.send("x"), (e) => e instanceof WsgwError && e.code === "CODE_NO_BACKEND");

  const fast = client({ url: strictNode.url, token: await token(107) });
  await fast.connect();
  const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => fast.send("x", `js-rate-${i}`)));
  const limited = results.filter((r) => r.status === "rejected" && r.reason.code === "RATE_LIMITED");
  assert.ok(results.some((r) => r.status === "fulfilled"), "the burst is served");
  assert.ok(limited.length > 0, `RATE_LIMIT_EXCEEDED rejects: ${JSON.stringify(results.map((r) => r.status))}`);
});

test("a kick stops the client and rejects what is still waiting", async () => {
  const c = client({ url: node.url, token: await token(108) });
  await c.connect();
  const closed = next(c, "close");
  const out = await wsgw("kick", "--addr", node.grpc, "--token", TOKENS.operator, "--user", "108", "--biz", "9999", "--reason", "account suspended");
  assert.match(out, /closed 1 connection/);
  assert.deepEqual(await closed, { code: 1008, reason: "account suspended", action: "stop" });
  assert.equal(c.state, "stopped");
  await assert.rejects(c.send("late"), (e) => e.code === "STOPPED");
});

test("an expired token (close 4001) is refreshed and the client reconnects", async () => {
  let minted = 0;
  const c = client({ url: node.url, token: () => token(109, 9999, minted++ === 0 ? "2s" : "1h") });
  await c.connect();
  const closed = await next(c, "close", () => true, 15_000);
  assert.deepEqual(closed, { code: 4001, reason: "token expired", action: "refresh-token" });
  await next(c, "state", (s) => s === "open");
  assert.equal(minted, 2);
  assert.equal((await c.send("fresh")).bizId, "9999");
});

test("an unreachable gateway is retried with back-off until it answers", async () => {
  const c = client({ url: "ws://127.0.0.1:9/", token: "x", backoff: { initial: 20, max: 40 } });
  const closes = [];
  c.on("close", (e) => closes.push(e));
  void c.connect().catch(() => {});
  await until(() => closes.length >= 3, 5_000, "three attempts");
  assert.ok(closes.every((e) => e.action === "reconnect"));
  c.close();
  assert.equal(c.state, "stopped");
});
