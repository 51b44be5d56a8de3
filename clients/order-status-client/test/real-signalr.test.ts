// The client with the real @microsoft/signalr 10.x (Node code path) against an in-process mock
// hub: proves the wire-level wiring (token, negotiate and stateful reconnect or skipNegotiation,
// method names, null resume id, replay, fallback) that the fake-connection tests can only assume.
import { LogLevel } from "@microsoft/signalr";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import {
  OrderStatusClient,
  type OrderStatusClientOptions,
  type CatchUpOutcome,
  type ConnectionState,
  type OrderNotification,
  type OrderStatusUpdate,
} from "../src/index.js";
import { MockHub, waitFor } from "./mock-hub.js";

describe.each(["json", "messagepack"] as const)("real SignalR client over %s", (protocol) => {
  let hub: MockHub;
  let url: string;
  let client: OrderStatusClient | undefined;

  beforeEach(async () => {
    hub = new MockHub();
    url = await hub.listen();
  });

  afterEach(async () => {
    await client?.stop();
    client = undefined;
    await hub.close();
  });

  function makeClient(overrides: Partial<OrderStatusClientOptions> = {}) {
    let tokens = 0;
    const c = new OrderStatusClient({
      url,
      protocol,
      accessTokenFactory: () => `tok${++tokens}`,
      baseDelayMs: 20,
      maxDelayMs: 80,
      resumeRetryBaseDelayMs: 10,
      resumeRetryMaxDelayMs: 40,
      logger: LogLevel.None, // the drops below are deliberate
      ...overrides,
    });
    const seen = {
      states: [] as ConnectionState[],
      notifications: [] as OrderNotification[],
      updates: [] as OrderStatusUpdate[],
      catchUps: [] as CatchUpOutcome[],
    };
    c.on("state", (s) => seen.states.push(s));
    c.on("notification", (n) => seen.notifications.push(n));
    c.on("status", (u) => seen.updates.push(u));
    c.on("catchUp", (o) => seen.catchUps.push(o));
    client = c;
    return { c, seen };
  }

  it("without stateful reconnect: connects without negotiate, receives pushes, resumes after a drop and falls back to GetCurrentStatus", async () => {
    const { c, seen } = makeClient({ statefulReconnect: false });
    await c.start();
    expect(c.state).toBe("connected");
    expect(hub.negotiates).toEqual([]);
    expect(hub.handshakes).toEqual([1]);
    expect(hub.upgrades).toHaveLength(1);
    // Node sends the token as a header; no negotiate means no `id` in the URL.
    expect(hub.upgrades[0]).toEqual({ url: "/hubs/order-status", authorization: "Bearer tok1", protocolHeader: undefined, status: 101 });

    c.watchOrder("c-2");
    hub.push("OrderCompleted", { notificationId: "1", correlationId: "c-1", orderId: "CS-000001", status: "COMPLETED", occurredAt: "t" });
    await waitFor(() => seen.notifications.length === 1, "first push");

    hub.methods.set("ResumeNotifications", (_args, h, ws) => {
      h.pushTo(ws, "OrderCompleted", { notificationId: "1", correlationId: "c-1", orderId: "CS-000001", status: "COMPLETED", occurredAt: "t" });
      h.pushTo(ws, "OrderFailed", { notificationId: "2", correlationId: "c-3", reason: "out of stock", status: "FAILED", occurredAt: "t" });
      return { replayed: 2, complete: false };
    });
    hub.methods.set("GetCurrentStatus", (args) => ({ correlationId: args[0], status: "COMPLETED", orderId: "CS-000002" }));

    hub.dropAll();
    await waitFor(() => seen.catchUps.length === 1, "catch-up after reconnect");

    expect(seen.states).toEqual(["connected", "reconnecting", "connected"]);
    expect(hub.upgrades[1]?.authorization).toBe("Bearer tok2");
    expect(hub.calls).toEqual([
      { target: "ResumeNotifications", args: ["1"] },
      { target: "GetCurrentStatus", args: ["c-2"] },
    ]);
    expect(seen.notifications.map((n) => n.notificationId)).toEqual(["1", "2"]);
    expect(seen.updates.at(-1)).toEqual({ correlationId: "c-2", status: "COMPLETED", orderId: "CS-000002", source: "status-query" });
    expect(c.lastNotificationId).toBe("2");
  });

  it("answers a ResumeNeeded push with ResumeNotifications from its last id and delivers the missed notifications once", async () => {
    const { c, seen } = makeClient();
    await c.start();
    const n = (notificationId: string, correlationId: string) => ({ notificationId, correlationId, orderId: `CS-${correlationId}`, status: "COMPLETED", occurredAt: "t" });
    hub.push("OrderCompleted", n("1764201600000-0", "c-1"));
    await waitFor(() => seen.notifications.length === 1, "first push");

    // The replay re-sends c-1 (inside the rewind window) and the two missed ones.
    hub.methods.set("ResumeNotifications", (_args, h, ws) => {
      h.pushTo(ws, "OrderCompleted", n("1764201600000-0", "c-1"));
      h.pushTo(ws, "OrderCompleted", n("1764201600500-0", "c-2"));
      h.pushTo(ws, "OrderCompleted", n("1764201600900-0", "c-3"));
      return { replayed: 3, complete: true };
    });
    // As contoso sends it after a backplane reconnect: a push with no arguments.
    hub.push("ResumeNeeded");
    await waitFor(() => seen.catchUps.length === 1, "catch-up after ResumeNeeded");

    expect(hub.calls).toEqual([{ target: "ResumeNotifications", args: ["1764201595000-0"] }]);
    expect(seen.notifications.map((x) => x.correlationId)).toEqual(["c-1", "c-2", "c-3"]);
    expect(seen.catchUps).toEqual([{ from: "1764201595000-0", result: { replayed: 3, complete: true }, queried: [], attempts: 1 }]);
    expect(c.lastNotificationId).toBe("1764201600900-0");
    // The same connection throughout: no reconnect, no second upgrade.
    expect(seen.states).toEqual(["connected"]);
    expect(hub.upgrades).toHaveLength(1);
  });

  it("retries ResumeNotifications after a hub error on the live connection and delivers the replay", async () => {
    const { c, seen } = makeClient();
    const errors: string[] = [];
    c.on("error", (e) => errors.push(e.message));
    await c.start();
    c.watchOrder("c-2");
    const n = (notificationId: string, correlationId: string) => ({ notificationId, correlationId, orderId: `CS-${correlationId}`, status: "COMPLETED", occurredAt: "t" });
    hub.push("OrderCompleted", n("1764201600000-0", "c-1"));
    await waitFor(() => seen.notifications.length === 1, "first push");

    // As during a Redis failover: the replay read fails once (a completion with an error, the
    // socket stays open), then works.
    let calls = 0;
    hub.methods.set("ResumeNotifications", (_args, h, ws) => {
      if (++calls === 1) throw new Error("redis unavailable: timed out");
      h.pushTo(ws, "OrderCompleted", n("1764201600500-0", "c-2"));
      return { replayed: 1, complete: true };
    });
    hub.methods.set("GetCurrentStatus", () => {
      throw new Error("the replay should have made this query unnecessary");
    });
    hub.push("ResumeNeeded");
    await waitFor(() => seen.catchUps.length === 1, "catch-up after ResumeNeeded");

    expect(hub.calls).toEqual([
      { target: "ResumeNotifications", args: ["1764201595000-0"] },
      { target: "ResumeNotifications", args: ["1764201595000-0"] },
    ]);
    expect(errors).toEqual(["redis unavailable: timed out"]);
    expect(seen.notifications.map((x) => x.correlationId)).toEqual(["c-1", "c-2"]);
    expect(seen.catchUps).toEqual([{ from: "1764201595000-0", result: { replayed: 1, complete: true }, queried: [], attempts: 2 }]);
    expect(c.pendingOrders).toEqual([]);
    expect(seen.states).toEqual(["connected"]);
  });

  it("sends null as the resume point when nothing was received (a server that does not offer stateful reconnect)", async () => {
    hub.offerStatefulReconnect = false;
    const { c, seen } = makeClient();
    hub.methods.set("ResumeNotifications", () => ({ replayed: 0, complete: true }));
    await c.start();
    // It asked, the server said no: an ordinary version-1 connection.
    expect(hub.negotiates.map((n) => n.statefulOffered)).toEqual([false]);
    expect(hub.handshakes).toEqual([1]);
    hub.dropAll();
    await waitFor(() => seen.catchUps.length === 1, "catch-up");
    expect(hub.calls).toEqual([{ target: "ResumeNotifications", args: [null] }]);
    expect(seen.states).toEqual(["connected", "reconnecting", "connected"]);
  });

  it("retries a first start that the server refuses, then connects", async () => {
    const { c } = makeClient({ statefulReconnect: false });
    hub.refuseNext = 2;
    await c.start();
    expect(c.state).toBe("connected");
    expect(hub.upgrades.map((u) => u.authorization)).toEqual(["Bearer tok1", "Bearer tok2", "Bearer tok3"]);
  });

  it("retries a first start that the server refuses, with a negotiate before each attempt (stateful reconnect)", async () => {
    const { c } = makeClient();
    hub.refuseNext = 2;
    await c.start();
    expect(c.state).toBe("connected");
    // The token factory runs for the negotiate and again for the WebSocket.
    expect(hub.negotiates.map((n) => n.authorization)).toEqual(["Bearer tok1", "Bearer tok3", "Bearer tok5"]);
    expect(hub.upgrades.map((u) => [u.authorization, u.status])).toEqual([["Bearer tok2", 401], ["Bearer tok4", 401], ["Bearer tok6", 101]]);
  });

  describe("stateful reconnect (the default)", () => {
    const n = (notificationId: string, correlationId: string) => ({ notificationId, correlationId, orderId: `CS-${correlationId}`, status: "COMPLETED", occurredAt: "t" });

    it("negotiates it and uses handshake version 2 with the negotiated connection token", async () => {
      const { c } = makeClient();
      await c.start();
      expect(hub.negotiates).toHaveLength(1);
      const negotiate = new URL(hub.negotiates[0]!.url, "http://x");
      expect(negotiate.pathname).toBe("/hubs/order-status/negotiate");
      expect(negotiate.searchParams.get("negotiateVersion")).toBe("1");
      expect(negotiate.searchParams.get("useStatefulReconnect")).toBe("true");
      expect(hub.negotiates[0]!.authorization).toBe("Bearer tok1");
      expect(hub.handshakes).toEqual([2]);
      expect(hub.upgrades).toHaveLength(1);
      expect(hub.upgrades[0]!.url).toMatch(/^\/hubs\/order-status\?id=[0-9a-f-]{36}$/);
      expect(hub.upgrades[0]!.authorization).toBe("Bearer tok2");
    });

    it("a dropped socket resumes the same connection: what was sent meanwhile arrives once, with no reconnect and no catch-up", async () => {
      const { c, seen } = makeClient();
      hub.methods.set("ResumeNotifications", () => {
        throw new Error("a resumed connection needs no catch-up");
      });
      await c.start();
      hub.push("OrderCompleted", n("1764201600000-0", "c-1"));
      await waitFor(() => seen.notifications.length === 1, "first push");

      hub.dropAll();
      // Sent while the tab has no socket: kept by the server and sent after its Sequence.
      hub.push("OrderCompleted", n("1764201600500-0", "c-2"));
      hub.push("OrderFailed", { notificationId: "1764201600900-0", correlationId: "c-3", reason: "out of stock", status: "FAILED", occurredAt: "t" });
      await waitFor(() => seen.notifications.length === 3, "the pushes sent while the socket was down");
      expect(hub.upgrades).toHaveLength(2);
      expect(hub.upgrades[1]!.status).toBe(101);
      // The same connection token; no second negotiate and no second handshake.
      expect(hub.upgrades[1]!.url).toBe(hub.upgrades[0]!.url);
      expect(hub.negotiates).toHaveLength(1);
      expect(hub.handshakes).toEqual([2]);
      expect(hub.clientSequences).toEqual([1]);

      hub.push("OrderCompleted", n("1764201601000-0", "c-4"));
      await waitFor(() => seen.notifications.length === 4, "a live push after the resume");
      expect(seen.notifications.map((x) => x.correlationId)).toEqual(["c-1", "c-2", "c-3", "c-4"]);
      expect(seen.states).toEqual(["connected"]);
      expect(seen.catchUps).toEqual([]);
      expect(hub.calls).toEqual([]);
      expect(c.lastNotificationId).toBe("1764201601000-0");
    });

    it("an invocation in flight when the socket drops completes once, and the server runs it once", async () => {
      const { c, seen } = makeClient();
      await c.start();
      hub.push("OrderCompleted", n("1764201600000-0", "c-1"));
      await waitFor(() => seen.notifications.length === 1, "first push");
      // The catch-up that ResumeNeeded starts is in flight when its socket goes: the server has
      // run it, its replay and its completion have not reached the client.
      hub.methods.set("ResumeNotifications", (_args, h, connection) => {
        h.drop(connection);
        h.pushTo(connection, "OrderCompleted", n("1764201600500-0", "c-2"));
        return { replayed: 1, complete: true };
      });
      hub.push("ResumeNeeded");
      await waitFor(() => seen.catchUps.length === 1, "the catch-up to complete");
      expect(seen.catchUps).toEqual([{ from: "1764201595000-0", result: { replayed: 1, complete: true }, queried: [], attempts: 1 }]);
      expect(hub.calls.filter((call) => call.target === "ResumeNotifications")).toHaveLength(1);
      expect(seen.notifications.map((x) => x.correlationId)).toEqual(["c-1", "c-2"]);
      expect(seen.states).toEqual(["connected"]);
      expect(hub.upgrades.map((u) => u.status)).toEqual([101, 101]);
      // The client resent its invocation (unacknowledged or not), from its Sequence id on.
      expect(hub.clientSequences).toHaveLength(1);
    });

    it("a resume the server refuses (past its window) starts a new connection that catches up with ResumeNotifications", async () => {
      const { c, seen } = makeClient();
      hub.refuseResumes = true;
      hub.methods.set("ResumeNotifications", (_args, h, connection) => {
        h.pushTo(connection, "OrderCompleted", n("1764201600500-0", "c-2"));
        return { replayed: 1, complete: true };
      });
      await c.start();
      hub.push("OrderCompleted", n("1764201600000-0", "c-1"));
      await waitFor(() => seen.notifications.length === 1, "first push");
      hub.dropAll();
      await waitFor(() => seen.catchUps.length === 1, "the catch-up on the new connection");
      expect(hub.upgrades.map((u) => u.status)).toEqual([101, 404, 101]);
      expect(hub.upgrades[1]!.url).toBe(hub.upgrades[0]!.url);
      expect(hub.upgrades[2]!.url).not.toBe(hub.upgrades[0]!.url);
      expect(hub.negotiates).toHaveLength(2);
      expect(hub.handshakes).toEqual([2, 2]);
      expect(seen.states).toEqual(["connected", "reconnecting", "connected"]);
      expect(hub.calls).toEqual([{ target: "ResumeNotifications", args: ["1764201595000-0"] }]);
      expect(seen.notifications.map((x) => x.correlationId)).toEqual(["c-1", "c-2"]);
    });
  });
});
