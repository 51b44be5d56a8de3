// Test harness for the hub conformance suite: starts the real `contoso` binary against the
// real PostgreSQL, Redis and RabbitMQ (URLs from TEST_* variables), mints tokens, places orders,
// and builds official @microsoft/signalr clients the way the SPA does.
import { spawn, spawnSync } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import * as signalR from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";

export const BIN = process.env.CONTOSO_BIN ?? new URL("../../target/debug/contoso", import.meta.url).pathname;
const DB_ADMIN = process.env.TEST_DATABASE_URL ?? "postgres://root@127.0.0.1:5432/postgres";
const REDIS = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379/0";
const AMQP = process.env.TEST_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Resolves as `promise` does, or rejects with "timed out after `ms` ms waiting for `what`": every
 * wait in these tests has a deadline, so a broken feature fails with a message instead of hanging.
 */
export async function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` until it returns a truthy value; conditions are awaited, never slept for. A check
 * that itself never settles (a request to a hung process) is cut off at the deadline too.
 */
export async function eventually(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await within(Promise.resolve().then(check), Math.max(1, deadline - Date.now()) + 1000, what);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** `promise`, its failure message extended with `detail()` as it is when the failure happens. */
export async function explained(promise, detail) {
  try {
    return await promise;
  } catch (err) {
    err.message += `; ${detail()}`;
    throw err;
  }
}

/** fetch with a deadline (undici's own is 300 s), so a hung server fails the request. */
export function fetchWithin(url, init = {}, ms = 10000) {
  return fetch(url, { signal: AbortSignal.timeout(ms), ...init });
}

function psql(sql) {
  const res = spawnSync("psql", [DB_ADMIN, "-qtAc", sql], { encoding: "utf8" });
  if (res.status !== 0) throw new Error(`psql failed: ${res.stderr}`);
  return res.stdout.trim();
}

/** One deployment: a database, a bus prefix and a JWT secret that several processes share. */
export function newDeployment() {
  const id = randomUUID().replaceAll("-", "");
  const db = `contoso_t_${id}`;
  psql(`CREATE DATABASE "${db}"`);
  return {
    db,
    dbUrl: DB_ADMIN.replace(/\/[^/]*$/, `/${db}`),
    busPrefix: `t-${id}.`,
    channelPrefix: `t-${id}-`,
    secret: `secret-${id}`,
    query: (sql) => spawnSync("psql", [DB_ADMIN.replace(/\/[^/]*$/, `/${db}`), "-qtAc", sql], { encoding: "utf8" }).stdout.trim(),
    drop() {
      psql(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
    },
  };
}

/**
 * Starts `contoso` with `roles` for `deployment`; resolves once /health/ready answers 200.
 * `embedded`: `--role all` on its own SQLite file with the in-process bus, cache and backplane.
 * `cwd`: where it runs (the repository root serves the built SPA at `/`).
 */
export async function startServer(deployment, { roles = "all", args = [], port, embedded = false, cwd } = {}) {
  port ??= await freePort();
  const dbFile = `${tmpdir()}/contoso-${deployment.db}-${port}.db`;
  const services = embedded
    ? { "--database-url": `sqlite://${dbFile}` }
    : { "--database-url": deployment.dbUrl, "--redis-url": REDIS, "--amqp-url": AMQP };
  const defaults = {
    "--role": embedded ? "all" : roles, "--listen": `127.0.0.1:${port}`,
    ...services,
    "--jwt-secret": deployment.secret, "--bus-prefix": deployment.busPrefix,
    "--channel-prefix": deployment.channelPrefix, "--process-delay-ms": "0",
    "--drain-file": `/tmp/contoso-drain-${deployment.db}-${port}`, "--log-level": process.env.TEST_LOG ?? "warn",
    "--http-workers": "1", "--db-pool-size": "4", "--shutdown-timeout": "5",
  };
  // `args` are flag/value pairs that override the defaults.
  for (let i = 0; i < args.length; i += 2) defaults[args[i]] = args[i + 1];
  const argv = Object.entries(defaults).flat();
  const child = spawn(BIN, argv, { stdio: ["ignore", "inherit", "inherit"], cwd });
  const exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      if (embedded) for (const suffix of ["", "-wal", "-shm"]) rmSync(dbFile + suffix, { force: true });
      resolve({ code, signal });
    });
    // No binary at BIN: fail the start with that, not an uncaught error event.
    child.on("error", (err) => resolve({ code: null, signal: null, error: `${BIN}: ${err.message}` }));
  });
  const base = `http://127.0.0.1:${port}`;
  let exit;
  exited.then((e) => (exit = e));
  await eventually(`contoso on ${port} to be ready`, async () => {
    if (exit) throw new Error(`contoso (${argv.join(" ")}) exited before it was ready: ${JSON.stringify(exit)}`);
    try {
      return (await fetchWithin(`${base}/health/ready`, {}, 5000)).status === 200;
    } catch {
      return false;
    }
  }, 30000);
  const running = () => child.exitCode === null && child.signalCode === null;
  // SIGTERM to exit takes at most --shutdown-timeout; the rest is slack for a loaded machine.
  const exitBudgetMs = (Number(defaults["--shutdown-timeout"]) + 15) * 1000;
  /** The exit, or a failure naming the process once `ms` have passed (it is then SIGKILLed). */
  const exitedWithin = async (ms = exitBudgetMs, what = "its exit") => {
    try {
      return await within(exited, ms, `contoso on ${port} (--role ${defaults["--role"]}): ${what}`);
    } catch (err) {
      if (running()) child.kill("SIGKILL");
      throw err;
    }
  };
  return {
    port,
    base,
    hubUrl: `${base}/hubs/order-status`,
    child,
    exited,
    exitedWithin,
    drainFile: `/tmp/contoso-drain-${deployment.db}-${port}`,
    async stop() {
      if (running()) child.kill("SIGTERM");
      return exitedWithin(exitBudgetMs, "its exit after SIGTERM");
    },
    async kill() {
      if (running()) child.kill("SIGKILL");
      return exitedWithin(15000, "its exit after SIGKILL");
    },
  };
}

/** The sum of every sample of Prometheus metric `name` on `server` (0 when absent). */
export async function metric(server, name) {
  const text = await (await fetchWithin(`${server.base}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}

/** The hub connections `server` holds now (its connection gauge). */
export const hubConnections = (server) => metric(server, "contoso_hub_connections");

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 JWT for `sub`, signed with the deployment's secret. */
export function token(deployment, sub, { expSeconds = 3600, secret } = {}) {
  const header = b64url({ alg: "HS256", typ: "JWT" });
  const payload = b64url({ sub, exp: Math.floor(Date.now() / 1000) + expSeconds });
  const sig = createHmac("sha256", secret ?? deployment.secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

export function uniqueUser(name) {
  return `${name}-${randomUUID().slice(0, 8)}`;
}

/**
 * Places an order; returns its correlation id. Like a real client it retries a request that
 * failed on the network (a load balancer reloading closes idle connections), with one
 * Idempotency-Key so a retry can never create a second order.
 */
export async function placeOrder(server, tok, items = [{ productId: "mug", quantity: 1 }]) {
  const key = randomUUID();
  let res;
  for (let attempt = 0; ; attempt += 1) {
    try {
      res = await fetchWithin(`${server.base}/api/orders`, {
        method: "POST",
        headers: { authorization: `Bearer ${tok}`, "content-type": "application/json", "idempotency-key": key },
        body: JSON.stringify({ items }),
      });
      break;
    } catch (err) {
      if (attempt >= 3) throw err;
      await sleep(100);
    }
  }
  if (res.status !== 202) throw new Error(`order refused: ${res.status} ${await res.text()}`);
  return (await res.json()).correlationId;
}

/**
 * A HubConnection configured as the SPA configures it (CONTRACT §5). `stateful`: negotiate and
 * `withStatefulReconnect()` (skipNegotiation is then off).
 */
export function hubConnection(hubUrl, tok, { msgpack = false, skipNegotiation = true, stateful = false, reconnect = [0, 200, 500, 1000, 1000, 1000, 1000, 1000, 1000, 1000], serverTimeoutMs, keepAliveMs } = {}) {
  let builder = new signalR.HubConnectionBuilder()
    .withUrl(hubUrl, {
      transport: signalR.HttpTransportType.WebSockets,
      skipNegotiation: skipNegotiation && !stateful,
      accessTokenFactory: () => (typeof tok === "function" ? tok() : tok),
    })
    .configureLogging(signalR.LogLevel.None);
  if (stateful) builder = builder.withStatefulReconnect();
  if (reconnect) builder = builder.withAutomaticReconnect(reconnect);
  if (msgpack) builder = builder.withHubProtocol(new MessagePackHubProtocol());
  if (serverTimeoutMs) builder = builder.withServerTimeout(serverTimeoutMs);
  if (keepAliveMs) builder = builder.withKeepAliveInterval(keepAliveMs);
  const conn = builder.build();
  // A server that keeps pinging but never completes an invocation would leave `invoke` waiting
  // for ever (the server timeout only covers silence), and Node's WebSocket has no deadline for
  // an upgrade that is never answered: give both one.
  const invoke = conn.invoke.bind(conn);
  conn.invoke = (method, ...args) => within(invoke(method, ...args), 15000, `the completion of ${method}`);
  const start = conn.start.bind(conn);
  conn.start = () => within(start(), 30000, `a hub connection to ${hubUrl} to start`);
  return conn;
}

/** A tab: a started connection that records every OrderCompleted / OrderFailed it gets. */
export async function openTab(hubUrl, tok, options = {}) {
  const conn = hubConnection(hubUrl, tok, options);
  const received = [];
  const events = [];
  conn.on("OrderCompleted", (n) => received.push({ target: "OrderCompleted", ...n }));
  conn.on("OrderFailed", (n) => received.push({ target: "OrderFailed", ...n }));
  conn.onreconnecting((err) => events.push({ kind: "reconnecting", error: err?.message }));
  conn.onreconnected((id) => events.push({ kind: "reconnected", id }));
  conn.onclose((err) => events.push({ kind: "close", error: err?.message }));
  await conn.start();
  return { conn, received, events };
}

/**
 * Places an order every `everyMs` until `stop()`; `ids` are the correlation ids, `placedAt`
 * when each was accepted.
 */
export function orderStream(server, tok, everyMs) {
  const ids = [];
  const placedAt = [];
  let running = true;
  let paused = false;
  let placing = false;
  const done = (async () => {
    while (running) {
      if (paused) {
        await sleep(10);
        continue;
      }
      const started = Date.now();
      placing = true;
      ids.push(await placeOrder(server, tok));
      placing = false;
      placedAt.push(Date.now());
      await sleep(Math.max(0, everyMs - (Date.now() - started)));
    }
    return ids;
  })();
  return {
    ids,
    placedAt,
    after: (t) => placedAt.filter((p) => p > t).length,
    /** Stops placing orders until `resume`; resolves once no order is being placed. */
    async pause() {
      paused = true;
      await eventually("the order stream to pause", () => !placing);
    },
    resume() {
      paused = false;
    },
    stop() {
      running = false;
      return within(done, 60000, "the order stream to stop");
    },
  };
}

export { signalR, sleep };
