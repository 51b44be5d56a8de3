// The cart and checkout. One Idempotency-Key per checkout: kept while the same cart is retried
// after a transient failure (so the server can deduplicate), replaced once the cart changes or
// the order went through.
import { Injectable, computed, inject, signal } from '@angular/core';

import { ApiService } from './api.service';
import { MAX_LINES, MAX_QUANTITY, type PlacedOrder, type Product } from './models';
import { OrdersStore } from './orders.store';
import { isTransient, problemMessage } from './problem';
import { uuid } from './uuid';

export interface CartLine {
  readonly product: Product;
  readonly quantity: number;
}

export type CheckoutResult = { ok: true; order: PlacedOrder } | { ok: false; message: string };

function clampQuantity(quantity: number): number {
  if (!Number.isFinite(quantity)) return 1;
  return Math.min(MAX_QUANTITY, Math.max(1, Math.floor(quantity)));
}

@Injectable({ providedIn: 'root' })
export class CartService {
  private readonly api = inject(ApiService);
  private readonly orders = inject(OrdersStore);

  private readonly linesSignal = signal<readonly CartLine[]>([]);
  private readonly busySignal = signal(false);
  private checkoutKey: string | null = null;

  readonly lines = this.linesSignal.asReadonly();
  readonly busy = this.busySignal.asReadonly();
  readonly count = computed(() => this.linesSignal().reduce((n, l) => n + l.quantity, 0));
  /** Display estimate only; the server prices the order from its catalogue. */
  readonly estimatedTotalCents = computed(() =>
    this.linesSignal().reduce((sum, l) => sum + l.product.priceCents * l.quantity, 0),
  );
  readonly currency = computed(() => this.linesSignal()[0]?.product.currency ?? null);
  readonly full = computed(() => this.linesSignal().length >= MAX_LINES);

  add(product: Product): void {
    const lines = this.linesSignal();
    const existing = lines.find((l) => l.product.id === product.id);
    if (existing) {
      this.setQuantity(product.id, existing.quantity + 1);
      return;
    }
    if (lines.length >= MAX_LINES) return;
    this.change([...lines, { product, quantity: 1 }]);
  }

  setQuantity(productId: string, quantity: number): void {
    this.change(
      this.linesSignal().map((l) => (l.product.id === productId ? { ...l, quantity: clampQuantity(quantity) } : l)),
    );
  }

  remove(productId: string): void {
    this.change(this.linesSignal().filter((l) => l.product.id !== productId));
  }

  clear(): void {
    this.change([]);
  }

  async checkout(): Promise<CheckoutResult> {
    const lines = this.linesSignal();
    if (lines.length === 0) return { ok: false, message: 'Your cart is empty.' };
    if (this.busySignal()) return { ok: false, message: 'A checkout is already in progress.' };
    this.checkoutKey ??= uuid();
    const key = this.checkoutKey;
    this.busySignal.set(true);
    try {
      const order = await this.api.placeOrder(
        lines.map((l) => ({ productId: l.product.id, quantity: l.quantity })),
        key,
      );
      this.orders.add(order);
      this.clear();
      return { ok: true, order };
    } catch (error) {
      // A rejected order will not succeed unchanged, so its key is spent; a transient failure
      // keeps the key so that pressing "Place order" again cannot create a second order.
      if (!isTransient(error) && this.checkoutKey === key) this.checkoutKey = null;
      return { ok: false, message: problemMessage(error, 'Your order could not be placed.') };
    } finally {
      this.busySignal.set(false);
    }
  }

  private change(lines: readonly CartLine[]): void {
    this.linesSignal.set(lines);
    this.checkoutKey = null;
  }
}
