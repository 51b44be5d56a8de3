// OrdersStore: loads the user's orders, overlays live hub statuses, and reloads when a
// notification names an order placed in another tab.
import { TestBed } from '@angular/core/testing';
import { describe, expect, it } from 'vitest';

import { completed, settle } from '../../testing/fake-hub-connection';
import { setup } from '../../testing/harness';
import type { OrderSummary } from './models';
import { OrderStatusService } from './order-status.service';
import { OrdersStore } from './orders.store';

function order(correlationId: string, status: OrderSummary['status'], orderId: string | null = null): OrderSummary {
  return { correlationId, status, orderId, totalCents: 1000, currency: 'EUR', createdAt: '2026-11-27T10:00:00Z', updatedAt: '2026-11-27T10:00:00Z' };
}

async function start() {
  const ctx = setup({ signedInAs: 'alice' });
  const store = TestBed.inject(OrdersStore);
  TestBed.inject(OrderStatusService);
  TestBed.tick();
  await settle();
  return { ...ctx, store, connection: () => ctx.hub.connections.at(-1)! };
}

describe('OrdersStore', () => {
  it('loads the orders of the signed-in user and watches those still in flight', async () => {
    const { store, http, connection } = await start();
    http.expectOne('/api/orders').flush([order('c-2', 'PROCESSING'), order('c-1', 'COMPLETED', 'CS-1')]);
    await settle();
    expect(store.rows().map((r) => [r.correlationId, r.status, r.orderId])).toEqual([
      ['c-2', 'PROCESSING', null],
      ['c-1', 'COMPLETED', 'CS-1'],
    ]);
    // c-2 is watched: an incomplete replay makes the client query it.
    connection().invokeImpl = (m) => (m === 'ResumeNotifications' ? { replayed: 0, complete: false } : { correlationId: 'c-2', status: 'PROCESSING', orderId: null });
    connection().drop();
    connection().reconnect();
    await settle();
    expect(connection().invocations.filter((i) => i.method === 'GetCurrentStatus').map((i) => i.args)).toEqual([['c-2']]);
  });

  it('updates a row live from a hub notification', async () => {
    const { store, http, connection } = await start();
    http.expectOne('/api/orders').flush([order('c-1', 'ACCEPTED')]);
    await settle();
    connection().push('OrderCompleted', completed('1', 'c-1', 'CS-000001'));
    expect(store.rows()[0]).toMatchObject({ correlationId: 'c-1', status: 'COMPLETED', orderId: 'CS-000001' });
  });

  it('reloads once when a notification names an order it has not listed', async () => {
    const { store, http, connection } = await start();
    http.expectOne('/api/orders').flush([]);
    await settle();
    connection().push('OrderCompleted', completed('1', 'c-other-tab', 'CS-7'));
    TestBed.tick();
    http.expectOne('/api/orders').flush([order('c-other-tab', 'COMPLETED', 'CS-7')]);
    await settle();
    TestBed.tick();
    http.expectNone('/api/orders');
    expect(store.rows().map((r) => r.correlationId)).toEqual(['c-other-tab']);
  });

  it('keeps an order placed here when an older list answer does not have it yet', async () => {
    const { store, http } = await start();
    const pending = http.expectOne('/api/orders');
    store.add({ correlationId: 'c-new', status: 'ACCEPTED', totalCents: 500, currency: 'EUR' });
    pending.flush([order('c-old', 'COMPLETED', 'CS-1')]);
    await settle();
    expect(store.rows().map((r) => r.correlationId)).toEqual(['c-new', 'c-old']);
  });

  it('reports a failed load', async () => {
    const { store, http } = await start();
    http.expectOne('/api/orders').flush({ title: 'Oops', status: 500, detail: 'Database unavailable.' }, { status: 500, statusText: 'Server Error' });
    await settle();
    expect(store.error()).toBe('Database unavailable.');
  });
});

describe('OrdersStore after a (re)connect', () => {
  it('re-reads the list when the hub comes back while orders are in flight', async () => {
    const { store, http, connection } = await start();
    http.expectOne('/api/orders').flush([order('c-1', 'PROCESSING'), order('c-0', 'COMPLETED', 'CS-0')]);
    await settle();
    connection().drop();
    TestBed.tick();
    connection().reconnect();
    TestBed.tick();
    http.expectOne('/api/orders').flush([order('c-1', 'COMPLETED', 'CS-1'), order('c-0', 'COMPLETED', 'CS-0')]);
    await settle();
    expect(store.rows().map((r) => r.status)).toEqual(['COMPLETED', 'COMPLETED']);

    connection().drop();
    TestBed.tick();
    connection().reconnect();
    TestBed.tick();
    await settle();
    http.expectNone('/api/orders'); // nothing in flight: the resume is enough
  });
});

describe('OrdersStore on the first connect', () => {
  it('re-reads in-flight orders when the list answer was already on its way as the hub connected', async () => {
    const { store, http } = await start(); // the fake hub connects at once, before the list lands
    http.expectOne('/api/orders').flush([order('c-1', 'ACCEPTED')]);
    await settle();
    http.expectOne('/api/orders').flush([order('c-1', 'COMPLETED', 'CS-1')]);
    await settle();
    http.expectNone('/api/orders');
    expect(store.rows()[0]?.status).toBe('COMPLETED');
  });
});
