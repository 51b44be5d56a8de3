// Every contoso process (accept, process, notify) on a Redis Cluster (--redis-mode cluster):
// the design's cases 1-4 on the shared 3+3 cluster that scripts/services.sh starts, with the
// backplane checked to be sharded (SSUBSCRIBE / SPUBLISH); then a master killed with kill -9
// while orders flow, on a private cluster of this file's own (the shared one is in use by
// other suites at the same time).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { openClientTab } from "./tabs.mjs";
import { startCluster } from "./cluster.mjs";
import { eventually, explained, fetchWithin, hubConnections as connections, newDeployment, openTab, placeOrder, sleep, token, uniqueUser, within } from "./harness.mjs";
import { allPorts, classicSubscribers, clusterNodes, commandCalls, masterOf, redisCli, replicated, seedPorts, shardSubscribers, startPrivateCluster } from "./redis-cluster.mjs";

const SHARED = process.env.TEST_REDIS_CLUSTER_URLS ?? "redis://127.0.0.1:7301,redis://127.0.0.1:7302,redis://127.0.0.1:7303";
const HUB = "Contoso.OrderNotification.Hubs.OrderStatusHub";
const onCluster = (urls) => ["--redis-mode", "cluster", "--redis-url", urls];
/** The backplane channel of `user` (`{channelPrefix}{hubName}:user:{userId}`; the harness sets the prefix). */
const userChannel = (dep, user) => `${dep.channelPrefix}${HUB}:user:${user}`;
const sum = (xs) => xs.reduce((a, b) => a + b, 0);
const total = async (servers) => sum(await Promise.all(servers.map(connections)));

/** Every client-module tab this file opens, stopped after each suite even when a test failed. */
const opened = new Set();
async function stopAll() {
  await Promise.all([...opened].map((c) => c.stop().catch(() => {})));
  opened.clear();
}

const openClient = (url, tok) => openClientTab(url, tok, opened);

/** Raw official-client tabs: waits for one notification per order on each, then checks none came twice. */
async function expectExactlyOnce(tabs, ids, timeoutMs = 20000) {
  for (const [i, tab] of tabs.entries()) {
    await eventually(`tab ${i}: all ${ids.length} notifications`, () => ids.every((id) => tab.received.some((n) => n.correlationId === id)), timeoutMs);
  }
  await sleep(300);
  for (const [i, tab] of tabs.entries()) {
    for (const id of ids) assert.equal(tab.received.filter((n) => n.correlationId === id).length, 1, `tab ${i}: exactly once: ${id}`);
    assert.equal(tab.received.length, ids.length, `tab ${i}: nothing but its user's orders`);
  }
}

/** Client-module tabs: every id seen, each once, and nothing else (the module de-duplicates replays). */
async function expectEveryNotificationOnce(tabs, ids, timeoutMs = 30000) {
  for (const [i, tab] of tabs.entries()) {
    await eventually(`tab ${i}: all ${ids.length} notifications`, () => ids.every((id) => tab.seen.includes(id)), timeoutMs);
  }
  await sleep(300);
  for (const [i, tab] of tabs.entries()) {
    assert.deepEqual([...tab.seen].sort(), [...ids].sort(), `tab ${i}: each of its user's notifications once, nothing else`);
  }
}

/**
 * The user's backplane channel has `expected` sharded subscriptions summed over the cluster's
 * nodes (one per notify process holding a tab of the user), and no classic one.
 */
async function expectSharded(ports, channel, expected) {
  let last;
  await explained(
    eventually(`${expected} SSUBSCRIBE of ${channel}`, async () => (last = await shardSubscribers(ports, channel)) === expected, 10000),
    () => `pubsub shardnumsub summed over ${ports.join(",")}: ${last}`,
  );
  assert.equal(await classicSubscribers(ports, channel), 0, `no classic SUBSCRIBE of ${channel}`);
}

describe("cases 1-4 with every process on the shared Redis Cluster", () => {
  let dep;
  let cluster;
  let ports;
  before(async () => {
    ports = await allPorts(seedPorts(SHARED));
    dep = newDeployment();
    cluster = await startCluster(dep, {
      notify: 2,
      coreArgs: onCluster(SHARED),
      notifyArgs: [...onCluster(SHARED), "--drain-spread", "2", "--shutdown-timeout", "10"],
    });
  });
  after(async () => {
    await stopAll();
    await cluster?.stop();
    dep?.drop();
  });

  test("case 1: one tab through the load balancer gets its notification, over SPUBLISH on the channel's shard", async () => {
    const user = uniqueUser("one");
    const tok = token(dep, user);
    const tab = await openTab(cluster.lb.hubUrl, tok);
    const channel = userChannel(dep, user);
    await expectSharded(ports, channel, 1);
    const owner = await masterOf(ports, channel);
    const spublishBefore = await commandCalls(owner, "spublish");
    const id = await placeOrder(cluster.lb, tok);
    await expectExactlyOnce([tab], [id]);
    assert.equal((await tab.conn.invoke("GetCurrentStatus", id)).status, "COMPLETED");
    assert.ok((await commandCalls(owner, "spublish")) >= spublishBefore + 1, `SPUBLISH counted on ${owner}, the master of ${channel}`);
    await tab.conn.stop();
  });

  test("case 2: tabs of one user on two processes each get it once; another user gets nothing", async () => {
    const user = uniqueUser("two");
    const tok = token(dep, user);
    const tabs = [await openTab(cluster.notifiers[0].hubUrl, tok), await openTab(cluster.notifiers[1].hubUrl, tok, { msgpack: true })];
    const otherUsers = [uniqueUser("other"), uniqueUser("other")];
    const others = [await openTab(cluster.notifiers[0].hubUrl, token(dep, otherUsers[0])), await openTab(cluster.notifiers[1].hubUrl, token(dep, otherUsers[1]))];
    await expectSharded(ports, userChannel(dep, user), 2);
    for (const o of otherUsers) await expectSharded(ports, userChannel(dep, o), 1);
    const owner = await masterOf(ports, userChannel(dep, user));
    const spublishBefore = await commandCalls(owner, "spublish");
    const ids = [await placeOrder(cluster.lb, tok), await placeOrder(cluster.lb, tok), await placeOrder(cluster.lb, tok)];
    await expectExactlyOnce(tabs, ids);
    for (const o of others) assert.deepEqual(o.received, []);
    assert.ok((await commandCalls(owner, "spublish")) >= spublishBefore + ids.length, `${ids.length} SPUBLISH on ${owner}, the master of the channel`);
    for (const t of [...tabs, ...others]) await t.conn.stop();
  });

  test("case 3: scaling out from 2 to 4 processes keeps every tab, old and new, receiving everything once", async () => {
    const user = uniqueUser("three");
    const tok = token(dep, user);
    const tabs = [await openTab(cluster.lb.hubUrl, tok), await openTab(cluster.lb.hubUrl, tok)];
    await cluster.addNotify();
    await cluster.addNotify();
    for (let i = 0; i < 2; i += 1) tabs.push(await openTab(cluster.lb.hubUrl, tok));
    for (const n of cluster.notifiers) tabs.push(await openTab(n.hubUrl, tok));
    const other = await openTab(cluster.notifiers[3].hubUrl, token(dep, uniqueUser("other")));
    // Every one of the four processes holds a tab of the user: four shard subscriptions.
    await expectSharded(ports, userChannel(dep, user), 4);
    const ids = [];
    for (let i = 0; i < 5; i += 1) ids.push(await placeOrder(cluster.lb, tok));
    await expectExactlyOnce(tabs, ids);
    assert.deepEqual(other.received, [], "another user gets nothing");
    for (const t of [...tabs, other]) await t.conn.stop();
  });

  test("case 4: draining and stopping one process loses nothing; its tabs move and their subscriptions with them", async () => {
    const user = uniqueUser("case4");
    const tok = token(dep, user);
    await eventually("the earlier tabs gone", async () => (await total(cluster.notifiers)) === 0);
    const tabs = [];
    for (let i = 0; i < 8; i += 1) tabs.push(await openClient(cluster.lb.hubUrl, tok));
    await eventually("eight tabs registered", async () => (await total(cluster.notifiers)) === 8);
    const counts = await Promise.all(cluster.notifiers.map(connections));
    const leaving = cluster.notifiers[counts.indexOf(Math.max(...counts))];
    const staying = cluster.notifiers.filter((n) => n !== leaving);
    const channel = userChannel(dep, user);
    await expectSharded(ports, channel, counts.filter((c) => c > 0).length);

    const orders = [];
    let placing = true;
    const stream = (async () => {
      while (placing) {
        orders.push({ id: await placeOrder(cluster.lb, tok), at: Date.now() });
        await sleep(100);
      }
    })();
    await eventually("orders flowing before the drain", () => orders.length >= 3);
    const drainStarted = Date.now();
    writeFileSync(leaving.drainFile, "");
    await eventually("the leaving process to report not ready", async () => (await fetchWithin(`${leaving.base}/health/ready`)).status === 503);
    await cluster.lb.setNotify(staying.map((n) => n.port));
    leaving.child.kill("SIGTERM");
    assert.deepEqual(await leaving.exitedWithin(undefined, "its exit after SIGTERM"), { code: 0, signal: null }, "the drained process exits 0");
    const exitedAt = Date.now();
    cluster.notifiers.splice(cluster.notifiers.indexOf(leaving), 1);
    await eventually("orders flowing after the exit", () => orders.filter((o) => o.at > exitedAt).length >= 3);
    placing = false;
    await within(stream, 60000, "the order stream to stop");
    const phases = [orders.filter((o) => o.at < drainStarted).length, orders.filter((o) => o.at >= drainStarted && o.at <= exitedAt).length, orders.filter((o) => o.at > exitedAt).length];
    assert.ok(phases.every((n) => n >= 1), `orders before, during and after the drain: ${phases.join(" / ")}`);

    await expectEveryNotificationOnce(tabs, orders.map((o) => o.id));
    assert.equal(await total(staying), 8, "every tab is connected to a remaining process");
    // The subscriptions followed the tabs: one per remaining process that holds some of them.
    const afterCounts = await Promise.all(staying.map(connections));
    await expectSharded(ports, channel, afterCounts.filter((c) => c > 0).length);
    for (const tab of tabs) await tab.client.stop();
  });
});

/**
 * Places an order, retrying with the same Idempotency-Key (so a retry never makes a second
 * order) on a network error or a 502/503/504 (Redis failing over) for up to `deadlineMs`.
 */
async function placeOrderRetrying(base, tok, deadlineMs = 30000) {
  const key = randomUUID();
  const startedAt = Date.now();
  const refusals = [];
  for (;;) {
    let res;
    try {
      res = await fetchWithin(`${base}/api/orders`, {
        method: "POST",
        headers: { authorization: `Bearer ${tok}`, "content-type": "application/json", "idempotency-key": key },
        body: JSON.stringify({ items: [{ productId: "mug", quantity: 1 }] }),
      });
    } catch (err) {
      refusals.push(err.message);
    }
    if (res?.status === 202) return { id: (await res.json()).correlationId, startedAt, acceptedAt: Date.now(), refusals };
    if (res) {
      const body = await res.text();
      if (![502, 503, 504].includes(res.status)) throw new Error(`order refused: ${res.status} ${body}`);
      refusals.push(`${res.status} ${body}`);
    }
    if (Date.now() - startedAt > deadlineMs) throw new Error(`order not accepted within ${deadlineMs} ms: ${refusals.join("; ")}`);
    await sleep(100); // a retry's backoff
  }
}

/** Orders for one user, one every `everyMs` (each retried until accepted), until `stop()`. */
function orderStream(base, tok, everyMs) {
  const stream = { orders: [], error: null, running: true };
  const done = (async () => {
    while (stream.running) {
      const started = Date.now();
      try {
        stream.orders.push(await placeOrderRetrying(base, tok));
      } catch (err) {
        stream.error = err;
        return;
      }
      await sleep(Math.max(0, everyMs - (Date.now() - started)));
    }
  })();
  stream.stop = async () => {
    stream.running = false;
    await within(done, 60000, "the order stream to stop");
    if (stream.error) throw stream.error;
    return stream.orders.map((o) => o.id);
  };
  /** Accepted orders matching `pred`; throws the stream's failure, so a wait on it ends at once. */
  stream.count = (pred) => {
    if (stream.error) throw stream.error;
    return stream.orders.filter(pred).length;
  };
  return stream;
}

describe("a master killed with kill -9 while orders flow (private Redis Cluster)", () => {
  let rc;
  let dep;
  let cluster;
  before(async () => {
    rc = await startPrivateCluster({ nodeTimeoutMs: 1000 });
    dep = newDeployment();
    // The Redis client logs every failed reconnect to the dead node (about one a second per
    // connection): kept out of the test output, contoso's own warnings stay.
    const args = [...onCluster(rc.urls), "--log-level", process.env.TEST_LOG ?? "warn,redis::cluster_handling=error"];
    cluster = await startCluster(dep, { notify: 3, coreArgs: args, notifyArgs: args });
  });
  after(async () => {
    const errors = [];
    for (const step of [stopAll, () => cluster?.stop(), () => rc?.stop(), () => dep?.drop()]) {
      try {
        await step();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length) throw errors[0];
  });

  test("every accepted order's notification reaches every tab of its user once, across the failover", async () => {
    // Users whose channels live on the master about to die, and one whose channel does not.
    const first = uniqueUser("fo");
    const victim = await masterOf(rc.ports, userChannel(dep, first));
    const onVictim = [first];
    const elsewhere = [];
    for (let i = 0; (onVictim.length < 2 || elsewhere.length < 1) && i < 500; i += 1) {
      const u = uniqueUser("fo");
      const owner = await masterOf(rc.ports, userChannel(dep, u));
      if (owner === victim && onVictim.length < 2) onVictim.push(u);
      else if (owner !== victim && elsewhere.length < 1) elsewhere.push(u);
    }
    const users = [...onVictim, ...elsewhere];
    assert.equal(users.length, 3, "two users on the victim's shard, one elsewhere");

    // Two tabs per user, each pair on two different notify processes.
    const tabsOf = new Map();
    for (const [i, user] of users.entries()) {
      const tok = token(dep, user);
      tabsOf.set(user, [await openClient(cluster.notifiers[i % 3].hubUrl, tok), await openClient(cluster.notifiers[(i + 1) % 3].hubUrl, tok)]);
    }
    const allTabs = [...tabsOf.values()].flat();
    // Sharded subscriptions, on the master that owns each channel's slot.
    for (const user of users) {
      const channel = userChannel(dep, user);
      await expectSharded(rc.ports, channel, 2);
      assert.equal(await shardSubscribers([await masterOf(rc.ports, channel)], channel), 2, `${user}: subscribed on its channel's master`);
    }
    assert.equal(await shardSubscribers([victim], userChannel(dep, onVictim[1])), 2, "both victim-shard users are subscribed on the victim");

    const streams = new Map(users.map((u) => [u, orderStream(cluster.lb.base, token(dep, u), 200)]));
    const counts = (pred) => users.map((u) => streams.get(u).count(pred));
    // Every tab has a notification before the kill, so each has a last id to resume from.
    await eventually("orders reaching every tab before the kill", () => counts(() => true).every((n) => n >= 2) && allTabs.every((t) => t.seen.length >= 1));
    allTabs.forEach((t, i) => assert.equal(t.resumeNeeded, 0, `tab ${i}: no ResumeNeeded before the kill`));
    const statsBefore = new Map();
    for (const p of rc.ports.filter((p) => p !== victim)) statsBefore.set(p, { publish: await commandCalls(p, "publish"), spublish: await commandCalls(p, "spublish") });

    // Readiness of every contoso process, polled through the failover.
    const notReady = [];
    let polling = true;
    const poller = Promise.all(
      [["core", cluster.core], ...cluster.notifiers.map((n, i) => [`notify ${i}`, n])].map(async ([name, s]) => {
        while (polling) {
          try {
            const res = await fetchWithin(`${s.base}/health/ready`, {}, 3000);
            if (res.status !== 200) notReady.push({ name, at: Date.now(), status: res.status, body: await res.text() });
          } catch (err) {
            notReady.push({ name, at: Date.now(), error: err.message });
          }
          await sleep(25);
        }
      }),
    );

    await replicated(victim);
    const victimSlots = (await clusterNodes(victim)).find((n) => n.port === victim).ranges;
    const killAt = Date.now();
    const marks = new Map(allTabs.map((t) => [t, t.timeline.length]));
    await rc.kill(victim);
    // The failover: a former replica owns the victim's slots and every live node says ok.
    let view;
    await explained(
      eventually("a replica to take over the killed master's slots, cluster_state:ok on every live node", async () => {
        const alive = rc.alive();
        view = await clusterNodes(alive[0]);
        const owner = view?.find((n) => n.master && !n.fail && n.ranges.some(([a]) => a === victimSlots[0][0]));
        if (!owner || owner.port === victim) return false;
        for (const p of alive) if (!((await redisCli(p, "cluster", "info")) ?? "").includes("cluster_state:ok")) return false;
        return true;
      }, 30000),
      () => `cluster nodes: ${JSON.stringify(view)}`,
    );
    const failedOverAt = Date.now();
    await eventually("orders accepted after the failover, for every user", () => counts((o) => o.startedAt > failedOverAt).every((n) => n >= 3), 30000);
    const idsOf = new Map();
    for (const u of users) idsOf.set(u, await streams.get(u).stop());
    polling = false;
    await within(poller, 10000, "the readiness poller to stop");

    const all = users.flatMap((u) => streams.get(u).orders);
    // In flight at some point of the failover: started before it ended, accepted after it began
    // (an order placed just before the kill may wait, and be retried, through the whole window).
    const during = all.filter((o) => o.startedAt <= failedOverAt && o.acceptedAt >= killAt);
    const refused = all.filter((o) => o.refusals.length > 0);
    console.log(
      `failover: ${failedOverAt - killAt} ms from kill -9 of ${victim} to a new master; orders ${all.length} ` +
        `(before ${all.filter((o) => o.acceptedAt < killAt).length}, in flight during ${during.length}, after ${all.filter((o) => o.startedAt > failedOverAt).length}); ` +
        `${refused.length} retried (${refused.flatMap((o) => o.refusals).slice(0, 3).join(" | ")}); ` +
        `not ready: ${[...new Set(notReady.map((r) => r.name))].join(",") || "none"} ${notReady.slice(0, 2).map((r) => r.body ?? r.error).join(" | ")}`,
    );
    assert.ok(users.every((u) => streams.get(u).orders.some((o) => o.acceptedAt < killAt)), "orders accepted before the kill, for every user");
    assert.ok(during.length >= 1, "orders in flight while the cluster failed over");
    // Readiness failed while the cluster's state was fail, and is back. Not asserted for each
    // process: while the cluster is failing a probe may wait (the client retries) and answer
    // 200 once it has recovered, so a poller can miss one process's not-ready window.
    const stateFail = notReady.filter((r) => r.at >= killAt && r.status === 503 && /cluster state is fail/.test(r.body));
    assert.ok(stateFail.length >= 1, `/health/ready said the cluster state is not ok during the failover: ${JSON.stringify(notReady.slice(0, 3))}`);
    for (const s of [cluster.core, ...cluster.notifiers]) await eventually(`${s.base} ready after the failover`, async () => (await fetchWithin(`${s.base}/health/ready`)).status === 200);

    // The tabs of the users on the dead master filled their gap: told to resume (ResumeNeeded),
    // the module replayed. A tab whose stateful journal lived on the dead master instead had its
    // connection closed (its messages could not be kept); it reconnected and the module replayed
    // on the new connection. Either way a catch-up follows the kill.
    for (const user of onVictim) {
      for (const [i, tab] of tabsOf.get(user).entries()) {
        const since = () => tab.timeline.slice(marks.get(tab));
        const timeline = () => `timeline ${tab.timeline.join(",")} (kill after ${marks.get(tab)} events)`;
        const cause = () => {
          const t = since();
          return t.includes("ResumeNeeded") ? t.indexOf("ResumeNeeded") : t.indexOf("reconnecting");
        };
        await explained(eventually(`${user} tab ${i}: ResumeNeeded or a reconnect after the failover`, () => cause() !== -1), timeline);
        await explained(eventually(`${user} tab ${i}: a catch-up after it`, () => since().indexOf("catchUp", cause()) !== -1), timeline);
      }
    }
    // Exactly once per tab, each user's own orders only.
    for (const user of users) await explained(expectEveryNotificationOnce(tabsOf.get(user), idsOf.get(user)), () => `user ${user}`);

    // The subscriptions followed the slots to the new master, still sharded.
    const alive = rc.alive();
    for (const user of users) {
      const channel = userChannel(dep, user);
      await expectSharded(alive, channel, 2);
      const owner = await masterOf(alive, channel);
      assert.equal(await shardSubscribers([owner], channel), 2, `${user}: subscribed on its channel's master ${owner} after the failover`);
    }
    // The backplane published with SPUBLISH only: classic PUBLISH never grew on a live node.
    for (const [p, before] of statsBefore) {
      assert.equal(await commandCalls(p, "publish"), before.publish, `no classic PUBLISH on ${p}`);
    }
    const spublished = sum(await Promise.all([...statsBefore.keys()].map((p) => commandCalls(p, "spublish")))) - sum([...statsBefore.values()].map((s) => s.spublish));
    assert.ok(spublished >= all.filter((o) => o.startedAt > failedOverAt).length, `SPUBLISH grew on the live nodes: ${spublished}`);
    for (const tab of allTabs) await tab.client.stop();
  });
});
