// The chaos soak (`make chaos`, `make test-chaos`; started by tests/chaos/run.sh, which owns the
// last-resort cleanup). One accept, two process and four notify processes of the real binary
// behind nginx (round-robin, no stickiness) on real PostgreSQL and RabbitMQ and a Redis of its
// own; a few hundred tabs built with the project's client module; a steady stream of orders; and
// faults at random times: kill -9 and SIGTERM of every role, Redis, RabbitMQ and PostgreSQL
// restarted, tab connections cut by TCP proxies. After a settle period it checks that every tab
// has every notification of its user exactly once, that every order reached COMPLETED or FAILED
// exactly once, that nothing was dead-lettered, and how the RSS of the long-lived processes
// moved; it writes report.json, summary.txt and timeline.svg to artifacts/chaos/ and exits
// non-zero when a check fails.
//
// Settings (environment): CHAOS_MINUTES (10; the fault phase), CHAOS_USERS (100),
// CHAOS_TABS_PER_USER (2), CHAOS_ORDER_RATE (orders/s, 3), CHAOS_SEED (random), CHAOS_OUT,
// CHAOS_ID (names the database, bus prefix and channel prefix), CONTOSO_BIN, TEST_* URLs,
// CHAOS_RSS_MAX_SLOPE (KiB/min, 1024) and CHAOS_RSS_MIN_SPAN (s, 150): the RSS check (Theil-Sen
// slope after a 30 s warm-up) applies to processes alive at the end measured at least that long.
import { spawn } from "node:child_process";
import { createHash, createHmac, randomBytes, randomUUID } from "node:crypto";
import fs from "node:fs";
import { createConnection, createServer } from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createHubConnection, OrderStatusClient } from "../../clients/order-status-client/dist/index.js";
import { chaosProxy } from "../node/cluster.mjs";
import { freePort } from "../node/harness.mjs";
import { timelineSvg } from "./plot.mjs";

// ---------------------------------------------------------------------------------------------
// Settings

const ROOT = path.resolve(new URL("../..", import.meta.url).pathname);
const env = process.env;
const MINUTES = Number(env.CHAOS_MINUTES ?? 10);
const USERS = Number(env.CHAOS_USERS ?? 100);
const TABS_PER_USER = Number(env.CHAOS_TABS_PER_USER ?? 2);
const ORDER_RATE = Number(env.CHAOS_ORDER_RATE ?? 3);
const SEED = Number(env.CHAOS_SEED ?? randomBytes(4).readUInt32LE(0));
const OUT = path.resolve(env.CHAOS_OUT ?? path.join(ROOT, "artifacts/chaos"));
const LOGS = path.join(OUT, "logs");
const ID = env.CHAOS_ID ?? `chaos${randomBytes(6).toString("hex")}`;
const SOURCE_BIN = path.resolve(env.CONTOSO_BIN ?? path.join(ROOT, "target/debug/contoso"));
const DB_ADMIN = env.TEST_DATABASE_URL ?? "postgres://root@127.0.0.1:5432/postgres";
const AMQP = env.TEST_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const RSS_MAX_SLOPE = Number(env.CHAOS_RSS_MAX_SLOPE ?? 1024);
const RSS_MIN_SPAN = Number(env.CHAOS_RSS_MIN_SPAN ?? 150);
const PIDS_FILE = path.join(OUT, "pids.txt");

const DB = `contoso_t_${ID}`;
const DB_URL = DB_ADMIN.replace(/\/[^/]*$/, `/${DB}`);
const BUS_PREFIX = `t-${ID}.`;
const CHANNEL_PREFIX = `t-${ID}-`;
const SECRET = `chaos-${ID}-${randomBytes(16).toString("hex")}`;
const TMP = fs.mkdtempSync(`/tmp/contoso-${ID}-`);
const BIN = path.join(TMP, "contoso");

const FAULT_WINDOW_S = MINUTES * 60;
const BASE_GAP_S = Math.min(20, Math.max(2, FAULT_WINDOW_S / 20));
const ORDER_DEADLINE_MS = 120_000;
const READY_AFTER_FAULT_MS = 90_000;

// ---------------------------------------------------------------------------------------------
// Small helpers

const T0 = Date.now();
const now = () => (Date.now() - T0) / 1000;
fs.mkdirSync(LOGS, { recursive: true });
const soakLog = fs.createWriteStream(path.join(OUT, "soak.log"), { flags: "a" });
function log(msg) {
  const line = `[chaos +${now().toFixed(1).padStart(6)}s] ${msg}`;
  console.log(line);
  soakLog.write(`${new Date().toISOString()} ${line}\n`);
}

/** mulberry32: the soak's one source of randomness, so a seed replays the same schedule. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
// Two streams, so the fault schedule of a seed does not depend on how many orders were placed.
const random = rng(SEED);
const orderRandom = rng(SEED ^ 0x9e3779b9);
const between = (lo, hi, r = random) => lo + r() * (hi - lo);
const pick = (xs, r = random) => xs[Math.floor(r() * xs.length)];
function shuffle(xs) {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** Runs a command without blocking the event loop (the tabs must keep answering pings). */
function run(cmd, args, { timeoutMs = 60_000 } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout, stderr: String(err), timedOut });
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: timedOut ? -1 : code, stdout, stderr, timedOut });
    });
  });
}

async function mustRun(cmd, args, opts) {
  const res = await run(cmd, args, opts);
  if (res.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${res.timedOut ? "timed out" : `exit ${res.code}`}): ${res.stderr.trim()}`);
  return res.stdout;
}

const psql = (sql, url = DB_URL) => mustRun("psql", [url, "-qtAX", "-c", sql]);

/** Polls `check` until truthy or `timeoutMs` passes; returns the value or null. Never throws. */
async function until(check, timeoutMs, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) return null;
    await sleep(everyMs);
  }
}

function portOpen(port) {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: "127.0.0.1" });
    s.setTimeout(1000);
    s.on("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
    s.on("timeout", () => {
      s.destroy();
      resolve(false);
    });
  });
}

/**
 * A free port below the kernel's ephemeral range: processes restart on their port, and while one
 * is down an outgoing connection must not be able to take its port as a local one.
 */
const usedPorts = new Set();
const EPHEMERAL_LOW = (() => {
  try {
    return Number(fs.readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
})();
function canBind(port) {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}
async function uniquePort() {
  const low = Math.max(1024, EPHEMERAL_LOW - 12_000);
  for (let i = 0; i < 200; i += 1) {
    const p = low + Math.floor(Math.random() * (EPHEMERAL_LOW - low));
    if (!usedPorts.has(p) && (await canBind(p))) {
      usedPorts.add(p);
      return p;
    }
  }
  return freePort();
}

/**
 * Every child this soak starts, as "pid starttime" (field 22 of /proc/<pid>/stat), so that
 * run.sh's trap kills a leftover child and never a process that got its pid later.
 */
function rememberPid(pid) {
  if (!pid) return;
  let start = "";
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    start = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    // already gone
  }
  fs.appendFileSync(PIDS_FILE, `${pid} ${start}\n`);
}

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
function token(sub) {
  const header = b64url({ alg: "HS256", typ: "JWT" });
  const payload = b64url({ sub, exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

function slope(points) {
  // Least squares; points are [seconds, KiB]; the result is KiB per minute.
  const n = points.length;
  if (n < 2) return null;
  const mx = points.reduce((s, p) => s + p[0], 0) / n;
  const my = points.reduce((s, p) => s + p[1], 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den > 0 ? (num / den) * 60 : null;
}

/** Theil-Sen: the median of the pairwise slopes, KiB per minute; robust to a fault's transient. */
function robustSlope(points) {
  const n = points.length;
  if (n < 2) return null;
  // At most ~400 points (evenly thinned), so at most ~80,000 pairs.
  const step = Math.max(1, Math.ceil(n / 400));
  const pts = points.filter((_, i) => i % step === 0);
  const slopes = [];
  for (let i = 0; i < pts.length; i += 1) {
    for (let j = i + 1; j < pts.length; j += 1) {
      const dx = pts[j][0] - pts[i][0];
      if (dx > 0) slopes.push((pts[j][1] - pts[i][1]) / dx);
    }
  }
  if (!slopes.length) return null;
  slopes.sort((a, b) => a - b);
  return slopes[Math.floor(slopes.length / 2)] * 60;
}

function readRss(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// State shared by the phases

const state = {
  redis: null,
  procs: [],
  proxies: [],
  front: null,
  nginx: null,
  tabs: [],
  tabsByUser: new Map(),
  orders: [],
  faults: [],
  samples: [],
  unexpectedExits: [],
  phases: [],
  problems: [], // things found on the way that fail the run (besides the final checks)
};
let REDIS_PORT = 0;
let LB = "";
let TAB_HUB = "";

// ---------------------------------------------------------------------------------------------
// Redis: a server of its own, with an fsync'd append-only file so a restart keeps the
// notification log and the order map (a Redis that loses its data is a documented limit, not
// what this soak tests).

const REDIS_DIR = path.join(TMP, "redis");
function startRedis() {
  fs.mkdirSync(REDIS_DIR, { recursive: true });
  const child = spawn("redis-server", [
    "--port", String(REDIS_PORT), "--bind", "127.0.0.1", "--dir", REDIS_DIR, "--appendonly", "yes",
    "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", path.join(LOGS, "redis.log"),
  ], { stdio: "ignore" });
  rememberPid(child.pid);
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  state.redis = { child, exited, pid: child.pid };
  return until(async () => (await run("redis-cli", ["-p", String(REDIS_PORT), "ping"], { timeoutMs: 2000 })).stdout.trim() === "PONG", 30_000, 100);
}

const redisCli = (...args) => mustRun("redis-cli", ["-p", String(REDIS_PORT), ...args], { timeoutMs: 20_000 });

// ---------------------------------------------------------------------------------------------
// contoso processes: fixed ports, so a restarted process takes its predecessor's place behind
// nginx (or the notify proxies); one log file per lifetime.

class Proc {
  constructor(role, index, port, extra = []) {
    Object.assign(this, { role, index, port, extra });
    this.name = `${role}-${index}`;
    this.gen = 0;
    this.lives = [];
    this.life = null;
    this.child = null;
  }

  args() {
    return [
      "--role", this.role, "--listen", `127.0.0.1:${this.port}`, "--database-url", DB_URL,
      "--redis-url", `redis://127.0.0.1:${REDIS_PORT}/0`, "--amqp-url", AMQP, "--jwt-secret", SECRET,
      "--bus-prefix", BUS_PREFIX, "--channel-prefix", CHANNEL_PREFIX, "--process-delay-ms", "50",
      "--drain-file", path.join(TMP, `drain-${this.port}`), "--log-level", "info", "--log-format", "json",
      "--http-workers", "1", "--db-pool-size", "4", "--shutdown-timeout", "10", ...this.extra,
    ];
  }

  get alive() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  async ready() {
    try {
      return (await fetch(`http://127.0.0.1:${this.port}/health/ready`, { signal: AbortSignal.timeout(2000) })).status === 200;
    } catch {
      return false;
    }
  }

  async start() {
    for (let attempt = 1; ; attempt += 1) {
      this.gen += 1;
      const logPath = path.join(LOGS, `${this.name}.${this.gen}.log`);
      const fd = fs.openSync(logPath, "a");
      const child = spawn(BIN, this.args(), { stdio: ["ignore", fd, fd] });
      fs.closeSync(fd);
      rememberPid(child.pid);
      const life = {
        name: this.name, role: this.role, gen: this.gen, pid: child.pid, log: path.relative(OUT, logPath),
        start: now(), readyAt: null, end: null, exit: null, planned: null, rss: [],
      };
      life.exited = new Promise((resolve) => {
        child.on("exit", (code, signal) => {
          life.end = now();
          life.exit = { code, signal };
          if (!life.planned) {
            state.unexpectedExits.push({ name: this.name, gen: life.gen, pid: life.pid, t: life.end, code, signal, log: life.log });
            log(`UNEXPECTED EXIT of ${this.name} (pid ${life.pid}): code ${code} signal ${signal}; see ${life.log}`);
          }
          resolve(life.exit);
        });
      });
      child.on("error", (err) => log(`${this.name}: spawn error ${err.message}`));
      this.child = child;
      this.life = life;
      this.lives.push(life);
      const ok = await until(async () => (this.child !== child || !this.alive ? "gone" : (await this.ready()) ? "ready" : null), 60_000, 150);
      if (ok === "ready") {
        life.readyAt = now();
        return life;
      }
      if (this.alive) {
        life.planned = "start-timeout";
        child.kill("SIGKILL");
      }
      await life.exited;
      if (attempt >= 3) throw new Error(`${this.name} did not become ready (3 attempts); see ${life.log}`);
      log(`${this.name} did not become ready (attempt ${attempt}); starting it again`);
      await sleep(1000);
    }
  }

  /** Sends `signal`; after `timeoutMs` without an exit, SIGKILL. Resolves to what happened. */
  async stop(signal, why, timeoutMs = 30_000) {
    const life = this.life;
    if (!this.alive) return { exit: life?.exit, inTime: true, ms: 0 };
    life.planned = why;
    const started = Date.now();
    this.child.kill(signal);
    const exit = await Promise.race([life.exited, sleep(timeoutMs).then(() => null)]);
    if (exit) return { exit, inTime: true, ms: Date.now() - started };
    this.child.kill("SIGKILL");
    return { exit: await life.exited, inTime: false, ms: Date.now() - started };
  }
}

async function allReady(timeoutMs) {
  const results = await Promise.all(state.procs.map((p) => until(() => p.alive && p.ready(), timeoutMs, 250)));
  return state.procs.filter((_, i) => !results[i]).map((p) => p.name);
}

// ---------------------------------------------------------------------------------------------
// nginx: docker/nginx.conf with its upstream and listen blocks replaced (as tests/node/cluster.mjs
// does), logs kept in artifacts/chaos/.

function replaceBlock(conf, name, lines) {
  const re = new RegExp(`(# BEGIN ${name}\\n)[\\s\\S]*?(\\s*# END ${name})`);
  if (!re.test(conf)) throw new Error(`no block ${name} in nginx.conf`);
  return conf.replace(re, `$1${lines.map((l) => `        ${l}`).join("\n")}$2`);
}

async function startNginx(notifyPorts, acceptPort) {
  const dir = path.join(TMP, "nginx");
  fs.mkdirSync(dir, { recursive: true });
  const port = await uniquePort();
  let conf = fs.readFileSync(path.join(ROOT, "docker/nginx.conf"), "utf8").replaceAll("/tmp/", `${dir}/`);
  conf = conf
    .replace(/access_log \/dev\/stdout[^;]*;/, `log_format chaos '$time_iso8601 $upstream_addr $status $request_method $uri $request_time'; access_log ${path.join(LOGS, "nginx-access.log")} chaos;`)
    .replace("error_log /dev/stderr warn;", `error_log ${path.join(LOGS, "nginx-error.log")} warn;`)
    .replace("worker_processes auto;", "worker_processes 1;");
  // max_fails=0: nginx never takes a notify upstream out on its own. The soak kills and cuts
  // them on purpose, and nginx's passive marking once kept all four out for minutes, which
  // tested nginx rather than contoso (in Kubernetes, readiness decides where traffic goes).
  conf = replaceBlock(conf, "notify upstreams", notifyPorts.map((p) => `server 127.0.0.1:${p} max_fails=0;`));
  conf = replaceBlock(conf, "accept upstreams", [`server 127.0.0.1:${acceptPort};`]);
  conf = replaceBlock(conf, "listen", [`listen 127.0.0.1:${port};`]);
  fs.writeFileSync(path.join(dir, "nginx.conf"), conf);
  const child = spawn("nginx", ["-c", path.join(dir, "nginx.conf"), "-g", "daemon off;"], { stdio: ["ignore", "ignore", "inherit"] });
  rememberPid(child.pid);
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const base = `http://127.0.0.1:${port}`;
  const up = await until(async () => (await fetch(`${base}/health/live`, { signal: AbortSignal.timeout(2000) })).ok, 30_000);
  if (!up) throw new Error("nginx did not come up");
  state.nginx = { child, exited, port, base };
  return state.nginx;
}

// ---------------------------------------------------------------------------------------------
// Tabs: the client module as the SPA uses it. Each records every notification the module emits
// (after its de-duplication) and, through a wrapped connection, every OrderCompleted/OrderFailed
// that arrived on the wire (transport level), marked as a replay when it arrived while a
// ResumeNotifications call of that connection was in flight.

class Tab {
  constructor(index, user) {
    Object.assign(this, { index, user });
    this.name = `tab-${index}`;
    this.notifications = []; // {nid, cid, status, orderId, t}
    this.byNid = new Map(); // nid -> count of module emits
    this.arrivals = new Map(); // nid -> {live, replay}
    this.arrivalCount = 0;
    this.state = "offline";
    this.stateChanges = 0;
    this.catchUps = [];
    this.statusQueries = [];
    this.errors = 0;
    this.lastError = null;
    this.resuming = 0;
  }

  wrap(conn) {
    const on = conn.on.bind(conn);
    conn.on = (name, handler) =>
      on(name, (...args) => {
        if (name === "OrderCompleted" || name === "OrderFailed") {
          const nid = args[0]?.notificationId;
          const a = this.arrivals.get(nid) ?? { live: 0, replay: 0, cid: args[0]?.correlationId };
          if (this.resuming > 0) a.replay += 1;
          else a.live += 1;
          this.arrivals.set(nid, a);
          this.arrivalCount += 1;
          arrivalsTotal += 1;
        }
        return handler(...args);
      });
    const invoke = conn.invoke.bind(conn);
    conn.invoke = async (method, ...args) => {
      const resume = method === "ResumeNotifications";
      if (resume) this.resuming += 1;
      try {
        return await invoke(method, ...args);
      } finally {
        if (resume) this.resuming -= 1;
      }
    };
    return conn;
  }

  async open() {
    this.client = new OrderStatusClient({
      url: TAB_HUB,
      accessTokenFactory: () => token(this.user),
      logger: { log() {} },
      connectionFactory: async (options) => this.wrap(await createHubConnection(options)),
    });
    this.client.on("notification", (n) => {
      this.byNid.set(n.notificationId, (this.byNid.get(n.notificationId) ?? 0) + 1);
      this.notifications.push({ nid: n.notificationId, cid: n.correlationId, status: n.status, orderId: n.orderId ?? null, t: now() });
      notificationsTotal += 1;
    });
    this.client.on("status", (u) => {
      if (u.source === "status-query") this.statusQueries.push({ cid: u.correlationId, status: u.status, t: now() });
    });
    this.client.on("state", (s) => {
      this.state = s;
      this.stateChanges += 1;
    });
    this.client.on("catchUp", (c) =>
      this.catchUps.push({ t: now(), from: c.from, replayed: c.result?.replayed ?? null, complete: c.result?.complete ?? null, queried: c.queried.length }),
    );
    this.client.on("error", (e) => {
      this.errors += 1;
      this.lastError = e?.message ?? String(e);
    });
    await this.client.start();
  }
}
let arrivalsTotal = 0;
let notificationsTotal = 0;

// ---------------------------------------------------------------------------------------------
// Orders: a steady stream through nginx. Every order carries an Idempotency-Key and is retried
// with it (network errors, 5xx, 429) until accepted or ORDER_DEADLINE_MS passed, so a retry
// never makes a second order and an order answered by nobody is still found in the database.

const PRODUCTS = ["mug", "espresso", "filter", "kettle", "grinder"];
let acceptedTotal = 0;
let ordersRunning = false;
const orderPromises = [];

async function placeOrder(user) {
  const fail = orderRandom() < 0.1;
  const items = fail ? [{ productId: "discontinued", quantity: 1 }] : [{ productId: pick(PRODUCTS, orderRandom), quantity: 1 + Math.floor(orderRandom() * 3) }];
  const rec = { key: randomUUID(), user, fail, t0: now(), attempts: 0, answers: {}, cid: null, acceptedAt: null, gaveUp: false, rejected: null };
  state.orders.push(rec);
  const deadline = Date.now() + ORDER_DEADLINE_MS;
  const body = JSON.stringify({ items });
  for (;;) {
    rec.attempts += 1;
    let status = "network";
    try {
      const res = await fetch(`${LB}/api/orders`, {
        method: "POST",
        headers: { authorization: `Bearer ${token(user)}`, "content-type": "application/json", "idempotency-key": rec.key },
        body,
        signal: AbortSignal.timeout(10_000),
      });
      status = res.status;
      const text = await res.text();
      if (status === 202) {
        rec.cid = JSON.parse(text).correlationId;
        rec.acceptedAt = now();
        acceptedTotal += 1;
        // The tab that placed it watches it, as the SPA does (GetCurrentStatus fallback).
        state.tabsByUser.get(user)?.[0]?.client.watchOrder(rec.cid);
        rec.answers[status] = (rec.answers[status] ?? 0) + 1;
        return rec;
      }
      if (status !== 429 && status < 500) {
        rec.answers[status] = (rec.answers[status] ?? 0) + 1;
        rec.rejected = `${status} ${text.slice(0, 300)}`;
        return rec;
      }
    } catch {
      status = "network";
    }
    rec.answers[status] = (rec.answers[status] ?? 0) + 1;
    if (Date.now() > deadline) {
      rec.gaveUp = true;
      return rec;
    }
    await sleep(Math.min(2000, 100 * 2 ** Math.min(rec.attempts, 5)) * between(0.5, 1, orderRandom));
  }
}

async function orderStream() {
  const users = [...state.tabsByUser.keys()];
  while (ordersRunning) {
    orderPromises.push(placeOrder(pick(users, orderRandom)));
    await sleep((1000 / ORDER_RATE) * between(0.5, 1.5, orderRandom));
  }
}

// ---------------------------------------------------------------------------------------------
// The sampler: once a second, the counters, the tabs connected and the RSS of every process.

let samplerTimer = null;
function startSampler() {
  samplerTimer = setInterval(() => {
    const t = now();
    state.samples.push({
      t,
      accepted: acceptedTotal,
      notifications: notificationsTotal,
      arrivals: arrivalsTotal,
      connected: state.tabs.filter((tab) => tab.state === "connected").length,
    });
    for (const p of state.procs) {
      const life = p.life;
      if (life && life.end === null) {
        const kib = readRss(life.pid);
        if (kib !== null) life.rss.push([t, kib]);
      }
    }
  }, 1000);
}

// ---------------------------------------------------------------------------------------------
// Faults

const PG_VERSION = (() => {
  try {
    return fs.readdirSync("/etc/postgresql").sort((a, b) => Number(a) - Number(b)).at(-1);
  } catch {
    return null;
  }
})();
const pgReady = async () => (await run("pg_isready", ["-q", "-h", "127.0.0.1", "-p", "5432"], { timeoutMs: 5000 })).code === 0;

const FAULT_KINDS = [
  "kill9:accept", "term:accept", "kill9:process", "term:process", "kill9:notify", "term:notify",
  "restart:redis", "restart:rabbitmq", "restart:postgres", "cut:notify", "cut:tabs",
];

/**
 * Victims: the one accept, and every process and notify instance but the first of each role, so
 * process-0 and notify-0 live through the whole soak and their RSS shows a long trend.
 */
function victim(role) {
  const candidates = state.procs.filter((p) => p.role === role && (role === "accept" || p.index > 0));
  return pick(candidates);
}

async function restartProc(kind, detail) {
  const [how, role] = kind.split(":");
  const p = victim(role);
  detail.target = p.name;
  detail.pid = p.life.pid;
  if (how === "kill9") {
    const r = await p.stop("SIGKILL", "SIGKILL", 10_000);
    detail.exit = r.exit;
  } else {
    const r = await p.stop("SIGTERM", "SIGTERM", 30_000);
    detail.exit = r.exit;
    detail.shutdownMs = r.ms;
    if (!r.inTime) {
      state.problems.push(`${p.name} (pid ${detail.pid}) did not exit within 30 s of SIGTERM (--shutdown-timeout 10); killed`);
    } else if (r.exit.code !== 0) {
      state.problems.push(`${p.name} (pid ${detail.pid}) exited with ${JSON.stringify(r.exit)} after SIGTERM, not 0; see ${p.life.log}`);
    }
  }
  detail.downMs = Math.round(between(300, 3000));
  await sleep(detail.downMs);
  const life = await p.start();
  detail.newPid = life.pid;
}

async function restartRedis(detail) {
  detail.signal = random() < 0.3 ? "SIGKILL" : "SIGTERM";
  const { child, exited } = state.redis;
  child.kill(detail.signal);
  const done = await Promise.race([exited, sleep(15_000).then(() => null)]);
  if (!done) {
    child.kill("SIGKILL");
    await exited;
  }
  detail.downMs = Math.round(between(500, 3000));
  await sleep(detail.downMs);
  if (!(await startRedis())) throw new Error("redis did not come back");
}

async function restartRabbit(detail) {
  try {
    await mustRun("rabbitmqctl", ["-q", "stop_app"], { timeoutMs: 90_000 });
    detail.downMs = Math.round(between(1000, 4000));
    await sleep(detail.downMs);
  } finally {
    await mustRun("rabbitmqctl", ["-q", "start_app"], { timeoutMs: 120_000 });
  }
  if (!(await until(() => portOpen(5672), 60_000))) throw new Error("rabbitmq did not open 5672 again");
}

async function restartPostgres(detail) {
  if (!PG_VERSION) throw new Error("no /etc/postgresql/<version>: cannot restart postgresql");
  detail.mode = random() < 0.5 ? "fast" : "immediate";
  try {
    await mustRun("pg_ctlcluster", ["--skip-systemctl-redirect", PG_VERSION, "main", "stop", "-m", detail.mode], { timeoutMs: 90_000 });
    detail.downMs = Math.round(between(500, 3000));
    await sleep(detail.downMs);
  } finally {
    if (!(await pgReady())) await mustRun("pg_ctlcluster", ["--skip-systemctl-redirect", PG_VERSION, "main", "start"], { timeoutMs: 90_000 });
  }
  if (!(await until(pgReady, 60_000))) throw new Error("postgresql did not come back");
}

async function cutNotify(detail) {
  const k = random() < 0.7 ? 1 : 2;
  const chosen = shuffle(state.proxies.map((_, i) => i)).slice(0, k);
  detail.targets = chosen.map((i) => `notify-${i}`);
  detail.holdMs = Math.round(between(200, 3000));
  chosen.forEach((i) => state.proxies[i].cut());
  await sleep(detail.holdMs);
  chosen.forEach((i) => state.proxies[i].restore());
}

async function cutTabs(detail) {
  detail.holdMs = Math.round(between(200, 2000));
  state.front.cut();
  await sleep(detail.holdMs);
  state.front.restore();
}

const faultLog = fs.createWriteStream(path.join(OUT, "faults.jsonl"), { flags: "a" });
async function runFault(kind) {
  const f = { seq: state.faults.length + 1, kind, t: now(), at: new Date().toISOString(), end: null, recovered: null, detail: {}, error: null };
  state.faults.push(f);
  log(`FAULT #${f.seq} ${kind} begins`);
  try {
    if (kind.startsWith("kill9:") || kind.startsWith("term:")) await restartProc(kind, f.detail);
    else if (kind === "restart:redis") await restartRedis(f.detail);
    else if (kind === "restart:rabbitmq") await restartRabbit(f.detail);
    else if (kind === "restart:postgres") await restartPostgres(f.detail);
    else if (kind === "cut:notify") await cutNotify(f.detail);
    else if (kind === "cut:tabs") await cutTabs(f.detail);
  } catch (err) {
    f.error = err.message;
  }
  f.end = now();
  const notReady = await allReady(READY_AFTER_FAULT_MS);
  f.recovered = now();
  if (notReady.length) f.error = `${f.error ? `${f.error}; ` : ""}not ready ${READY_AFTER_FAULT_MS / 1000} s after the fault: ${notReady.join(", ")}`;
  if (f.error) state.problems.push(`fault #${f.seq} ${kind}: ${f.error}`);
  log(`FAULT #${f.seq} ${kind} ended ${JSON.stringify(f.detail)}; everything ready again after ${(f.recovered - f.end).toFixed(1)} s${f.error ? `; ERROR ${f.error}` : ""}`);
  faultLog.write(`${JSON.stringify(f)}\n`);
}

async function faultPhase() {
  const start = now();
  const end = start + FAULT_WINDOW_S;
  // Every kind at least once, in a random order; then random kinds until the window ends.
  const first = shuffle(FAULT_KINDS);
  for (let i = 0; !aborted; i += 1) {
    if (i >= first.length && now() >= end) break;
    await sleep(between(0.5, 1.5) * BASE_GAP_S * 1000);
    if (aborted) break;
    await runFault(i < first.length ? first[i] : pick(FAULT_KINDS));
  }
}

// ---------------------------------------------------------------------------------------------
// Final observations

async function queues() {
  const res = await run("rabbitmqctl", ["-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"], { timeoutMs: 60_000 });
  if (res.code !== 0) return null;
  // Rows are "name ready unacked"; the header row does not start with the prefix.
  return res.stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length === 3 && f[0].startsWith(BUS_PREFIX))
    .map(([name, ready, unacked]) => ({ name, ready: Number(ready), unacked: Number(unacked) }));
}

async function dbOrders() {
  const out = await psql(
    "SELECT correlation_id, user_id, status, coalesce(order_number::text, ''), coalesce(failure_reason, ''), " +
      "(SELECT string_agg(product_id, ',') FROM order_lines l WHERE l.correlation_id = o.correlation_id) FROM orders o",
  );
  return out
    .split("\n")
    .filter(Boolean)
    .map((l) => {
      const [cid, user, status, number, reason, products] = l.split("|");
      return { cid, user, status, number: number ? Number(number) : null, reason, products: products.split(",") };
    });
}

/** Each user's notification log (the Redis stream the hub replays from): entries by order. */
async function notificationLogs(users) {
  const byUser = new Map();
  for (const user of users) {
    const out = await redisCli("--raw", "XRANGE", `notify:{${user}}:log`, "-", "+");
    const lines = out.split("\n");
    const entries = [];
    // --raw prints id, then field/value pairs (target, payload), one per line.
    for (let i = 0; i + 4 < lines.length; i += 5) {
      const fields = { [lines[i + 1]]: lines[i + 2], [lines[i + 3]]: lines[i + 4] };
      let payload = {};
      try {
        payload = JSON.parse(fields.payload);
      } catch {
        // kept empty: counted as unreadable below
      }
      entries.push({ nid: lines[i], target: fields.target, cid: payload.correlationId ?? null });
    }
    byUser.set(user, entries);
  }
  return byUser;
}

/** What the processes logged: outcomes per order, dead letters, panics, warnings and errors. */
function scanLogs() {
  const outcomes = new Map(); // cid -> [{what, proc, t}]
  const deadLetters = [];
  const panics = [];
  const levels = new Map(); // "LEVEL message" -> count
  for (const file of fs.readdirSync(LOGS).filter((f) => /^(accept|process|notify)-\d+\.\d+\.log$/.test(f))) {
    const proc = file.replace(/\.log$/, "");
    for (const line of fs.readFileSync(path.join(LOGS, file), "utf8").split("\n")) {
      if (!line) continue;
      if (line.includes("panicked")) panics.push(`${proc}: ${line.slice(0, 400)}`);
      let e;
      try {
        e = JSON.parse(line);
      } catch {
        continue;
      }
      if (e.message === "order completed" || e.message === "order failed") {
        const list = outcomes.get(e.correlation_id) ?? [];
        list.push({ what: e.message, proc, t: e.timestamp });
        outcomes.set(e.correlation_id, list);
      }
      if (/dead-letter|giving up/.test(e.message ?? "")) deadLetters.push({ proc, t: e.timestamp, message: e.message, reason: e.reason ?? e.error ?? null });
      if (e.level === "WARN" || e.level === "ERROR") {
        const k = `${e.level} ${e.message}`;
        levels.set(k, (levels.get(k) ?? 0) + 1);
      }
    }
  }
  return { outcomes, deadLetters, panics, levels };
}

// ---------------------------------------------------------------------------------------------
// Teardown: bounded, idempotent, also on a signal.

let aborted = null;
let tornDown = null;
function teardown() {
  tornDown ??= (async () => {
    ordersRunning = false;
    if (samplerTimer) clearInterval(samplerTimer);
    await Promise.race([Promise.all(state.tabs.map((t) => t.client?.stop().catch(() => {}))), sleep(15_000)]);
    await Promise.all(state.procs.map((p) => p.stop("SIGTERM", p.life?.planned ?? "teardown", 20_000).catch(() => {})));
    if (state.nginx) {
      state.nginx.child.kill("SIGTERM");
      if (!(await Promise.race([state.nginx.exited.then(() => true), sleep(5000)]))) state.nginx.child.kill("SIGKILL");
    }
    state.proxies.forEach((p) => p.close());
    state.front?.close();
    if (state.redis) {
      state.redis.child.kill("SIGKILL");
      await Promise.race([state.redis.exited, sleep(5000)]);
    }
    // PostgreSQL and RabbitMQ: every fault brings them back in a finally; make sure anyway.
    if (!(await pgReady()) && PG_VERSION) await run("pg_ctlcluster", ["--skip-systemctl-redirect", PG_VERSION, "main", "start"], { timeoutMs: 90_000 });
    if (!(await portOpen(5672))) await run("rabbitmqctl", ["-q", "start_app"], { timeoutMs: 120_000 });
    fs.rmSync(TMP, { recursive: true, force: true });
  })();
  return tornDown;
}

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => {
    if (aborted) return;
    aborted = sig;
    log(`${sig}: stopping the soak and cleaning up`);
    await teardown();
    process.exit(sig === "SIGINT" ? 130 : 143);
  });
}

// ---------------------------------------------------------------------------------------------
// The soak

async function setup() {
  fs.copyFileSync(SOURCE_BIN, BIN);
  fs.chmodSync(BIN, 0o755);
  const binSha = createHash("sha256").update(fs.readFileSync(BIN)).digest("hex");
  log(`id ${ID}, seed ${SEED}, ${MINUTES} min of faults, ${USERS} users x ${TABS_PER_USER} tabs, ${ORDER_RATE} orders/s; binary ${SOURCE_BIN} (sha256 ${binSha.slice(0, 16)})`);
  REDIS_PORT = await uniquePort();
  if (!(await startRedis())) throw new Error("redis-server did not start");
  await psql(`CREATE DATABASE "${DB}"`, DB_ADMIN);
  const acceptPort = await uniquePort();
  const accept = new Proc("accept", 0, acceptPort);
  const processes = [];
  for (let i = 0; i < 2; i += 1) processes.push(new Proc("process", i, await uniquePort()));
  const notifiers = [];
  for (let i = 0; i < 4; i += 1) notifiers.push(new Proc("notify", i, await uniquePort(), ["--drain-spread", "2"]));
  state.procs = [accept, ...processes, ...notifiers];
  await accept.start(); // migrates
  await Promise.all([...processes, ...notifiers].map((p) => p.start()));
  for (const n of notifiers) state.proxies.push(await chaosProxy(n.port));
  const nginx = await startNginx(state.proxies.map((p) => p.port), acceptPort);
  LB = nginx.base;
  state.front = await chaosProxy(nginx.port);
  TAB_HUB = `http://127.0.0.1:${state.front.port}/hubs/order-status`;
  log(`cluster up: accept ${acceptPort}, process ${processes.map((p) => p.port)}, notify ${notifiers.map((p) => p.port)} (proxies ${state.proxies.map((p) => p.port)}), nginx ${nginx.port}, tab proxy ${state.front.port}, redis ${REDIS_PORT}`);
  return binSha;
}

async function openTabs() {
  for (let u = 0; u < USERS; u += 1) {
    const user = `chaos-user-${String(u).padStart(3, "0")}`;
    state.tabsByUser.set(user, []);
    for (let k = 0; k < TABS_PER_USER; k += 1) {
      const tab = new Tab(state.tabs.length, user);
      state.tabs.push(tab);
      state.tabsByUser.get(user).push(tab);
    }
  }
  for (let i = 0; i < state.tabs.length; i += 25) {
    const batch = state.tabs.slice(i, i + 25);
    const ok = await Promise.race([Promise.all(batch.map((t) => t.open())).then(() => true), sleep(60_000).then(() => false)]);
    if (!ok) throw new Error(`tabs ${i}..${i + batch.length - 1} did not connect within 60 s`);
  }
  log(`${state.tabs.length} tabs connected`);
}

async function settle(report) {
  // 1. Orders: a few more after the last fault, then every POST finished (each is bounded).
  await sleep(5000);
  ordersRunning = false;
  await Promise.all(orderPromises);
  state.phases.push({ t: now(), label: "orders stop" });
  log(`order stream stopped: ${state.orders.length} orders placed`);
  // 2. Every order final and the outbox empty.
  const settled = await until(async () => {
    const [pending, outbox] = (await psql("SELECT (SELECT count(*) FROM orders WHERE status NOT IN ('COMPLETED','FAILED')), (SELECT count(*) FROM outbox)")).trim().split("|").map(Number);
    return pending === 0 && outbox === 0;
  }, 180_000, 1000);
  report.settle.ordersFinalAfterS = settled ? now() : null;
  if (!settled) state.problems.push("orders not all final (or outbox not empty) 180 s after the order stream stopped");
  // 3. Every tab has every notification of its user (bounded).
  const orders = await dbOrders();
  const expected = new Map([...state.tabsByUser.keys()].map((u) => [u, new Set()]));
  for (const o of orders) expected.get(o.user)?.add(o.cid);
  const complete = (tab) => {
    const have = new Set(tab.notifications.map((n) => n.cid));
    for (const cid of expected.get(tab.user)) if (!have.has(cid)) return false;
    return true;
  };
  const allTabs = await until(() => state.tabs.every(complete), 180_000, 500);
  report.settle.tabsCompleteAfterS = allTabs ? now() : null;
  // 4. The work queues drained.
  const drained = await until(async () => {
    const qs = await queues();
    return qs && qs.filter((q) => !q.name.endsWith(".dead-letter")).every((q) => q.ready === 0 && q.unacked === 0);
  }, 60_000, 2000);
  if (!drained) state.problems.push("work queues not empty 60 s after settling");
  // A little quiet time, so a late duplicate would still be seen.
  await sleep(3000);
  state.phases.push({ t: now(), label: "settled" });
  log(`settled: orders final ${settled ? "yes" : "NO"}, every tab complete ${allTabs ? "yes" : "NO"}, queues drained ${drained ? "yes" : "NO"}`);
}

async function check(report) {
  const checks = [];
  const add = (name, ok, detail) => {
    checks.push({ name, ok, detail });
    log(`${ok ? "PASS" : "FAIL"} ${name}${detail && !ok ? `: ${typeof detail === "string" ? detail : JSON.stringify(detail).slice(0, 1500)}` : ""}`);
  };
  const orders = await dbOrders();
  const byCid = new Map(orders.map((o) => [o.cid, o]));
  const placed = state.orders;

  // Orders: accepted ones exist, every one is final with the right outcome, nothing given up.
  const lost = placed.filter((r) => r.cid && !byCid.has(r.cid)).map((r) => r.cid);
  add("every order answered 202 is in the database", lost.length === 0, { lost });
  const gaveUp = placed.filter((r) => r.gaveUp).length;
  const rejected = placed.filter((r) => r.rejected).map((r) => r.rejected);
  add(`every POST was accepted within ${ORDER_DEADLINE_MS / 1000} s of retries`, gaveUp === 0 && rejected.length === 0, { gaveUp, rejected: rejected.slice(0, 10) });
  const notFinal = orders.filter((o) => o.status !== "COMPLETED" && o.status !== "FAILED").map((o) => `${o.cid} ${o.status}`);
  add("every order reached COMPLETED or FAILED", notFinal.length === 0, { notFinal: notFinal.slice(0, 50), count: notFinal.length });
  const wrong = orders
    .filter((o) => o.status === "COMPLETED" || o.status === "FAILED")
    .filter((o) => {
      const shouldFail = o.products.includes("discontinued");
      if (shouldFail) return !(o.status === "FAILED" && o.number === null && o.reason);
      return !(o.status === "COMPLETED" && o.number !== null && !o.reason);
    })
    .map((o) => `${o.cid} ${o.status} number=${o.number} reason=${o.reason} products=${o.products}`);
  add("each outcome matches the order (discontinued product: FAILED, else COMPLETED with a number)", wrong.length === 0, { wrong: wrong.slice(0, 50) });
  const outbox = Number((await psql("SELECT count(*) FROM outbox")).trim());
  add("the outbox is empty", outbox === 0, { outbox });

  // The API says the same (through nginx, with the user's token).
  const apiMismatch = [];
  for (let i = 0; i < orders.length; i += 16) {
    await Promise.all(
      orders.slice(i, i + 16).map(async (o) => {
        try {
          const res = await fetch(`${LB}/api/orders/${o.cid}`, { headers: { authorization: `Bearer ${token(o.user)}` }, signal: AbortSignal.timeout(10_000) });
          const view = res.status === 200 ? await res.json() : null;
          const orderId = o.number === null ? null : `CS-${String(o.number).padStart(6, "0")}`;
          if (!view || view.status !== o.status || (view.orderId ?? null) !== orderId) apiMismatch.push(`${o.cid}: HTTP ${res.status} ${JSON.stringify(view)}`);
        } catch (err) {
          apiMismatch.push(`${o.cid}: ${err.message}`);
        }
      }),
    );
  }
  add("GET /api/orders/{id} reports every order's final status", apiMismatch.length === 0, { apiMismatch: apiMismatch.slice(0, 20), count: apiMismatch.length });

  // Outcome events: once per order in the notification log (one entry per distinct event id),
  // in the process logs (one "order completed"/"order failed" per order) and at the tabs.
  const logs = await notificationLogs([...state.tabsByUser.keys()]);
  const logEntries = new Map(); // cid -> entries
  for (const [user, entries] of logs) {
    for (const e of entries) {
      const list = logEntries.get(e.cid) ?? [];
      list.push({ ...e, user });
      logEntries.set(e.cid, list);
    }
  }
  const logTwice = [...logEntries].filter(([, l]) => l.length > 1).map(([cid, l]) => ({ cid, entries: l }));
  const logMissing = orders.filter((o) => !logEntries.has(o.cid)).map((o) => o.cid);
  const logWrongUser = [...logEntries].filter(([cid, l]) => byCid.get(cid) && l.some((e) => e.user !== byCid.get(cid).user)).map(([cid]) => cid);
  const logUnknown = [...logEntries.keys()].filter((cid) => !byCid.has(cid));
  add("the notification log holds exactly one outcome per order (no order has two outcome events)", logTwice.length === 0 && logMissing.length === 0 && logWrongUser.length === 0 && logUnknown.length === 0, { twice: logTwice.slice(0, 20), missing: logMissing.slice(0, 20), wrongUser: logWrongUser, unknown: logUnknown });
  const scan = scanLogs();
  const processedTwice = [...scan.outcomes].filter(([, l]) => l.length > 1).map(([cid, l]) => ({ cid, lines: l }));
  add("no order was completed or failed twice (process logs)", processedTwice.length === 0, { processedTwice: processedTwice.slice(0, 20) });

  // Tabs: every notification of the user exactly once, nothing else.
  const tabProblems = [];
  let expectedTotal = 0;
  let deliveredTotal = 0;
  let replayDup = 0;
  let liveDup = 0;
  const expectedByUser = new Map([...state.tabsByUser.keys()].map((u) => [u, orders.filter((o) => o.user === u)]));
  for (const tab of state.tabs) {
    const exp = expectedByUser.get(tab.user);
    expectedTotal += exp.length;
    deliveredTotal += tab.notifications.length;
    const byCidTab = new Map();
    for (const n of tab.notifications) byCidTab.set(n.cid, [...(byCidTab.get(n.cid) ?? []), n]);
    const missing = exp.filter((o) => !byCidTab.has(o.cid)).map((o) => o.cid);
    const twice = [...byCidTab].filter(([, l]) => l.length > 1).map(([cid, l]) => ({ cid, nids: l.map((n) => n.nid) }));
    const foreign = [...byCidTab.keys()].filter((cid) => byCid.get(cid)?.user !== tab.user);
    const emittedTwice = [...tab.byNid].filter(([, n]) => n > 1).map(([nid]) => nid);
    const wrongContent = tab.notifications.filter((n) => {
      const o = byCid.get(n.cid);
      if (!o) return false;
      const orderId = o.number === null ? null : `CS-${String(o.number).padStart(6, "0")}`;
      return n.status !== o.status || (n.status === "COMPLETED" && n.orderId !== orderId);
    }).map((n) => n.cid);
    for (const a of tab.arrivals.values()) {
      const extra = a.live + a.replay - 1;
      if (extra > 0) {
        if (a.live > 1) liveDup += a.live - 1;
        replayDup += extra - Math.max(0, a.live - 1);
      }
    }
    if (missing.length || twice.length || foreign.length || emittedTwice.length || wrongContent.length || tab.state !== "connected") {
      tabProblems.push({
        tab: tab.name, user: tab.user, state: tab.state, missing, twice, foreign, emittedTwice, wrongContent,
        catchUps: tab.catchUps.slice(-5), lastError: tab.lastError,
      });
    }
  }
  add("every tab has every notification of its user exactly once, and is connected", tabProblems.length === 0, { tabs: tabProblems.length, first: tabProblems.slice(0, 5) });

  // Catch-ups the hub called incomplete (complete: false). Nothing is trimmed in this soak (a
  // fresh log far below --notification-log-max, well inside its age limit), so every catch-up
  // must be complete, including one whose 5 s rewind reaches before the user's first log entry.
  const incomplete = [];
  for (const tab of state.tabs) {
    for (const c of tab.catchUps.filter((x) => x.complete === false)) {
      incomplete.push({ tab: tab.name, user: tab.user, ...c, firstLogEntry: logs.get(tab.user)?.[0]?.nid ?? null });
    }
  }
  report.incompleteCatchUps = { count: incomplete.length, examples: incomplete.slice(0, 10) };
  add("every catch-up was complete (nothing is trimmed in this soak)", incomplete.length === 0, { incomplete: incomplete.slice(0, 10) });

  // Dead letters and the work queues.
  const qs = (await queues()) ?? [];
  const dlq = qs.filter((q) => q.name.endsWith(".dead-letter"));
  const dead = dlq.reduce((s, q) => s + q.ready + q.unacked, 0);
  add("no dead letters", qs.length > 0 && dead === 0 && scan.deadLetters.length === 0, { queues: qs, logged: scan.deadLetters.slice(0, 20) });

  // Processes: no crash, clean SIGTERM exits, ready again after every fault, no panic.
  add("no process exited unless the soak ended it", state.unexpectedExits.length === 0, { exits: state.unexpectedExits });
  add("no panic in any process log", scan.panics.length === 0, { panics: scan.panics.slice(0, 10) });
  add("no problem applying or recovering from the faults (SIGTERM exits 0 in time, all ready again, everything settled)", state.problems.length === 0, { problems: state.problems });
  const kinds = new Set(state.faults.map((f) => f.kind));
  add("every fault kind ran at least once", FAULT_KINDS.every((k) => kinds.has(k)), { missing: FAULT_KINDS.filter((k) => !kinds.has(k)) });

  // RSS: slope per lifetime after a warm-up; checked for the processes never killed.
  const warm = report.tabsOpenAt + 30;
  const rss = state.procs.flatMap((p) =>
    p.lives.map((l) => {
      const pts = l.rss.filter(([t]) => t >= Math.max(warm, (l.readyAt ?? l.start) + 30));
      const span = pts.length > 1 ? pts.at(-1)[0] - pts[0][0] : 0;
      return {
        name: l.name, gen: l.gen, pid: l.pid, start: l.start, end: l.end, planned: l.planned, exit: l.exit,
        samples: l.rss.length, spanS: Math.round(span), firstKiB: pts[0]?.[1] ?? null, lastKiB: pts.at(-1)?.[1] ?? null,
        maxKiB: l.rss.reduce((m, [, k]) => Math.max(m, k), 0),
        slopeKiBPerMin: span >= 30 ? Math.round(robustSlope(pts)) : null,
        leastSquaresKiBPerMin: span >= 30 ? Math.round(slope(pts)) : null,
        aliveAtEnd: l.planned === null || l.planned === "teardown",
        neverKilled: l.gen === 1 && (l.planned === null || l.planned === "teardown"),
      };
    }),
  );
  const rssChecked = rss.filter((r) => r.aliveAtEnd && r.spanS >= RSS_MIN_SPAN && r.slopeKiBPerMin !== null);
  const rssBad = rssChecked.filter((r) => r.slopeKiBPerMin > RSS_MAX_SLOPE);
  add(
    rssChecked.length ? `RSS of the long-lived processes is flat (slope <= ${RSS_MAX_SLOPE} KiB/min for ${rssChecked.map((r) => `${r.name}#${r.gen}`).join(", ")})` : `RSS slope reported only (no process measured for ${RSS_MIN_SPAN} s after warm-up)`,
    rssBad.length === 0,
    { bad: rssBad },
  );

  // Summary numbers.
  const arrivals = state.tabs.reduce((s, t) => s + t.arrivalCount, 0);
  report.orders = {
    placed: placed.length,
    accepted: placed.filter((r) => r.cid).length,
    inDatabase: orders.length,
    unansweredButCreated: orders.filter((o) => !placed.some((r) => r.cid === o.cid)).length,
    completed: orders.filter((o) => o.status === "COMPLETED").length,
    failed: orders.filter((o) => o.status === "FAILED").length,
    retried: placed.filter((r) => r.attempts > 1).length,
    attempts: placed.reduce((s, r) => s + r.attempts, 0),
    answers: placed.reduce((acc, r) => {
      for (const [k, v] of Object.entries(r.answers)) acc[k] = (acc[k] ?? 0) + v;
      return acc;
    }, {}),
    maxAcceptSeconds: Math.max(0, ...placed.filter((r) => r.acceptedAt).map((r) => r.acceptedAt - r.t0)),
  };
  report.notifications = {
    expected: expectedTotal,
    delivered: deliveredTotal,
    transportArrivals: arrivals,
    transportDuplicates: arrivals - state.tabs.reduce((s, t) => s + t.arrivals.size, 0),
    duplicatesInReplays: replayDup,
    duplicatesLive: liveDup,
    statusQueryUpdates: state.tabs.reduce((s, t) => s + t.statusQueries.length, 0),
    catchUps: state.tabs.reduce((s, t) => s + t.catchUps.length, 0),
    catchUpsIncomplete: state.tabs.reduce((s, t) => s + t.catchUps.filter((c) => c.complete === false).length, 0),
    catchUpsFailed: state.tabs.reduce((s, t) => s + t.catchUps.filter((c) => c.complete === null).length, 0),
    clientErrors: state.tabs.reduce((s, t) => s + t.errors, 0),
    stateChanges: state.tabs.reduce((s, t) => s + t.stateChanges, 0),
  };
  report.rss = rss;
  report.logs = { warnAndError: Object.fromEntries([...scan.levels].sort((a, b) => b[1] - a[1]).slice(0, 30)) };
  report.checks = checks;
  return checks;
}

function summaryText(report) {
  const lines = [];
  const o = report.orders ?? {};
  const n = report.notifications ?? {};
  lines.push(`contoso chaos soak ${report.id} (seed ${report.seed}): ${report.ok ? "PASSED" : "FAILED"}`);
  lines.push(`  ${report.config.minutes} min of faults, ${report.config.users} users x ${report.config.tabsPerUser} tabs, ${report.config.orderRate} orders/s; total ${report.durationS?.toFixed(0)} s`);
  lines.push(`  faults: ${report.faults.length} (${Object.entries(report.faults.reduce((a, f) => ({ ...a, [f.kind]: (a[f.kind] ?? 0) + 1 }), {})).map(([k, v]) => `${k} x${v}`).join(", ")})`);
  if (o.placed !== undefined) {
    lines.push(`  orders: ${o.placed} placed, ${o.accepted} answered 202, ${o.inDatabase} in the database (${o.completed} COMPLETED, ${o.failed} FAILED), ${o.retried} needed retries (${o.attempts} POSTs; answers ${JSON.stringify(o.answers)}), slowest accept ${o.maxAcceptSeconds?.toFixed(1)} s`);
    lines.push(`  notifications: ${n.delivered} delivered to tabs of ${n.expected} expected; ${n.transportArrivals} arrived on the wire, ${n.transportDuplicates} of them duplicates (${n.duplicatesInReplays} in replays, ${n.duplicatesLive} live), filtered by the client module`);
    lines.push(`  catch-ups: ${n.catchUps} (${n.catchUpsIncomplete} incomplete, ${n.catchUpsFailed} failed calls), GetCurrentStatus updates ${n.statusQueryUpdates}, tab state changes ${n.stateChanges}`);
  }
  if (report.incompleteCatchUps) {
    const ic = report.incompleteCatchUps;
    lines.push(`  incomplete catch-ups: ${ic.count}`);
  }
  for (const r of report.rss ?? []) {
    if (r.spanS < 30) continue;
    const who = r.neverKilled ? "never killed" : r.aliveAtEnd ? `restarted, alive at the end` : `ended by ${r.planned}`;
    lines.push(`  rss ${r.name}#${r.gen} (pid ${r.pid}, ${who}): ${r.firstKiB} -> ${r.lastKiB} KiB over ${r.spanS} s after warm-up, slope ${r.slopeKiBPerMin ?? "n/a"} KiB/min (Theil-Sen; least squares ${r.leastSquaresKiBPerMin ?? "n/a"}), max ${r.maxKiB} KiB`);
  }
  for (const c of report.checks ?? []) lines.push(`  ${c.ok ? "PASS" : "FAIL"} ${c.name}`);
  if (report.error) lines.push(`  ERROR ${report.error}`);
  lines.push(`  artifacts: ${OUT} (report.json, timeline.svg, faults.jsonl, soak.log, logs/)`);
  return `${lines.join("\n")}\n`;
}

async function main() {
  const report = {
    id: ID, seed: SEED, startedAt: new Date(T0).toISOString(),
    config: { minutes: MINUTES, users: USERS, tabsPerUser: TABS_PER_USER, orderRate: ORDER_RATE, rssMaxSlope: RSS_MAX_SLOPE, rssMinSpan: RSS_MIN_SPAN, bin: SOURCE_BIN },
    deployment: { db: DB, busPrefix: BUS_PREFIX, channelPrefix: CHANNEL_PREFIX },
    settle: {}, faults: state.faults, ok: false,
  };
  const watchdogS = 600 + FAULT_WINDOW_S * 1.5 + 900;
  const watchdog = setTimeout(async () => {
    aborted = "watchdog";
    log(`WATCHDOG: the soak took more than ${watchdogS} s; aborting`);
    report.error = "watchdog";
    await teardown();
    process.exit(1);
  }, watchdogS * 1000);
  watchdog.unref();
  let checks = [];
  try {
    report.binarySha256 = await setup();
    startSampler();
    await openTabs();
    report.tabsOpenAt = now();
    state.phases.push({ t: now(), label: "tabs open" });
    ordersRunning = true;
    const stream = orderStream();
    await sleep(3000);
    state.phases.push({ t: now(), label: "faults start" });
    await faultPhase();
    state.phases.push({ t: now(), label: "faults end" });
    log(`fault phase over: ${state.faults.length} faults`);
    await settle(report);
    await stream;
    checks = await check(report);
    report.ok = checks.every((c) => c.ok);
  } catch (err) {
    report.error = err.stack ?? String(err);
    log(`ERROR ${report.error}`);
  } finally {
    report.durationS = now();
    report.samples = state.samples;
    report.phases = state.phases;
    report.unexpectedExits = state.unexpectedExits;
    report.lifetimes = state.procs.flatMap((p) => p.lives.map(({ exited, rss, ...l }) => l));
    try {
      const svg = timelineSvg({
        title: `contoso chaos soak ${ID} (seed ${SEED}): ${report.ok ? "passed" : "FAILED"}`,
        samples: state.samples,
        lifetimes: state.procs.flatMap((p) => p.lives.map((l) => ({ name: l.name, pid: l.pid, rss: l.rss }))),
        faults: state.faults.map((f) => ({ t: f.t, end: f.end ?? f.t, label: `#${f.seq} ${f.kind}${f.detail?.target ? ` ${f.detail.target}` : ""}` })),
        phases: state.phases,
      });
      fs.writeFileSync(path.join(OUT, "timeline.svg"), svg);
    } catch (err) {
      log(`could not draw the timeline: ${err.message}`);
    }
    // Evidence for whoever reads a failure: every tab's record, compactly.
    if (!report.ok) {
      fs.writeFileSync(
        path.join(OUT, "tabs.json"),
        JSON.stringify(state.tabs.map((t) => ({ tab: t.name, user: t.user, state: t.state, notifications: t.notifications, catchUps: t.catchUps, statusQueries: t.statusQueries, errors: t.errors, lastError: t.lastError, arrivals: Object.fromEntries(t.arrivals) }))),
      );
      fs.writeFileSync(path.join(OUT, "orders.json"), JSON.stringify(state.orders));
    }
    fs.writeFileSync(path.join(OUT, "report.json"), JSON.stringify(report, null, 1));
    const text = summaryText(report);
    fs.writeFileSync(path.join(OUT, "summary.txt"), text);
    await teardown();
    console.log(`\n${text}`);
    soakLog.end();
    faultLog.end();
  }
  process.exit(report.ok ? 0 : 1);
}

main();
