// Test doubles: a scriptable stand-in for SignalR's HubConnection and a manual clock, so the
// client's retry and resume logic can be driven step by step without sockets or real time.
import { HubConnectionState } from "@microsoft/signalr";

import type { Clock, HubConnectionLike } from "../src/index.js";

type Handler = (...args: any[]) => void;
type InvokeImpl = (method: string, args: unknown[]) => unknown;

export class FakeHubConnection implements HubConnectionLike {
  state: HubConnectionState = HubConnectionState.Disconnected;
  startCalls = 0;
  stopCalls = 0;
  readonly invocations: Array<{ method: string; args: unknown[] }> = [];
  /** Outcomes for the next start() calls; once empty every start succeeds. */
  readonly startOutcomes: Array<Error | "ok"> = [];
  invokeImpl: InvokeImpl = () => undefined;

  private readonly handlers = new Map<string, Handler[]>();
  private readonly closeCallbacks: Array<(error?: Error) => void> = [];
  private readonly reconnectingCallbacks: Array<(error?: Error) => void> = [];
  private readonly reconnectedCallbacks: Array<(connectionId?: string) => void> = [];

  async start(): Promise<void> {
    this.startCalls++;
    const outcome = this.startOutcomes.shift() ?? "ok";
    await Promise.resolve();
    if (outcome !== "ok") throw outcome;
    this.state = HubConnectionState.Connected;
  }

  async stop(): Promise<void> {
    this.stopCalls++;
    const wasUp = this.state !== HubConnectionState.Disconnected;
    this.state = HubConnectionState.Disconnected;
    if (wasUp) this.closeCallbacks.forEach((cb) => cb());
  }

  async invoke<T = unknown>(method: string, ...args: unknown[]): Promise<T> {
    this.invocations.push({ method, args });
    if (this.state !== HubConnectionState.Connected) {
      throw new Error("Cannot send data if the connection is not in the 'Connected' State.");
    }
    return (await this.invokeImpl(method, args)) as T;
  }

  on(method: string, handler: Handler): void {
    const key = method.toLowerCase();
    this.handlers.set(key, [...(this.handlers.get(key) ?? []), handler]);
  }

  onclose(callback: (error?: Error) => void): void {
    this.closeCallbacks.push(callback);
  }

  onreconnecting(callback: (error?: Error) => void): void {
    this.reconnectingCallbacks.push(callback);
  }

  onreconnected(callback: (connectionId?: string) => void): void {
    this.reconnectedCallbacks.push(callback);
  }

  /** Server push, as SignalR would dispatch it (method names are case-insensitive). */
  push(method: string, ...args: unknown[]): void {
    for (const handler of this.handlers.get(method.toLowerCase()) ?? []) handler(...args);
  }

  /** Socket lost: SignalR enters its automatic-reconnect loop. */
  drop(error = new Error("WebSocket closed with status code: 1006 (no reason given).")): void {
    this.state = HubConnectionState.Reconnecting;
    this.reconnectingCallbacks.forEach((cb) => cb(error));
  }

  /** Automatic reconnect succeeded (skipNegotiation: no connection id). */
  reconnect(): void {
    this.state = HubConnectionState.Connected;
    this.reconnectedCallbacks.forEach((cb) => cb(undefined));
  }

  /** Closed for good, e.g. a Close message without allowReconnect. */
  close(error?: Error): void {
    this.state = HubConnectionState.Disconnected;
    this.closeCallbacks.forEach((cb) => cb(error));
  }
}

/** Timers that only fire when the test says so; records every requested delay. */
export class ManualClock implements Clock {
  readonly delays: number[] = [];
  private readonly timers = new Map<number, () => void>();
  private nextHandle = 1;

  setTimeout(callback: () => void, ms: number): unknown {
    const handle = this.nextHandle++;
    this.delays.push(ms);
    this.timers.set(handle, callback);
    return handle;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  get pending(): number {
    return this.timers.size;
  }

  /** Fires every timer due now (all of them: the delays are recorded, not simulated). */
  fireAll(): void {
    const due = [...this.timers.entries()];
    this.timers.clear();
    for (const [, callback] of due) callback();
  }
}

/** Lets every queued promise callback run (a real macrotask comes after all microtasks). */
export function settle(): Promise<void> {
  return new Promise((resolve) => globalThis.setTimeout(resolve, 0));
}
