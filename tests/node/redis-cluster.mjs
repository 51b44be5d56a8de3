// Redis Cluster helpers for rediscluster.test.mjs: redis-cli against one node, the cluster's
// topology (who owns a slot now), pub/sub counts, and a private 3+3 cluster for tests that
// break it (kill -9 a master) without disturbing the shared one on 7301-7306.
import { execFile, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eventually, within } from "./harness.mjs";

/** `redis-cli -p port args...`: its stdout, trimmed; null when the node cannot answer. */
export function redisCli(port, ...args) {
  return new Promise((resolve) => {
    execFile("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args.map(String)], { timeout: 5000 }, (err, stdout) => {
      const out = stdout?.trim() ?? "";
      // redis-cli exits 0 on a server error reply; a dead node prints "Could not connect".
      if (err || out.startsWith("Could not connect") || out.startsWith("ERR") || out.startsWith("CLUSTERDOWN")) resolve(null);
      else resolve(out);
    });
  });
}

/** The ports of the seed list in a `--redis-url` cluster value. */
export const seedPorts = (urls) => urls.split(",").map((u) => Number(new URL(u.trim()).port));

/**
 * The cluster's nodes as `node` (a port) sees them: `{ id, port, master, fail, masterId, ranges }`,
 * `ranges` the slot ranges a master owns.
 */
export async function clusterNodes(port) {
  const out = await redisCli(port, "cluster", "nodes");
  if (!out) return null;
  return out.split("\n").map((line) => {
    const [id, addr, flags, masterId, , , , link, ...slots] = line.trim().split(" ");
    return {
      id,
      port: Number(addr.split("@")[0].split(":").at(-1)),
      master: flags.split(",").includes("master"),
      fail: flags.split(",").some((f) => f === "fail" || f === "fail?"),
      masterId: masterId === "-" ? null : masterId,
      connected: link === "connected",
      ranges: slots.filter((s) => /^\d/.test(s)).map((s) => s.split("-").map(Number)).map(([a, b]) => [a, b ?? a]),
    };
  });
}

/** The first of `ports` that answers `cluster nodes`, and what it says. */
async function anyView(ports) {
  for (const p of ports) {
    const nodes = await clusterNodes(p);
    if (nodes) return nodes;
  }
  throw new Error(`no node of ${ports.join(",")} answers`);
}

/** Every node's port, as the first answering seed knows them. */
export async function allPorts(seeds) {
  return (await anyView(seeds)).map((n) => n.port);
}

/** The slot of `key`, as Redis computes it. */
export async function keyslot(port, key) {
  return Number(await redisCli(port, "cluster", "keyslot", key));
}

/** The port of the (non-failed) master that owns `key`'s slot, as the first answering node sees it. */
export async function masterOf(ports, key) {
  let slot = null;
  for (const p of ports) if ((slot = await redisCli(p, "cluster", "keyslot", key)) !== null) break;
  const owner = (await anyView(ports)).find((n) => n.master && !n.fail && n.ranges.some(([a, b]) => slot >= a && slot <= b));
  return owner?.port ?? null;
}

/** Σ over `ports` of a `pubsub shardnumsub` / `pubsub numsub` count for `channel`. */
async function subscribers(ports, sub, channel) {
  let sum = 0;
  for (const p of ports) {
    const out = await redisCli(p, "pubsub", sub, channel);
    if (out) sum += Number(out.split("\n")[1]);
  }
  return sum;
}
/** Sharded (SSUBSCRIBE) subscriptions to `channel`, summed over the nodes on `ports`. */
export const shardSubscribers = (ports, channel) => subscribers(ports, "shardnumsub", channel);
/** Classic (SUBSCRIBE) subscriptions to `channel`, summed over the nodes on `ports`. */
export const classicSubscribers = (ports, channel) => subscribers(ports, "numsub", channel);

/** `calls` of `command` in `info commandstats` on the node on `port` (0 when never called, null if it cannot answer). */
export async function commandCalls(port, command) {
  const out = await redisCli(port, "info", "commandstats");
  if (out === null) return null;
  const line = out.split("\n").find((l) => l.startsWith(`cmdstat_${command}:`));
  return line ? Number(/calls=(\d+)/.exec(line)[1]) : 0;
}

async function bindable(port) {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/** Six ports, each with its cluster bus port (+10,000) free too, all below 55,000. */
async function clusterPorts() {
  const ports = [];
  while (ports.length < 6) {
    const p = 20000 + Math.floor(Math.random() * 25000);
    if (ports.some((q) => [q, q - 10000, q + 10000].includes(p))) continue;
    if ((await bindable(p)) && (await bindable(p + 10000))) ports.push(p);
  }
  return ports;
}

/**
 * A private Redis Cluster: six redis-server processes (3 masters, 3 replicas) on free loopback
 * ports, `--cluster-node-timeout nodeTimeoutMs`, data in a temp dir. Resolves once every node
 * says cluster_state:ok and every replica is linked to its master. `stop()` kills them all and
 * removes the data; the processes are also killed if this Node process exits first.
 */
export async function startPrivateCluster({ nodeTimeoutMs = 1000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "contoso-redis-cluster-"));
  const nodes = new Map();
  const killAll = () => {
    for (const { child } of nodes.values()) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.once("exit", killAll);
  const cluster = {
    dir,
    ports: [],
    /** The seed list for `--redis-url`: the three nodes created as masters. */
    urls: "",
    running: (port) => {
      const c = nodes.get(port)?.child;
      return Boolean(c) && c.exitCode === null && c.signalCode === null;
    },
    alive() {
      return this.ports.filter((p) => this.running(p));
    },
    /** kill -9 of the node on `port`; resolves once it has exited. */
    async kill(port) {
      const node = nodes.get(port);
      if (this.running(port)) node.child.kill("SIGKILL");
      await within(node.exited, 10000, `redis-server ${port} to exit after SIGKILL`);
    },
    async stop() {
      killAll();
      process.removeListener("exit", killAll);
      await Promise.all([...nodes.values()].map((n) => within(n.exited, 10000, "redis-server to exit")));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    cluster.ports = await clusterPorts();
    for (const port of cluster.ports) {
      const nodeDir = join(dir, String(port));
      mkdirSync(nodeDir);
      const child = spawn("redis-server", [
        "--bind", "127.0.0.1", "--port", String(port), "--cluster-enabled", "yes",
        "--cluster-config-file", join(nodeDir, "nodes.conf"), "--cluster-node-timeout", String(nodeTimeoutMs),
        "--save", "", "--appendonly", "no", "--dir", nodeDir, "--logfile", join(nodeDir, "redis.log"),
      ], { stdio: "ignore" });
      const exited = new Promise((resolve) => {
        child.on("exit", (code, signal) => resolve({ code, signal }));
        child.on("error", (err) => resolve({ error: err.message }));
      });
      nodes.set(port, { child, exited });
    }
    for (const port of cluster.ports) {
      await eventually(`redis-server ${port} to answer PING`, async () => {
        if (!cluster.running(port)) throw new Error(`redis-server ${port} exited: ${JSON.stringify(await nodes.get(port).exited)}`);
        return (await redisCli(port, "ping")) === "PONG";
      }, 10000);
    }
    await new Promise((resolve, reject) => {
      execFile("redis-cli", ["--cluster", "create", ...cluster.ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "1", "--cluster-yes"], { timeout: 60000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`redis-cli --cluster create failed: ${err.message} ${stdout} ${stderr}`)) : resolve());
    });
    for (const port of cluster.ports) {
      await eventually(`redis-server ${port}: cluster_state:ok with 6 known nodes`, async () => {
        const info = (await redisCli(port, "cluster", "info")) ?? "";
        return info.includes("cluster_state:ok") && info.includes("cluster_known_nodes:6");
      }, 30000);
    }
    await eventually("every replica linked to its master", async () => {
      const view = await clusterNodes(cluster.ports[0]);
      const replicas = view.filter((n) => !n.master);
      if (replicas.length !== 3 || view.filter((n) => n.master && n.ranges.length).length !== 3) return false;
      for (const r of replicas) if (!/master_link_status:up/.test((await redisCli(r.port, "info", "replication")) ?? "")) return false;
      return true;
    }, 30000);
    const masters = (await clusterNodes(cluster.ports[0])).filter((n) => n.master).map((n) => n.port);
    cluster.urls = masters.map((p) => `redis://127.0.0.1:${p}`).join(",");
    return cluster;
  } catch (err) {
    await cluster.stop().catch(() => {});
    throw err;
  }
}

/** Waits until the master on `port` has its replica caught up with every write so far. */
export async function replicated(port) {
  await eventually(`the replica of ${port} to catch up`, async () => {
    const info = (await redisCli(port, "info", "replication")) ?? "";
    const offset = /master_repl_offset:(\d+)/.exec(info)?.[1];
    return offset !== undefined && new RegExp(`slave0:[^\\n]*offset=${offset},`).test(info);
  }, 10000);
}
