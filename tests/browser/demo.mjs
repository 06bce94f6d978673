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
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { ROOT, check, launchBrowser, main, sleep, startServer } from "./common.mjs";

const SHOT = join(ROOT, "target/ci/demo.png");
const OVERALL_MS = 60_000;
const STEP_MS = 10_000;
const USER = "603577";

async function api(apiPort, path, body) {
  const res = await fetch(`http://127.0.0.1:${apiPort}${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

const pushMessage = (content, extra = {}) =>
  ({ id: 1, employee_no: USER, read_flag: 0, extra: "", message_type: 1, content, count: 1, ...extra });

async function run() {
  const { port, apiPort } = await startServer({ args: ["--log", "info"], stepMs: STEP_MS });
  console.log(`server up: http://127.0.0.1:${port}/ (API on ${apiPort})`);

  const { page } = await launchBrowser({ viewport: { width: 1280, height: 860 }, stepMs: STEP_MS });
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

await main({ label: "browser test", overallMs: OVERALL_MS, run });
