// REDIRECT on a real two-node cluster (Redis and etcd from scripts/services.sh): the node a
// client is on drains, the client follows the REDIRECT to the other node, and pushes and sends
// keep working there.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { WsgwClient } from "../dist/index.js";
import { clusterNodes, stopNode, token, push, until } from "./support.js";

let a, b;
const clients = [];

before(async () => {
  [a, b] = await clusterNodes("js-cluster", 2);
});

after(async () => {
  for (const c of clients) c.close();
  await Promise.all([a, b].filter((n) => n?.child.exitCode === null).map(stopNode));
});

test("a draining node's REDIRECT takes the client to the other node, pushes follow", async () => {
  const c = new WsgwClient({ url: a.url, token: await token(201), WebSocket, redirectJitter: 200 });
  clients.push(c);
  const pushes = [];
  const redirects = [];
  c.on("push", (p) => pushes.push(p.text()));
  c.on("redirect", (nodes) => redirects.push(nodes));
  await c.connect();
  await push(a, 201, "before");
  await until(() => pushes.length === 1, 10_000, "the push on node a");

  const stopped = stopNode(a); // SIGTERM: drain, REDIRECT to the live peers, close 1001
  await until(() => c.state === "open" && c.url.startsWith(b.url), 15_000, "the client on node b");
  assert.equal(redirects.length, 1);
  assert.deepEqual(redirects[0].map((n) => n.id), [b.name]);
  assert.ok(redirects[0][0].labels.every((l) => !l.startsWith("grpc=")), "no internal labels");
  await stopped;

  await push(b, 201, "after");
  await until(() => pushes.length === 2, 10_000, "the push on node b");
  assert.deepEqual(pushes, ["before", "after"]);
});
