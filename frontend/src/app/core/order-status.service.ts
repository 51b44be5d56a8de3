// Owns the tab's one hub connection (through @contoso/order-status-client) for the signed-in
// user and turns its events into signals: connection state, the latest known status per order,
// and the toasts shown for orders that reach a final state.
import { DestroyRef, Injectable, InjectionToken, effect, inject, signal, untracked } from '@angular/core';
import {
  ClientStoppedError,
  OrderStatusClient,
  isTerminal,
  type ConnectionState,
  type OrderStatus,
  type OrderStatusClientOptions,
  type OrderStatusUpdate,
} from '@contoso/order-status-client';

import { AuthService } from './auth.service';

/** What the SPA knows about one order's progress. */
export interface LiveStatus {
  readonly status: OrderStatus;
  readonly orderId: string | null;
  readonly reason?: string;
}

export interface Toast {
  readonly id: number;
  readonly correlationId: string;
  readonly status: 'COMPLETED' | 'FAILED';
  readonly orderId: string | null;
  readonly message: string;
}

/** Extra client options; tests inject a fake connection factory and clock here. */
export const ORDER_STATUS_CLIENT_OPTIONS = new InjectionToken<Partial<OrderStatusClientOptions>>(
  'ORDER_STATUS_CLIENT_OPTIONS',
  { providedIn: 'root', factory: defaultClientOptions },
);

/** How long a toast stays up; long enough for a person (and a browser test) to notice it. */
export const TOAST_LIFETIME_MS = 15_000;
const MAX_TOASTS = 5;

const RANK: Record<OrderStatus, number> = { ACCEPTED: 0, PROCESSING: 1, COMPLETED: 2, FAILED: 2 };

/** Statuses only move forward; an older report (e.g. a stale list) must not undo a newer one. */
export function laterStatus(current: OrderStatus | undefined, incoming: OrderStatus): boolean {
  if (current === undefined) return true;
  if (isTerminal(current)) return false;
  return RANK[incoming] >= RANK[current];
}

function defaultClientOptions(): Partial<OrderStatusClientOptions> {
  // `?hubProtocol=messagepack` lets browser tests exercise the binary protocol of the same build.
  const param = globalThis.location ? new URLSearchParams(globalThis.location.search).get('hubProtocol') : null;
  return param === 'messagepack' ? { protocol: 'messagepack' } : {};
}

@Injectable({ providedIn: 'root' })
export class OrderStatusService {
  private readonly auth = inject(AuthService);
  private readonly extraOptions = inject(ORDER_STATUS_CLIENT_OPTIONS);

  private readonly stateSignal = signal<ConnectionState>('offline');
  private readonly statusesSignal = signal<ReadonlyMap<string, LiveStatus>>(new Map());
  private readonly toastsSignal = signal<readonly Toast[]>([]);

  readonly connectionState = this.stateSignal.asReadonly();
  readonly statuses = this.statusesSignal.asReadonly();
  readonly toasts = this.toastsSignal.asReadonly();

  private client: OrderStatusClient | undefined;
  private clientUser: string | null = null;
  private nextToastId = 1;
  private readonly toastTimers = new Map<number, ReturnType<typeof setTimeout>>();

  constructor() {
    // One connection per signed-in user: switching users must not keep the old user's stream.
    effect(() => {
      const userId = this.auth.userId();
      untracked(() => this.connectAs(userId));
    });
    inject(DestroyRef).onDestroy(() => {
      void this.disconnect();
      this.toastTimers.forEach((t) => clearTimeout(t));
    });
  }

  /**
   * Records statuses learnt elsewhere (the orders list, a checkout answer) without toasting,
   * and asks the client to watch the orders that are still in flight.
   */
  track(orders: ReadonlyArray<{ correlationId: string; status: OrderStatus; orderId: string | null }>): void {
    const next = new Map(this.statusesSignal());
    let changed = false;
    for (const order of orders) {
      const current = next.get(order.correlationId);
      if (laterStatus(current?.status, order.status)) {
        next.set(order.correlationId, { status: order.status, orderId: order.orderId ?? current?.orderId ?? null });
        changed = true;
      }
      const known = next.get(order.correlationId)!;
      if (isTerminal(known.status)) this.client?.unwatchOrder(order.correlationId);
      else this.client?.watchOrder(order.correlationId);
    }
    if (changed) this.statusesSignal.set(next);
  }

  dismissToast(id: number): void {
    const timer = this.toastTimers.get(id);
    if (timer !== undefined) clearTimeout(timer);
    this.toastTimers.delete(id);
    this.toastsSignal.update((toasts) => toasts.filter((t) => t.id !== id));
  }

  private connectAs(userId: string | null): void {
    if (userId === this.clientUser && (userId === null || this.client)) return;
    void this.disconnect();
    // Another user's (or no user's) statuses must not leak into this session; statuses tracked
    // before the very first sign-in settled are this user's and are kept.
    if (this.clientUser !== null) this.statusesSignal.set(new Map());
    this.clientUser = userId;
    if (userId === null) return;

    const client = new OrderStatusClient({
      ...this.extraOptions,
      accessTokenFactory: () => this.auth.accessToken(),
    });
    this.client = client;
    client.on('state', (state) => {
      if (this.client === client) this.stateSignal.set(state);
    });
    client.on('status', (update) => {
      if (this.client === client) this.apply(update);
    });
    client.on('error', (error) => {
      // Connection trouble is expected and retried forever; keep it out of the error console.
      console.warn('[order-status]', error.message);
    });
    // Orders learnt before this client existed (e.g. the list loaded first) need watching too.
    for (const [correlationId, live] of this.statusesSignal()) {
      if (!isTerminal(live.status)) client.watchOrder(correlationId);
    }
    client.start().catch((error: unknown) => {
      if (!(error instanceof ClientStoppedError)) console.warn('[order-status]', error);
    });
  }

  private async disconnect(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.stateSignal.set('offline');
    await client?.stop();
  }

  private apply(update: OrderStatusUpdate): void {
    const current = this.statusesSignal().get(update.correlationId);
    if (!laterStatus(current?.status, update.status)) return;
    const live: LiveStatus = {
      status: update.status,
      orderId: update.orderId ?? current?.orderId ?? null,
      ...(update.reason !== undefined ? { reason: update.reason } : {}),
    };
    this.statusesSignal.update((map) => new Map(map).set(update.correlationId, live));
    // Toast on the transition into a final state only: replays of orders this tab already
    // knows as finished stay silent, while a missed one found by a status query still shows.
    if (update.status === 'COMPLETED' || update.status === 'FAILED') {
      this.toast(update.correlationId, update.status, live.orderId, live.reason);
    }
  }

  private toast(correlationId: string, status: 'COMPLETED' | 'FAILED', orderId: string | null, reason?: string): void {
    const label = orderId ?? `ref ${correlationId.slice(0, 8)}`;
    const message =
      status === 'COMPLETED'
        ? `Your order ${label} is complete.`
        : `Your order ${label} failed${reason ? `: ${reason}` : '.'}`;
    const toast: Toast = { id: this.nextToastId++, correlationId, status, orderId, message };
    this.toastsSignal.update((toasts) => {
      const kept = [...toasts, toast];
      for (const dropped of kept.splice(0, Math.max(0, kept.length - MAX_TOASTS))) {
        clearTimeout(this.toastTimers.get(dropped.id));
        this.toastTimers.delete(dropped.id);
      }
      return kept;
    });
    this.toastTimers.set(
      toast.id,
      setTimeout(() => this.dismissToast(toast.id), TOAST_LIFETIME_MS),
    );
  }
}
