// The demo page: connect with a token, send messages, watch pushes, REDIRECTs and closes.
import { WsgwClient } from "../dist/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.get("url")) $("url").value = params.get("url");
let client = null;

function log(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.kind = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  li.append(time, text);
  $("log").prepend(li);
}

function showState(state) {
  $("status").className = `state-${state}`;
  $("state").textContent = state;
  $("where").textContent = client && state === "open" ? new URL(client.url).host : "";
  const open = state === "open";
  $("message").disabled = $("send").disabled = !open;
  $("disconnect").disabled = !client || state === "stopped";
  $("connect").disabled = !!client && state !== "stopped";
}

$("connect").onclick = () => {
  client = new WsgwClient({ url: $("url").value.trim(), token: $("token").value.trim(), serializer: $("serializer").value });
  client.on("state", (state) => {
    showState(state);
    if (state === "open") log("open", `connected to ${client.url.split("?")[0]}`);
  });
  client.on("push", (p) => log("push", `push ${p.key}: ${p.text()}`));
  client.on("redirect", (nodes) => log("redirect", `REDIRECT to ${nodes.map((n) => `${n.id} (${n.ip}:${n.port})`).join(", ")}`));
  client.on("close", (c) => log("close", `closed ${c.code} ${c.reason || ""} → ${c.action}`));
  client.on("error", (e) => log("error", e.message));
  client.connect().catch(() => {}); // the close event says why
};

$("disconnect").onclick = () => client?.close();

async function send() {
  const text = $("message").value;
  if (!text) return;
  $("message").value = "";
  try {
    const ack = await client.send(text);
    log("ack", `ack ${ack.key}: msgId ${ack.msgId}, biz ${ack.bizId} ← "${text}"`);
  } catch (e) {
    log("error", `send failed (${e.code}): ${e.message}`);
  }
}
$("send").onclick = send;
$("message").onkeydown = (e) => e.key === "Enter" && send();
