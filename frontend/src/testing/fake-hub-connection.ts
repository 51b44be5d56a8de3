// Test double for SignalR's HubConnection, plugged into the real OrderStatusClient through its
// connection factory, so SPA tests exercise the same client code the browser runs.
import type { ConnectionFactory, HubConnectionLike, OrderStatusClientOptions } from '@contoso/order-status-client';
import { HubConnectionState } from '@microsoft/signalr';

type Handler = (...args: any[]) => void;

export class FakeHubConnection implements HubConnectionLike {
  state: HubConnectionState = HubConnectionState.Disconnected;
  startCalls = 0;
  readonly invocations: Array<{ method: string; args: unknown[] }> = [];
  invokeImpl: (method: string, args: unknown[]) => unknown = () => ({ replayed: 0, complete: true });

  private readonly handlers = new Map<string, Handler[]>();
  private readonly closed: Array<(error?: Error) => void> = [];
  private readonly reconnecting: Array<(error?: Error) => void> = [];
  private readonly reconnected: Array<(id?: string) => void> = [];

  async start(): Promise<void> {
    this.startCalls++;
    this.state = HubConnectionState.Connected;
  }

  async stop(): Promise<void> {
    const wasUp = this.state !== HubConnectionState.Disconnected;
    this.state = HubConnectionState.Disconnected;
    if (wasUp) this.closed.forEach((cb) => cb());
  }

  async invoke<T = unknown>(method: string, ...args: unknown[]): Promise<T> {
    this.invocations.push({ method, args });
    return (await this.invokeImpl(method, args)) as T;
  }

  on(method: string, handler: Handler): void {
    const key = method.toLowerCase();
    this.handlers.set(key, [...(this.handlers.get(key) ?? []), handler]);
  }

  onclose(cb: (error?: Error) => void): void {
    this.closed.push(cb);
  }

  onreconnecting(cb: (error?: Error) => void): void {
    this.reconnecting.push(cb);
  }

  onreconnected(cb: (id?: string) => void): void {
    this.reconnected.push(cb);
  }

  push(method: string, ...args: unknown[]): void {
    for (const handler of this.handlers.get(method.toLowerCase()) ?? []) handler(...args);
  }

  drop(): void {
    this.state = HubConnectionState.Reconnecting;
    this.reconnecting.forEach((cb) => cb(new Error('WebSocket closed with status code: 1006 (no reason given).')));
  }

  reconnect(): void {
    this.state = HubConnectionState.Connected;
    this.reconnected.forEach((cb) => cb(undefined));
  }
}

/** Client options that hand out fresh fakes (one per OrderStatusClient) and record them. */
export function fakeClientOptions(): {
  options: Partial<OrderStatusClientOptions>;
  connections: FakeHubConnection[];
  tokens: () => Promise<string[]>;
} {
  const connections: FakeHubConnection[] = [];
  const factories: Array<() => string | Promise<string>> = [];
  const connectionFactory: ConnectionFactory = (o) => {
    factories.push(o.accessTokenFactory);
    const fake = new FakeHubConnection();
    connections.push(fake);
    return fake;
  };
  return {
    options: { connectionFactory, random: () => 0 },
    connections,
    tokens: () => Promise.all(factories.map((f) => f())),
  };
}

export function completed(notificationId: string, correlationId: string, orderId: string) {
  return { notificationId, correlationId, orderId, status: 'COMPLETED', occurredAt: '2026-11-27T10:00:00Z' };
}

export function failed(notificationId: string, correlationId: string, reason: string) {
  return { notificationId, correlationId, reason, status: 'FAILED', occurredAt: '2026-11-27T10:00:00Z' };
}

/** A syntactically valid unsigned JWT with the given claims (the SPA never verifies tokens). */
export function fakeJwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => btoa(JSON.stringify(o)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.c2ln`;
}

/** Lets queued promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
