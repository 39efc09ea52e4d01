// Real gateways for the client's tests: `wsgw serve` processes (the binary built by cargo),
// the example backend, and the `wsgw` operator commands. Every process is killed when the test
// file ends; logs go to a temporary folder, printed when a node fails to start.
import { spawn, execFile } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";

const root = new URL("../../../", import.meta.url).pathname;
export const WSGW = process.env.WSGW_BIN ?? join(root, "target/debug/wsgw");
export const BACKEND = process.env.WSGW_EXAMPLE_BACKEND ?? join(root, "target/debug/examples/backend");
export const SECRET = randomBytes(32).toString("hex");
export const TOKENS = { backend: "b-" + randomBytes(16).toString("hex"), peer: "p-" + randomBytes(16).toString("hex"), operator: "o-" + randomBytes(16).toString("hex") };

const dir = mkdtempSync(join(tmpdir(), "wsgw-js-"));
const children = new Set();
const run = promisify(execFile);

process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** A free TCP port on loopback. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `check()` is truthy (polled every 50 ms), or fails after `ms`. */
export async function until(check, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function spawnLogged(name, command, args, env = {}) {
  const log = join(dir, `${name}.log`);
  const out = [];
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  const keep = (chunk) => {
    out.push(chunk);
    writeFileSync(log, Buffer.concat(out));
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.output = () => Buffer.concat(out).toString();
  child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal)));
  return child;
}

/**
 * Starts `wsgw serve` with `config` (an object, written as JSON, which YAML reads) on free
 * loopback ports; resolves once `/ready` answers 200.
 */
export async function startNode(name, config = {}) {
  const [ws, governor, grpc] = [await freePort(), await freePort(), await freePort()];
  const full = {
    ...config,
    node: { id: name },
    server: {
      ...config.server,
      websocket: { listen: `127.0.0.1:${ws}`, ...config.server?.websocket },
      governor: { listen: `127.0.0.1:${governor}` },
      grpc: { listen: `127.0.0.1:${grpc}`, tokens: TOKENS },
    },
    auth: { jwt: { secret: SECRET, ...config.auth?.jwt } },
  };
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, JSON.stringify(full, null, 1));
  const child = spawnLogged(name, WSGW, ["serve", "--config", file]);
  const node = { name, child, url: `ws://127.0.0.1:${ws}/`, grpc: `127.0.0.1:${grpc}`, governor: `http://127.0.0.1:${governor}` };
  try {
    await until(async () => (await fetch(`${node.governor}/ready`).catch(() => null))?.ok || child.exitCode !== null, 20_000, `${name} ready`);
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}`);
  } catch (e) {
    throw new Error(`${name} did not start: ${e.message}\n${child.output()}`);
  }
  return node;
}

/** Stops a node with SIGTERM (a graceful drain) and waits for it to exit. */
export async function stopNode(node) {
  node.child.kill("SIGTERM");
  return node.child.exited;
}

/** Starts the example backend (examples/backend.rs) for `biz`; `lines()` is what it printed. */
export async function startBackend(biz = 9999) {
  const port = await freePort();
  const child = spawnLogged(`backend-${port}`, BACKEND, ["--listen", `127.0.0.1:${port}`, "--biz", String(biz), "--log-keys"]);
  const listening = () => new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1", () => socket.end(() => resolve(true)));
    socket.on("error", () => resolve(false));
  });
  await until(listening, 20_000, "the example backend");
  return { addr: `127.0.0.1:${port}`, child, lines: () => child.output().split("\n").filter(Boolean) };
}

/** Runs a `wsgw` command; resolves with its stdout (rejects with its stderr on failure). */
export async function wsgw(...args) {
  try {
    const { stdout } = await run(WSGW, args, { env: { ...process.env, RUST_LOG: "warn" } });
    return stdout.trim();
  } catch (e) {
    throw new Error(`wsgw ${args.join(" ")}: ${e.stderr || e.message}`);
  }
}

/** A token for `user` of `biz`, signed with the nodes' secret. */
export const token = (user, biz = 9999, ttl = "1h") =>
  wsgw("token", "--user", String(user), "--biz", String(biz), "--ttl", ttl, "--secret", SECRET);

/** `wsgw push` through `node`'s PushService. */
export const push = (node, user, text, key, biz = 9999) =>
  wsgw("push", "--addr", node.grpc, "--token", TOKENS.backend, "--user", String(user), "--biz", String(biz), ...(key ? ["--key", key] : []), text);

/** The value of one metric series on `node` (0 when absent). */
export async function metric(node, series) {
  const text = await (await fetch(`${node.governor}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.split(" ")[1]) : 0;
}

export { readFileSync };

/**
 * `count` nodes of one cluster on the Redis and etcd of scripts/services.sh (or
 * WSGW_TEST_REDIS / WSGW_TEST_ETCD), isolated by a random key prefix.
 */
export async function clusterNodes(name, count, extra = {}) {
  const prefix = `${name}-${randomBytes(4).toString("hex")}`;
  const cluster = {
    advertise_host: "127.0.0.1",
    redis: { url: process.env.WSGW_TEST_REDIS ?? "redis://127.0.0.1:6379", prefix: `${prefix}:` },
    etcd: { endpoints: [process.env.WSGW_TEST_ETCD ?? "127.0.0.1:2379"], prefix: `/${prefix}`, report_interval: "1s" },
  };
  const config = { cluster, shutdown: { drain_timeout: "5s", ack_wait: "1s" }, ...extra };
  const nodes = await Promise.all(Array.from({ length: count }, (_, i) => startNode(`${name}-${i + 1}`, config)));
  // every node sees the others in the registry before a test relies on a REDIRECT
  await sleep(500);
  return nodes;
}
