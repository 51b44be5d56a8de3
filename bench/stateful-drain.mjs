// Stateful reconnect across a drain (issue #17): N tabs of the official @microsoft/signalr client
// behind nginx (round-robin, no stickiness) in front of three notify processes, orders flowing
// through accept+process at RATE/s, then the notify process holding the most tabs is drained as
// Kubernetes drains a pod (readiness fails, the load balancer drops it, SIGTERM; --drain-spread 5).
//
// Run once per mode, each on a fresh deployment:
// - "stateful": `.withStatefulReconnect()` + `.withAutomaticReconnect()`. The drained process
//   drops these sockets without a SignalR Close (a WebSocket close only); the client reconnects its
//   WebSocket once, through nginx, and another process resumes it. No application code helps: no
//   `ResumeNotifications`, no `onreconnected` handler.
// - "plain": the same client without `.withStatefulReconnect()`: Close(allowReconnect), a new
//   connection, and nothing fills the gap (this raw client has no replay).
//
// Every tab must get every notification of its user (one per accepted order, all orders placed
// after every tab was open), counted by correlation id, duplicates by notification id. Reported
// per mode: tabs on the drained process, time until they are all back, notifications missed before
// any application-level replay, duplicates, tabs that had to start a new connection
// (`onreconnecting`), and `contoso_hub_stateful_resumes_total{outcome}` of the surviving processes.
// A tab's outage: from its socket's close to its next socket's open (the 101), seen by the client;
// "all back": the last drained tab's next open, after SIGTERM. The surviving processes' own time
// to answer those upgrades (the resume's claim included) comes from their request-duration
// histogram, and the machine's CPU and this client's event-loop delay during the drain are
// recorded beside them, so a loaded machine shows as such.
// Results: bench/results/stateful-drain.json. Run through bench/stateful-drain.sh (or
// `make bench-stateful-drain`); `--help` lists the options.
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { cpus, freemem, totalmem } from "node:os";
import { dirname } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { startCluster } from "../tests/node/cluster.mjs";
import { metricWhere } from "../tests/node/stateful.mjs";
import { BIN, eventually, fetchWithin, hubConnections, placeOrder, signalR, sleep, token, within } from "../tests/node/harness.mjs";

const WS = createRequire(new URL("../tests/node/package.json", import.meta.url))("ws");

const HELP = `usage: bench/stateful-drain.sh [options]
  --tabs N            official clients per mode (default 1000)
  --tabs-per-user N   tabs of one user (default 2)
  --rate R            orders per second over all users (default 50)
  --warmup S          seconds of orders before the drain starts (default 3)
  --after S           seconds of orders after SIGTERM (default 9)
  --drain-spread S    the drained process's --drain-spread (default 5)
  --modes LIST        stateful,plain (default both, in that order)
  --repeat N          run the modes N times, the order reversed every other time (default 1)
  --open-concurrency  tabs being opened at once (default 25)
  --no-lb-update      SIGTERM without taking the process out of nginx first (nginx then moves
                      the upgrades it refuses with 503 to the next upstream)
  --out FILE          JSON results (default bench/results/stateful-drain.json)
environment: CONTOSO_BIN (the binary), TEST_DATABASE_URL, TEST_AMQP_URL, STATEFUL_DRAIN_REDIS_URL
  (default redis://127.0.0.1:6379/14), TEST_LOG (the servers' --log-level, default warn)`;

const { values: opt } = parseArgs({
  options: {
    tabs: { type: "string", default: "1000" },
    "tabs-per-user": { type: "string", default: "2" },
    rate: { type: "string", default: "50" },
    warmup: { type: "string", default: "3" },
    after: { type: "string", default: "9" },
    "drain-spread": { type: "string", default: "5" },
    modes: { type: "string", default: "stateful,plain" },
    repeat: { type: "string", default: "1" },
    "open-concurrency": { type: "string", default: "25" },
    "no-lb-update": { type: "boolean", default: false },
    out: { type: "string", default: new URL("results/stateful-drain.json", import.meta.url).pathname },
    help: { type: "boolean", default: false },
  },
});
if (opt.help) {
  console.log(HELP);
  process.exit(0);
}
const TABS = Number(opt.tabs);
const PER_USER = Number(opt["tabs-per-user"]);
const RATE = Number(opt.rate);
const WARMUP_MS = Number(opt.warmup) * 1000;
const AFTER_MS = Number(opt.after) * 1000;
const SPREAD = Number(opt["drain-spread"]);
const MODES = opt.modes.split(",").map((m) => m.trim()).filter(Boolean);
const OPEN_CONCURRENCY = Number(opt["open-concurrency"]);
const REPEAT = Number(opt.repeat);
const LB_UPDATE = !opt["no-lb-update"];
for (const m of MODES) if (m !== "stateful" && m !== "plain") throw new Error(`unknown mode ${m}`);

const DB_ADMIN = process.env.TEST_DATABASE_URL ?? "postgres://root@127.0.0.1:5432/postgres";
const REDIS = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379/0";
const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 23)}]`, ...a);

/**
 * A deployment like the harness's newDeployment, but with bench names (contoso_bench_*, bench-
 * prefixes): scripts/sweep.sh, run by the test suites beside this, removes contoso_t_* and t-*.
 */
function benchDeployment(mode) {
  const id = randomUUID().replaceAll("-", "").slice(0, 12);
  const db = `contoso_bench_sdrain_${mode}_${id}`;
  const psql = (sql) => {
    const res = spawnSync("psql", [DB_ADMIN, "-qtAc", sql], { encoding: "utf8" });
    if (res.status !== 0) throw new Error(`psql failed: ${res.stderr}`);
  };
  psql(`CREATE DATABASE "${db}"`);
  const busPrefix = `bench-sd-${id}.`;
  return {
    id,
    db,
    dbUrl: DB_ADMIN.replace(/\/[^/]*$/, `/${db}`),
    busPrefix,
    channelPrefix: `bench-sd-${id}-`,
    secret: `bench-secret-${id}`,
    drop() {
      psql(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
      const list = (what) => (spawnSync("rabbitmqctl", ["-q", what, "name"], { encoding: "utf8", timeout: 30000 }).stdout ?? "").split("\n").filter((n) => n.startsWith(busPrefix));
      for (const q of list("list_queues")) spawnSync("rabbitmqctl", ["-q", "delete_queue", q], { timeout: 30000 });
      for (const ex of list("list_exchanges")) {
        spawnSync("rabbitmqctl", ["-q", "eval", `rabbit_exchange:delete(rabbit_misc:r(<<"/">>, exchange, <<"${ex}">>), false, <<"bench">>).`], { timeout: 30000 });
      }
    },
  };
}

/** The pids of the contoso processes started with `--bus-prefix prefix`. */
function processesOf(prefix) {
  const pids = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      const i = argv.indexOf("--bus-prefix");
      if (i >= 0 && argv[i + 1] === prefix) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

async function stopLeftovers(prefix) {
  const pids = processesOf(prefix);
  if (pids.length === 0) return;
  log(`stopping ${pids.length} leftover process(es) of this deployment: ${pids.join(", ")}`);
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      // exited
    }
  }
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline && processesOf(prefix).length > 0) await sleep(200);
  for (const pid of processesOf(prefix)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // exited
    }
  }
}

/** Sends `commands` (one per line) to Redis through redis-cli; returns its answers, one a line. */
function redisCli(commands) {
  const res = spawnSync("redis-cli", ["-u", REDIS], { input: commands.join("\n") + "\n", encoding: "utf8", maxBuffer: 64 << 20 });
  if (res.status !== 0) throw new Error(`redis-cli failed: ${res.stderr}`);
  return res.stdout.trim().split("\n");
}

/** A Prometheus histogram's cumulative buckets (le -> count), summed over `servers`. */
async function histogram(servers, name, labels = {}) {
  const buckets = new Map();
  for (const server of servers) {
    const text = await (await fetchWithin(`${server.base}/metrics`)).text();
    for (const line of text.split("\n")) {
      if (!line.startsWith(`${name}_bucket{`)) continue;
      if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
      const le = line.match(/le="([^"]+)"/)[1];
      buckets.set(le, (buckets.get(le) ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1)));
    }
  }
  return buckets;
}

/** Count and p50 / p99 / max (as "at most" bucket bounds, in ms) of `after - before`. */
function histogramDelta(before, after) {
  const rows = [...after.entries()]
    .map(([le, n]) => [le === "+Inf" ? Infinity : Number(le), n - (before.get(le) ?? 0)])
    .sort((a, b) => a[0] - b[0]);
  const count = rows.length ? rows.at(-1)[1] : 0;
  const at = (q) => {
    const row = rows.find(([, n]) => n >= Math.ceil(q * count));
    return row === undefined || count === 0 ? null : row[0] === Infinity ? "inf" : row[0] * 1000;
  };
  return { count, p50AtMostMs: at(0.5), p99AtMostMs: at(0.99), maxAtMostMs: at(1) };
}
const UPGRADES = ["contoso_http_request_duration_seconds", { method: "GET", route: "/hubs/order-status", status: "101" }];

const OUTCOMES = ["resumed", "unknown", "in-use", "overflowed"];
async function resumeOutcomes(servers) {
  const out = {};
  for (const outcome of OUTCOMES) out[outcome] = await metricWhere(servers, "contoso_hub_stateful_resumes_total", { outcome });
  return out;
}

/** Machine-wide CPU jiffies (busy, total) from /proc/stat. */
function cpuJiffies() {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  return { busy: user + nice + system + irq + softirq + (steal ?? 0), total: user + nice + system + idle + iowait + irq + softirq + (steal ?? 0) };
}

/** User + system clock ticks of `pid` so far, or null once it is gone. */
function pidTicks(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]);
  } catch {
    return null;
  }
}

/** The pids listening on 127.0.0.1:`port` (nginx's master and workers). */
function listeners(port) {
  const out = spawnSync("ss", ["-ltnpH", `sport = :${port}`], { encoding: "utf8" }).stdout ?? "";
  return [...out.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1]));
}

/**
 * Samples the CPU of this deployment's processes (servers, nginx) every 250 ms, keeping each
 * pid's first and last reading, so a process that exits meanwhile still counts, and every pid
 * once seen (nginx's old workers stop listening after a reload but keep the WebSockets).
 */
function cpuSampler(pidsNow) {
  const first = new Map();
  const last = new Map();
  const known = new Set();
  const sample = () => {
    for (const pid of pidsNow()) known.add(pid);
    for (const pid of known) {
      const t = pidTicks(pid);
      if (t === null) continue;
      if (!first.has(pid)) first.set(pid, t);
      last.set(pid, t);
    }
  };
  sample();
  const timer = setInterval(sample, 250);
  return {
    /** Cores used over `seconds` (clock ticks are 1/100 s on Linux). */
    stop(seconds) {
      sample();
      clearInterval(timer);
      let ticks = 0;
      for (const [pid, t] of last) ticks += t - first.get(pid);
      return Number((ticks / 100 / seconds).toFixed(2));
    },
  };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
const round = (ms) => (ms === null || ms === undefined ? null : Math.round(ms));

/**
 * A WebSocket class (the `ws` package the client would use in Node) that records, for one tab,
 * every socket it opens: its connection token, whether it resumes a token already upgraded, when
 * it opened and closed, and the hub messages it carried (JSON protocol: text records).
 */
function trackingWebSocket(tab, clock) {
  return class TrackingWebSocket extends WS {
    constructor(url, protocols, options) {
      super(url, protocols, options);
      const id = new URL(url).searchParams.get("id");
      const rec = {
        id,
        resume: tab.sockets.some((s) => s.id === id && s.openedAt !== null),
        createdAt: clock(),
        openedAt: null,
        closedAt: null,
        code: null,
        error: null,
        invocations: 0,
        otherInvocations: [],
        closeMessages: [],
        sequences: [],
        acksSent: 0,
      };
      tab.sockets.push(rec);
      this.on("open", () => (rec.openedAt = clock()));
      this.on("error", (err) => (rec.error = err.message));
      this.on("close", (code) => {
        rec.closedAt = clock();
        rec.code = code;
      });
      this.on("message", (data, isBinary) => {
        if (isBinary) return;
        for (const record of data.toString("utf8").split("\x1e")) {
          if (!record) continue;
          let m;
          try {
            m = JSON.parse(record);
          } catch {
            continue;
          }
          if (m.type === 1 && (m.target === "OrderCompleted" || m.target === "OrderFailed")) rec.invocations += 1;
          else if (m.type === 1) rec.otherInvocations.push(m.target);
          else if (m.type === 7) rec.closeMessages.push({ at: clock(), error: m.error ?? null, allowReconnect: m.allowReconnect ?? false });
          else if (m.type === 9) rec.sequences.push({ at: clock(), sequenceId: m.sequenceId });
        }
      });
      const send = this.send.bind(this);
      this.send = (data, ...rest) => {
        if (typeof data === "string" && data.includes('"type":8')) rec.acksSent += 1;
        return send(data, ...rest);
      };
    }
  };
}

/** A tab's sockets, times in ms after `origin`. */
function socketHistory(tab, origin) {
  const t = (v) => (v === null ? null : round(v - origin));
  return tab.sockets.map((s) => ({
    id: s.id?.slice(-8) ?? null, resume: s.resume, createdMs: t(s.createdAt), openedMs: t(s.openedAt), closedMs: t(s.closedAt),
    code: s.code, error: s.error, invocations: s.invocations, acksSent: s.acksSent,
    sequences: s.sequences.map((q) => ({ atMs: t(q.at), id: q.sequenceId })), closeMessages: s.closeMessages.length,
  }));
}

/** One tab: an official client, configured as the mode says, recording what it receives. */
function newTab(index, user, tok, hubUrl, stateful, clock) {
  const tab = { index, user, sockets: [], received: [], reconnecting: [], closed: [] };
  let builder = new signalR.HubConnectionBuilder()
    .withUrl(hubUrl, {
      transport: signalR.HttpTransportType.WebSockets,
      skipNegotiation: false,
      accessTokenFactory: () => tok,
      WebSocket: trackingWebSocket(tab, clock),
    })
    .configureLogging(signalR.LogLevel.None);
  if (stateful) builder = builder.withStatefulReconnect();
  builder = builder.withAutomaticReconnect();
  const conn = builder.build();
  const got = (target) => (n) => tab.received.push({ at: clock(), target, nid: n.notificationId, cid: n.correlationId });
  conn.on("OrderCompleted", got("OrderCompleted"));
  conn.on("OrderFailed", got("OrderFailed"));
  // Counted only: no onreconnected handler, no ResumeNotifications.
  conn.onreconnecting((err) => tab.reconnecting.push({ at: clock(), error: err?.message ?? null }));
  conn.onclose((err) => tab.closed.push({ at: clock(), error: err?.message ?? null }));
  tab.conn = conn;
  return tab;
}

async function pool(items, concurrency, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  });
  await Promise.all(workers);
}

async function runMode(mode) {
  const stateful = mode === "stateful";
  const startedAt = new Date().toISOString();
  const dep = benchDeployment(mode);
  const users = Array.from({ length: Math.ceil(TABS / PER_USER) }, (_, i) => `sd${dep.id}-u${i}`);
  const tokens = new Map(users.map((u) => [u, token(dep, u, { expSeconds: 3 * 3600 })]));
  let cluster;
  const tabs = [];
  const cleanup = async () => {
    await Promise.all(tabs.map((t) => t.conn.stop().catch(() => {})));
    await cluster?.stop().catch((err) => log(`stopping the cluster: ${err.message}`));
    for (const n of cluster?.notifiers ?? []) rmSync(n.drainFile, { force: true });
    // A cluster that failed to start leaves the processes it had started: this deployment's
    // (its bus prefix is unique to it) get SIGTERM, then SIGKILL, by pid.
    await stopLeftovers(dep.busPrefix);
    dep.drop();
  };
  activeCleanup = cleanup;
  try {
    log(`${mode}: starting accept+process, 3 notify processes and nginx (${BIN})`);
    cluster = await startCluster(dep, {
      notify: 3,
      coreArgs: ["--db-pool-size", "16", "--status-ttl", "900", "--http-workers", String(cpus().length)],
      notifyArgs: [
        "--drain-spread", String(SPREAD), "--shutdown-timeout", String(SPREAD + 15),
        "--notification-log-ttl", "900", "--http-workers", String(cpus().length),
      ],
    });
    const t0 = performance.now();
    const clock = () => performance.now() - t0;

    // The tabs, two per user by default, all open before the first order.
    for (let i = 0; i < TABS; i += 1) {
      const user = users[Math.floor(i / PER_USER)];
      tabs.push(newTab(i, user, tokens.get(user), cluster.lb.hubUrl, stateful, clock));
    }
    const openStarted = clock();
    await pool(tabs, OPEN_CONCURRENCY, (tab) => tab.conn.start().then(() => undefined));
    await eventually("every tab registered on a notify process", async () => (await Promise.all(cluster.notifiers.map(hubConnections))).reduce((a, b) => a + b) === TABS, 60000);
    const perProcess = await Promise.all(cluster.notifiers.map(hubConnections));
    log(`${mode}: ${TABS} tabs open in ${((clock() - openStarted) / 1000).toFixed(1)} s, per notify process ${perProcess.join(" / ")}`);

    // Orders at RATE/s, round-robin over the users in a shuffled order.
    const order = [...users].sort(() => Math.random() - 0.5);
    const orders = [];
    let ordering = true;
    const ordersStart = clock();
    const orderLoop = (async () => {
      for (let k = 0; ordering; k += 1) {
        const due = ordersStart + (k * 1000) / RATE;
        if (due > clock()) await sleep(due - clock());
        if (!ordering) break;
        const user = order[k % order.length];
        const o = { user, placedAt: clock(), cid: null, acceptedAt: null, error: null };
        orders.push(o);
        o.done = placeOrder(cluster.core, tokens.get(user)).then(
          (cid) => {
            o.cid = cid;
            o.acceptedAt = clock();
          },
          (err) => (o.error = err.message),
        );
      }
    })();

    await sleep(WARMUP_MS);
    const leavingIndex = perProcess.indexOf(Math.max(...perProcess));
    const leaving = cluster.notifiers[leavingIndex];
    const staying = cluster.notifiers.filter((n) => n !== leaving);
    const onLeaving = await hubConnections(leaving);
    const before = await resumeOutcomes(staying);
    const upgradesBefore = await histogram(staying, ...UPGRADES);
    // As Kubernetes drains a pod: readiness fails, the endpoint leaves the load balancer, SIGTERM.
    // From here on: this process's event-loop delay (a starved client sees drops and resumes
    // late) and the machine's CPU, to tell the servers' timing from the machine's.
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    const cpuBefore = cpuJiffies();
    const ownCpuBefore = process.cpuUsage();
    const lbPort = Number(new URL(cluster.lb.base).port);
    const servers = cpuSampler(() => [cluster.core, ...cluster.notifiers].map((n) => n.child.pid));
    // `ss` (a subprocess, run synchronously) once a second only: it stalls this event loop.
    let nginxPids = { at: -Infinity, pids: [] };
    const nginx = cpuSampler(() => {
      if (clock() - nginxPids.at >= 1000) nginxPids = { at: clock(), pids: listeners(lbPort) };
      return nginxPids.pids;
    });
    const drainStart = clock();
    writeFileSync(leaving.drainFile, "");
    await eventually("the leaving process to report not ready", async () => (await fetchWithin(`${leaving.base}/health/ready`)).status === 503);
    if (LB_UPDATE) await cluster.lb.setNotify(staying.map((n) => n.port));
    const sigterm = clock();
    leaving.child.kill("SIGTERM");
    log(`${mode}: SIGTERM to notify process ${leavingIndex} (port ${leaving.port}, ${onLeaving} tabs), ${((sigterm - drainStart) / 1000).toFixed(2)} s after its readiness went`);
    const exitPromise = leaving.exitedWithin(undefined, "its exit after SIGTERM").then(
      (e) => ({ ...e, at: clock() }),
      (err) => ({ code: null, signal: null, error: err.message, at: clock() }),
    );

    await sleep(Math.max(0, sigterm + AFTER_MS - clock()));
    ordering = false;
    await orderLoop;
    await within(Promise.all(orders.map((o) => o.done)), 60000, "the last orders to be answered");
    const ordersEnd = clock();
    const exit = await exitPromise;
    log(`${mode}: ${orders.length} orders placed; the drained process exited ${JSON.stringify({ code: exit.code, signal: exit.signal })} ${((exit.at - sigterm) / 1000).toFixed(2)} s after SIGTERM`);

    // Settle: every tab has every notification of its user, or nothing arrived for 5 s (60 s cap).
    const accepted = orders.filter((o) => o.cid);
    const expected = new Map(users.map((u) => [u, new Set()]));
    for (const o of accepted) expected.get(o.user).add(o.cid);
    const complete = (tab) => {
      const got = new Set(tab.received.map((r) => r.cid));
      for (const cid of expected.get(tab.user)) if (!got.has(cid)) return false;
      return true;
    };
    const lastArrival = () => Math.max(0, ...tabs.map((t) => t.received.at(-1)?.at ?? 0));
    const settleStart = clock();
    for (;;) {
      if (tabs.every(complete)) break;
      if (clock() - Math.max(lastArrival(), ordersEnd) > 5000 || clock() - settleStart > 60000) break;
      await sleep(100);
    }
    const settled = clock();
    loopDelay.disable();
    const cpuAfter = cpuJiffies();
    const ownCpu = process.cpuUsage(ownCpuBefore);
    const windowS = (settled - drainStart) / 1000;
    const machineBusyCores = Number(((cpuAfter.busy - cpuBefore.busy) / (cpuAfter.total - cpuBefore.total) * cpus().length).toFixed(2));
    const benchClientCores = Number(((ownCpu.user + ownCpu.system) / 1e6 / windowS).toFixed(2));
    const serverCores = servers.stop(windowS);
    const nginxCores = nginx.stop(windowS);
    const machineCpu = {
      windowS: Number(windowS.toFixed(1)),
      machineBusyCores,
      benchClientCores,
      benchServersCores: serverCores,
      benchNginxCores: nginxCores,
      // Everything else: PostgreSQL, Redis and RabbitMQ (partly this bench's), and whatever else runs.
      otherCores: Number((machineBusyCores - benchClientCores - serverCores - nginxCores).toFixed(2)),
      loadavg1m: Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]),
      clientEventLoopDelayMs: { p50: round(loopDelay.percentile(50) / 1e6), p99: round(loopDelay.percentile(99) / 1e6), max: round(loopDelay.max / 1e6) },
    };

    // What each tab got.
    const dropped = (tab) => tab.sockets.some((s) => s.closedAt !== null && s.closedAt >= drainStart);
    const drainedTabs = tabs.filter(dropped);
    const drainedSet = new Set(drainedTabs);
    const missed = [];
    let duplicates = 0;
    let wireInvocations = 0;
    let handled = 0;
    const nidOf = new Map();
    for (const tab of tabs) for (const r of tab.received) nidOf.set(r.cid, r.nid);
    const duplicateDetail = [];
    for (const tab of tabs) {
      const seen = new Map();
      for (const r of tab.received) {
        if (seen.has(r.nid)) {
          duplicates += 1;
          duplicateDetail.push({ tab: tab.index, user: tab.user, notificationId: r.nid, correlationId: r.cid, firstMs: round(seen.get(r.nid).at - sigterm), againMs: round(r.at - sigterm), onDrained: drainedSet.has(tab), sockets: socketHistory(tab, sigterm) });
        }
        seen.set(r.nid, r);
      }
      handled += tab.received.length;
      wireInvocations += tab.sockets.reduce((a, s) => a + s.invocations, 0);
      const cids = new Set(tab.received.map((r) => r.cid));
      for (const o of accepted) {
        if (o.user !== tab.user || cids.has(o.cid)) continue;
        missed.push({ tab: tab.index, user: tab.user, correlationId: o.cid, notificationId: nidOf.get(o.cid) ?? null, placedAfterSigtermMs: round(o.placedAt - sigterm), onDrained: drainedSet.has(tab) });
      }
    }
    // The drained tabs: when each socket dropped and when the tab was back on a new one.
    const outages = [];
    const drops = [];
    const backs = [];
    let resumedSockets = 0;
    let refusedResumes = 0;
    let closeMessages = 0;
    for (const tab of drainedTabs) {
      const i = tab.sockets.findIndex((s) => s.closedAt !== null && s.closedAt >= drainStart);
      const drop = tab.sockets[i];
      drops.push(drop.closedAt - sigterm);
      const next = tab.sockets.slice(i + 1).find((s) => s.openedAt !== null);
      if (next) {
        backs.push(next.openedAt - sigterm);
        outages.push(next.openedAt - drop.closedAt);
      }
      for (const s of tab.sockets.slice(i + 1)) {
        if (s.resume && s.openedAt !== null) resumedSockets += 1;
        if (s.resume && s.openedAt === null) refusedResumes += 1;
      }
    }
    for (const tab of tabs) for (const s of tab.sockets) closeMessages += s.closeMessages.length;
    const sorted = (a) => [...a].sort((x, y) => x - y);
    const outagesS = sorted(outages);
    const dropsS = sorted(drops);
    const backsS = sorted(backs);
    const newConnections = tabs.filter((t) => t.reconnecting.length > 0).length;
    const closedTabs = tabs.filter((t) => t.closed.length > 0).length;
    const otherDrops = tabs.filter((t) => t.sockets.some((s) => s.closedAt !== null && s.closedAt < drainStart)).length;
    const after = await resumeOutcomes(staying);
    const resumes = Object.fromEntries(OUTCOMES.map((o) => [o, after[o] - before[o]]));
    // How long the surviving processes took to answer the upgrades (101) of the tabs that came
    // over, the resume's claim included: the server's part of each tab's outage.
    const upgradeLatency = histogramDelta(upgradesBefore, await histogram(staying, ...UPGRADES));
    const resumeNotifications = await metricWhere(staying, "contoso_hub_invocation_duration_seconds_count", { method: "resumenotifications" });
    const connectionsAfter = await Promise.all(staying.map(hubConnections));
    // The users' logs: one entry per accepted order (XLEN; the log's other key is per event).
    const xlens = redisCli(users.map((u) => `XLEN notify:{${u}}:log`)).map(Number);
    const logEntries = xlens.reduce((a, b) => a + b, 0);

    const expectedDeliveries = tabs.reduce((a, t) => a + expected.get(t.user).size, 0);
    const result = {
      mode,
      startedAt,
      clientConfig: stateful ? ".withUrl(WebSockets, negotiate).withStatefulReconnect().withAutomaticReconnect(); JSON" : ".withUrl(WebSockets, negotiate).withAutomaticReconnect(); JSON",
      tabs: TABS,
      users: users.length,
      tabsPerNotifyProcessBefore: perProcess,
      ordersPlaced: orders.length,
      ordersAccepted: accepted.length,
      orderErrors: orders.filter((o) => o.error).map((o) => o.error).slice(0, 10),
      ordersPerSecondAchieved: Number((orders.length / ((ordersEnd - ordersStart) / 1000)).toFixed(1)),
      notificationLogEntries: logEntries,
      expectedDeliveries,
      drained: {
        process: leavingIndex,
        tabsByGauge: onLeaving,
        tabsWhoseSocketDropped: drainedTabs.length,
        readinessToSigtermMs: round(sigterm - drainStart),
        exit: { code: exit.code, signal: exit.signal, error: exit.error ?? null, afterSigtermMs: round(exit.at - sigterm) },
        socketDropsAfterSigtermMs: { first: round(dropsS[0]), last: round(dropsS.at(-1)) },
        allBackAfterSigtermMs: backs.length === drainedTabs.length ? round(backsS.at(-1)) : null,
        notBack: drainedTabs.length - backs.length,
        outageMs: { p50: round(percentile(outagesS, 50)), p99: round(percentile(outagesS, 99)), max: round(outagesS.at(-1)) },
        resumedSockets,
        refusedResumes,
        survivorsUpgradeLatency: upgradeLatency,
      },
      missedBeforeReplay: missed.length,
      missedOnDrainedTabs: missed.filter((m) => m.onDrained).length,
      missedOnOtherTabs: missed.filter((m) => !m.onDrained).length,
      duplicates,
      deliveredToHandlers: handled,
      invocationsOnTheWire: wireInvocations,
      otherInvocationsOnTheWire: tabs.flatMap((t) => t.sockets.flatMap((x) => x.otherInvocations)).reduce((acc, target) => ({ ...acc, [target]: (acc[target] ?? 0) + 1 }), {}),
      tabsWithANewConnection: newConnections,
      tabsClosedForGood: closedTabs,
      tabsDroppedBeforeTheDrain: otherDrops,
      closeMessagesReceived: closeMessages,
      statefulResumes: resumes,
      resumeNotificationsInvocations: resumeNotifications,
      connectionsOnSurvivorsAfter: connectionsAfter,
      settleMs: round(settled - settleStart),
      // From the readiness change to the end of the settle: the machine's busy cores (all of
      // it: this bench's servers, nginx, the services, and anything else running), this client's
      // share, and how late its event loop ran.
      cpuDuringDrain: machineCpu,
      missed: missed.slice(0, 200),
      duplicateDetail: duplicateDetail.slice(0, 50),
      // Per drained tab: when its socket dropped and when it was open again (ms after SIGTERM).
      drainedTabTimes: drainedTabs.map((tab) => {
        const i = tab.sockets.findIndex((s) => s.closedAt !== null && s.closedAt >= drainStart);
        const next = tab.sockets.slice(i + 1).find((s) => s.openedAt !== null);
        return { tab: tab.index, dropMs: round(tab.sockets[i].closedAt - sigterm), nextCreatedMs: tab.sockets[i + 1] ? round(tab.sockets[i + 1].createdAt - sigterm) : null, backMs: next ? round(next.openedAt - sigterm) : null, resumed: Boolean(next?.resume), code: tab.sockets[i].code };
      }),
      timeline: { ordersStartMs: round(ordersStart), drainStartMs: round(drainStart), sigtermMs: round(sigterm), ordersEndMs: round(ordersEnd) },
    };
    if (missed.length > 0) {
      // For each tab that missed something, its socket history around the drain.
      result.missedTabs = [...new Set(missed.map((m) => m.tab))].slice(0, 50).map((i) => ({
        tab: i,
        user: tabs[i].user,
        sockets: socketHistory(tabs[i], sigterm),
        received: tabs[i].received.map((r) => ({ atMs: round(r.at - sigterm), nid: r.nid, cid: r.cid })),
        reconnecting: tabs[i].reconnecting.map((r) => ({ atMs: round(r.at - sigterm), error: r.error })),
        ordersOfUser: accepted.filter((o) => o.user === tabs[i].user).map((o) => ({ cid: o.cid, placedMs: round(o.placedAt - sigterm), acceptedMs: round(o.acceptedAt - sigterm) })),
      }));
    }
    if (logEntries !== accepted.length) {
      result.warning = `the users' notification logs hold ${logEntries} entries for ${accepted.length} accepted orders: was the Redis database flushed or shared during the run?`;
      log(`${mode}: WARNING: ${result.warning}`);
    }
    log(`${mode}: ${drainedTabs.length} tabs dropped, all back ${((result.drained.allBackAfterSigtermMs ?? NaN) / 1000).toFixed(2)} s after SIGTERM; missed ${missed.length} of ${expectedDeliveries}; duplicates ${duplicates}; new connections ${newConnections}; resumes ${JSON.stringify(resumes)}`);
    return result;
  } finally {
    activeCleanup = null;
    await cleanup();
  }
}

function machine() {
  const kernel = spawnSync("uname", ["-r"], { encoding: "utf8" }).stdout.trim();
  return {
    cores: cpus().length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    freeGiB: Math.round(freemem() / 2 ** 30),
    kernel,
    cpu: cpus()[0]?.model ?? null,
    loadavg1mAtStart: Number(spawnSync("cat", ["/proc/loadavg"], { encoding: "utf8" }).stdout.split(" ")[0]),
    date: new Date().toISOString(),
  };
}

function table(runs) {
  const s = (ms) => (ms === null || ms === undefined ? "-" : `${(ms / 1000).toFixed(2)} s`);
  const lines = [
    "| client | tabs on the drained process | socket drops after SIGTERM | all back after SIGTERM | outage p50 / p99 / max | missed before replay | duplicates | tabs that started a new connection | resumes (resumed / unknown / in-use / overflowed) |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of runs) {
    const d = r.drained;
    const name = r.mode === "stateful" ? "`withStatefulReconnect()`" : "without stateful reconnect";
    const rs = r.statefulResumes;
    lines.push(
      `| ${name} | ${d.tabsWhoseSocketDropped} of ${r.tabs} | ${s(d.socketDropsAfterSigtermMs.first)} to ${s(d.socketDropsAfterSigtermMs.last)} | ${s(d.allBackAfterSigtermMs)} | ${d.outageMs.p50 ?? "-"} / ${d.outageMs.p99 ?? "-"} / ${d.outageMs.max ?? "-"} ms | **${r.missedBeforeReplay}** of ${r.expectedDeliveries} | ${r.duplicates} | ${r.tabsWithANewConnection} | ${rs.resumed} / ${rs.unknown} / ${rs["in-use"]} / ${rs.overflowed} |`,
    );
  }
  for (const r of runs) {
    const c = r.cpuDuringDrain;
    const u = r.drained.survivorsUpgradeLatency;
    lines.push(
      `${r.mode}: the survivors answered ${u.count} upgrades (101) in at most ${u.p50AtMostMs} ms (p50) / ${u.p99AtMostMs} ms (p99) / ${u.maxAtMostMs} ms (max); orders ${r.ordersAccepted} accepted of ${r.ordersPlaced} at ${r.ordersPerSecondAchieved}/s; drained process exit ${r.drained.exit.code} after ${s(r.drained.exit.afterSigtermMs)}; ` +
        `resent messages the client already had (dropped by it): ${r.invocationsOnTheWire - r.deliveredToHandlers}; ResumeNotifications run: ${r.resumeNotificationsInvocations}; ` +
        `from readiness off to settled (${c.windowS} s) the machine had ${c.machineBusyCores} of ${cpus().length} cores busy (this client ${c.benchClientCores}, its servers ${c.benchServersCores}, nginx ${c.benchNginxCores}, services and anything else ${c.otherCores}), client event-loop delay p99 ${c.clientEventLoopDelayMs.p99} ms, max ${c.clientEventLoopDelayMs.max} ms`,
    );
  }
  return lines.join("\n");
}

// Interrupted: the servers and nginx are stopped and the database and queues removed.
let activeCleanup = null;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    log(`${signal}: cleaning up`);
    await activeCleanup?.().catch(() => {});
    process.exit(130);
  });
}

const info = machine();
const command = `bench/stateful-drain.sh ${process.argv.slice(2).join(" ")}`.trim();
log(`machine: ${info.cores} cores, ${info.memGiB} GiB, kernel ${info.kernel}, ${info.date}; binary ${BIN}`);
const runs = [];
const failures = [];
const schedule = [];
for (let i = 0; i < REPEAT; i += 1) schedule.push(...(i % 2 === 0 ? MODES : [...MODES].reverse()));
for (const mode of schedule) {
  try {
    runs.push(await runMode(mode));
  } catch (err) {
    log(`${mode}: failed: ${err.stack ?? err}`);
    failures.push({ mode, error: err.message });
  }
}
const out = {
  command,
  binary: { path: BIN, modified: statSync(BIN).mtime.toISOString(), gitHead: spawnSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).stdout.trim() },
  machine: info,
  settings: { tabs: TABS, tabsPerUser: PER_USER, rate: RATE, warmupS: WARMUP_MS / 1000, afterSigtermS: AFTER_MS / 1000, drainSpreadS: SPREAD, repeat: REPEAT, notifyProcesses: 3, loadBalancerUpdatedBeforeSigterm: LB_UPDATE, redis: REDIS.replace(/\/\/[^@]*@/, "//") },
  runs,
  failures,
};
mkdirSync(dirname(opt.out), { recursive: true });
writeFileSync(opt.out, JSON.stringify(out, null, 2) + "\n");
console.log(`machine: ${info.cores} cores, ${info.memGiB} GiB, kernel ${info.kernel}, ${info.date}`);
console.log(`${TABS} tabs (${PER_USER} per user), ${RATE} orders/s, SIGTERM after ${WARMUP_MS / 1000} s of orders, ${AFTER_MS / 1000} s more, --drain-spread ${SPREAD}`);
console.log(table(runs));
for (const r of runs) if (r.warning) console.log(`${r.mode} (${r.startedAt}): WARNING: ${r.warning}`);
for (const f of failures) console.log(`${f.mode}: FAILED: ${f.error}`);
console.log(`results: ${opt.out}`);
process.exit(failures.length ? 1 : 0);
