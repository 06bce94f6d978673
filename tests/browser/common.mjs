// What the browser tests (demo.mjs, demo_https.mjs, status.mjs) share: the paths (the server binary and Debian's
// chromium, overridable by $EDGEPUSH_BIN and $CHROMIUM), starting the release binary on free
// loopback ports and stopping it, a fresh headless chromium profile, numbered `check` steps, and
// the run-with-deadline-then-clean-up frame with its `N passed, N failed` summary. One test runs
// per process, so the server, the browser and the count are this module's state.
import { spawn } from "node:child_process";
import { request } from "node:https";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

/** The repository root (two folders above this file). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** The server binary: $EDGEPUSH_BIN, relative to ROOT, or target/release/edgepush. */
export const BIN = resolve(ROOT, process.env.EDGEPUSH_BIN || "target/release/edgepush");
/** The browser: $CHROMIUM or Debian's /usr/bin/chromium. */
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

let server = null;
let serverLog = "";
let context = null;
let profileDir = null;
let passed = 0;

/** Resolves after `ms` milliseconds. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A loopback TCP port free at the time of asking. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** GET `url` over https trusting the PEM certificate `ca`; resolves with `{ status, body }`. */
export function httpsGet(url, ca) {
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

/** GET `/healthz` on `port`: over https trusting `ca` when given, else plain; true on 2xx. */
async function healthy(port, ca) {
  if (ca) return (await httpsGet(`https://127.0.0.1:${port}/healthz`, ca)).status === 200;
  return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
}

/**
 * Starts BIN with `--listen` and `--api-listen` on two free loopback ports followed by `args`,
 * and waits (up to `stepMs` per attempt, 3 attempts) until `/healthz` and `/api/stats` (sent with
 * `headers`) both answer 2xx; `/healthz` over https trusting the PEM certificate `ca` when the
 * args make the public listener TLS. Returns `{ port, apiPort }`; throws when no attempt came up.
 */
export async function startServer({ args = [], headers = {}, stepMs, ca = null }) {
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    let apiPort = await freePort();
    while (apiPort === port) apiPort = await freePort();
    serverLog = "";
    const child = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--api-listen", `127.0.0.1:${apiPort}`, ...args],
      { stdio: ["ignore", "pipe", "pipe"] });
    server = child;
    let exited = false;
    child.on("exit", () => { exited = true; });
    child.on("error", (e) => { exited = true; serverLog += `spawn error: ${e.message}\n`; });
    child.stdout.on("data", (d) => { serverLog += d; });
    child.stderr.on("data", (d) => { serverLog += d; });
    const deadline = Date.now() + stepMs;
    while (!exited && Date.now() < deadline) {
      try {
        const [health, api] = await Promise.all([
          healthy(port, ca), fetch(`http://127.0.0.1:${apiPort}/api/stats`, { headers })]);
        if (health && api.ok) return { port, apiPort };
      } catch { /* not listening yet */ }
      await sleep(50);
    }
    await stopServer();
    console.error(`server attempt ${attempt} on ports ${port}/${apiPort} failed; its output:\n${serverLog}`);
  }
  throw new Error("the server did not come up (see its output above)");
}

/** Stops the server this module started: SIGTERM, then SIGKILL after 5 s. */
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

/**
 * Launches headless CHROMIUM on a fresh temporary profile (removed at clean-up) with the given
 * `viewport` and `args` added to the usual flags; `stepMs` is the launch timeout and every later
 * action's default. Returns the first page and the browser context.
 */
export async function launchBrowser({ viewport, stepMs, args = [] }) {
  profileDir = mkdtempSync(join(tmpdir(), "edgepush-chromium-"));
  // launchPersistentContext is how playwright takes a --user-data-dir of our choosing: a fresh one.
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", ...args],
    viewport,
    timeout: stepMs,
  });
  context.setDefaultTimeout(stepMs);
  const page = context.pages()[0] || await context.newPage();
  return { page, context };
}

/** Runs one named step; a throw fails the whole test with the step's name, a return prints `ok N`. */
export async function check(name, fn) {
  try {
    await fn();
  } catch (e) {
    throw new Error(`step "${name}" failed: ${e.message}`);
  }
  passed++;
  console.log(`ok ${passed} - ${name}`);
}

/**
 * Runs `run` within `overallMs`, then always closes the browser, stops the server and removes the
 * profile (after calling `beforeCleanup`, also on SIGINT/SIGTERM), prints `<label>: N passed,
 * N failed` last and exits 1 on failure (with the server's last 30 lines of output).
 */
export async function main({ label, overallMs, run, beforeCleanup = () => {} }) {
  const cleanup = async () => {
    beforeCleanup();
    if (context) await Promise.race([context.close().catch(() => {}), sleep(5000)]);
    context = null;
    await stopServer().catch(() => {});
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
    profileDir = null;
  };
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
      new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out after ${overallMs / 1000} s`)), overallMs); }),
    ]);
  } catch (e) {
    failure = e;
  } finally {
    clearTimeout(timer);
    await cleanup();
  }
  if (failure) {
    console.error(`\n${label} FAILED: ${failure.message}`);
    if (serverLog) console.error(`--- server output (last lines) ---\n${serverLog.split("\n").slice(-30).join("\n")}`);
    console.log(`${label}: ${passed} passed, 1 failed`);
    process.exit(1);
  }
  console.log(`${label}: ${passed} passed, 0 failed`);
}
