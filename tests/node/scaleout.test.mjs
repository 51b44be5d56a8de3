// The design's scaling cases 1-3 across real processes behind nginx round-robin (no sticky
// sessions), and negotiate through the load balancer. Case 4 and outages: drain.test.mjs.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startCluster } from "./cluster.mjs";
import { eventually, hubConnection, newDeployment, openTab, placeOrder, sleep, token, uniqueUser } from "./harness.mjs";

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
