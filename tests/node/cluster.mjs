// A multi-process cluster as Kubernetes would run it: accept+process, N notify processes and
// nginx round-robin in front (the same nginx.conf as docker/compose.yml, upstreams replaced),
// plus a TCP proxy that can cut the notify processes' Redis connections.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eventually, freePort, startServer, within } from "./harness.mjs";

const NGINX_CONF = new URL("../../docker/nginx.conf", import.meta.url);

function replaceBlock(conf, name, lines) {
  const re = new RegExp(`(# BEGIN ${name}\\n)[\\s\\S]*?(\\s*# END ${name})`);
  if (!re.test(conf)) throw new Error(`no block ${name} in nginx.conf`);
  return conf.replace(re, `$1${lines.map((l) => `        ${l}`).join("\n")}$2`);
}

/** nginx with the project's configuration; `setNotify` rewrites the upstreams and reloads. */
export async function startNginx({ notifyPorts, acceptPort }) {
  const dir = mkdtempSync(join(tmpdir(), "contoso-nginx-"));
  const port = await freePort();
  // Each rendering carries a generation number nginx serves, so a reload is known to be live.
  let generation = 0;
  const render = (ports) => {
    generation += 1;
    let conf = readFileSync(NGINX_CONF, "utf8").replaceAll("/tmp/", `${dir}/`);
    // Under the test runner stdout/stderr are pipes nginx cannot reopen: log to the temp dir.
    // The access log names the upstream of every request (a WebSocket is logged when it ends),
    // so a test can tell which process each connection went to.
    conf = conf
      .replace(/access_log \/dev\/stdout[^;]*;/, `log_format upstreams '$upstream_addr $status $uri'; access_log ${dir}/access.log upstreams;`)
      .replace("error_log /dev/stderr warn;", `error_log ${dir}/error.log warn;`)
      .replace("worker_processes auto;", "worker_processes 1;");
    conf = replaceBlock(conf, "notify upstreams", ports.map((p) => `server 127.0.0.1:${p};`));
    conf = replaceBlock(conf, "accept upstreams", [`server 127.0.0.1:${acceptPort};`]);
    conf = replaceBlock(conf, "listen", [`listen 127.0.0.1:${port};`, `location = /lb-generation { return 200 "${generation}"; }`]);
    writeFileSync(join(dir, "nginx.conf"), conf);
  };
  render(notifyPorts);
  const workers = () =>
    spawnSync("ps", ["--ppid", String(child.pid), "-o", "pid="], { encoding: "utf8" })
      .stdout.split("\n")
      .map((l) => Number(l.trim()))
      .filter((pid) => pid > 0);
  const child = spawn("nginx", ["-c", join(dir, "nginx.conf"), "-g", "daemon off;"], { stdio: ["ignore", "ignore", "inherit"] });
  // nginx is a required tool: its absence fails the test with a message, never skips it.
  let failed;
  child.on("error", (err) => (failed = `nginx could not be started (${err.message}): scripts/services.sh installs it (nginx-light)`));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  exited.then((e) => (failed ??= `nginx exited at start: ${JSON.stringify(e)}, see ${dir}/error.log`));
  const base = `http://127.0.0.1:${port}`;
  await eventually("nginx", async () => {
    if (failed) throw new Error(failed);
    try {
      return (await fetch(`${base}/health/live`)).ok;
    } catch {
      return false;
    }
  });
  return {
    base,
    hubUrl: `${base}/hubs/order-status`,
    /**
     * Rewrites the notify upstreams and reloads. With `{ exclusive: true }` it also waits until
     * the old workers have exited, so no new connection can reach an old upstream (only for
     * tests with no long-lived connections through the old workers: they wait for those).
     */
    async setNotify(ports, { exclusive = false } = {}) {
      const oldWorkers = workers();
      render(ports);
      child.kill("SIGHUP");
      // Old workers keep accepting for a moment after the signal (longer on a busy machine),
      // and they answer with the old generation: wait until ten fresh connections in a row
      // are answered by the new configuration.
      const expected = String(generation);
      let inARow = 0;
      await eventually("nginx reload", async () => {
        try {
          const answer = await (await fetch(`${base}/lb-generation`, { headers: { connection: "close" } })).text();
          inARow = answer === expected ? inARow + 1 : 0;
        } catch {
          inARow = 0;
        }
        return inARow >= 10;
      });
      if (exclusive) await eventually("the old nginx workers to exit", () => oldWorkers.every((pid) => !alive(pid)));
    },
    /**
     * Requests to `path` as [upstream, status] pairs, for the connections that have ended. A
     * request nginx passed on to the next upstream (a 503 from a draining one) is logged with
     * every upstream it tried ("a, b"); the pair names the last, the one that answered.
     */
    upstreamLog(path) {
      let text = "";
      try {
        text = readFileSync(join(dir, "access.log"), "utf8");
      } catch {
        return [];
      }
      return text
        .split("\n")
        .map((line) => line.trim().split(" "))
        .filter((f) => f.length >= 3 && f[f.length - 1].startsWith(path))
        .map((f) => [f.slice(0, -2).join(" ").split(",").pop().trim(), Number(f[f.length - 2])]);
    },
    async stop() {
      // A fast stop: a graceful one (SIGQUIT) would wait for every open WebSocket.
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      try {
        await within(exited, 10000, "nginx to exit after SIGTERM");
      } catch (err) {
        child.kill("SIGKILL");
        throw err;
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A TCP proxy to `target`: `cut()` drops every connection and refuses new ones until `restore()`. */
export async function chaosProxy(targetPort) {
  let down = false;
  const sockets = new Set();
  const server = createServer((inbound) => {
    if (down) return inbound.destroy();
    const outbound = createConnection({ port: targetPort, host: "127.0.0.1" });
    sockets.add(inbound);
    sockets.add(outbound);
    inbound.pipe(outbound).pipe(inbound);
    const end = () => {
      inbound.destroy();
      outbound.destroy();
      sockets.delete(inbound);
      sockets.delete(outbound);
    };
    inbound.on("error", end).on("close", end);
    outbound.on("error", end).on("close", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    cut() {
      down = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    restore() {
      down = false;
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

/**
 * accept+process in one process, `notify` notify processes, nginx in front. `coreArgs` go to
 * the accept+process process, which runs in `cwd` (the repository root serves the SPA).
 */
export async function startCluster(dep, { notify = 2, notifyArgs = [], coreArgs = [], cwd } = {}) {
  const core = await startServer(dep, { roles: "accept,process", args: coreArgs, cwd });
  const notifiers = [];
  for (let i = 0; i < notify; i += 1) notifiers.push(await startServer(dep, { roles: "notify", args: notifyArgs }));
  const lb = await startNginx({ notifyPorts: notifiers.map((n) => n.port), acceptPort: core.port });
  return {
    core,
    notifiers,
    lb,
    async addNotify(reload = {}) {
      const n = await startServer(dep, { roles: "notify", args: notifyArgs });
      notifiers.push(n);
      await lb.setNotify(notifiers.filter((x) => x.child.exitCode === null).map((x) => x.port), reload);
      return n;
    },
    async stop() {
      await lb.stop();
      await Promise.all([core, ...notifiers].map((p) => p.stop()));
    },
  };
}
