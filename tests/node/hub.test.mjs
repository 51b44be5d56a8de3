// Conformance of the hub with the official @microsoft/signalr client (signalr-protocol.md §11):
// transports and handshakes, invocations and their exact errors, keep-alive and timeouts, Close
// semantics, reconnect, and the full order flow with replay. Real binary, real services.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { RawClient } from "./raw.mjs";
import { eventually, hubConnection, newDeployment, openTab, placeOrder, signalR, sleep, startServer, token, uniqueUser, within } from "./harness.mjs";

const FAST = ["--keep-alive-interval-ms", "500", "--client-timeout-ms", "1500", "--handshake-timeout-ms", "1000"];

describe("hub on one notify process", () => {
  let dep;
  let server;
  before(async () => {
    dep = newDeployment();
    server = await startServer(dep, { args: FAST });
  });
  after(async () => {
    await server?.stop();
    dep?.drop();
  });

  test("connects with skipNegotiation over JSON and MessagePack, token in the header", async () => {
    for (const msgpack of [false, true]) {
      const conn = hubConnection(server.hubUrl, token(dep, uniqueUser("a")), { msgpack });
      await conn.start();
      assert.equal(conn.state, signalR.HubConnectionState.Connected);
      assert.equal(conn.connectionId, null, "skipNegotiation never learns an id");
      await conn.stop();
    }
  });

  test("connects through negotiate, with no sticky state", async () => {
    const conn = hubConnection(server.hubUrl, token(dep, uniqueUser("n")), { skipNegotiation: false });
    await conn.start();
    assert.match(conn.connectionId, /^[A-Za-z0-9_-]{22}$/);
    await conn.stop();
  });

  test("negotiate answers version 1 and version 0 as ASP.NET does, and 401 without a token", async () => {
    const tok = token(dep, uniqueUser("neg"));
    const v1 = await (await fetch(`${server.hubUrl}/negotiate?negotiateVersion=1`, { method: "POST", headers: { authorization: `Bearer ${tok}` } })).json();
    assert.equal(v1.negotiateVersion, 1);
    assert.ok(v1.connectionToken && v1.connectionId && v1.connectionToken !== v1.connectionId);
    assert.deepEqual(v1.availableTransports, [{ transport: "WebSockets", transferFormats: ["Text", "Binary"] }]);
    const v0 = await (await fetch(`${server.hubUrl}/negotiate`, { method: "POST", headers: { authorization: `Bearer ${tok}` } })).json();
    assert.equal(v0.negotiateVersion, 0);
    assert.equal(v0.connectionToken, undefined);
    // Version 0 clients use the id as the token: it must open a WebSocket.
    const raw = await RawClient.connect(`${server.hubUrl}?id=${v0.connectionId}`, { token: tok });
    raw.close();
    assert.equal((await fetch(`${server.hubUrl}/negotiate?negotiateVersion=1`, { method: "POST" })).status, 401);
    // ASP.NET answers a version it cannot read with 200 and an error body, which the client reports.
    for (const [version, error] of [
      ["two", "The client requested a non-integer protocol version."],
      ["-1", "The client requested version '-1', but the server does not support this version."],
    ]) {
      const res = await fetch(`${server.hubUrl}/negotiate?negotiateVersion=${version}`, { method: "POST", headers: { authorization: `Bearer ${tok}` } });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { error });
    }
  });

  test("a forged, foreign or expired connection token gets 404", async () => {
    const alice = token(dep, uniqueUser("alice"));
    const bob = token(dep, uniqueUser("bob"));
    const { connectionToken } = await (await fetch(`${server.hubUrl}/negotiate?negotiateVersion=1`, { method: "POST", headers: { authorization: `Bearer ${alice}` } })).json();
    await assert.rejects(RawClient.connect(`${server.hubUrl}?id=${connectionToken}`, { token: bob }), (e) => e.status === 404);
    await assert.rejects(RawClient.connect(`${server.hubUrl}?id=AAAAAAAAAAAAAAAAAAAAAA`, { token: alice }), (e) => e.status === 404);
    const ok = await RawClient.connect(`${server.hubUrl}?id=${connectionToken}`, { token: alice });
    ok.close();
  });

  test("token in the query string (browsers) works, and a bad token is refused with 401 before the upgrade", async () => {
    const raw = await RawClient.connect(server.hubUrl, { token: token(dep, uniqueUser("q")), query: true });
    raw.send('{"protocol":"json","version":1}\x1e');
    const first = await raw.expectFrame("the handshake reply");
    assert.equal(first.data.toString(), "{}\x1e");
    assert.equal(first.isBinary, false);
    raw.close();
    await assert.rejects(RawClient.connect(server.hubUrl, { token: token(dep, "x", { secret: "wrong" }) }), (e) => e.status === 401);
    await assert.rejects(RawClient.connect(server.hubUrl, {}), (e) => e.status === 401);
    const expired = token(dep, "x", { expSeconds: -3600 });
    await assert.rejects(hubConnection(server.hubUrl, expired, { reconnect: null }).start());
  });

  test("handshake errors use ASP.NET's texts, and nothing precedes the reply", async () => {
    const tok = token(dep, uniqueUser("hs"));
    const cases = [
      ['{"protocol":"xml","version":1}\x1e', "The protocol 'xml' is not supported."],
      ['{"protocol":"json","version":3}\x1e', "The server does not support version 3 of the 'json' protocol."],
    ];
    for (const [request, error] of cases) {
      const raw = await RawClient.connect(server.hubUrl, { token: tok });
      raw.send(request);
      const { records } = await raw.expectRecords(`the handshake error "${error}"`);
      assert.deepEqual(records, [{ error }]);
      assert.equal(await raw.closeCode(), 1000);
    }
    // Version 2 is served as 1; MessagePack's reply comes in a binary frame.
    const mp = await RawClient.connect(server.hubUrl, { token: tok });
    mp.send('{"protocol":"messagepack","version":2}\x1e');
    const reply = await mp.expectFrame("the MessagePack handshake reply");
    assert.equal(reply.isBinary, true);
    assert.deepEqual([...reply.data], [0x7b, 0x7d, 0x1e]);
    mp.close();
    // Silence: the handshake times out (1 s here) with ASP.NET's text.
    const silent = await RawClient.connect(server.hubUrl, { token: tok });
    const { records } = await silent.expectRecords("the handshake timeout error", 5000);
    assert.deepEqual(records, [{ error: "Handshake was canceled." }]);
  });

  test("invocations: round trip, unknown method and wrong argument count with ASP.NET's errors, case-insensitive names", async () => {
    const tok = token(dep, uniqueUser("inv"));
    const id = await placeOrder(server, tok);
    for (const msgpack of [false, true]) {
      const conn = hubConnection(server.hubUrl, tok, { msgpack });
      await conn.start();
      const status = await conn.invoke("GetCurrentStatus", id);
      assert.equal(status.correlationId, id);
      assert.ok(["ACCEPTED", "PROCESSING", "COMPLETED"].includes(status.status));
      assert.ok(await conn.invoke("getcurrentstatus", id), "method names are case-insensitive");
      await assert.rejects(conn.invoke("Nope", 1), { message: "Failed to invoke 'Nope' due to an error on the server. HubException: Method does not exist." });
      await assert.rejects(conn.invoke("GetCurrentStatus", id, 2), { message: "Failed to invoke 'GetCurrentStatus' due to an error on the server." });
      await assert.rejects(conn.invoke("GetCurrentStatus", 42), { message: "Failed to invoke 'GetCurrentStatus' due to an error on the server." });
      await assert.rejects(conn.invoke("GetCurrentStatus", "0190b6a0-0000-7000-8000-000000000000"), /order not found/);
      await assert.rejects(conn.invoke("ResumeNotifications", "not-a-notification-id"), {
        message: "An unexpected error occurred invoking 'ResumeNotifications' on the server. HubException: invalid notification id 'not-a-notification-id'",
      });
      await assert.rejects(conn.invoke("ResumeNotifications", 42), { message: "Failed to invoke 'ResumeNotifications' due to an error on the server." });
      await assert.rejects(
        within(new Promise((resolve, reject) => conn.stream("GetCurrentStatus", id).subscribe({ next() {}, complete: resolve, error: reject })), 15000, "the answer to a streaming invocation"),
        { message: "The client attempted to invoke the non-streaming 'GetCurrentStatus' method with a streaming invocation." },
      );
      assert.equal(conn.state, signalR.HubConnectionState.Connected, "errors do not end the connection");
      await conn.stop();
    }
  });

  test("a non-blocking send gets no answer, and batched records in one frame are all handled in order", async () => {
    const tok = token(dep, uniqueUser("raw"));
    const raw = await RawClient.connect(server.hubUrl, { token: tok, query: false });
    raw.send('{"protocol":"json","version":1}\x1e');
    assert.equal((await raw.expectFrame("the handshake reply")).data.toString(), "{}\x1e");
    // One frame: a send (no id), two invocations, and the start of a third split across frames.
    raw.send('{"target":"GetCurrentStatus","arguments":["x"],"type":1}\x1e{"target":"Nope","arguments":[],"invocationId":"1","type":1}\x1e{"target":"ResumeNotifications","arguments":[null],"invocationId":"2","type":1}\x1e{"target":"Nope","argu');
    raw.send('ments":[],"invocationId":"3","type":1}\x1e');
    const { seen } = await raw.until((r) => r.invocationId === "3");
    const completions = seen.filter((r) => r.type === 3);
    assert.deepEqual(completions.map((c) => c.invocationId), ["1", "2", "3"], "no completion for the send; in order");
    assert.deepEqual(completions[1].result, { replayed: 0, complete: true });
    assert.ok(!("result" in completions[0] && "error" in completions[0] && completions[0].result !== undefined), "never both result and error");
    raw.close();
  });

  test("keep-alive: an idle connection survives well past the client's server timeout", async () => {
    // Server pings every 500 ms; the client gives up after 2 s of silence. Idle for 6 s.
    const tab = await openTab(server.hubUrl, token(dep, uniqueUser("idle")), { serverTimeoutMs: 2000, keepAliveMs: 500 });
    await sleep(6000);
    assert.equal(tab.conn.state, signalR.HubConnectionState.Connected);
    assert.deepEqual(tab.events, [], "no reconnect, no close");
    await tab.conn.stop();
  });

  test("the server drops a client that stops sending after its first ping, with a reconnectable Close", async () => {
    const raw = await RawClient.connect(server.hubUrl, { token: token(dep, uniqueUser("mute")) });
    raw.send('{"protocol":"json","version":1}\x1e{"type":6}\x1e');
    const started = Date.now();
    // Not before the 1.5 s client timeout (lateness is all a loaded machine adds, so the lower
    // bound is safe), and far sooner than the 30 s default: the configured timeout is the one
    // applied. The upper bound only has to tell those apart, so it leaves room for load.
    const { record } = await raw.until((r) => r.type === 7, 15000);
    const elapsed = Date.now() - started;
    assert.deepEqual(record, { type: 7, error: "Connection closed with an error.", allowReconnect: true });
    assert.ok(elapsed >= 1200 && elapsed < 10000, `closed after ${elapsed} ms (client timeout 1.5 s, default 30 s)`);
  });

  test("an oversized message closes with allowReconnect and the official client reconnects", async () => {
    const tab = await openTab(server.hubUrl, token(dep, uniqueUser("big")));
    const huge = "x".repeat(40 * 1024);
    await assert.rejects(tab.conn.invoke("GetCurrentStatus", huge));
    await eventually("a reconnect", () => tab.events.some((e) => e.kind === "reconnected"));
    assert.equal(tab.events[0].kind, "reconnecting");
    assert.match(tab.events[0].error, /Connection closed with an error/);
    assert.equal(tab.conn.state, signalR.HubConnectionState.Connected);
    await tab.conn.stop();
  });

  test("a protocol violation closes without allowReconnect", async () => {
    const raw = await RawClient.connect(server.hubUrl, { token: token(dep, uniqueUser("bad")) });
    raw.send('{"protocol":"json","version":1}\x1e');
    await raw.expectFrame("the handshake reply");
    raw.send('{"type":1,"target":"GetCurrentStatus","arguments":["x"],"headers":{"h":1},"invocationId":"1"}\x1e');
    const { record } = await raw.until((r) => r.type === 7);
    assert.deepEqual(record, { type: 7, error: "Connection closed with an error." });
    assert.equal(await raw.closeCode(), 1000);
  });
});

describe("the order flow through the hub", () => {
  let dep;
  let server;
  before(async () => {
    dep = newDeployment();
    server = await startServer(dep, { args: ["--process-delay-ms", "200"] });
  });
  after(async () => {
    await server?.stop();
    dep?.drop();
  });

  test("every tab of the user gets OrderCompleted once, no one else does, and a closed tab replays it", async () => {
    const alice = uniqueUser("alice");
    const tokA = token(dep, alice);
    const json = await openTab(server.hubUrl, tokA);
    const mp = await openTab(server.hubUrl, tokA, { msgpack: true });
    const bob = await openTab(server.hubUrl, token(dep, uniqueUser("bob")));
    const closing = await openTab(server.hubUrl, tokA);
    await closing.conn.stop();

    const id = await placeOrder(server, tokA);
    for (const tab of [json, mp]) {
      await eventually("OrderCompleted on every tab", () => tab.received.length === 1);
      const n = tab.received[0];
      assert.equal(n.target, "OrderCompleted");
      assert.equal(n.correlationId, id);
      assert.equal(n.status, "COMPLETED");
      assert.match(n.orderId, /^CS-\d{6}$/);
      assert.ok(typeof n.notificationId === "string" && n.notificationId.length > 0);
      assert.ok(!Number.isNaN(Date.parse(n.occurredAt)));
    }
    assert.deepEqual(json.received[0], mp.received[0], "the same notification in both encodings");
    const status = await json.conn.invoke("GetCurrentStatus", id);
    assert.deepEqual(status, { correlationId: id, status: "COMPLETED", orderId: json.received[0].orderId });

    // The tab that was closed comes back and replays what it missed: the user's one notification.
    const back = await openTab(server.hubUrl, tokA);
    assert.deepEqual(back.received, [], "nothing arrives live after the order completed");
    const resume = await back.conn.invoke("ResumeNotifications", null);
    assert.deepEqual(resume, { replayed: 1, complete: true });
    assert.deepEqual(back.received, [json.received[0]], "replayed once, with its original id");
    const after = await back.conn.invoke("ResumeNotifications", json.received[0].notificationId);
    assert.deepEqual(after, { replayed: 0, complete: true }, "nothing after the last one seen");

    // Bob saw nothing and cannot learn anything about Alice's order.
    await sleep(300);
    assert.deepEqual(bob.received, []);
    await assert.rejects(bob.conn.invoke("GetCurrentStatus", id), /order not found/);
    assert.deepEqual(await bob.conn.invoke("ResumeNotifications", null), { replayed: 0, complete: true });
    assert.deepEqual(bob.received, []);
    for (const t of [json, mp, bob, back]) await t.conn.stop();
  });

  test("an unavailable product arrives as OrderFailed with its reason", async () => {
    const tok = token(dep, uniqueUser("sad"));
    const tab = await openTab(server.hubUrl, tok);
    const id = await placeOrder(server, tok, [{ productId: "discontinued", quantity: 1 }]);
    await eventually("OrderFailed", () => tab.received.length === 1);
    assert.equal(tab.received[0].target, "OrderFailed");
    assert.equal(tab.received[0].correlationId, id);
    assert.equal(tab.received[0].status, "FAILED");
    assert.match(tab.received[0].reason, /no longer available/);
    await tab.conn.stop();
  });

  test("a tab reconnects by itself after the server is killed, and replays what it missed", async () => {
    const tok = token(dep, uniqueUser("crash"));
    // The official client gives up after its policy's last delay: long enough here for the
    // server to stay away while orders complete elsewhere, on a loaded machine too.
    const tab = await openTab(server.hubUrl, tok, { reconnect: Array(120).fill(250) });
    const first = await placeOrder(server, tok);
    await eventually("the first notification", () => tab.received.length === 1);
    const [seen] = tab.received;
    assert.equal(seen.correlationId, first);

    // A second process of the deployment takes the orders while the tab's process is dead.
    const other = await startServer(dep, { args: ["--process-delay-ms", "200"] });
    try {
      const port = server.port;
      await server.kill();
      await eventually("the tab to notice", () => tab.events.some((e) => e.kind === "reconnecting"));
      const observer = await openTab(other.hubUrl, tok);
      const missed = [];
      for (let i = 0; i < 3; i += 1) missed.push(await placeOrder(other, tok));
      // A notification is logged before it is published: once a connected tab has all three,
      // they are in the log and none can still arrive live when the tab is back.
      await eventually("the observer to see the missed notifications", () => missed.every((id) => observer.received.some((n) => n.correlationId === id)));
      await observer.conn.stop();
      assert.equal(tab.received.length, 1, "the tab was away: nothing reached it");

      server = await startServer(dep, { args: ["--process-delay-ms", "200"], port });
      await eventually("the tab to reconnect", () => tab.events.some((e) => e.kind === "reconnected"), 30000);
      assert.equal(tab.received.length, 1, "a reconnect alone replays nothing");

      const resume = await tab.conn.invoke("ResumeNotifications", seen.notificationId);
      assert.deepEqual(resume, { replayed: missed.length, complete: true }, "exactly the missed notifications are replayed");
      const replayed = tab.received.slice(1);
      assert.deepEqual(replayed.map((n) => n.correlationId).sort(), [...missed].sort(), "the replay is exactly what was missed, each once");
      const byId = new Map(observer.received.map((n) => [n.correlationId, n]));
      for (const n of replayed) assert.deepEqual(n, byId.get(n.correlationId), `${n.correlationId}: replayed as it was sent live`);

      // Live delivery works again after the reconnect, and the first order never came twice.
      const second = await placeOrder(server, tok);
      await eventually("the second notification", () => tab.received.some((n) => n.correlationId === second));
      assert.equal(tab.received.filter((n) => n.correlationId === first).length, 1);
      assert.equal(tab.received.length, 2 + missed.length, "nothing else arrived");
    } finally {
      await tab.conn.stop();
      await other.stop();
    }
  });
});
