// The design's case 4 and its harder cousins, with the project's own client module
// (clients/order-status-client, as the SPA uses it): scale-in with drain, a killed process,
// a Redis outage, the replay limit, and how 1,000 connections leave a draining process.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { openClientTab } from "./tabs.mjs";
import { chaosProxy, startCluster } from "./cluster.mjs";
import { eventually, explained, fetchWithin, hubConnection, hubConnections as connections, metric, newDeployment, orderStream, placeOrder, sleep, startServer, token, uniqueUser, within } from "./harness.mjs";

/** Every client this file opens, stopped after each suite even when a test failed. */
const opened = new Set();
async function stopAll() {
  await Promise.all([...opened].map((c) => c.stop().catch(() => {})));
  opened.clear();
}

const openClient = (url, tok) => openClientTab(url, tok, opened);


async function expectEveryNotificationOnce(tabs, ids) {
  for (const [i, tab] of tabs.entries()) {
    await eventually(`tab ${i}: all ${ids.length} notifications`, () => ids.every((id) => tab.seen.includes(id)), 30000);
  }
  for (const [i, tab] of tabs.entries()) {
    assert.equal(tab.seen.length, ids.length, `tab ${i}: each notification once after de-duplication`);
  }
}


describe("scale-in: case 4 and a killed process", () => {
  let dep;
  let cluster;
  before(async () => {
    dep = newDeployment();
    cluster = await startCluster(dep, { notify: 3, notifyArgs: ["--drain-spread", "2", "--shutdown-timeout", "10"] });
  });
  after(async () => {
    await stopAll();
    await cluster?.stop();
    dep?.drop();
  });

  test("case 4: draining and stopping one of three processes loses nothing, and no tab reconnects to it", async () => {
    const [, , leaving] = cluster.notifiers;
    const staying = cluster.notifiers.slice(0, 2);
    const tok = token(dep, uniqueUser("case4"));
    const tabs = [];
    for (let i = 0; i < 6; i += 1) tabs.push(await openClient(cluster.lb.hubUrl, tok));
    // Round-robin put tabs on every process, the leaving one included.
    await eventually("six tabs registered", async () => (await Promise.all(cluster.notifiers.map(connections))).reduce((a, b) => a + b) === 6);
    const onLeaving = await connections(leaving);
    assert.ok(onLeaving >= 1, "the leaving process holds tabs");

    const orders = orderStream(cluster.lb, tok, 100);
    await eventually("orders flowing before the drain", () => orders.ids.length >= 3);
    // Kubernetes: preStop creates the drain file, readiness fails, the endpoint is removed,
    // then SIGTERM. The process keeps serving its tabs until it closes them.
    const drainStarted = Date.now();
    writeFileSync(leaving.drainFile, "");
    await eventually("the leaving process to report not ready", async () => (await fetch(`${leaving.base}/health/ready`)).status === 503);
    const refused = await fetch(`${leaving.base}/hubs/order-status/negotiate?negotiateVersion=1`, { method: "POST", headers: { authorization: `Bearer ${tok}` } });
    assert.equal(refused.status, 503, "a draining process refuses negotiates");
    await cluster.lb.setNotify(staying.map((n) => n.port));
    leaving.child.kill("SIGTERM");
    const exit = await leaving.exitedWithin(undefined, "its exit after SIGTERM (--shutdown-timeout 10)");
    const exitedAt = Date.now();
    assert.deepEqual(exit, { code: 0, signal: null }, "the drained process exits 0");
    await eventually("orders flowing after the exit", () => orders.placedAt.filter((t) => t > exitedAt).length >= 3);
    const ids = await orders.stop();
    // Orders flowed throughout: some accepted before the drain, while it ran, and after the exit
    // (counted per phase, not as a rate, which a loaded machine lowers).
    const phases = [
      orders.placedAt.filter((t) => t < drainStarted).length,
      orders.placedAt.filter((t) => t >= drainStarted && t <= exitedAt).length,
      orders.placedAt.filter((t) => t > exitedAt).length,
    ];
    assert.ok(phases.every((n) => n >= 1), `orders before, during and after the drain: ${phases.join(" / ")}`);

    await expectEveryNotificationOnce(tabs, ids);
    assert.equal((await Promise.all(staying.map(connections))).reduce((a, b) => a + b), 6, "every tab is connected to a remaining process");
    for (const tab of tabs) await tab.client.stop();
    // Every WebSocket is logged when it ends: the leaving process saw only its first tabs.
    await eventually("the access log", () => cluster.lb.upstreamLog("/hubs/").filter(([, s]) => s === 101).length >= 6 + onLeaving);
    // Negotiates (200) are not connections; a connection is the 101 of its upgrade.
    const toLeaving = cluster.lb.upstreamLog("/hubs/").filter(([up, s]) => up.endsWith(`:${leaving.port}`) && s === 101);
    assert.equal(toLeaving.length, onLeaving, "no reconnect went to the draining process");
    cluster.notifiers.splice(2, 1);
  });

  test("a process killed with no goodbye (kill -9) loses nothing either", async () => {
    // No connection goes through nginx now: the reload may wait for its old workers to exit,
    // so every new tab is spread over all three processes.
    const victim = await cluster.addNotify({ exclusive: true });
    const tok = token(dep, uniqueUser("kill9"));
    const tabs = [];
    for (let i = 0; i < 6; i += 1) tabs.push(await openClient(cluster.lb.hubUrl, tok));
    await eventually("a tab on the victim", async () => (await connections(victim)) >= 1);
    const orders = orderStream(cluster.lb, tok, 100);
    await sleep(1000);
    await victim.kill();
    await cluster.lb.setNotify(cluster.notifiers.filter((n) => n !== victim).map((n) => n.port));
    await sleep(1500);
    const ids = await orders.stop();
    await expectEveryNotificationOnce(tabs, ids);
    for (const tab of tabs) await tab.client.stop();
    cluster.notifiers.splice(cluster.notifiers.indexOf(victim), 1);
  });
});

const RECONNECTS = "contoso_backplane_reconnects_total";

describe("a Redis outage under traffic", () => {
  let dep;
  let core;
  const notifiers = [];
  const proxies = [];
  before(async () => {
    dep = newDeployment();
    core = await startServer(dep, { roles: "accept,process" });
    const redisPort = Number(new URL(process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379").port || 6379);
    for (let i = 0; i < 2; i += 1) {
      const proxy = await chaosProxy(redisPort);
      proxies.push(proxy);
      notifiers.push(await startServer(dep, { roles: "notify", args: ["--redis-url", `redis://127.0.0.1:${proxy.port}/0`] }));
    }
  });
  after(async () => {
    await stopAll();
    proxies.forEach((p) => p.close());
    await Promise.all([core, ...notifiers].map((p) => p?.stop()));
    dep?.drop();
  });

  test("every notification placed before, during and after the notify processes lose Redis arrives once", async () => {
    const tok = token(dep, uniqueUser("blip"));
    const tabs = [];
    for (const n of notifiers) tabs.push(await openClient(n.hubUrl, tok), await openClient(n.hubUrl, tok));
    const reconnectsBefore = await Promise.all(notifiers.map((n) => metric(n, RECONNECTS)));
    const orders = orderStream(core, tok, 100);
    // Every tab has a notification before the outage, so each has a last id to resume from.
    await eventually("orders flowing and reaching every tab before the outage", () => orders.ids.length >= 3 && tabs.every((t) => t.seen.length >= 1));
    tabs.forEach((t, i) => assert.equal(t.resumeNeeded, 0, `tab ${i}: no ResumeNeeded before the outage`));
    // The cut lands while no notification is on its way to a tab: a stateful connection whose
    // journal write the cut catches is closed for a reconnect by design (its message cannot be
    // kept; tests/it/stateful.rs covers that), and this test is about the sockets that stay.
    await orders.pause();
    await eventually("every tab to have every order placed so far", () => tabs.every((t) => orders.ids.every((id) => t.seen.includes(id))));
    // The backplane subscription, the log and the user lookup all go: the processes keep
    // their tabs, requeue what they cannot log, and ask their tabs to resume when Redis is back.
    const cutAt = Date.now();
    proxies.forEach((p) => p.cut());
    orders.resume();
    // The outage really happened: each notify process reports its backplane down.
    for (const [i, n] of notifiers.entries()) {
      let last;
      await explained(
        eventually(`notify ${i} to report the backplane down on /health/ready`, async () => {
          const res = await fetchWithin(`${n.base}/health/ready`);
          last = { status: res.status, body: await res.json() };
          return res.status === 503 && last.body.reasons.some((r) => r.startsWith("backplane:"));
        }, 10000),
        () => `last answer ${JSON.stringify(last)}`,
      );
    }
    // Orders keep coming while Redis is away (accept and process reach Redis directly).
    await sleep(Math.max(0, 1500 - (Date.now() - cutAt)));
    await eventually("orders placed during the outage", () => orders.placedAt.filter((t) => t > cutAt).length >= 3);
    const restoredAt = Date.now();
    proxies.forEach((p) => p.restore());
    for (const [i, n] of notifiers.entries()) {
      await eventually(`notify ${i}: ${RECONNECTS} to increase (backplane reconnected)`, async () => (await metric(n, RECONNECTS)) > reconnectsBefore[i]);
    }
    for (const [i, tab] of tabs.entries()) {
      const timeline = () => `timeline ${tab.timeline.join(",")}`;
      await explained(eventually(`tab ${i}: a ResumeNeeded push after the backplane reconnected`, () => tab.resumeNeeded >= 1), timeline);
      // The module answered the push: a catch-up (ResumeNotifications from its last id) after it.
      await explained(eventually(`tab ${i}: a catch-up after ResumeNeeded`, () => tab.timeline.indexOf("catchUp", tab.timeline.indexOf("ResumeNeeded")) !== -1), timeline);
      assert.ok(!tab.timeline.includes("reconnecting"), `tab ${i}: its WebSocket stayed up, so the catch-up came from ResumeNeeded (${tab.timeline.join(",")})`);
      assert.ok(tab.catchUps.every((c) => c.from !== null), `tab ${i}: resumed from its last id`);
    }
    await eventually("orders after the outage", () => orders.placedAt.filter((t) => t > restoredAt).length >= 3);
    const ids = await orders.stop();
    await expectEveryNotificationOnce(tabs, ids);
  });
});

describe("the replay limit", () => {
  let dep;
  let server;
  before(async () => {
    dep = newDeployment();
    server = await startServer(dep, { roles: "all", args: ["--notification-log-max", "2"] });
  });
  after(async () => {
    await stopAll();
    await server?.stop();
    dep?.drop();
  });

  test("a tab away longer than the retention gets complete: false and recovers the statuses with GetCurrentStatus", async () => {
    const tok = token(dep, uniqueUser("away"));
    const tab = await openClient(server.hubUrl, tok);
    // Another tab of the same user stays connected: once it has every missed notification,
    // each has been logged (a notification is logged before it is published), so none can
    // still arrive live after the away tab is back. An order's COMPLETED status in the
    // database does not say that.
    const observer = await openClient(server.hubUrl, tok);
    const first = await placeOrder(server, tok);
    await eventually("the first notification", () => tab.seen.includes(first));
    await tab.client.stop();
    // Away: five more orders, of which the log keeps the last two.
    const missed = [];
    for (let i = 0; i < 5; i += 1) {
      const id = await placeOrder(server, tok);
      tab.client.watchOrder(id);
      missed.push(id);
    }
    await eventually("the missed orders to complete", async () => {
      const orders = await (await fetch(`${server.base}/api/orders`, { headers: { authorization: `Bearer ${tok}` } })).json();
      return orders.filter((o) => missed.includes(o.correlationId) && o.status === "COMPLETED").length === missed.length;
    });
    await eventually("the other tab to see every missed notification", () => missed.every((id) => observer.seen.includes(id)));
    await within(tab.client.start(), 20000, "the away tab to connect again");
    await eventually("the catch-up", () => tab.catchUps.length === 1);
    const [catchUp] = tab.catchUps;
    assert.equal(catchUp.result.complete, false, "the server says the replay is incomplete");
    assert.equal(catchUp.result.replayed, 2, "what is retained is replayed");
    const notReplayed = missed.filter((id) => !tab.seen.includes(id));
    assert.equal(notReplayed.length, 3, "three missed notifications were no longer retained");
    assert.deepEqual([...catchUp.queried].sort(), notReplayed.sort(), "exactly the orders not replayed are queried");
    for (const id of missed) {
      const final = tab.updates.filter((u) => u.correlationId === id && u.status === "COMPLETED");
      assert.equal(final.length, 1, `${id}: its final status arrived once`);
    }
    assert.deepEqual(tab.client.pendingOrders, [], "nothing is left waiting");
    await tab.client.stop();
  });
});

describe("the reconnect wave", () => {
  let dep;
  let cluster;
  before(async () => {
    dep = newDeployment();
    // A 10 s spread (not the 5 s default) keeps what is measured far from what "all at once"
    // looks like from this process on a loaded machine: 1,000 Closes sent together take this
    // process about 1.2 s to see on a quiet 2-core machine, several times that when loaded.
    cluster = await startCluster(dep, { notify: 3, notifyArgs: ["--drain-spread", "10", "--shutdown-timeout", "20"] });
  });
  after(async () => {
    await stopAll();
    await cluster?.stop();
    dep?.drop();
  });

  test("1,000 connections leave a draining process spread over --drain-spread and all land on the others", async () => {
    const [leaving, ...staying] = cluster.notifiers;
    await cluster.lb.setNotify([leaving.port], { exclusive: true });
    const conns = [];
    const closedAt = [];
    const errors = [];
    let reconnected = 0;
    for (let batch = 0; batch < 10; batch += 1) {
      const started = await Promise.all(
        Array.from({ length: 100 }, async (_, i) => {
          const conn = hubConnection(cluster.lb.hubUrl, token(dep, `wave-${batch}-${i}`), { reconnect: [0, 200, 500, 1000, 1000, 1000] });
          opened.add(conn);
          conn.onreconnecting(() => closedAt.push(Date.now()));
          conn.onreconnected(() => (reconnected += 1));
          conn.onclose((err) => errors.push(err?.message ?? "closed"));
          await conn.start();
          return conn;
        }),
      );
      conns.push(...started);
    }
    await eventually("1,000 connections on the leaving process", async () => (await connections(leaving)) === 1000);
    await cluster.lb.setNotify(staying.map((n) => n.port));
    const sigterm = Date.now();
    leaving.child.kill("SIGTERM");
    await eventually("every connection back", () => reconnected === 1000, 60000);
    assert.deepEqual(await leaving.exitedWithin(undefined, "its exit after SIGTERM (--shutdown-timeout 20)"), { code: 0, signal: null });
    assert.deepEqual(errors, [], "no connection gave up");
    assert.equal((await Promise.all(staying.map(connections))).reduce((a, b) => a + b), 1000, "all on the remaining processes");

    // The Close messages are spread over --drain-spread (10 s) rather than sent at once. What
    // is asserted is that shape, with margins a loaded 2-core machine keeps: load can only
    // delay when this process sees a Close, and it keeps up with 100 a second easily. The
    // exact spread and rate are measured by bench/drain.sh (BENCHMARKS.md), not asserted here.
    // Spread evenly: the whole takes about 10 s, the middle half about 5 s, about 100 a second.
    // All at once (checked with --drain-spread 0): 1.2 s, 0.7 s, 730 in the first second.
    // Asserted: more than 6 s, and ending inside the 20 s shutdown timeout; more than 3 s; and
    // under 300 in any second.
    assert.equal(closedAt.length, 1000, "every connection was closed by the server once");
    const offsets = closedAt.map((t) => (t - sigterm) / 1000).sort((a, b) => a - b);
    const spread = offsets.at(-1) - offsets[0];
    const middleHalf = offsets[749] - offsets[250];
    const perSecond = Array.from({ length: Math.ceil(spread + 1e-9) || 1 }, (_, s) => offsets.filter((o) => o - offsets[0] >= s && o - offsets[0] < s + 1).length);
    console.log(`drain: first Close ${offsets[0].toFixed(2)} s after SIGTERM, spread ${spread.toFixed(2)} s, middle half ${middleHalf.toFixed(2)} s, per second ${perSecond.join(" ")}`);
    assert.ok(spread > 6 && offsets.at(-1) < 20, `spread over more than 6 s and within the 20 s shutdown timeout: ${spread.toFixed(2)} s, last ${offsets.at(-1).toFixed(2)} s after SIGTERM`);
    assert.ok(middleHalf > 3, `the middle half of the Closes spans ${middleHalf.toFixed(2)} s, not a burst`);
    assert.ok(Math.max(...perSecond) < 300, `no burst: under 300 Closes in every second (${perSecond.join(" ")})`);
    await Promise.all(conns.map((c) => c.stop()));
    cluster.notifiers.splice(0, 1);
  });
});
