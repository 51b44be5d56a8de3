// CartService checkout: request shape, one Idempotency-Key per checkout (kept for a retry after a
// transient failure, renewed after a change or success), problem details surfaced.
import { TestBed } from '@angular/core/testing';
import { describe, expect, it } from 'vitest';

import { settle } from '../../testing/fake-hub-connection';
import { setup } from '../../testing/harness';
import { CartService } from './cart.service';
import type { Product } from './models';
import { OrdersStore } from './orders.store';

const mug: Product = { id: 'p-mug', name: 'Mug', priceCents: 1250, currency: 'EUR' };
const tee: Product = { id: 'p-tee', name: 'T-shirt', priceCents: 2000, currency: 'EUR' };

function start() {
  const ctx = setup({ signedInAs: 'alice' });
  const cart = TestBed.inject(CartService);
  TestBed.tick();
  // The orders list request that signing in triggers is not what these tests are about.
  ctx.http.match('/api/orders').forEach((r) => r.flush([]));
  return { ...ctx, cart };
}

describe('CartService', () => {
  it('adds, counts, clamps and removes lines', () => {
    const { cart } = start();
    cart.add(mug);
    cart.add(mug);
    cart.add(tee);
    expect(cart.count()).toBe(3);
    expect(cart.estimatedTotalCents()).toBe(2 * 1250 + 2000);
    cart.setQuantity('p-tee', 1000);
    expect(cart.lines().find((l) => l.product.id === 'p-tee')?.quantity).toBe(100);
    cart.setQuantity('p-tee', 0);
    expect(cart.lines().find((l) => l.product.id === 'p-tee')?.quantity).toBe(1);
    cart.remove('p-mug');
    expect(cart.lines().map((l) => l.product.id)).toEqual(['p-tee']);
  });

  it('posts the items with a bearer token and a fresh Idempotency-Key per checkout', async () => {
    const { cart, http } = start();
    const orders = TestBed.inject(OrdersStore);

    cart.add(mug);
    cart.setQuantity('p-mug', 2);
    const first = cart.checkout();
    const req1 = http.expectOne('/api/orders');
    expect(req1.request.method).toBe('POST');
    expect(req1.request.body).toEqual({ items: [{ productId: 'p-mug', quantity: 2 }] });
    expect(req1.request.headers.get('Authorization')).toMatch(/^Bearer /);
    const key1 = req1.request.headers.get('Idempotency-Key');
    expect(key1).toMatch(/^[0-9a-f-]{36}$/);
    req1.flush({ correlationId: 'c-1', status: 'ACCEPTED', totalCents: 2500, currency: 'EUR' }, { status: 202, statusText: 'Accepted' });
    expect(await first).toEqual({ ok: true, order: { correlationId: 'c-1', status: 'ACCEPTED', totalCents: 2500, currency: 'EUR' } });
    expect(cart.lines()).toEqual([]);
    expect(orders.rows().map((r) => [r.correlationId, r.status])).toEqual([['c-1', 'ACCEPTED']]);

    cart.add(tee);
    const second = cart.checkout();
    const req2 = http.expectOne('/api/orders');
    expect(req2.request.headers.get('Idempotency-Key')).not.toBe(key1);
    req2.flush({ correlationId: 'c-2', status: 'ACCEPTED', totalCents: 2000, currency: 'EUR' }, { status: 202, statusText: 'Accepted' });
    await second;
  });

  it('reuses the key when the same cart is retried after a transient failure', async () => {
    const { cart, http } = start();
    cart.add(mug);
    const first = cart.checkout();
    const req1 = http.expectOne('/api/orders');
    req1.flush(
      { type: 'about:blank', title: 'Service Unavailable', status: 503, detail: 'The order store is unavailable; retry shortly.' },
      { status: 503, statusText: 'Service Unavailable', headers: { 'Retry-After': '2' } },
    );
    expect(await first).toEqual({ ok: false, message: 'The order store is unavailable; retry shortly.' });
    expect(cart.lines()).toHaveLength(1);

    const retry = cart.checkout();
    const req2 = http.expectOne('/api/orders');
    expect(req2.request.headers.get('Idempotency-Key')).toBe(req1.request.headers.get('Idempotency-Key'));
    req2.error(new ProgressEvent('error'), { status: 0, statusText: 'Unknown Error' });
    expect(await retry).toMatchObject({ ok: false });

    cart.setQuantity('p-mug', 3);
    const changed = cart.checkout();
    const req3 = http.expectOne('/api/orders');
    expect(req3.request.headers.get('Idempotency-Key')).not.toBe(req1.request.headers.get('Idempotency-Key'));
    req3.flush({ correlationId: 'c-3', status: 'ACCEPTED', totalCents: 3750, currency: 'EUR' });
    await changed;
  });

  it('shows the problem detail of a refused order and spends its key', async () => {
    const { cart, http } = start();
    cart.add(mug);
    const attempt = cart.checkout();
    const req1 = http.expectOne('/api/orders');
    req1.flush(
      { type: 'https://contoso.example/problems/validation', title: 'Invalid order', status: 422, detail: 'Unknown product p-mug.', field: 'items[0].productId' },
      { status: 422, statusText: 'Unprocessable Entity' },
    );
    expect(await attempt).toEqual({ ok: false, message: 'Unknown product p-mug.' });

    const again = cart.checkout();
    const req2 = http.expectOne('/api/orders');
    expect(req2.request.headers.get('Idempotency-Key')).not.toBe(req1.request.headers.get('Idempotency-Key'));
    req2.flush({ correlationId: 'c-4', status: 'ACCEPTED', totalCents: 1250, currency: 'EUR' });
    await again;
    await settle();
  });

  it('refuses to check out an empty cart', async () => {
    const { cart, http } = start();
    expect(await cart.checkout()).toEqual({ ok: false, message: 'Your cart is empty.' });
    http.expectNone('/api/orders');
  });
});
