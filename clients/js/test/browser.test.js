// The demo page in headless Chromium (Debian's package, driven by playwright-core) against a
// real two-node cluster: connect with a token, send and get the ack, receive a push sent with
// `wsgw push`, follow a REDIRECT when the node drains, receive a push on the new node.
// CHROMIUM names the browser (default /usr/bin/chromium); SCREENSHOT a PNG to write at the end.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { serve } from "../demo/serve.js";
import { clusterNodes, startBackend, stopNode, token, push } from "./support.js";

let browser, site, backend, a, b;

before(async () => {
  backend = await startBackend(9999);
  [a, b] = await clusterNodes("js-browser", 2, { backends: [{ biz_id: 9999, endpoints: [backend.addr] }] });
  site = await serve();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  site?.server.close();
  await Promise.all([a, b].filter((n) => n?.child.exitCode === null).map(stopNode));
  backend?.child.kill();
});

test("the demo page connects, sends, receives pushes and survives a REDIRECT", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  await page.goto(`${site.url}?url=${encodeURIComponent(a.url)}`);

  await page.fill("#token", await token(301));
  await page.click("#connect");
  await page.waitForSelector("#status.state-open");
  assert.equal(await page.textContent("#where"), new URL(a.url).host);

  await page.fill("#message", "hello from the browser");
  await page.click("#send");
  await page.waitForSelector('#log li[data-kind="ack"]');
  assert.match(await page.textContent('#log li[data-kind="ack"]'), /msgId \d+, biz 9999/);

  await push(a, 301, "a push via node 1");
  await page.waitForSelector('#log li[data-kind="push"]:has-text("a push via node 1")');

  const stopped = stopNode(a);
  await page.waitForSelector('#log li[data-kind="redirect"]');
  await page.waitForFunction((host) => document.querySelector("#where").textContent === host, new URL(b.url).host, { timeout: 15_000 });
  await stopped;
  await push(b, 301, "a push via node 2");
  await page.waitForSelector('#log li[data-kind="push"]:has-text("a push via node 2")');

  await page.fill("#message", "still here");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll('#log li[data-kind="ack"]').length === 2);
  assert.deepEqual(problems, []);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
});
