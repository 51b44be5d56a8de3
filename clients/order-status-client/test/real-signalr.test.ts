// The client with the real @microsoft/signalr 10.x (Node code path) against an in-process mock
// hub: proves the wire-level wiring (token, skipNegotiation, method names, null resume id,
// replay, fallback) that the fake-connection tests can only assume.
import { LogLevel } from "@microsoft/signalr";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import {
  OrderStatusClient,
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

  function makeClient() {
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

  it("connects without negotiate, receives pushes, resumes after a drop and falls back to GetCurrentStatus", async () => {
    const { c, seen } = makeClient();
    await c.start();
    expect(c.state).toBe("connected");
    expect(hub.upgrades).toHaveLength(1);
    // Node sends the token as a header; no negotiate means no `id` in the URL.
    expect(hub.upgrades[0]).toEqual({ url: "/hubs/order-status", authorization: "Bearer tok1", protocolHeader: undefined });

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

  it("sends null as the resume point when nothing was received", async () => {
    const { c, seen } = makeClient();
    hub.methods.set("ResumeNotifications", () => ({ replayed: 0, complete: true }));
    await c.start();
    hub.dropAll();
    await waitFor(() => seen.catchUps.length === 1, "catch-up");
    expect(hub.calls).toEqual([{ target: "ResumeNotifications", args: [null] }]);
  });

  it("retries a first start that the server refuses, then connects", async () => {
    const { c } = makeClient();
    hub.refuseNext = 2;
    await c.start();
    expect(c.state).toBe("connected");
    expect(hub.upgrades.map((u) => u.authorization)).toEqual(["Bearer tok1", "Bearer tok2", "Bearer tok3"]);
  });
});
