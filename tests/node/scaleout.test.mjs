// The design's scaling cases 1-3 across real processes behind nginx round-robin (no sticky
// sessions), a Redis outage under traffic, and negotiate through the load balancer.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chaosProxy, startCluster } from "./cluster.mjs";
import { eventually, hubConnection, newDeployment, openTab, placeOrder, sleep, startServer, token, uniqueUser } from "./harness.mjs";

/** Waits until every tab has one notification per order, then checks none came twice. */
async function expectExactlyOnce(tabs, ids, timeoutMs = 20000) {
  for (const tab of tabs) {
    await eventually(`all ${ids.length} notifications on a tab`, () => ids.every((id) => tab.received.some((n) => n.correlationId === id)), timeoutMs);
  }
  await sleep(300);
  for (const tab of tabs) {
    for (const id of ids) assert.equal(tab.received.filter((n) => n.correlationId === id).length, 1, `exactly once: ${id}`);
  }
}

describe("scale-out across notify processes", () => {
  let dep;
  let cluster;
  before(async () => {
    dep = newDeployment();
    cluster = await startCluster(dep, { notify: 2 });
  });
  after(async () => {
    await cluster?.stop();
    dep?.drop();
  });

  test("case 1: one tab through the load balancer gets its notification", async () => {
    const tok = token(dep, uniqueUser("one"));
    const tab = await openTab(cluster.lb.hubUrl, tok);
    const id = await placeOrder(cluster.lb, tok);
    await expectExactlyOnce([tab], [id]);
    assert.equal((await tab.conn.invoke("GetCurrentStatus", id)).status, "COMPLETED");
    await tab.conn.stop();
  });

  test("case 2: tabs of one user on two processes each get it once; another user gets nothing", async () => {
    const tok = token(dep, uniqueUser("two"));
    const tabs = [await openTab(cluster.notifiers[0].hubUrl, tok), await openTab(cluster.notifiers[1].hubUrl, tok, { msgpack: true })];
    const others = [await openTab(cluster.notifiers[0].hubUrl, token(dep, uniqueUser("other"))), await openTab(cluster.notifiers[1].hubUrl, token(dep, uniqueUser("other")))];
    const ids = [await placeOrder(cluster.lb, tok), await placeOrder(cluster.lb, tok), await placeOrder(cluster.lb, tok)];
    await expectExactlyOnce(tabs, ids);
    for (const o of others) assert.deepEqual(o.received, []);
    for (const t of [...tabs, ...others]) await t.conn.stop();
  });

  test("case 3: scaling out from 2 to 4 processes keeps every tab, old and new, receiving everything once", async () => {
    const tok = token(dep, uniqueUser("three"));
    const tabs = [await openTab(cluster.lb.hubUrl, tok), await openTab(cluster.lb.hubUrl, tok)];
    await cluster.addNotify();
    await cluster.addNotify();
    for (let i = 0; i < 4; i += 1) tabs.push(await openTab(cluster.lb.hubUrl, tok));
    for (const n of cluster.notifiers) tabs.push(await openTab(n.hubUrl, tok));
    const ids = [];
    for (let i = 0; i < 10; i += 1) ids.push(await placeOrder(cluster.lb, tok));
    await expectExactlyOnce(tabs, ids);
    for (const t of tabs) await t.conn.stop();
  });

  test("clients that negotiate connect through the load balancer every time", async () => {
    const tok = token(dep, uniqueUser("neg"));
    for (let i = 0; i < 12; i += 1) {
      const conn = hubConnection(cluster.lb.hubUrl, tok, { skipNegotiation: false, reconnect: null });
      await conn.start();
      assert.ok(conn.connectionId);
      await conn.stop();
    }
  });
});

describe("a Redis outage under traffic", () => {
  let dep;
  let core;
  let notifiers = [];
  let proxies = [];
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
    proxies.forEach((p) => p.close());
    await Promise.all([core, ...notifiers].map((p) => p?.stop()));
    dep?.drop();
  });

  test("every notification placed before, during and after the outage arrives", async () => {
    const tok = token(dep, uniqueUser("blip"));
    const tabs = [await openTab(notifiers[0].hubUrl, tok), await openTab(notifiers[1].hubUrl, tok)];
    // What the client module does: resume when the server says live delivery had a gap.
    for (const tab of tabs) {
      let last = null;
      tab.conn.on("OrderCompleted", (n) => (last = n.notificationId));
      tab.conn.on("ResumeNeeded", () => tab.conn.invoke("ResumeNotifications", last).catch(() => {}));
      tab.conn.onreconnected(() => tab.conn.invoke("ResumeNotifications", last).catch(() => {}));
    }
    const ids = [await placeOrder(core, tok)];
    await eventually("the first notification", () => tabs.every((t) => t.received.length === 1));
    proxies.forEach((p) => p.cut());
    for (let i = 0; i < 3; i += 1) ids.push(await placeOrder(core, tok));
    await sleep(1500);
    proxies.forEach((p) => p.restore());
    for (let i = 0; i < 3; i += 1) ids.push(await placeOrder(core, tok));
    for (const tab of tabs) {
      await eventually("every notification on every tab", () => ids.every((id) => tab.received.some((n) => n.correlationId === id)), 30000);
      const unique = new Set(tab.received.map((n) => n.notificationId));
      assert.equal(unique.size, ids.length, "one notification id per order (duplicates are the same id)");
    }
    for (const t of tabs) await t.conn.stop();
  });
});
