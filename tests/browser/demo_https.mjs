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
import { execFileSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ROOT, check, launchBrowser, main, startServer } from "./common.mjs";

const SHOT = join(ROOT, "target/ci/demo-https.png");
const STEP_MS = 10_000;
const USER = "tls-user";
/** Temporary folders of the certificates, removed at clean-up. */
const dirs = [];

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

async function api(apiPort, method, path, body) {
  const res = await fetch(`http://127.0.0.1:${apiPort}${path}`, {
    method, headers: { "Content-Type": "application/json" }, body: body && JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

async function run() {
  const tls = makeCertificate();
  const { port, apiPort } = await startServer({
    args: ["--tls-cert", tls.cert, "--tls-key", tls.key, "--log", "info"], stepMs: STEP_MS, ca: tls.pem });
  console.log(`server up: https://127.0.0.1:${port}/ (API on http://127.0.0.1:${apiPort})`);
  const { page } = await launchBrowser({
    viewport: { width: 1280, height: 860 }, stepMs: STEP_MS,
    args: [`--ignore-certificate-errors-spki-list=${tls.spki}`] });
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

await main({
  label: "https browser test",
  overallMs: 60_000,
  run,
  beforeCleanup: () => { for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true }); },
});
