// The signed-in user's orders: the list from GET /api/orders merged with the live statuses the
// hub reports, so rows change state without reloading.
import { Injectable, computed, effect, inject, signal, untracked } from '@angular/core';
import { isTerminal } from '@contoso/order-status-client';

import { ApiService } from './api.service';
import { AuthService } from './auth.service';
import type { OrderSummary, PlacedOrder } from './models';
import { OrderStatusService, laterStatus } from './order-status.service';
import { problemMessage } from './problem';

export interface OrderRow extends OrderSummary {
  /** Failure reason, when a notification carried one. */
  readonly reason: string | null;
}

@Injectable({ providedIn: 'root' })
export class OrdersStore {
  private readonly api = inject(ApiService);
  private readonly auth = inject(AuthService);
  private readonly orderStatus = inject(OrderStatusService);

  private readonly list = signal<readonly OrderSummary[]>([]);
  private readonly loadingSignal = signal(false);
  private readonly errorSignal = signal<string | null>(null);
  /** Bumped per load so an answer for a previous user or an older request is dropped. */
  private generation = 0;
  /** Ids that already caused a reload, so an order the list never shows cannot loop. */
  private readonly reloadedFor = new Set<string>();
  /** Orders placed in this tab that a list answer may predate; kept until the server lists them. */
  private readonly placedHere = new Map<string, OrderSummary>();
  private recheckAfterLoad = false;

  readonly loading = this.loadingSignal.asReadonly();
  readonly error = this.errorSignal.asReadonly();

  readonly rows = computed<readonly OrderRow[]>(() => {
    const live = this.orderStatus.statuses();
    return this.list().map((order) => {
      const news = live.get(order.correlationId);
      if (!news || !laterStatus(order.status, news.status) || news.status === order.status) {
        return { ...order, orderId: order.orderId ?? news?.orderId ?? null, reason: news?.reason ?? null };
      }
      return { ...order, status: news.status, orderId: news.orderId ?? order.orderId, reason: news.reason ?? null };
    });
  });

  constructor() {
    effect(() => {
      const userId = this.auth.userId();
      untracked(() => {
        this.generation++;
        this.list.set([]);
        this.reloadedFor.clear();
        this.placedHere.clear();
        this.recheckAfterLoad = false;
        this.loadingSignal.set(false);
        this.errorSignal.set(null);
        if (userId !== null) void this.load();
      });
    });
    let previousState = this.orderStatus.connectionState();
    effect(() => {
      const state = this.orderStatus.connectionState();
      untracked(() => {
        if (state === 'connected' && previousState !== 'connected') this.refreshInFlight();
        previousState = state;
      });
    });
    // A notification about an order this tab has never listed (placed in another tab): reload.
    effect(() => {
      const live = this.orderStatus.statuses();
      const loading = this.loadingSignal();
      const list = this.list();
      untracked(() => {
        if (loading || !this.auth.signedIn()) return;
        const listed = new Set(list.map((o) => o.correlationId));
        const missing = [...live.keys()].filter((id) => !listed.has(id) && !this.reloadedFor.has(id));
        if (missing.length === 0) return;
        missing.forEach((id) => this.reloadedFor.add(id));
        void this.load();
      });
    });
  }

  /**
   * Called when the hub (re)connects. A list fetched before the socket was up can miss a
   * notification sent in between, and the first connect has nothing to resume from, so orders
   * still in flight are re-read once the socket is listening.
   */
  private refreshInFlight(): void {
    if (!this.auth.signedIn()) return;
    if (this.loadingSignal()) {
      // The answer on its way may predate the socket: check again once it has landed.
      this.recheckAfterLoad = true;
      return;
    }
    if (this.rows().some((row) => !isTerminal(row.status))) void this.load();
  }

  async load(): Promise<void> {
    const generation = ++this.generation;
    this.loadingSignal.set(true);
    try {
      const orders = await this.api.orders();
      if (generation !== this.generation) return;
      const listed = new Set(orders.map((o) => o.correlationId));
      for (const id of listed) this.placedHere.delete(id);
      // Newest first, as the server orders them; local ones are newer than anything it missed.
      this.list.set([...this.placedHere.values()].reverse().concat(orders));
      this.errorSignal.set(null);
      this.orderStatus.track(orders);
    } catch (error) {
      if (generation === this.generation) this.errorSignal.set(problemMessage(error, 'Your orders could not be loaded.'));
    } finally {
      if (generation === this.generation) {
        this.loadingSignal.set(false);
        if (this.recheckAfterLoad) {
          this.recheckAfterLoad = false;
          this.refreshInFlight();
        }
      }
    }
  }

  /** Shows a just-placed order at once, before any list reload. */
  add(placed: PlacedOrder): void {
    const now = new Date().toISOString();
    const order: OrderSummary = {
      correlationId: placed.correlationId,
      status: placed.status,
      orderId: null,
      totalCents: placed.totalCents,
      currency: placed.currency,
      createdAt: now,
      updatedAt: now,
    };
    this.placedHere.set(order.correlationId, order);
    // An idempotent retry returns the same correlation id: replace rather than duplicate.
    this.list.update((list) => [order, ...list.filter((o) => o.correlationId !== placed.correlationId)]);
    this.orderStatus.track([order]);
  }
}
