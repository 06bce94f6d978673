// Real-browser test of the demo page over TLS: the release binary with --tls-cert/--tls-key (a
// P-256 certificate for 127.0.0.1 made here with the openssl command), Debian's chromium told to
// trust exactly that key (--ignore-certificate-errors-spki-list with its SPKI hash), driven by
// playwright-core.
//
//   cargo build --release && (cd tests/browser && npm ci) && node tests/browser/demo_https.mjs
//
// Checks: the page loads over https and fills in a wss:// endpoint; it connects, gets its $user
// stream, subscribes, shows a message published through the API (plain http on the API
// listener), gets `pong` for `ping`; the socket negotiated permessage-deflate over TLS; the TLS
// handshakes are counted in /api/stats. Screenshot: target/ci/demo-https.png. Exits non-zero on
// any failure; always stops the server and the browser; gives up after 60 s.
import { execFileSync, spawn } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";
import { BIN, CHROMIUM, ROOT, freePort, sleep } from "./common.mjs";

const SHOT = join(ROOT, "target/ci/demo-https.png");
const OVERALL_MS = 60_000;
const STEP_MS = 10_000;
const USER = "tls-user";

let server = null;
let serverLog = "";
let context = null;
const dirs = [];
let passed = 0;

async function check(name, fn) {
  try {
    await fn();
  } catch (e) {
    throw new Error(`step "${name}" failed: ${e.message}`);
  }
  passed++;
  console.log(`ok ${passed} - ${name}`);
}

/** A self-signed P-256 certificate for 127.0.0.1 and localhost: paths and the SPKI hash. */
function makeCertificate() {
  const dir = mkdtempSync(join(tmpdir(), "edgepush-tls-"));
  dirs.push(dir);
  const cert = join(dir, "cert.pem"), key = join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-days", "2", "-subj", "/CN=edgepush test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    "-keyout", key, "-out", cert], { stdio: "ignore" });
  const pem = readFileSync(cert, "utf8");
  const spki = new X509Certificate(pem).publicKey.export({ type: "spki", format: "der" });
  return { cert, key, pem, spki: createHash("sha256").update(spki).digest("base64") };
}

/** GET over https trusting `ca`; resolves with the status and body. */
function httpsGet(url, ca) {
  return new Promise((res, rej) => {
    const req = request(url, { ca, timeout: 2000 }, (r) => {
      let body = "";
      r.on("data", (d) => { body += d; });
      r.on("end", () => res({ status: r.statusCode, body }));
    });
    req.on("error", rej);
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.end();
  });
}

async function startTlsServer(tls) {
  const port = await freePort();
  let apiPort = await freePort();
  while (apiPort === port) apiPort = await freePort();
  server = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--api-listen", `127.0.0.1:${apiPort}`,
    "--tls-cert", tls.cert, "--tls-key", tls.key, "--log", "info"], { stdio: ["ignore", "pipe", "pipe"] });
  server.stdout.on("data", (d) => { serverLog += d; });
  server.stderr.on("data", (d) => { serverLog += d; });
  const deadline = Date.now() + STEP_MS;
  while (Date.now() < deadline && server.exitCode === null) {
    try {
      const health = await httpsGet(`https://127.0.0.1:${port}/healthz`, tls.pem);
      if (health.status === 200) return { port, apiPort };
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  throw new Error("the TLS server did not come up");
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

async function api(apiPort, method, path, body) {
  const res = await fetch(`http://127.0.0.1:${apiPort}${path}`, {
    method, headers: { "Content-Type": "application/json" }, body: body && JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

async function run() {
  const tls = makeCertificate();
  const { port, apiPort } = await startTlsServer(tls);
  console.log(`server up: https://127.0.0.1:${port}/ (API on http://127.0.0.1:${apiPort})`);

  const profile = mkdtempSync(join(tmpdir(), "edgepush-chromium-"));
  dirs.push(profile);
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--ignore-certificate-errors-spki-list=${tls.spki}`],
    viewport: { width: 1280, height: 860 },
    timeout: STEP_MS,
  });
  context.setDefaultTimeout(STEP_MS);
  const page = context.pages()[0] || await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push("console: " + m.text()); });

  await check("the page loads over https with a wss:// endpoint", async () => {
    const res = await page.goto(`https://127.0.0.1:${port}/`);
    if (!res.ok()) throw new Error(`GET / answered ${res.status()}`);
    const security = await res.securityDetails();
    if (!security || !/TLS/.test(security.protocol || "")) throw new Error(`security details ${JSON.stringify(security)}`);
    const url = await page.inputValue("#url");
    if (url !== `wss://127.0.0.1:${port}/ws`) throw new Error(`endpoint field is ${JSON.stringify(url)}`);
  });

  await check("connects over wss and gets its $user stream", async () => {
    await page.fill("#user", USER);
    await page.click("#connect");
    await page.locator('#state[data-state="open"]').waitFor();
    await page.locator('#subs li[data-channel="$user"]:not(.pending)').waitFor();
  });

  await check("subscribes and shows a message published through the API", async () => {
    await page.fill("#channel", "news");
    await page.click("#subscribe");
    await page.locator('#subs li[data-channel="news"]:not(.pending)').waitFor();
    const r = await api(apiPort, "POST", "/api/publish?wait=delivered",
      { channel: "news", data: { id: 1, employee_no: USER, read_flag: 0, extra: "", message_type: 1, content: "Delivered over wss", count: 1 } });
    if (r.delivered !== 1) throw new Error(`publish delivered to ${r.delivered}, expected 1`);
    await page.locator('#messages li[data-channel="news"]', { hasText: "Delivered over wss" }).waitFor();
  });

  await check("ping gets pong over wss", async () => {
    await page.fill("#text", "ping");
    await page.click("#send");
    await page.locator("#messages li.recv", { hasText: "pong" }).first().waitFor();
  });

  await check("the wss socket negotiated permessage-deflate", async () => {
    const ext = await page.evaluate(() => (typeof ws !== "undefined" && ws ? ws.extensions : null));
    if (!ext || !ext.includes("permessage-deflate")) throw new Error(`extensions ${JSON.stringify(ext)}`);
  });

  await check("the server counted the browser's TLS handshakes and no failure", async () => {
    const stats = await api(apiPort, "GET", "/api/stats");
    if (!(stats.tls_handshakes >= 2)) throw new Error(`tls_handshakes ${stats.tls_handshakes}`);
    if (stats.tls_handshake_failures !== 0) throw new Error(`failures ${JSON.stringify(stats.tls_handshake_failures_by_reason)}`);
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
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { cleanup().finally(() => process.exit(130)); });
let failure = null;
let timer;
try {
  await Promise.race([
    (async () => {
      if (!existsSync(BIN)) throw new Error(`no server binary at ${BIN}: run \`cargo build --release\` or set EDGEPUSH_BIN`);
      if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM)`);
      await run();
    })(),
    new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out after ${OVERALL_MS / 1000} s`)), OVERALL_MS); }),
  ]);
} catch (e) {
  failure = e;
} finally {
  clearTimeout(timer);
  await cleanup();
}
if (failure) {
  console.error(`\nhttps browser test FAILED: ${failure.message}`);
  if (serverLog) console.error(`--- server output (last lines) ---\n${serverLog.split("\n").slice(-30).join("\n")}`);
  console.log(`https browser test: ${passed} passed, 1 failed`);
  process.exit(1);
}
console.log(`https browser test: ${passed} passed, 0 failed`);
