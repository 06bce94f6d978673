// Real-browser test of the demo page (static/index.html): Debian's chromium driven by playwright-core.
//
//   cargo build --release && (cd tests/browser && npm ci) && node tests/browser/demo.mjs
//
// Starts target/release/edgepush (or $EDGEPUSH_BIN) in open mode on free loopback ports, opens the
// page, connects as a user, subscribes to `news`, pushes through the API (publish, send), checks that
// the page shows both, then disconnects the user through the API and waits for close code 4000.
// API calls ask `?wait=delivered`: only then does the answer carry `delivered` / `closed`.
// Chromium offers permessage-deflate by itself: the page's socket must have negotiated it
// (RFC 7692) and a push larger than the server's --compression-min-size (128 B) must arrive whole.
// Writes a screenshot to target/ci/demo.png. Exits non-zero on any failure; always stops the server
// and the browser. Needs /usr/bin/chromium (or $CHROMIUM); downloads no browser.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = resolve(ROOT, process.env.EDGEPUSH_BIN || "target/release/edgepush");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOT = join(ROOT, "target/ci/demo.png");
const OVERALL_MS = 60_000;
const STEP_MS = 10_000;
const USER = "603577";

let server = null;
let serverLog = "";
let context = null;
let profileDir = null;
let passed = 0;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function startServer() {
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    let apiPort = await freePort();
    while (apiPort === port) apiPort = await freePort();
    serverLog = "";
    const child = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--api-listen", `127.0.0.1:${apiPort}`, "--log", "info"],
      { stdio: ["ignore", "pipe", "pipe"] });
    server = child;
    let exited = false;
    child.on("exit", () => { exited = true; });
    child.on("error", (e) => { exited = true; serverLog += `spawn error: ${e.message}\n`; });
    child.stdout.on("data", (d) => { serverLog += d; });
    child.stderr.on("data", (d) => { serverLog += d; });
    const deadline = Date.now() + STEP_MS;
    while (!exited && Date.now() < deadline) {
      try {
        const [health, api] = await Promise.all([
          fetch(`http://127.0.0.1:${port}/healthz`), fetch(`http://127.0.0.1:${apiPort}/api/stats`)]);
        if (health.ok && api.ok) return { port, apiPort };
      } catch { /* not listening yet */ }
      await sleep(50);
    }
    await stopServer();
    console.error(`server attempt ${attempt} on ports ${port}/${apiPort} failed; its output:\n${serverLog}`);
  }
  throw new Error("the server did not come up (see its output above)");
}

async function stopServer() {
  const child = server;
  server = null;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  if (await Promise.race([gone.then(() => true), sleep(5000).then(() => false)])) return;
  child.kill("SIGKILL");
  await gone;
}

async function api(apiPort, path, body) {
  const res = await fetch(`http://127.0.0.1:${apiPort}${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

async function check(name, fn) {
  try {
    await fn();
  } catch (e) {
    throw new Error(`step "${name}" failed: ${e.message}`);
  }
  passed++;
  console.log(`ok ${passed} - ${name}`);
}

const pushMessage = (content, extra = {}) =>
  ({ id: 1, employee_no: USER, read_flag: 0, extra: "", message_type: 1, content, count: 1, ...extra });

async function run() {
  if (!existsSync(BIN)) throw new Error(`no server binary at ${BIN}: run \`cargo build --release\` or set EDGEPUSH_BIN`);
  if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM)`);
  const { port, apiPort } = await startServer();
  console.log(`server up: http://127.0.0.1:${port}/ (API on ${apiPort})`);

  profileDir = mkdtempSync(join(tmpdir(), "edgepush-chromium-"));
  // launchPersistentContext is how playwright takes a --user-data-dir of our choosing: a fresh one.
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 860 },
    timeout: STEP_MS,
  });
  context.setDefaultTimeout(STEP_MS);
  const page = context.pages()[0] || await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Every WebSocket the page opens, with the text frames it receives, in order.
  const sockets = [];
  page.on("websocket", (ws) => {
    const entry = { url: ws.url(), frames: [] };
    sockets.push(entry);
    ws.on("framereceived", (f) => { if (typeof f.payload === "string") entry.frames.push(f.payload); });
  });
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push("console: " + m.text()); });

  const cardIn = (channel, text) =>
    page.locator(`#messages li[data-channel="${channel}"]`).filter({ has: page.locator(".card .content", { hasText: text }) });

  await check("page loads with the push endpoint filled in", async () => {
    const res = await page.goto(`http://127.0.0.1:${port}/`);
    if (!res.ok()) throw new Error(`GET / answered ${res.status()}`);
    const url = await page.inputValue("#url");
    if (url !== `ws://127.0.0.1:${port}/ws`) throw new Error(`endpoint field is ${JSON.stringify(url)}`);
  });

  await check("connects as a user and gets its $user stream", async () => {
    await page.fill("#user", USER);
    await page.click("#connect");
    await page.locator('#state[data-state="open"]').waitFor();
    await page.locator('#subs li[data-channel="$user"]:not(.pending)').waitFor();
  });

  await check("subscribes to news", async () => {
    await page.fill("#channel", "news");
    await page.click("#subscribe");
    await page.locator('#subs li[data-channel="news"]:not(.pending)').waitFor();
  });

  await check("curl lines follow the user and the first channel", async () => {
    const send = await page.textContent("#curl-send"), publish = await page.textContent("#curl-publish");
    if (!send.includes(`http://127.0.0.1:8081/api/send`) || !send.includes(`"user":"${USER}"`))
      throw new Error(`unexpected send line: ${send}`);
    if (!publish.includes(`"channel":"news"`)) throw new Error(`unexpected publish line: ${publish}`);
  });

  await check("a PushMessage published through the API shows as a card", async () => {
    const r = await api(apiPort, "/api/publish?wait=delivered", { channel: "news", data: pushMessage("Quarterly report is out", { count: 3 }) });
    if (r.delivered !== 1) throw new Error(`publish delivered to ${r.delivered} connections, expected 1`);
    const item = cardIn("news", "Quarterly report is out");
    await item.waitFor();
    const seq = await item.getAttribute("data-seq");
    if (seq !== String(r.seq)) throw new Error(`page shows seq ${seq}, API said ${r.seq}`);
  });

  await check("a message sent to the user shows in the $user stream", async () => {
    const r = await api(apiPort, "/api/send?wait=delivered", { user: USER, data: pushMessage("Hello from edgepush") });
    if (r.delivered !== 1) throw new Error(`send delivered to ${r.delivered} connections, expected 1`);
    await cardIn("$user", "Hello from edgepush").waitFor();
  });

  await check("received text is shown as text, never parsed as HTML", async () => {
    const evil = `<img src=x onerror="window.__xss=1">bold <b>not</b>`;
    await api(apiPort, "/api/publish?wait=delivered", { channel: "news", data: pushMessage(evil) });
    await cardIn("news", evil).waitFor();
    if (await page.evaluate(() => window.__xss === 1 || !!document.querySelector("#messages img, #messages .content b")))
      throw new Error("message content was rendered as HTML");
  });

  await check("raw text ping gets pong", async () => {
    await page.fill("#text", "ping");
    await page.click("#send");
    await page.locator("#messages li.recv", { hasText: "pong" }).first().waitFor();
  });

  await check("disconnect through the API shows close code 4000", async () => {
    const r = await api(apiPort, "/api/disconnect?wait=delivered", { user: USER });
    if (r.closed !== 1) throw new Error(`disconnect closed ${r.closed} connections, expected 1`);
    const state = page.locator('#state[data-state="closed"][data-code="4000"]');
    await state.waitFor();
    const text = await state.textContent();
    if (!text.includes("disconnected by the API")) throw new Error(`state reads ${JSON.stringify(text)}`);
  });

  await check("reconnecting resumes both streams with what was missed", async () => {
    const news = await api(apiPort, "/api/publish?wait=delivered", { channel: "news", data: pushMessage("Missed while offline") });
    const mine = await api(apiPort, "/api/send?wait=delivered", { user: USER, data: pushMessage("Kept for you", { read_flag: 1 }) });
    await page.click("#connect");
    await page.locator('#state[data-state="open"]').waitFor();
    await cardIn("news", "Missed while offline").and(page.locator(`[data-seq="${news.seq}"]`)).waitFor();
    await cardIn("$user", "Kept for you").and(page.locator(`[data-seq="${mine.seq}"]`)).waitFor();
    await page.locator('#subs li[data-channel="news"]:not(.pending)').waitFor();
    await sleep(300);  // let any (wrong) duplicate replay arrive before counting
    const shown = await page.$$eval("#messages li[data-seq]", (lis) => lis.map((li) => `${li.dataset.channel}#${li.dataset.seq}`));
    const want = ["$user#1", "$user#2", "news#1", "news#2", "news#3"];  // order across streams is free
    if (JSON.stringify(shown.sort()) !== JSON.stringify(want))
      throw new Error(`messages shown ${JSON.stringify(shown)}, expected each exactly once: ${JSON.stringify(want)}`);
    // The $user recovery went in the upgrade request, so its answer is the first frame and
    // the replay follows it before anything else.
    const last = sockets[sockets.length - 1];
    const query = new URL(last.url).searchParams;
    if (query.get("since") !== "1" || !query.get("epoch"))
      throw new Error(`reconnected to ${last.url}, expected since=1 and the $user epoch in the URL`);
    const [first, second] = last.frames.map((t) => JSON.parse(t));
    if (first.op !== "subscribed" || first.channel !== "$user" || first.recovered !== true)
      throw new Error(`first frame ${JSON.stringify(first)}, expected the recovered $user answer`);
    if (second.op !== "message" || second.channel !== "$user" || second.seq !== mine.seq)
      throw new Error(`second frame ${JSON.stringify(second)}, expected the replayed $user message ${mine.seq}`);
    if (last.frames.some((t) => t.includes('"op":"error"')))
      throw new Error(`errors on reconnect: ${last.frames.filter((t) => t.includes('"op":"error"'))}`);
  });

  await check("the page's WebSocket negotiated permessage-deflate", async () => {
    // The page keeps its socket in a top-level `let ws` (a classic script): reachable by name.
    const ext = await page.evaluate(() => (typeof ws !== "undefined" && ws ? ws.extensions : null));
    if (ext === null) throw new Error("the page's socket is not reachable as `ws`");
    if (!ext.includes("permessage-deflate"))
      throw new Error(`page socket extensions ${JSON.stringify(ext)}, expected permessage-deflate`);
    // A fresh socket from the page context says the same, with the parameters the server chose.
    const fresh = await page.evaluate((url) => new Promise((res, rej) => {
      const s = new WebSocket(url);
      s.onopen = () => { res(s.extensions); s.close(1000); };
      s.onerror = () => rej(new Error("fresh socket failed"));
    }), `ws://127.0.0.1:${port}/echo`);
    if (!/^permessage-deflate\b/.test(fresh) || !fresh.includes("server_no_context_takeover"))
      throw new Error(`fresh /echo socket extensions ${JSON.stringify(fresh)}`);
  });

  await check("a push larger than 128 bytes (--compression-min-size) arrives whole on the deflate socket", async () => {
    const long = "Compressed push: " + "the quick brown fox jumps over the lazy dog; ".repeat(20) + "end.";
    // The page's own socket (the fresh /echo one above is also in `sockets`).
    const mine = sockets.filter((w) => new URL(w.url).pathname === "/ws").pop();
    const frames = () => mine.frames;
    const before = frames().length;
    const r = await api(apiPort, "/api/publish?wait=delivered", { channel: "news", data: pushMessage(long) });
    if (r.delivered !== 1) throw new Error(`publish delivered to ${r.delivered} connections, expected 1`);
    await cardIn("news", "end.").waitFor();
    const got = frames().slice(before).map((t) => JSON.parse(t)).find((m) => m.op === "message" && m.seq === r.seq);
    if (!got || got.data.content !== long)
      throw new Error(`the ${long.length}-character push did not arrive intact: ${JSON.stringify(got)}`);
  });

  await check("no script errors on the page", async () => {
    if (pageErrors.length) throw new Error(pageErrors.join("\n"));
  });

  mkdirSync(dirname(SHOT), { recursive: true });
  await page.screenshot({ path: SHOT, fullPage: true });
  console.log(`screenshot: ${SHOT}`);
}

async function cleanup() {
  if (context) await Promise.race([context.close().catch(() => {}), sleep(5000)]);
  context = null;
  await stopServer().catch(() => {});
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
  profileDir = null;
}

for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { cleanup().finally(() => process.exit(130)); });

let failure = null;
let timer;
try {
  await Promise.race([
    run(),
    new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out after ${OVERALL_MS / 1000} s`)), OVERALL_MS); }),
  ]);
} catch (e) {
  failure = e;
} finally {
  clearTimeout(timer);
  await cleanup();
}
if (failure) {
  console.error(`\nbrowser test FAILED: ${failure.message}`);
  if (serverLog) console.error(`--- server output (last lines) ---\n${serverLog.split("\n").slice(-30).join("\n")}`);
  console.log(`browser test: ${passed} passed, 1 failed`);
  process.exit(1);
}
console.log(`browser test: ${passed} passed, 0 failed`);
