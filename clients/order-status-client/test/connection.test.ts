// The production factory really configures @microsoft/signalr as CONTRACT.md section 5 says.
// SignalR exposes no getters for these settings, so the test peeks at its private fields; a
// rename there fails loudly here rather than silently in the browser.
import { HttpTransportType, HubConnection, HubConnectionState } from "@microsoft/signalr";
import { describe, expect, it } from "vitest";

import { FullJitterBackoff, createHubConnection, quietLogger } from "../src/index.js";

async function build(protocol: "json" | "messagepack", statefulReconnect?: boolean) {
  const retryPolicy = new FullJitterBackoff();
  const hub = await createHubConnection({
    url: "http://localhost:8080/hubs/order-status",
    accessTokenFactory: () => "t",
    retryPolicy,
    protocol,
    logger: quietLogger,
    ...(statefulReconnect !== undefined ? { statefulReconnect } : {}),
  });
  return { hub, retryPolicy };
}

type Internals = {
  connection: {
    _options: { transport: unknown; skipNegotiation: unknown; accessTokenFactory: () => unknown; _useStatefulReconnect?: unknown };
  };
  _reconnectPolicy: unknown;
  _protocol: { name: string };
};

describe("createHubConnection", () => {
  it("uses WebSockets only, negotiates stateful reconnect, carries the token factory and our retry policy", async () => {
    const { hub, retryPolicy } = await build("json");
    expect(hub).toBeInstanceOf(HubConnection);
    expect(hub.state).toBe(HubConnectionState.Disconnected);
    const internals = hub as unknown as Internals;
    expect(internals.connection._options.transport).toBe(HttpTransportType.WebSockets);
    // Stateful reconnect needs the negotiate: its token is what a resumed socket presents.
    expect(internals.connection._options.skipNegotiation).toBe(false);
    expect(internals.connection._options._useStatefulReconnect).toBe(true);
    expect(await internals.connection._options.accessTokenFactory()).toBe("t");
    expect(internals._reconnectPolicy).toBe(retryPolicy);
    expect(internals._protocol.name).toBe("json");
  });

  it("without stateful reconnect, skips negotiate as CONTRACT.md section 5 shows", async () => {
    const { hub, retryPolicy } = await build("json", false);
    const internals = hub as unknown as Internals;
    expect(internals.connection._options.transport).toBe(HttpTransportType.WebSockets);
    expect(internals.connection._options.skipNegotiation).toBe(true);
    expect(internals.connection._options._useStatefulReconnect).not.toBe(true);
    expect(await internals.connection._options.accessTokenFactory()).toBe("t");
    expect(internals._reconnectPolicy).toBe(retryPolicy);
  });

  it("switches to the MessagePack hub protocol on request", async () => {
    const { hub } = await build("messagepack");
    expect((hub as unknown as { _protocol: { name: string } })._protocol.name).toBe("messagepack");
  });
});
