// A browser tab as the SPA builds it, for the suites that need the client module's own
// reconnect and replay (it needs clients/order-status-client built: test.sh --build-only).
import { LogLevel } from "@microsoft/signalr";
import { OrderStatusClient, createHubConnection } from "../../clients/order-status-client/dist/index.js";
import { within } from "./harness.mjs";

/**
 * Opens a tab on `url`: the client module, every first-seen notification's correlation id in
 * `seen` and its status updates in `updates`. The connection is the module's own
 * (createHubConnection), with one more listener that records each `ResumeNeeded` push, so a test
 * can tell what the server sent from what the module did. `timeline` holds the pushes, state
 * changes and catch-ups in the order they happened. The client is added to `opened`, for the
 * suite to stop.
 */
export async function openClientTab(url, tok, opened) {
  const tab = { client: null, seen: [], updates: [], catchUps: [], resumeNeeded: 0, timeline: [] };
  const connectionFactory = async (options) => {
    const connection = await createHubConnection(options);
    connection.on("ResumeNeeded", () => {
      tab.resumeNeeded += 1;
      tab.timeline.push("ResumeNeeded");
    });
    return connection;
  };
  const client = new OrderStatusClient({ url, accessTokenFactory: () => tok, baseDelayMs: 300, maxDelayMs: 2000, logger: LogLevel.None, connectionFactory });
  tab.client = client;
  opened.add(client);
  client.on("notification", (n) => tab.seen.push(n.correlationId));
  client.on("status", (u) => tab.updates.push(u));
  client.on("state", (state) => tab.timeline.push(state));
  client.on("catchUp", (c) => {
    tab.catchUps.push(c);
    tab.timeline.push("catchUp");
  });
  // start() retries for ever: bound it, so a tab that cannot connect fails the test.
  await within(client.start(), 20000, `a tab to connect to ${url}`);
  return tab;
}
