// Real-browser test of the operator status page (static/status.html, GET / on the API listener):
// Debian's chromium driven by playwright-core.
//
//   cargo build --release && (cd tests/browser && npm ci) && node tests/browser/status.mjs
//
// Starts target/release/edgepush (or $EDGEPUSH_BIN) with --api-key on free loopback ports, opens
// the page without a key (it must load and ask for one), enters a wrong key (refused) and the
// right one, then drives load from a second tab (WebSocket clients subscribed to a channel, a
// publish through the API every 100 ms, one handshake with a wrong WebSocket version) and checks
// the page's numbers move: connections > 0, deliveries/s > 0 at some point, the charts have
// points, the failure shows under its reason, the node is listed. Reloading keeps the key
// (sessionStorage). Writes a screenshot to target/ci/status-page.png. Exits non-zero on any
// failure; always stops the server and the browser. Needs /usr/bin/chromium (or $CHROMIUM).
import { mkdirSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { dirname, join } from "node:path";
import { ROOT, check, launchBrowser, main, sleep, startServer } from "./common.mjs";

const SHOT = join(ROOT, "target/ci/status-page.png");
const OVERALL_MS = 90_000;
const STEP_MS = 15_000;
const KEY = "status-page-test-key";
const CLIENTS = 6;

let publishing = null;

const auth = { Authorization: `Bearer ${KEY}` };

async function publish(apiPort, n) {
  const res = await fetch(`http://127.0.0.1:${apiPort}/api/publish`, {
    method: "POST", headers: { ...auth, "Content-Type": "application/json" },
    body: JSON.stringify({ channel: "news", data: { n } }) });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST /api/publish answered ${res.status}: ${text}`);
}

/// Publishes every 100 ms until stopped; the first error ends it and is kept.
function startPublishing(apiPort) {
  const state = { stop: false, sent: 0, error: null };
  state.done = (async () => {
    for (let n = 0; !state.stop && n < 2000; n++) {
      try {
        await publish(apiPort, n);
        state.sent++;
      } catch (e) {
        state.error = e;
        return;
      }
      await sleep(100);
    }
  })();
  return state;
}

/// One upgrade with Sec-WebSocket-Version: 8: the server answers 426 (reason "version").
function badHandshake(port) {
  return new Promise((res, rej) => {
    const s = tcpConnect(port, "127.0.0.1", () => {
      s.write("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n");
    });
    let got = "";
    s.setTimeout(5000, () => { s.destroy(); rej(new Error("no answer to the bad handshake")); });
    s.on("data", (d) => { got += d; });
    s.on("error", rej);
    s.on("close", () => (got.startsWith("HTTP/1.1 426") ? res() : rej(new Error(`bad handshake answered ${JSON.stringify(got.slice(0, 40))}`))));
  });
}

async function run() {
  const { port, apiPort } = await startServer({
    args: ["--api-key", KEY, "--threads", "2", "--log", "info"], headers: auth, stepMs: STEP_MS });
  console.log(`server up: status page http://127.0.0.1:${apiPort}/ (push on ${port})`);

  const { page, context } = await launchBrowser({ viewport: { width: 1280, height: 1000 }, stepMs: STEP_MS });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // CSP violations and failed loads show as console errors; a 401 the page expects does too.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("401")) pageErrors.push("console: " + m.text());
  });
  const otherHosts = [];
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (u.protocol !== "data:" && u.host !== `127.0.0.1:${apiPort}`) otherHosts.push(r.url());
  });
  const value = async (id) => {
    const v = await page.getAttribute(`#v-${id}`, "data-value");
    return v === null || v === "" ? null : Number(v);
  };

  await check("the page loads without the key and asks for it", async () => {
    const res = await page.goto(`http://127.0.0.1:${apiPort}/`);
    if (res.status() !== 200) throw new Error(`GET / answered ${res.status()}`);
    if (!(res.headers()["content-type"] || "").startsWith("text/html")) throw new Error(`content type ${res.headers()["content-type"]}`);
    await page.locator("#keybox:not(.hidden)").waitFor();
    await page.locator('#live[data-state="key"]').waitFor();
    if (await value("connections") !== null) throw new Error("figures shown without a key");
  });

  await check("a wrong key is refused", async () => {
    await page.fill("#key", "not-the-key");
    await page.click("#usekey");
    await page.locator("#keybox:not(.hidden)").waitFor();
    await page.locator("#keymsg", { hasText: "refused" }).waitFor();
  });

  await check("the right key shows this node live", async () => {
    await page.fill("#key", KEY);
    await page.click("#usekey");
    await page.locator('#live[data-state="live"]').waitFor();
    await page.locator("#keybox.hidden").waitFor({ state: "attached" });
    if (await value("connections") !== 0) throw new Error(`connections ${await value("connections")} before any client`);
    const stored = await page.evaluate(() => sessionStorage.getItem("edgepush-api-key"));
    if (stored !== KEY) throw new Error(`sessionStorage holds ${JSON.stringify(stored)}`);
    const node = await page.textContent("#node");
    await page.locator(`#nodes tr.self[data-node="${node}"]`).waitFor();
  });

  await check("a reload keeps the key for this tab", async () => {
    await page.reload();
    await page.locator('#live[data-state="live"]').waitFor();
    if (await value("connections") !== 0) throw new Error(`connections ${await value("connections")} after reload`);
    if (!(await page.locator("#keybox.hidden").count())) throw new Error("the key was asked for again");
  });

  // Load from a second tab on the public listener: WebSocket clients subscribed to `news`.
  const load = await context.newPage();
  await check(`${CLIENTS} WebSocket clients show as connections and subscriptions`, async () => {
    await load.goto(`http://127.0.0.1:${port}/healthz`);
    await load.evaluate(({ port, n }) => Promise.all(Array.from({ length: n }, (_, i) => new Promise((res, rej) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?user=load-${i}`);
      (window.clients ||= []).push(ws);
      window.received = 0;
      ws.onopen = () => ws.send(JSON.stringify({ op: "subscribe", channel: "news" }));
      ws.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.op === "subscribed" && m.channel === "news") res();
        if (m.op === "message") window.received++;
      };
      ws.onerror = () => rej(new Error(`client ${i} failed`));
    }))), { port, n: CLIENTS });
    await page.waitForFunction((n) => Number(document.getElementById("v-connections").dataset.value) >= n, CLIENTS);
    await page.waitForFunction((n) => Number(document.getElementById("v-subscriptions").dataset.value) >= n, CLIENTS);
  });

  await check("publishing moves deliveries/s and messages out/s above 0", async () => {
    publishing = startPublishing(apiPort);
    await page.waitForFunction(() => Number(document.getElementById("v-deliveries").dataset.value) > 0);
    await page.waitForFunction(() => Number(document.getElementById("v-messages_out").dataset.value) > 0);
    if (publishing.error) throw publishing.error;
    const got = await load.evaluate(() => window.received);
    if (!(got > 0)) throw new Error("the clients received nothing");
  });

  await check("a refused handshake shows under its reason", async () => {
    await badHandshake(port);
    await page.waitForFunction(() => {
      const row = document.querySelector('#reasons tr[data-reason="version"]');
      return row && row.cells[1].textContent === "1";
    });
    await page.waitForFunction(() => Number(document.getElementById("v-handshake_failures").dataset.value) === 1);
  });

  await check("the charts have points", async () => {
    // A few more seconds of samples.
    await page.waitForFunction(() => Number(document.querySelector('#chart-deliveries path[data-series="deliveries"]').dataset.points) >= 4);
    const points = await page.$$eval("#charts path.series", (ps) => Object.fromEntries(ps.map((p) => [p.dataset.series, Number(p.dataset.points)])));
    for (const s of ["connections", "subscriptions", "messages_in", "messages_out", "deliveries", "rtt"])
      if (!(points[s] >= 3)) throw new Error(`series ${s} has ${points[s]} points: ${JSON.stringify(points)}`);
    if (!Object.keys(points).some((s) => s.startsWith("node:") && points[s] >= 3))
      throw new Error(`no per-node series: ${JSON.stringify(points)}`);
    // Deliveries were drawn above the baseline somewhere: a path point whose y is not the floor.
    const ys = await page.$eval('#chart-deliveries path[data-series="deliveries"]', (p) =>
      [...p.getAttribute("d").matchAll(/[ML][\d.]+ ([\d.]+)/g)].map((m) => Number(m[1])));
    if (new Set(ys).size < 2) throw new Error(`the deliveries line is flat: ${ys}`);
  });

  publishing.stop = true;
  await publishing.done;
  if (publishing.error) throw publishing.error;
  console.log(`(published ${publishing.sent} messages to ${CLIENTS} clients)`);

  await check("closed clients leave the count", async () => {
    await load.evaluate(() => window.clients.forEach((ws) => ws.close(1000)));
    await page.waitForFunction(() => Number(document.getElementById("v-connections").dataset.value) === 0);
  });

  await check("nothing loaded from elsewhere, no script or CSP errors", async () => {
    if (otherHosts.length) throw new Error(`requests to other hosts: ${otherHosts.join(", ")}`);
    if (pageErrors.length) throw new Error(pageErrors.join("\n"));
  });

  // The screenshot shows load: publish a little more and open clients again first.
  await load.evaluate(({ port, n }) => Promise.all(Array.from({ length: n }, (_, i) => new Promise((res) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?user=shot-${i}`);
    ws.onopen = () => ws.send(JSON.stringify({ op: "subscribe", channel: "news" }));
    ws.onmessage = () => res();
    ws.onerror = () => res();
  }))), { port, n: CLIENTS });
  publishing = startPublishing(apiPort);
  await page.waitForFunction(() => Number(document.getElementById("v-deliveries").dataset.value) > 0);
  await sleep(1500);
  mkdirSync(dirname(SHOT), { recursive: true });
  await page.screenshot({ path: SHOT, fullPage: true });
  publishing.stop = true;
  await publishing.done;
  console.log(`screenshot: ${SHOT}`);
}

await main({
  label: "status page test", overallMs: OVERALL_MS, run,
  beforeCleanup: () => { if (publishing) publishing.stop = true; },
});
