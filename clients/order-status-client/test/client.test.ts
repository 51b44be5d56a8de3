// Behaviour of OrderStatusClient against a fake HubConnection: first-start retry, state,
// de-duplication, resume after reconnect or re-start, and the GetCurrentStatus fallback.
import { describe, expect, it } from "vitest";

import {
  ClientStoppedError,
  FullJitterBackoff,
  OrderStatusClient,
  rewind,
  type CatchUpOutcome,
  type ConnectionFactoryOptions,
  type ConnectionState,
  type OrderNotification,
  type OrderStatusClientOptions,
  type OrderStatusUpdate,
} from "../src/index.js";
import { FakeHubConnection, ManualClock, settle } from "./fakes.js";

function completed(notificationId: string, correlationId: string, orderId = `CS-${notificationId}`) {
  return { notificationId, correlationId, orderId, status: "COMPLETED", occurredAt: "2026-11-27T10:00:00Z" };
}

function failed(notificationId: string, correlationId: string, reason = "payment declined") {
  return { notificationId, correlationId, reason, status: "FAILED", occurredAt: "2026-11-27T10:00:00Z" };
}

function setup(overrides: Partial<Omit<OrderStatusClientOptions, "clock" | "connectionFactory">> = {}) {
  const fake = new FakeHubConnection();
  const clock = new ManualClock();
  const factoryCalls: ConnectionFactoryOptions[] = [];
  const client = new OrderStatusClient({
    accessTokenFactory: () => "token-1",
    clock,
    random: overrides.random ?? (() => 0.5),
    baseDelayMs: 1000,
    maxDelayMs: 30_000,
    ...overrides,
    connectionFactory: (options) => {
      factoryCalls.push(options);
      return fake;
    },
  });
  const states: ConnectionState[] = [];
  const notifications: OrderNotification[] = [];
  const updates: OrderStatusUpdate[] = [];
  const errors: Error[] = [];
  const catchUps: CatchUpOutcome[] = [];
  client.on("state", (s) => states.push(s));
  client.on("notification", (n) => notifications.push(n));
  client.on("status", (u) => updates.push(u));
  client.on("error", (e) => errors.push(e));
  client.on("catchUp", (c) => catchUps.push(c));
  return { fake, clock, client, factoryCalls, states, notifications, updates, errors, catchUps };
}

async function connected() {
  const ctx = setup();
  await ctx.client.start();
  return ctx;
}

describe("connection setup", () => {
  it("hands the factory the hub URL, the token factory, JSON and the jittered never-null policy", async () => {
    const { client, factoryCalls } = await connected();
    expect(factoryCalls).toHaveLength(1);
    const options = factoryCalls[0]!;
    expect(options.url).toBe("/hubs/order-status");
    expect(options.protocol).toBe("json");
    expect(await options.accessTokenFactory()).toBe("token-1");
    expect(options.retryPolicy).toBe(client.retryPolicy);
    expect(options.retryPolicy).toBeInstanceOf(FullJitterBackoff);
    const delay = options.retryPolicy.nextRetryDelayInMilliseconds({
      previousRetryCount: 10_000,
      elapsedMilliseconds: 1e9,
      retryReason: new Error("down"),
    });
    expect(delay).not.toBeNull();
  });

  it("asks the factory for stateful reconnect unless told not to", async () => {
    const { factoryCalls } = await connected();
    expect(factoryCalls[0]!.statefulReconnect).toBe(true);
    const off = setup({ statefulReconnect: false });
    await off.client.start();
    expect(off.factoryCalls[0]!.statefulReconnect).toBe(false);
  });

  it("reports offline before start and connected after", async () => {
    const ctx = setup();
    expect(ctx.client.state).toBe("offline");
    await ctx.client.start();
    expect(ctx.client.state).toBe("connected");
    expect(ctx.states).toEqual(["connected"]);
    expect(ctx.catchUps).toEqual([]); // nothing to resume on the very first connect
  });
});

describe("first start", () => {
  it("retries a failing first start() with full-jitter delays until it connects", async () => {
    const ctx = setup({ random: () => 0.5 });
    ctx.fake.startOutcomes.push(new Error("WebSocket failed to connect."), new Error("again"), new Error("and again"));
    let resolved = false;
    const started = ctx.client.start().then(() => {
      resolved = true;
    });

    for (let i = 0; i < 3; i++) {
      await settle();
      expect(ctx.client.state).toBe("offline");
      expect(resolved).toBe(false);
      ctx.clock.fireAll();
    }
    await started;

    expect(ctx.fake.startCalls).toBe(4);
    // random = 0.5 puts each delay in the middle of [0, min(cap, base * 2^attempt)).
    expect(ctx.clock.delays).toEqual([500, 1000, 2000]);
    expect(ctx.errors.map((e) => e.message)).toEqual(["WebSocket failed to connect.", "again", "and again"]);
    expect(ctx.client.state).toBe("connected");
  });

  it("keeps the first-start delays inside the jitter window and under the cap, forever", async () => {
    const ctx = setup({ random: () => 0.999_999 });
    const failures = 40;
    for (let i = 0; i < failures; i++) ctx.fake.startOutcomes.push(new Error(`fail ${i}`));
    const started = ctx.client.start();
    for (let i = 0; i < failures; i++) {
      await settle();
      ctx.clock.fireAll();
    }
    await started;
    expect(ctx.fake.startCalls).toBe(failures + 1);
    ctx.clock.delays.forEach((d, attempt) => {
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(Math.min(30_000, 1000 * 2 ** attempt));
    });
    expect(ctx.clock.delays.at(-1)).toBe(29_999);
  });

  it("stops retrying when stop() is called during a backoff wait", async () => {
    const ctx = setup();
    ctx.fake.startOutcomes.push(new Error("down"), new Error("down"));
    const started = ctx.client.start();
    await settle();
    expect(ctx.clock.pending).toBe(1);
    await ctx.client.stop();
    await expect(started).rejects.toBeInstanceOf(ClientStoppedError);
    expect(ctx.clock.pending).toBe(0);
    expect(ctx.fake.startCalls).toBe(1);
    expect(ctx.client.state).toBe("offline");
  });

  it("builds the connection once and reuses it across attempts", async () => {
    const ctx = setup();
    ctx.fake.startOutcomes.push(new Error("down"));
    const started = ctx.client.start();
    await settle();
    ctx.clock.fireAll();
    await started;
    expect(ctx.factoryCalls).toHaveLength(1);
  });
});

describe("notifications", () => {
  it("delivers OrderCompleted and OrderFailed once each, tracking the last id", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", completed("1", "c-1", "CS-000001"));
    ctx.fake.push("OrderCompleted", completed("1", "c-1", "CS-000001"));
    ctx.fake.push("OrderFailed", failed("2", "c-2"));
    ctx.fake.push("orderfailed", failed("2", "c-2"));

    expect(ctx.notifications.map((n) => n.notificationId)).toEqual(["1", "2"]);
    expect(ctx.client.lastNotificationId).toBe("2");
    expect(ctx.updates).toEqual([
      {
        correlationId: "c-1",
        status: "COMPLETED",
        orderId: "CS-000001",
        source: "notification",
        notificationId: "1",
        occurredAt: "2026-11-27T10:00:00Z",
      },
      {
        correlationId: "c-2",
        status: "FAILED",
        orderId: null,
        reason: "payment declined",
        source: "notification",
        notificationId: "2",
        occurredAt: "2026-11-27T10:00:00Z",
      },
    ]);
  });

  it("treats ids as opaque: the last fresh id received is the resume point, not the largest", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", completed("9", "c-9"));
    ctx.fake.push("OrderCompleted", completed("10", "c-10"));
    expect(ctx.client.lastNotificationId).toBe("10");
    // A duplicate of an older id must not move the resume point back.
    ctx.fake.push("OrderCompleted", completed("9", "c-9"));
    expect(ctx.client.lastNotificationId).toBe("10");
  });

  it("ignores malformed payloads and reports them", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", { correlationId: "c-1" });
    ctx.fake.push("OrderCompleted", "nonsense");
    ctx.fake.push("OrderCompleted", { notificationId: "3", correlationId: "c-3" }); // no orderId
    expect(ctx.notifications).toEqual([]);
    expect(ctx.errors).toHaveLength(3);
    expect(ctx.client.lastNotificationId).toBeNull();
  });

  it("stops watching an order once its notification arrives", async () => {
    const ctx = await connected();
    ctx.client.watchOrder("c-1");
    ctx.client.watchOrder("c-2");
    ctx.fake.push("OrderCompleted", completed("1", "c-1"));
    expect(ctx.client.pendingOrders).toEqual(["c-2"]);
  });

  it("keeps delivering when a subscriber throws", async () => {
    const ctx = await connected();
    ctx.client.on("notification", () => {
      throw new Error("subscriber bug");
    });
    ctx.fake.push("OrderCompleted", completed("1", "c-1"));
    ctx.fake.push("OrderCompleted", completed("2", "c-2"));
    expect(ctx.notifications).toHaveLength(2);
    expect(ctx.errors.map((e) => e.message)).toEqual(["subscriber bug", "subscriber bug"]);
  });

  it("lets a subscriber unsubscribe", async () => {
    const ctx = await connected();
    const seen: string[] = [];
    const off = ctx.client.on("notification", (n) => seen.push(n.notificationId));
    ctx.fake.push("OrderCompleted", completed("1", "c-1"));
    off();
    ctx.fake.push("OrderCompleted", completed("2", "c-2"));
    expect(seen).toEqual(["1"]);
  });
});

describe("resume after reconnect", () => {
  it("shows reconnecting during an outage and resumes from the last id afterwards", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", completed("5", "c-5"));
    ctx.fake.invokeImpl = (method, args) => {
      expect(method).toBe("ResumeNotifications");
      expect(args).toEqual(["5"]);
      // The server replays through the ordinary handlers before answering.
      ctx.fake.push("OrderCompleted", completed("5", "c-5"));
      ctx.fake.push("OrderFailed", failed("6", "c-6"));
      ctx.fake.push("OrderCompleted", completed("7", "c-7"));
      return { replayed: 3, complete: true };
    };

    ctx.fake.drop();
    expect(ctx.client.state).toBe("reconnecting");
    ctx.fake.reconnect();
    expect(ctx.client.state).toBe("connected");
    await settle();

    expect(ctx.states).toEqual(["connected", "reconnecting", "connected"]);
    expect(ctx.notifications.map((n) => n.notificationId)).toEqual(["5", "6", "7"]);
    expect(ctx.client.lastNotificationId).toBe("7");
    expect(ctx.fake.invocations.map((i) => i.method)).toEqual(["ResumeNotifications"]);
    expect(ctx.catchUps).toEqual([{ from: "5", result: { replayed: 3, complete: true }, queried: [], attempts: 1 }]);
  });

  it("resumes a little before the last log position, so a notification published out of log order is not skipped", async () => {
    const ctx = await connected();
    // Two pods logged c-1 at ...000-0 and c-2 at ...100-0 but published c-2 first; the tab
    // dropped before c-1's publish reached it.
    ctx.fake.push("OrderCompleted", completed("1764201600100-0", "c-2"));
    ctx.fake.invokeImpl = (method, args) => {
      expect(args).toEqual(["1764201595100-0"]);
      ctx.fake.push("OrderCompleted", completed("1764201600000-0", "c-1"));
      ctx.fake.push("OrderCompleted", completed("1764201600100-0", "c-2"));
      return { replayed: 2, complete: true };
    };
    ctx.fake.drop();
    ctx.fake.reconnect();
    await settle();
    expect(ctx.notifications.map((n) => n.correlationId)).toEqual(["c-2", "c-1"]);
  });

  it("asks for everything retained (null) when nothing was received yet", async () => {
    const ctx = await connected();
    ctx.fake.invokeImpl = () => ({ replayed: 0, complete: true });
    ctx.fake.drop();
    ctx.fake.reconnect();
    await settle();
    expect(ctx.fake.invocations).toEqual([{ method: "ResumeNotifications", args: [null] }]);
  });

  it("resumes after a re-start that follows a close", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", completed("a1", "c-1"));
    ctx.fake.invokeImpl = () => ({ replayed: 0, complete: true });

    ctx.fake.close(new Error("Server returned an error on close: bye"));
    expect(ctx.client.state).toBe("reconnecting");
    await settle();
    expect(ctx.clock.delays).toEqual([500]); // jittered wait before the re-start
    ctx.clock.fireAll();
    await settle();

    expect(ctx.fake.startCalls).toBe(2);
    expect(ctx.client.state).toBe("connected");
    expect(ctx.fake.invocations).toEqual([{ method: "ResumeNotifications", args: ["a1"] }]);
    expect(ctx.errors.map((e) => e.message)).toContain("Server returned an error on close: bye");
  });

  it("retries the re-start after a close until the server is back", async () => {
    const ctx = await connected();
    ctx.fake.invokeImpl = () => ({ replayed: 0, complete: true });
    ctx.fake.startOutcomes.push(new Error("401"), new Error("401"));
    ctx.fake.close();
    for (let i = 0; i < 3; i++) {
      await settle();
      expect(ctx.client.state).toBe("reconnecting");
      ctx.clock.fireAll();
    }
    await settle();
    expect(ctx.fake.startCalls).toBe(4);
    expect(ctx.client.state).toBe("connected");
    expect(ctx.fake.invocations.map((i) => i.method)).toEqual(["ResumeNotifications"]);
  });

  it("does not restart or resume after stop()", async () => {
    const ctx = await connected();
    await ctx.client.stop();
    await settle();
    expect(ctx.client.state).toBe("offline");
    expect(ctx.fake.startCalls).toBe(1);
    expect(ctx.clock.pending).toBe(0);
    expect(ctx.fake.invocations).toEqual([]);
  });

  it("resumes when started again after stop()", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", completed("3", "c-3"));
    await ctx.client.stop();
    ctx.fake.invokeImpl = () => ({ replayed: 0, complete: true });
    await ctx.client.start();
    await settle();
    expect(ctx.fake.invocations).toEqual([{ method: "ResumeNotifications", args: ["3"] }]);
  });
});

describe("fallback to GetCurrentStatus", () => {
  it("queries every watched order when the replay is incomplete and emits synthetic updates", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", completed("10", "c-old"));
    for (const id of ["c-1", "c-2", "c-3", "c-4"]) ctx.client.watchOrder(id);
    const snapshots: Record<string, unknown> = {
      "c-1": { correlationId: "c-1", status: "COMPLETED", orderId: "CS-000101" },
      "c-2": { correlationId: "c-2", status: "PROCESSING", orderId: null },
      "c-3": { correlationId: "c-3", status: "FAILED", orderId: null },
    };
    ctx.fake.invokeImpl = (method, args) => {
      if (method === "ResumeNotifications") {
        // c-4 is replayed before the answer, so it no longer needs a query.
        ctx.fake.push("OrderCompleted", completed("11", "c-4", "CS-000104"));
        return { replayed: 1, complete: false };
      }
      expect(method).toBe("GetCurrentStatus");
      return snapshots[args[0] as string];
    };

    ctx.fake.drop();
    ctx.fake.reconnect();
    await settle();

    const queried = ctx.fake.invocations.filter((i) => i.method === "GetCurrentStatus").map((i) => i.args[0]);
    expect(queried.sort()).toEqual(["c-1", "c-2", "c-3"]);
    const synthetic = ctx.updates.filter((u) => u.source === "status-query");
    expect(synthetic).toEqual([
      { correlationId: "c-1", status: "COMPLETED", orderId: "CS-000101", source: "status-query" },
      { correlationId: "c-2", status: "PROCESSING", orderId: null, source: "status-query" },
      { correlationId: "c-3", status: "FAILED", orderId: null, source: "status-query" },
    ]);
    // Terminal answers end the watch; PROCESSING stays watched for the next outage.
    expect(ctx.client.pendingOrders).toEqual(["c-2"]);
    expect(ctx.catchUps[0]?.result).toEqual({ replayed: 1, complete: false });
  });

  it("does not query when the replay is complete", async () => {
    const ctx = await connected();
    ctx.client.watchOrder("c-1");
    ctx.fake.invokeImpl = () => ({ replayed: 0, complete: true });
    ctx.fake.drop();
    ctx.fake.reconnect();
    await settle();
    expect(ctx.fake.invocations.map((i) => i.method)).toEqual(["ResumeNotifications"]);
    expect(ctx.client.pendingOrders).toEqual(["c-1"]);
  });

  it("falls back when every ResumeNotifications attempt fails on a live connection", async () => {
    const ctx = await connected();
    ctx.client.watchOrder("c-1");
    ctx.fake.invokeImpl = (method) => {
      if (method === "ResumeNotifications") throw new Error("HubException: Method does not exist.");
      return { correlationId: "c-1", status: "COMPLETED", orderId: "CS-1" };
    };
    ctx.fake.drop();
    ctx.fake.reconnect();
    for (let i = 0; i < 5; i++) {
      await settle();
      expect(ctx.updates).toEqual([]);
      ctx.clock.fireAll();
    }
    await settle();
    expect(ctx.fake.invocations.map((i) => i.method)).toEqual([
      ...Array<string>(6).fill("ResumeNotifications"),
      "GetCurrentStatus",
    ]);
    expect(ctx.updates).toEqual([
      { correlationId: "c-1", status: "COMPLETED", orderId: "CS-1", source: "status-query" },
    ]);
  });

  it("leaves the catch-up to the next reconnect when the connection drops mid-call", async () => {
    const ctx = await connected();
    ctx.client.watchOrder("c-1");
    ctx.fake.invokeImpl = () => {
      ctx.fake.drop();
      throw new Error("Invocation canceled due to the underlying connection being closed.");
    };
    ctx.fake.reconnect();
    await settle();
    expect(ctx.fake.invocations.map((i) => i.method)).toEqual(["ResumeNotifications"]);
    expect(ctx.client.state).toBe("reconnecting");
    expect(ctx.client.pendingOrders).toEqual(["c-1"]);
  });

  it("forgets an order the server does not know, keeps one whose query failed otherwise", async () => {
    const ctx = await connected();
    ctx.client.watchOrder("c-gone");
    ctx.client.watchOrder("c-flaky");
    ctx.fake.invokeImpl = (method, args) => {
      if (method === "ResumeNotifications") return { replayed: 0, complete: false };
      if (args[0] === "c-gone") {
        throw new Error("An unexpected error occurred invoking 'GetCurrentStatus' on the server. HubException: order not found");
      }
      throw new Error("timeout");
    };
    ctx.fake.drop();
    ctx.fake.reconnect();
    await settle();
    expect(ctx.client.pendingOrders).toEqual(["c-flaky"]);
    expect(ctx.updates).toEqual([]);
  });

  it("prefers a notification that overtook the status query", async () => {
    const ctx = await connected();
    ctx.client.watchOrder("c-1");
    ctx.fake.invokeImpl = (method) => {
      if (method === "ResumeNotifications") return { replayed: 0, complete: false };
      ctx.fake.push("OrderCompleted", completed("20", "c-1", "CS-20"));
      return { correlationId: "c-1", status: "PROCESSING", orderId: null };
    };
    ctx.fake.drop();
    ctx.fake.reconnect();
    await settle();
    expect(ctx.updates.map((u) => [u.status, u.source])).toEqual([["COMPLETED", "notification"]]);
  });
});

describe("ResumeNeeded push", () => {
  it("calls ResumeNotifications from the last id on the same connection and delivers the missed notifications once", async () => {
    const ctx = await connected();
    ctx.fake.push("OrderCompleted", completed("1764201600000-0", "c-1"));
    ctx.fake.push("OrderCompleted", completed("1764201601000-0", "c-2"));
    ctx.fake.invokeImpl = (method) => {
      expect(method).toBe("ResumeNotifications");
      // The server replays from the (rewound) position: c-2 again, then the two the tab missed
      // while the server's backplane was away, c-3 and c-4.
      ctx.fake.push("OrderCompleted", completed("1764201601000-0", "c-2"));
      ctx.fake.push("OrderFailed", failed("1764201602000-0", "c-3"));
      ctx.fake.push("OrderCompleted", completed("1764201603000-0", "c-4"));
      return { replayed: 3, complete: true };
    };

    ctx.fake.push("ResumeNeeded");
    await settle();

    // From the last id, moved back by the default 5 s rewind (rewind() above).
    expect(ctx.fake.invocations).toEqual([{ method: "ResumeNotifications", args: ["1764201596000-0"] }]);
    expect(ctx.notifications.map((n) => n.correlationId)).toEqual(["c-1", "c-2", "c-3", "c-4"]);
    expect(ctx.catchUps).toEqual([
      { from: "1764201596000-0", result: { replayed: 3, complete: true }, queried: [], attempts: 1 },
    ]);
    expect(ctx.client.lastNotificationId).toBe("1764201603000-0");
    // No reconnect was involved: the connection stayed up and was not rebuilt or restarted.
    expect(ctx.states).toEqual(["connected"]);
    expect(ctx.fake.startCalls).toBe(1);
    expect(ctx.factoryCalls).toHaveLength(1);

    // A second push resumes from the new last id; the repeated replay delivers nothing twice.
    ctx.fake.push("ResumeNeeded");
    await settle();
    expect(ctx.fake.invocations.map((i) => i.args)).toEqual([["1764201596000-0"], ["1764201598000-0"]]);
    expect(ctx.notifications.map((n) => n.correlationId)).toEqual(["c-1", "c-2", "c-3", "c-4"]);
  });

  it("resumes from null when nothing was received yet, and queries watched orders when the replay is incomplete", async () => {
    const ctx = await connected();
    ctx.client.watchOrder("c-1");
    ctx.fake.invokeImpl = (method, args) => {
      if (method === "ResumeNotifications") return { replayed: 0, complete: false };
      expect(args).toEqual(["c-1"]);
      return { correlationId: "c-1", status: "COMPLETED", orderId: "CS-1" };
    };
    ctx.fake.push("ResumeNeeded");
    await settle();
    expect(ctx.fake.invocations).toEqual([
      { method: "ResumeNotifications", args: [null] },
      { method: "GetCurrentStatus", args: ["c-1"] },
    ]);
    expect(ctx.updates).toEqual([{ correlationId: "c-1", status: "COMPLETED", orderId: "CS-1", source: "status-query" }]);
    expect(ctx.client.pendingOrders).toEqual([]);
  });
});

describe("retrying ResumeNotifications", () => {
  const REDIS_DOWN =
    "An unexpected error occurred invoking 'ResumeNotifications' on the server. HubException: redis unavailable: timed out";

  /** Connected, one notification seen (resume point 1764201595000-0) and c-2 watched. */
  async function afterFailover(overrides: Parameters<typeof setup>[0] = {}) {
    const ctx = setup(overrides);
    await ctx.client.start();
    ctx.fake.push("OrderCompleted", completed("1764201600000-0", "c-1"));
    ctx.client.watchOrder("c-2");
    const resumes = () => ctx.fake.invocations.filter((i) => i.method === "ResumeNotifications").map((i) => i.args[0]);
    const queries = () => ctx.fake.invocations.filter((i) => i.method === "GetCurrentStatus").map((i) => i.args[0]);
    return { ...ctx, resumes, queries };
  }

  it("retries a hub error with jittered backoff from the same position and delivers the replay without GetCurrentStatus", async () => {
    const ctx = await afterFailover();
    let calls = 0;
    ctx.fake.invokeImpl = (method) => {
      if (method !== "ResumeNotifications") return { correlationId: "c-2", status: "PROCESSING", orderId: null };
      if (++calls <= 2) throw new Error(REDIS_DOWN);
      ctx.fake.push("OrderCompleted", completed("1764201600000-0", "c-1"));
      ctx.fake.push("OrderCompleted", completed("1764201602000-0", "c-2"));
      return { replayed: 2, complete: true };
    };

    ctx.fake.push("ResumeNeeded");
    await settle();
    expect(ctx.resumes()).toEqual(["1764201595000-0"]);
    expect(ctx.clock.delays).toEqual([250]); // random 0.5 of the 500 ms base
    expect(ctx.catchUps).toEqual([]);
    ctx.clock.fireAll();
    await settle();
    expect(ctx.resumes()).toHaveLength(2);
    expect(ctx.clock.delays).toEqual([250, 500]);
    ctx.clock.fireAll();
    await settle();

    expect(ctx.resumes()).toEqual(["1764201595000-0", "1764201595000-0", "1764201595000-0"]);
    expect(ctx.queries()).toEqual([]);
    expect(ctx.notifications.map((n) => n.correlationId)).toEqual(["c-1", "c-2"]);
    expect(ctx.updates.every((u) => u.source === "notification")).toBe(true);
    expect(ctx.client.pendingOrders).toEqual([]);
    expect(ctx.errors.map((e) => e.message)).toEqual([REDIS_DOWN, REDIS_DOWN]);
    expect(ctx.catchUps).toEqual([
      { from: "1764201595000-0", result: { replayed: 2, complete: true }, queried: [], attempts: 3 },
    ]);
    expect(ctx.clock.pending).toBe(0);
    expect(ctx.states).toEqual(["connected"]);
  });

  it("falls back to GetCurrentStatus only after all 6 attempts failed, reporting every error and one catch-up", async () => {
    const ctx = await afterFailover();
    ctx.fake.invokeImpl = (method) => {
      if (method === "ResumeNotifications") throw new Error(REDIS_DOWN);
      return { correlationId: "c-2", status: "COMPLETED", orderId: "CS-2" };
    };

    ctx.fake.push("ResumeNeeded");
    for (let i = 0; i < 5; i++) {
      await settle();
      expect(ctx.queries()).toEqual([]);
      expect(ctx.catchUps).toEqual([]);
      ctx.clock.fireAll();
    }
    await settle();

    expect(ctx.resumes()).toEqual(Array<string>(6).fill("1764201595000-0"));
    // Full jitter (random 0.5) under min(5 s, 500 ms * 2^n).
    expect(ctx.clock.delays).toEqual([250, 500, 1000, 2000, 2500]);
    expect(ctx.queries()).toEqual(["c-2"]);
    expect(ctx.updates.at(-1)).toEqual({ correlationId: "c-2", status: "COMPLETED", orderId: "CS-2", source: "status-query" });
    expect(ctx.errors.map((e) => e.message)).toEqual(Array<string>(6).fill(REDIS_DOWN));
    expect(ctx.catchUps).toEqual([{ from: "1764201595000-0", result: null, queried: ["c-2"], attempts: 6 }]);
    expect(ctx.clock.pending).toBe(0);
  });

  it("takes the number of attempts and the backoff from the options", async () => {
    expect(() => setup({ resumeAttempts: 0 })).toThrow(RangeError);
    expect(() => setup({ resumeAttempts: 2.5 })).toThrow(RangeError);

    const ctx = await afterFailover({ resumeAttempts: 3, resumeRetryBaseDelayMs: 100, resumeRetryMaxDelayMs: 150 });
    ctx.fake.invokeImpl = (method) => {
      if (method === "ResumeNotifications") throw new Error(REDIS_DOWN);
      return { correlationId: "c-2", status: "PROCESSING", orderId: null };
    };
    ctx.fake.push("ResumeNeeded");
    for (let i = 0; i < 2; i++) {
      await settle();
      ctx.clock.fireAll();
    }
    await settle();
    expect(ctx.resumes()).toHaveLength(3);
    expect(ctx.clock.delays).toEqual([50, 75]); // random 0.5 of 100, then of min(150, 200)
    expect(ctx.catchUps.map((c) => [c.attempts, c.queried])).toEqual([[3, ["c-2"]]]);

    // resumeAttempts: 1 is the single call of old: no retry, straight to the fallback.
    const once = await afterFailover({ resumeAttempts: 1 });
    once.fake.invokeImpl = ctx.fake.invokeImpl;
    once.fake.push("ResumeNeeded");
    await settle();
    expect(once.clock.delays).toEqual([]);
    expect(once.resumes()).toHaveLength(1);
    expect(once.catchUps).toEqual([{ from: "1764201595000-0", result: null, queried: ["c-2"], attempts: 1 }]);
  });

  it("lets a ResumeNeeded that arrives during a retry wait supersede the waiting catch-up", async () => {
    const ctx = await afterFailover();
    let calls = 0;
    ctx.fake.invokeImpl = (method) => {
      if (method !== "ResumeNotifications") return { correlationId: "c-2", status: "PROCESSING", orderId: null };
      if (++calls <= 2) throw new Error(REDIS_DOWN);
      return { replayed: 0, complete: true };
    };

    ctx.fake.push("ResumeNeeded");
    await settle();
    expect(ctx.clock.pending).toBe(1);
    // A live notification moves the resume point, so the two catch-ups ask from different positions.
    ctx.fake.push("OrderCompleted", completed("1764201610000-0", "c-3"));
    ctx.fake.push("ResumeNeeded");
    await settle();
    // The old wait was cancelled; only the new catch-up (which also failed once) is waiting.
    expect(ctx.clock.pending).toBe(1);
    expect(ctx.resumes()).toEqual(["1764201595000-0", "1764201605000-0"]);

    for (let i = 0; i < 3; i++) {
      ctx.clock.fireAll();
      await settle();
    }
    expect(ctx.resumes()).toEqual(["1764201595000-0", "1764201605000-0", "1764201605000-0"]);
    expect(ctx.queries()).toEqual([]);
    expect(ctx.catchUps).toEqual([
      { from: "1764201605000-0", result: { replayed: 0, complete: true }, queried: [], attempts: 2 },
    ]);
    expect(ctx.clock.pending).toBe(0);
  });

  it("lets a reconnect during a retry wait supersede the waiting catch-up", async () => {
    const ctx = await afterFailover();
    let calls = 0;
    ctx.fake.invokeImpl = (method) => {
      if (method !== "ResumeNotifications") return { correlationId: "c-2", status: "PROCESSING", orderId: null };
      if (++calls === 1) throw new Error(REDIS_DOWN);
      return { replayed: 0, complete: true };
    };
    ctx.fake.push("ResumeNeeded");
    await settle();
    expect(ctx.clock.pending).toBe(1);
    ctx.fake.drop();
    ctx.fake.reconnect(); // before the dropped catch-up had a chance to run again
    await settle();
    ctx.clock.fireAll();
    await settle();
    expect(ctx.resumes()).toEqual(["1764201595000-0", "1764201595000-0"]);
    expect(ctx.queries()).toEqual([]);
    expect(ctx.catchUps).toEqual([
      { from: "1764201595000-0", result: { replayed: 0, complete: true }, queried: [], attempts: 1 },
    ]);
    expect(ctx.clock.pending).toBe(0);
  });

  it("leaves no timer and makes no call after stop() during a retry wait", async () => {
    const ctx = await afterFailover();
    ctx.fake.invokeImpl = (method) => {
      if (method === "ResumeNotifications") throw new Error(REDIS_DOWN);
      return { correlationId: "c-2", status: "PROCESSING", orderId: null };
    };
    ctx.fake.push("ResumeNeeded");
    await settle();
    expect(ctx.clock.pending).toBe(1);

    await ctx.client.stop();
    expect(ctx.clock.pending).toBe(0);
    await settle();
    ctx.clock.fireAll();
    await settle();
    expect(ctx.clock.pending).toBe(0);
    expect(ctx.fake.invocations.map((i) => i.method)).toEqual(["ResumeNotifications"]);
    expect(ctx.catchUps).toEqual([]);
    expect(ctx.client.state).toBe("offline");
  });

  it("stops retrying when the connection drops mid-loop and resumes afresh after the reconnect", async () => {
    const ctx = await afterFailover();
    ctx.fake.invokeImpl = (method) => {
      if (method === "ResumeNotifications") throw new Error(REDIS_DOWN);
      return { correlationId: "c-2", status: "PROCESSING", orderId: null };
    };
    ctx.fake.push("ResumeNeeded");
    await settle();
    ctx.clock.fireAll(); // first retry, fails again
    await settle();
    expect(ctx.resumes()).toHaveLength(2);
    expect(ctx.clock.pending).toBe(1);

    ctx.fake.drop();
    expect(ctx.clock.pending).toBe(0); // the wait ends with the connection
    await settle();
    expect(ctx.resumes()).toHaveLength(2);
    expect(ctx.queries()).toEqual([]);
    expect(ctx.catchUps).toEqual([{ from: "1764201595000-0", result: null, queried: [], attempts: 2 }]);

    ctx.fake.invokeImpl = () => ({ replayed: 0, complete: true });
    ctx.fake.reconnect();
    await settle();
    expect(ctx.resumes()).toEqual(Array<string>(3).fill("1764201595000-0"));
    expect(ctx.catchUps.at(-1)).toEqual({ from: "1764201595000-0", result: { replayed: 0, complete: true }, queried: [], attempts: 1 });
    expect(ctx.clock.pending).toBe(0);
  });
});

describe("rewind", () => {
  it("moves a log position back by the given milliseconds and leaves other ids alone", () => {
    expect(rewind("1764201600123-7", 5000)).toBe("1764201595123-0");
    expect(rewind("1000-0", 5000)).toBe("0-0");
    expect(rewind("1764201600123-7", 0)).toBe("1764201600123-7");
    expect(rewind("a1", 5000)).toBe("a1");
    expect(rewind(null, 5000)).toBeNull();
  });
});
