// Stateful reconnect across processes (issue 17): the official @microsoft/signalr client with
// `withStatefulReconnect()`, JSON and MessagePack, through nginx round-robin over three notify
// processes. A socket cut between the tab and nginx, a kill -9 and a drain of the tab's process:
// the client reconnects its WebSocket once, with the same connection token, to whichever process
// nginx picks, and that process resends what the tab had not acknowledged and what it missed,
// so every tab gets every notification exactly once, with no onreconnecting / onreconnected and
// no ResumeNotifications. An invocation in flight completes once. Past the window or the byte
// bound the resume is refused and the client module's ResumeNotifications fills the gap. Only the
// connection's own user can resume it, a forged token resumes nothing, and an open connection is
// not taken over. Each tab talks through its own TCP proxy (stateful.mjs), which cuts, holds and
// freezes sockets and records every hub message of both directions.
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import WebSocket from "ws";
import { startCluster } from "./cluster.mjs";
import { eventually, explained, fetchWithin, hubConnections, newDeployment, orderStream, placeOrder, sleep, startServer, token, uniqueUser, within } from "./harness.mjs";
import { RawClient } from "./raw.mjs";
import { delta, invocationsRun, openStatefulTab, resumeOutcomes, tabProxy } from "./stateful.mjs";
import { openClientTab } from "./tabs.mjs";

const lbPort = (cluster) => Number(new URL(cluster.lb.base).port);
const live = (cluster) => cluster.notifiers.filter((n) => n.child.exitCode === null && n.child.signalCode === null);

/** Every official-client tab and proxy this file opens, closed after each test. */
const tabsOpened = [];
/** The client-module tabs (OrderStatusClient), stopped after each test. */
const clients = new Set();
/** The order streams, stopped after each test (a failed assertion leaves one running). */
const streams = new Set();
function ordersTo(server, tok, everyMs) {
  const stream = orderStream(server, tok, everyMs);
  streams.add(stream);
  return stream;
}
async function closeAll() {
  // Bounded: a client stopped in the middle of a resume the proxy holds would wait for it.
  const bounded = (p) => Promise.race([p.catch(() => {}), sleep(5000)]);
  await Promise.all([...streams].map((s) => bounded(s.stop())));
  streams.clear();
  await Promise.all(tabsOpened.map((t) => bounded(t.conn.stop())));
  await Promise.all([...clients].map((c) => bounded(c.stop())));
  clients.clear();
  for (const t of tabsOpened.splice(0)) t.proxy?.close();
}

async function statefulTab(cluster, tok, name, options = {}) {
  const tab = await openStatefulTab(lbPort(cluster), tok, { notifiers: live(cluster), ...options });
  tab.name = `${name} (${tab.protocol}${options.stateful === false ? ", not stateful" : ""})`;
  tabsOpened.push(tab);
  return tab;
}

const proxyNote = (tab) => `${tab.name}: requests ${tab.proxy.describe()}; events ${JSON.stringify(tab.events)}${tab.proxy.problems.length ? `; proxy problems ${tab.proxy.problems.join(" | ")}` : ""}`;

/** Where the copies of notification `id` came from: on which socket of `tab`, at which counted position, and which other tabs got it twice. */
function duplicateNote(tabs, tab, id) {
  const copies = [];
  const ordinal = new Map();
  for (const m of tab.proxy?.toClient ?? []) {
    if (m.type < 1 || m.type > 5) continue;
    ordinal.set(m.conn, (ordinal.get(m.conn) ?? 0) + 1);
    if (m.type === 1 && m.arguments?.[0]?.notificationId === id) copies.push(`socket #${m.conn} counted message ${ordinal.get(m.conn)} at +${m.at - tab.proxy.requests[0].at} ms (${JSON.stringify(m.arguments[0])})`);
  }
  const others = tabs.filter((t) => t !== tab).map((t) => `${t.name}: ${t.received.filter((n) => n.notificationId === id).length}`);
  return `${id} reached the client as ${copies.join(" and ")}; copies on the other tabs: ${others.join(", ")}`;
}

/**
 * Every tab has one notification per order, by correlation id and by notification id, and
 * nothing else (waits until all arrived, then leaves a moment for a duplicate on its way).
 */
async function expectEveryNotificationOnce(tabs, ids) {
  for (const tab of tabs) {
    await explained(
      eventually(`${tab.name}: all ${ids.length} notifications`, () => ids.every((id) => tab.received.some((n) => n.correlationId === id)), 30000),
      () => {
        const missing = ids.filter((id) => !tab.received.some((n) => n.correlationId === id));
        const elsewhere = missing.map((id) => `${id} on ${tabs.filter((t) => t.received.some((n) => n.correlationId === id)).length} of ${tabs.length} tabs`);
        return `missing ${missing.length} (${elsewhere.join(", ")}); ${proxyNote(tab)}`;
      },
    );
  }
  await sleep(500);
  for (const tab of tabs) {
    const perNotification = new Map();
    for (const n of tab.received) perNotification.set(n.notificationId, (perNotification.get(n.notificationId) ?? 0) + 1);
    const twice = [...perNotification].filter(([, k]) => k > 1);
    assert.deepEqual(twice, [], `${tab.name}: every notification id once (${proxyNote(tab)}; ${twice.map(([id]) => duplicateNote(tabs, tab, id)).join("; ")})`);
    assert.deepEqual([...new Set(tab.received.map((n) => n.correlationId))].sort(), [...ids].sort(), `${tab.name}: a notification for every order and no other`);
    assert.equal(tab.received.length, ids.length, `${tab.name}: one notification per order`);
  }
}

/** No application-visible reconnect: the raw client saw no reconnecting, reconnected or close, and invoked no ResumeNotifications. */
function assertInvisible(tabs) {
  for (const tab of tabs) {
    assert.deepEqual(tab.events, [], `${tab.name}: no onreconnecting / onreconnected / onclose (${proxyNote(tab)})`);
    assert.ok(!tab.invoked.includes("ResumeNotifications"), `${tab.name}: no ResumeNotifications`);
    assert.deepEqual(tab.proxy.problems, [], `${tab.name}: the proxy read every frame`);
  }
}

/**
 * The tab's WebSocket was resumed once: one negotiate, a fresh upgrade with handshake version 2,
 * then one upgrade with the same connection token, answered 101, whose first hub message from
 * the server (Pings aside) is its Sequence message.
 */
function assertResumedOnce(tab) {
  const note = proxyNote(tab);
  assert.equal(tab.proxy.negotiates().length, 1, `${tab.name}: one negotiate, no new connection (${note})`);
  const [fresh, ...rest] = tab.proxy.upgrades();
  assert.equal(fresh.status, 101, `${tab.name}: the first WebSocket (${note})`);
  assert.ok(fresh.id, `${tab.name}: the WebSocket carries the negotiated connection token`);
  assert.equal(rest.length, 1, `${tab.name}: one resume (${note})`);
  assert.deepEqual([rest[0].resume, rest[0].id, rest[0].status], [true, fresh.id, 101], `${tab.name}: the resume reused the connection token and was accepted (${note})`);
  const hello = tab.proxy.handshakes.find((h) => h.conn === fresh.conn && h.from === "client");
  assert.equal(hello?.version, 2, `${tab.name}: handshake version 2`);
  assert.ok(!tab.proxy.handshakes.some((h) => h.conn === rest[0].conn), `${tab.name}: no handshake on the resumed socket`);
  const first = tab.proxy.toClient.find((m) => m.conn === rest[0].conn && m.type !== 6);
  assert.equal(first?.type, 9, `${tab.name}: the server's first message on the resumed socket is its Sequence (${JSON.stringify(first)})`);
  const clientFirst = tab.proxy.toServer.find((m) => m.conn === rest[0].conn);
  assert.equal(clientFirst?.type, 9, `${tab.name}: the client's first message on the resumed socket is its Sequence`);
  assert.ok(!tab.proxy.toClient.some((m) => m.type === 7), `${tab.name}: no SignalR Close reached the tab`);
}

async function negotiate(base, tok, { stateful }) {
  const res = await fetchWithin(`${base}/hubs/order-status/negotiate?negotiateVersion=1${stateful ? "&useStatefulReconnect=true" : ""}`, {
    method: "POST",
    headers: { authorization: `Bearer ${tok}` },
  });
  assert.equal(res.status, 200, "negotiate");
  return res.json();
}

/**
 * A WebSocket upgrade to `url` with `tok`, as a resume does it (no handshake: a Sequence message
 * first). Resolves with the refusal's status and body, or, if it was accepted, 101 and what the
 * server sent in the next two seconds.
 */
function resumeAttempt(url, tok) {
  return within(
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url.replace(/^http/, "ws"), { headers: { authorization: `Bearer ${tok}` }, handshakeTimeout: 15000 });
      ws.once("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (d) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode, body }));
        res.on("error", () => resolve({ status: res.statusCode, body }));
      });
      ws.once("open", () => {
        const records = [];
        ws.on("message", (d) => records.push(d.toString()));
        ws.send('{"type":9,"sequenceId":1}\x1e');
        setTimeout(() => {
          ws.terminate();
          resolve({ status: 101, body: records.join("") });
        }, 2000);
      });
      ws.once("error", reject);
    }),
    25000,
    `an answer to the upgrade of ${url.replace(/id=[^&]+/, "id=…")}`,
  );
}

/** The records of a RawClient one at a time (a frame may hold several). */
function recordsOf(raw) {
  const queue = [];
  const next = async (timeoutMs) => {
    while (!queue.length) {
      const batch = await raw.nextRecords(Math.max(1, timeoutMs));
      if (!batch) return null;
      queue.push(...batch.records);
    }
    return queue.shift();
  };
  return {
    next,
    /** Records until one matches `pred` (Pings skipped from `seen`); fails naming `what`. */
    async until(pred, timeoutMs, what) {
      const deadline = Date.now() + timeoutMs;
      const seen = [];
      for (;;) {
        const r = await next(deadline - Date.now());
        if (!r) throw new Error(`no ${what} within ${timeoutMs} ms; saw ${JSON.stringify(seen)}`);
        if (r.type !== 6) seen.push(r);
        if (pred(r)) return { record: r, seen };
      }
    },
    /** Every record that arrives within `ms`. */
    async during(ms) {
      const deadline = Date.now() + ms;
      const out = [];
      for (let r = await next(ms); r; r = await next(deadline - Date.now())) {
        out.push(r);
        if (Date.now() >= deadline) break;
      }
      return out;
    },
  };
}

/** A stateful connection opened by hand: negotiate, WebSocket with its token, handshake version 2. */
async function rawStateful(base, hubUrl, tok) {
  const neg = await negotiate(base, tok, { stateful: true });
  assert.equal(neg.useStatefulReconnect, true, "negotiate offers stateful reconnect when asked");
  const url = `${hubUrl}?id=${neg.connectionToken}`;
  const raw = await RawClient.connect(url, { token: tok, query: false });
  raw.send('{"protocol":"json","version":2}\x1e');
  const records = recordsOf(raw);
  assert.deepEqual(await records.next(5000), {}, "handshake version 2 accepted");
  return { raw, records, url, token: neg.connectionToken };
}


describe("stateful reconnect through nginx, three notify processes", () => {
  let dep;
  let cluster;
  before(async () => {
    dep = newDeployment();
    cluster = await startCluster(dep, { notify: 3, notifyArgs: ["--drain-spread", "2", "--shutdown-timeout", "10"] });
  });
  // Each test's tabs go with it: a later kill or drain must not move them.
  afterEach(closeAll);
  after(async () => {
    await closeAll();
    await cluster?.stop();
    dep?.drop();
  });

  test("security: another user's token or a forged connection token resume nothing (404), an open connection is not taken over (409), and its own user resumes it exactly where it was", async () => {
    const procs = live(cluster);
    const tokA = token(dep, uniqueUser("sec-a"));
    const tokB = token(dep, uniqueUser("sec-b"));
    const plain = await negotiate(cluster.lb.base, tokA, { stateful: false });
    assert.equal(plain.useStatefulReconnect, undefined, "not offered to a client that did not ask");
    assert.equal(plain.negotiateVersion, 1);

    const before = await resumeOutcomes(procs);
    const a = await rawStateful(cluster.lb.base, cluster.lb.hubUrl, tokA);
    const forged = a.token.slice(0, -6) + (a.token.at(-6) === "A" ? "B" : "A") + a.token.slice(-5);
    const url = (tok) => `${cluster.lb.hubUrl}?id=${tok}`;

    // While it is open: another user, forged tokens, then its own user on a second socket.
    const otherUserOpen = await resumeAttempt(a.url, tokB);
    assert.equal(otherUserOpen.status, 404, `another user's token on an open connection: ${JSON.stringify(otherUserOpen)}`);
    assert.match(otherUserOpen.body, /No Connection with that ID/);
    for (const bad of [forged, randomUUID(), `${a.token}x`]) {
      const answer = await resumeAttempt(url(bad), tokA);
      assert.equal(answer.status, 404, `a forged connection token: ${JSON.stringify(answer)}`);
      assert.match(answer.body, /No Connection with that ID/);
    }
    const started = Date.now();
    const inUse = await resumeAttempt(a.url, tokA);
    assert.equal(inUse.status, 409, `a second socket for a connection that is open: ${JSON.stringify(inUse)}`);
    console.log(`stateful: 409 for an open connection after ${Date.now() - started} ms`);

    // The original keeps working: an invocation completes, a notification arrives.
    a.raw.send(`{"type":1,"invocationId":"1","target":"GetCurrentStatus","arguments":["${randomUUID()}"]}\x1e`);
    const completion = await a.records.until((r) => r.type === 3, 10000, "completion");
    assert.equal(completion.record.invocationId, "1");
    assert.match(completion.record.error ?? "", /order not found/);
    const orderId = await placeOrder(cluster.lb, tokA);
    const pushed = await a.records.until((r) => r.type === 1 && r.target === "OrderCompleted", 15000, "OrderCompleted");
    assert.equal(pushed.record.arguments[0].correlationId, orderId);
    assert.equal(pushed.record.invocationId, undefined);

    // Dropped (no Close, no WebSocket close): still only its own user resumes it.
    a.raw.ws.terminate();
    const otherUser = await resumeAttempt(a.url, tokB);
    assert.equal(otherUser.status, 404, `another user's token on a dropped connection: ${JSON.stringify(otherUser)}`);
    const forgedDropped = await resumeAttempt(url(forged), tokA);
    assert.equal(forgedDropped.status, 404, `a forged token of a dropped connection: ${JSON.stringify(forgedDropped)}`);
    assert.equal(delta(before, await resumeOutcomes(procs)).resumed, 0, "no refused attempt counted as resumed");

    // Its own user: Sequence 1 and the invocation again (the client's oldest unacknowledged id);
    // the server answers Sequence 1 (nothing was acknowledged), resends the completion and the
    // notification, and does not run the invocation a second time.
    const ranBefore = await invocationsRun(procs, "GetCurrentStatus");
    const resumed = await RawClient.connect(a.url, { token: tokA, query: false });
    const back = recordsOf(resumed);
    resumed.send(`{"type":9,"sequenceId":1}\x1e{"type":1,"invocationId":"1","target":"GetCurrentStatus","arguments":["${randomUUID()}"]}\x1e`);
    const sequence = await back.until((r) => r.type !== 6, 15000, "the server's Sequence");
    assert.deepEqual(sequence.record, { type: 9, sequenceId: 1 }, "the server's Sequence comes first, from its oldest unacknowledged message");
    const replay = [];
    await eventually("the completion and the notification resent", async () => {
      const r = await back.next(200);
      if (r) replay.push(r);
      return replay.some((x) => x.type === 3) && replay.some((x) => x.type === 1);
    }, 15000);
    // Anything that would come twice comes now.
    replay.push(...(await back.during(1000)));
    const counted = replay.filter((r) => r.type >= 1 && r.type <= 5);
    assert.deepEqual(counted.map((r) => r.type), [3, 1], `resent in order, once each: ${JSON.stringify(replay)}`);
    assert.equal(counted[0].invocationId, "1");
    assert.equal(counted[1].arguments[0].correlationId, orderId);
    assert.equal(await invocationsRun(procs, "GetCurrentStatus"), ranBefore, "the resent invocation was not run again");
    // And it goes on: a new notification, after an Ack of what it had.
    resumed.send('{"type":8,"sequenceId":2}\x1e');
    const next = await placeOrder(cluster.lb, tokA);
    const later = await back.until((r) => r.type === 1 && r.target === "OrderCompleted", 15000, "a new OrderCompleted");
    assert.equal(later.record.arguments[0].correlationId, next);
    resumed.close();

    const outcomes = delta(before, await resumeOutcomes(procs));
    console.log(`stateful: security resumes ${JSON.stringify(outcomes)}`);
    assert.equal(outcomes.resumed, 1, `one resume: ${JSON.stringify(outcomes)}`);
    assert.equal(outcomes["in-use"], 1, `one refusal of an open connection: ${JSON.stringify(outcomes)}`);
  });

  test("a socket cut between the tab and nginx: JSON and MessagePack tabs resume on any process, every notification once, nothing visible to the app", async () => {
    const tok = token(dep, uniqueUser("cut"));
    const cutTabs = [await statefulTab(cluster, tok, "cut tab 1"), await statefulTab(cluster, tok, "cut tab 2", { msgpack: true })];
    const control = await statefulTab(cluster, tok, "control tab");
    const tabs = [...cutTabs, control];
    const procs = live(cluster);
    const before = await resumeOutcomes(procs);
    const orders = ordersTo(cluster.lb, tok, 100);
    await eventually("orders reaching every tab before the cut", () => orders.ids.length >= 3 && tabs.every((t) => t.received.length >= 2));
    for (const t of cutTabs) t.proxy.cut();
    for (const t of cutTabs) {
      await explained(
        eventually(`${t.name}: resumed`, () => t.proxy.upgrades().some((u) => u.resume && u.status !== null), 15000),
        () => proxyNote(t),
      );
    }
    const resumedAt = Date.now();
    await eventually("orders after the resume", () => orders.after(resumedAt) >= 3);
    const ids = await orders.stop();
    await expectEveryNotificationOnce(tabs, ids);
    assertInvisible(tabs);
    for (const t of cutTabs) assertResumedOnce(t);
    assert.equal(control.proxy.upgrades().length, 1, "the control tab kept its socket");
    const outcomes = delta(before, await resumeOutcomes(procs));
    assert.deepEqual(outcomes, { resumed: 2, unknown: 0, "in-use": 0, overflowed: 0 }, "two resumes");
    assert.equal(await invocationsRun(procs, "ResumeNotifications"), 0, "no process ran ResumeNotifications");
  });

  test("an invocation in flight when the socket is cut completes exactly once (cut after it was forwarded, or its completion lost), JSON and MessagePack", async () => {
    const tok = token(dep, uniqueUser("inflight"));
    const variants = [
      ["cut-after", false],
      ["cut-after", true],
      ["drop-completion", false],
      ["drop-completion", true],
    ];
    const tabs = [];
    for (const [mode, msgpack] of variants) tabs.push(await statefulTab(cluster, tok, `in flight, ${mode}`, { msgpack }));
    const procs = live(cluster);
    const first = await placeOrder(cluster.lb, tok);
    await eventually("the first order's notification on every tab", () => tabs.every((t) => t.received.length === 1));
    const orders = ordersTo(cluster.lb, tok, 200);
    const before = await resumeOutcomes(procs);
    for (const [i, [mode]] of variants.entries()) {
      const tab = tabs[i];
      const ran = await invocationsRun(procs, "GetCurrentStatus");
      const trapped = tab.proxy.trapInvocation("GetCurrentStatus", mode);
      const answer = await explained(tab.conn.invoke("GetCurrentStatus", first), () => proxyNote(tab));
      const { invocationId } = await within(trapped, 1000, `${tab.name}: the proxy to have cut`);
      assert.equal(answer.correlationId, first, tab.name);
      assert.equal(answer.status, "COMPLETED", tab.name);
      assert.match(answer.orderId, /^CS-\d+$/, tab.name);
      // A run on the old process that was still finishing would show here.
      await sleep(1000);
      assert.equal(await invocationsRun(procs, "GetCurrentStatus") - ran, 1, `${tab.name}: the server ran GetCurrentStatus once (${proxyNote(tab)})`);
      const completions = tab.proxy.toClient.filter((m) => m.type === 3 && m.invocationId === invocationId);
      assert.equal(completions.length, 1, `${tab.name}: one completion reached the client (${JSON.stringify(completions)})`);
      const resumedConn = tab.proxy.upgrades()[1]?.conn;
      assert.equal(completions[0].conn, resumedConn, `${tab.name}: the completion came on the resumed socket`);
    }
    const ids = await orders.stop();
    await expectEveryNotificationOnce(tabs, [first, ...ids]);
    assertInvisible(tabs);
    for (const t of tabs) assertResumedOnce(t);
    assert.equal(delta(before, await resumeOutcomes(procs)).resumed, variants.length);
  });

  test("kill -9 of the tabs' notify process: they resume on the others, every notification once, nothing visible to the app", async () => {
    const tok = token(dep, uniqueUser("kill"));
    const tabs = [];
    for (let i = 0; i < 6; i += 1) tabs.push(await statefulTab(cluster, tok, `tab ${i}`, { msgpack: i % 2 === 1 }));
    // The victim: a process holding tabs of both protocols if there is one.
    const holders = live(cluster).map((n) => ({ n, tabs: tabs.filter((t) => t.process === n) }));
    holders.sort((x, y) => new Set(y.tabs.map((t) => t.protocol)).size - new Set(x.tabs.map((t) => t.protocol)).size || y.tabs.length - x.tabs.length);
    const victim = holders[0].n;
    const onVictim = holders[0].tabs;
    const others = tabs.filter((t) => !onVictim.includes(t));
    console.log(`stateful: kill -9 of a process holding ${onVictim.length} tabs (${onVictim.map((t) => t.protocol).join(", ")})`);
    assert.ok(onVictim.length >= 1);
    const survivors = live(cluster).filter((n) => n !== victim);
    const before = await resumeOutcomes(survivors);
    const orders = ordersTo(cluster.lb, tok, 100);
    await eventually("orders reaching every tab before the kill", () => orders.ids.length >= 3 && tabs.every((t) => t.received.length >= 2));
    const killedAt = Date.now();
    await victim.kill();
    await explained(
      eventually("every tab of the killed process resumed", () => onVictim.every((t) => t.proxy.upgrades().some((u) => u.resume && u.status !== null)), 20000),
      () => onVictim.map(proxyNote).join(" || "),
    );
    console.log(`stateful: the tabs of the killed process resumed within ${Date.now() - killedAt} ms`);
    const resumedAt = Date.now();
    await eventually("orders after the resumes", () => orders.after(resumedAt) >= 3);
    const ids = await orders.stop();
    await expectEveryNotificationOnce(tabs, ids);
    assertInvisible(tabs);
    for (const t of onVictim) assertResumedOnce(t);
    for (const t of others) assert.equal(t.proxy.upgrades().length, 1, `${t.name}: kept its socket`);
    const outcomes = delta(before, await resumeOutcomes(survivors));
    assert.deepEqual(outcomes, { resumed: onVictim.length, unknown: 0, "in-use": 0, overflowed: 0 }, "one resume per tab of the killed process");
    assert.equal(await invocationsRun(survivors, "ResumeNotifications"), 0, "no process ran ResumeNotifications");
    // Three processes again for what follows.
    cluster.notifiers.splice(cluster.notifiers.indexOf(victim), 1);
    await cluster.addNotify();
  });

  test("a drain (SIGTERM) of the tabs' process: stateful tabs resume elsewhere with no Close and no reconnect; a tab without stateful reconnect gets Close(allowReconnect)", async () => {
    const tok = token(dep, uniqueUser("drain"));
    const tabs = [];
    for (let i = 0; i < 6; i += 1) tabs.push(await statefulTab(cluster, tok, `tab ${i}`, { msgpack: i % 2 === 1 }));
    const leaving = tabs[0].process;
    const onLeaving = tabs.filter((t) => t.process === leaving);
    // A tab of the same user without stateful reconnect on the leaving process.
    let plainTab;
    for (let i = 0; i < 6 && !plainTab; i += 1) {
      const t = await statefulTab(cluster, tok, `plain tab ${i}`, { stateful: false });
      // The others stay open: closing them would move the connection gauges being read.
      if (t.process === leaving) plainTab = t;
    }
    assert.ok(plainTab, "a tab without stateful reconnect landed on the leaving process");
    const staying = live(cluster).filter((n) => n !== leaving);
    const before = await resumeOutcomes(staying);
    const orders = ordersTo(cluster.lb, tok, 100);
    await eventually("orders reaching every tab before the drain", () => orders.ids.length >= 3 && tabs.every((t) => t.received.length >= 2));
    // As Kubernetes does it: readiness fails, the endpoint goes, then SIGTERM.
    writeFileSync(leaving.drainFile, "");
    await eventually("the leaving process to report not ready", async () => (await fetchWithin(`${leaving.base}/health/ready`)).status === 503);
    await cluster.lb.setNotify(staying.map((n) => n.port));
    const sigterm = Date.now();
    leaving.child.kill("SIGTERM");
    assert.deepEqual(await leaving.exitedWithin(undefined, "its exit after SIGTERM"), { code: 0, signal: null }, "the drained process exits 0");
    console.log(`stateful: the drained process exited ${Date.now() - sigterm} ms after SIGTERM`);
    await explained(
      eventually("every stateful tab of the drained process resumed", () => onLeaving.every((t) => t.proxy.upgrades().some((u) => u.resume && u.status !== null)), 20000),
      () => onLeaving.map(proxyNote).join(" || "),
    );
    const resumedAt = Date.now();
    await eventually("orders after the drain", () => orders.after(resumedAt) >= 3);
    const ids = await orders.stop();
    await expectEveryNotificationOnce(tabs, ids);
    assertInvisible(tabs);
    for (const t of onLeaving) assertResumedOnce(t);
    for (const t of tabs.filter((x) => !onLeaving.includes(x))) assert.equal(t.proxy.upgrades().length, 1, `${t.name}: kept its socket`);
    const outcomes = delta(before, await resumeOutcomes(staying));
    assert.deepEqual(outcomes, { resumed: onLeaving.length, unknown: 0, "in-use": 0, overflowed: 0 }, "one resume per stateful tab of the drained process");
    // The tab without stateful reconnect was told to reconnect, and did (a new connection).
    const closes = plainTab.proxy.toClient.filter((m) => m.type === 7);
    assert.deepEqual(closes.map((m) => m.allowReconnect), [true], `${proxyNote(plainTab)}: one Close with allowReconnect`);
    await eventually(`${plainTab.name}: reconnected`, () => plainTab.events.some((e) => e.kind === "reconnected"), 20000);
    cluster.notifiers.splice(cluster.notifiers.indexOf(leaving), 1);
  });
});

const WINDOW_S = 2;
const BUFFER = 4000;

describe(`stateful reconnect refused: --stateful-reconnect-window ${WINDOW_S}, --stateful-reconnect-buffer ${BUFFER}`, () => {
  let dep;
  let cluster;
  before(async () => {
    dep = newDeployment();
    cluster = await startCluster(dep, { notify: 3, notifyArgs: ["--stateful-reconnect-window", String(WINDOW_S), "--stateful-reconnect-buffer", String(BUFFER), "--drain-spread", "2"] });
  });
  // Each test's tabs go with it: a later kill or drain must not move them.
  afterEach(closeAll);
  after(async () => {
    await closeAll();
    await cluster?.stop();
    dep?.drop();
  });

  /** A tab of the client module (stateful reconnect by default) through its own proxy. */
  async function moduleTab(tok) {
    const proxy = await tabProxy(lbPort(cluster));
    const tab = await openClientTab(proxy.hubUrl, tok, clients);
    tab.proxy = proxy;
    tabsOpened.push({ conn: { stop: async () => {} }, proxy });
    return tab;
  }

  /** The module tab saw every order once (after its de-duplication) and nothing else. */
  function assertSeenOnce(tab, ids) {
    assert.deepEqual([...tab.seen].sort(), [...ids].sort(), `every notification once (requests ${tab.proxy.describe()})`);
  }

  /** Three more orders after the tab is back, then every order of the stream once on the tab. */
  async function expectEveryOrderOnce(tab, orders) {
    const backAt = Date.now();
    await eventually("orders after the catch-up", () => orders.after(backAt) >= 3);
    const ids = await orders.stop();
    await eventually("every notification", () => ids.every((id) => tab.seen.includes(id)), 30000);
    await sleep(500);
    assertSeenOnce(tab, ids);
  }

  /**
   * Waits for the catch-up on a new connection, or for a second resume attempt (the client
   * makes one per drop: a second means the first was accepted and then failed), whichever
   * comes first; `assertStartedOver` says which.
   */
  async function startedOver(tab) {
    await explained(
      eventually("the catch-up on a new connection", () => tab.catchUps.length >= 1 || tab.proxy.upgrades().filter((u) => u.resume && u.status !== null).length >= 2, 30000),
      () => `requests ${tab.proxy.describe()}; timeline ${tab.timeline.join(",")}`,
    );
  }

  /** Refused resume -> a new connection (negotiate, new token) -> one catch-up with ResumeNotifications. */
  function assertStartedOver(tab, refusal) {
    const upgrades = tab.proxy.upgrades();
    const note = `requests ${tab.proxy.describe()}; timeline ${tab.timeline.join(",")}`;
    const resumes = upgrades.filter((u) => u.resume);
    assert.deepEqual(resumes.map((u) => u.status), [refusal], `one resume, refused with ${refusal} (${note})`);
    assert.equal(tab.proxy.negotiates().length, 2, `a second negotiate: a new connection (${note})`);
    const fresh = upgrades.filter((u) => !u.resume);
    assert.equal(fresh.length, 2, note);
    assert.notEqual(fresh[1].id, fresh[0].id, "a new connection token");
    assert.equal(fresh[1].status, 101, note);
    const from = tab.timeline.indexOf("reconnecting");
    assert.ok(from > 0 && tab.timeline.indexOf("connected", from) > from && tab.timeline.indexOf("catchUp", from) > from, `reconnecting, connected, catch-up (${note})`);
    assert.equal(tab.catchUps.length, 1, note);
    assert.equal(tab.catchUps[0].result?.complete, true, `the replay was complete (${JSON.stringify(tab.catchUps)})`);
  }

  test("a resume after the window is refused (404); the client starts a new connection and ResumeNotifications fills the gap", async () => {
    const tok = token(dep, uniqueUser("window"));
    const tab = await moduleTab(tok);
    const procs = live(cluster);
    const before = await resumeOutcomes(procs);
    const ranBefore = await invocationsRun(procs, "ResumeNotifications");
    // Slowly: what is published while the tab is away stays far below the byte bound.
    const orders = ordersTo(cluster.lb, tok, 400);
    await eventually("orders reaching the tab", () => tab.seen.length >= 2);
    tab.proxy.holdResumes(WINDOW_S * 1000 + 2500);
    const cutAt = Date.now();
    tab.proxy.cut();
    await startedOver(tab);
    assertStartedOver(tab, 404);
    console.log(`stateful: past the window, caught up ${Date.now() - cutAt} ms after the cut`);
    await expectEveryOrderOnce(tab, orders);
    const outcomes = delta(before, await resumeOutcomes(procs));
    assert.deepEqual(outcomes, { resumed: 0, unknown: 1, "in-use": 0, overflowed: 0 }, "refused as unknown: past its window");
    assert.equal(await invocationsRun(procs, "ResumeNotifications") - ranBefore, 1, "one ResumeNotifications");
    assert.deepEqual(tab.proxy.problems, []);
  });

  test("a resume past the byte bound is refused (404); the client starts a new connection and ResumeNotifications fills the gap", async () => {
    const tok = token(dep, uniqueUser("bytes"));
    const tab = await moduleTab(tok);
    const procs = live(cluster);
    const before = await resumeOutcomes(procs);
    const orders = ordersTo(cluster.lb, tok, 50);
    await eventually("orders reaching the tab", () => tab.seen.length >= 2);
    // The tab stops getting (and so acknowledging) anything, its socket open, while the server
    // writes more than twice the bound to it.
    tab.proxy.freeze();
    await explained(
      eventually(`the server to write more than ${2 * BUFFER} bytes the tab cannot acknowledge`, () => tab.proxy.swallowed() > 2 * BUFFER || tab.proxy.openUpgraded() === 0, 30000),
      () => `swallowed ${tab.proxy.swallowed()} bytes; requests ${tab.proxy.describe()}`,
    );
    console.log(`stateful: ${tab.proxy.swallowed()} bytes unacknowledged, socket ${tab.proxy.openUpgraded() ? "still open" : "closed by the server"}`);
    tab.proxy.cut();
    await startedOver(tab);
    assertStartedOver(tab, 404);
    await expectEveryOrderOnce(tab, orders);
    const outcomes = delta(before, await resumeOutcomes(procs));
    assert.deepEqual(outcomes, { resumed: 0, unknown: 0, "in-use": 0, overflowed: 1 }, "refused as overflowed");
    assert.deepEqual(tab.proxy.problems, []);
  });

  test("a resume within the window and the bound still works here", async () => {
    const tok = token(dep, uniqueUser("within"));
    const tab = await statefulTab(cluster, tok, "tab");
    const procs = live(cluster);
    const before = await resumeOutcomes(procs);
    const orders = ordersTo(cluster.lb, tok, 300);
    await eventually("orders reaching the tab", () => tab.received.length >= 2);
    tab.proxy.cut();
    await eventually("the resume", () => tab.proxy.upgrades().some((u) => u.resume && u.status !== null), 15000);
    const resumedAt = Date.now();
    await eventually("orders after the resume", () => orders.after(resumedAt) >= 3);
    const ids = await orders.stop();
    await expectEveryNotificationOnce([tab], ids);
    assertInvisible([tab]);
    assertResumedOnce(tab);
    assert.equal(delta(before, await resumeOutcomes(procs)).resumed, 1);
  });
});

describe("stateful reconnect in --role all (in-process state)", () => {
  let server;
  let off;
  const dep = { db: `stateful-${Date.now()}`, secret: `secret-${randomUUID()}`, busPrefix: `t-st-${Date.now()}.`, channelPrefix: `t-st-${Date.now()}-` };
  before(async () => {
    server = await startServer(dep, { embedded: true });
    off = await startServer({ ...dep, db: `${dep.db}-off` }, { embedded: true, args: ["--stateful-reconnect-window", "0"] });
  });
  afterEach(closeAll);
  after(async () => {
    await closeAll();
    await Promise.all([server?.stop(), off?.stop()]);
  });

  test("a cut socket resumes in the same process: every notification once, nothing visible to the app", async () => {
    const tok = token(dep, uniqueUser("embedded"));
    const tabs = [];
    for (const msgpack of [false, true]) {
      const t = await openStatefulTab(server.port, tok, { msgpack });
      t.name = `embedded tab (${t.protocol})`;
      tabsOpened.push(t);
      tabs.push(t);
    }
    const before = await resumeOutcomes([server]);
    const orders = ordersTo(server, tok, 100);
    await eventually("orders reaching the tabs", () => tabs.every((t) => t.received.length >= 2));
    for (const t of tabs) t.proxy.cut();
    await eventually("the resumes", () => tabs.every((t) => t.proxy.upgrades().some((u) => u.resume && u.status !== null)), 15000);
    const resumedAt = Date.now();
    await eventually("orders after the resume", () => orders.after(resumedAt) >= 3);
    const ids = await orders.stop();
    await expectEveryNotificationOnce(tabs, ids);
    assertInvisible(tabs);
    for (const t of tabs) assertResumedOnce(t);
    assert.equal(delta(before, await resumeOutcomes([server])).resumed, 2);
  });

  test("--stateful-reconnect-window 0 turns it off: not offered, a version 1 handshake, a drop is an ordinary reconnect", async () => {
    const tok = token(dep, uniqueUser("off"));
    const neg = await negotiate(off.base, tok, { stateful: true });
    assert.equal(neg.useStatefulReconnect, undefined, "not offered");
    const tab = await openStatefulTab(off.port, tok);
    tab.name = "tab (window 0)";
    tabsOpened.push(tab);
    assert.equal(tab.proxy.handshakes.find((h) => h.from === "client")?.version, 1, "the client falls back to version 1");
    tab.proxy.cut();
    await eventually("an ordinary reconnect", () => tab.events.some((e) => e.kind === "reconnected"), 15000);
    await eventually("one connection on the process", async () => (await hubConnections(off)) === 1);
  });
});
