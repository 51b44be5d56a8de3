// End-to-end in jsdom: the whole page with fake HTTP and a fake hub. Checks the browser-test
// hooks (connection-state text, order rows, status cells, toasts) and basic accessibility wiring.
import { TestBed } from '@angular/core/testing';
import { describe, expect, it } from 'vitest';

import { completed, failed, settle } from '../testing/fake-hub-connection';
import { setup } from '../testing/harness';
import { App } from './app';

const products = [
  { id: 'p-mug', name: 'Mug', priceCents: 1250, currency: 'EUR' },
  { id: 'p-tee', name: 'T-shirt', priceCents: 2000, currency: 'EUR' },
];

async function render(signedInAs?: string) {
  const ctx = setup(signedInAs ? { signedInAs } : {});
  const fixture = TestBed.createComponent(App);
  fixture.autoDetectChanges();
  await fixture.whenStable();
  ctx.http.expectOne('/api/products').flush(products);
  await settle();
  await fixture.whenStable();
  const el = fixture.nativeElement as HTMLElement;
  const $ = <T extends Element = HTMLElement>(sel: string) => el.querySelector<T & Element>(sel);
  const $$ = (sel: string) => Array.from(el.querySelectorAll<HTMLElement>(sel));
  const stable = async () => {
    await settle();
    await fixture.whenStable();
  };
  return { ...ctx, fixture, el, $, $$, stable, connection: () => ctx.hub.connections.at(-1)! };
}

describe('App', () => {
  it('shows the catalogue and an offline indicator before sign-in', async () => {
    const { $, $$ } = await render();
    expect($('[data-testid="connection-state"]')?.textContent).toBe('offline');
    expect($$('[data-testid="product"]').map((p) => p.dataset['productId'])).toEqual(['p-mug', 'p-tee']);
    expect($('label[for="user-id"]')?.textContent).toBe('User id');
    expect($<HTMLButtonElement>('[data-testid="checkout"]')?.disabled).toBe(true);
    expect($('main#main')).not.toBeNull();
    expect($('h1')?.textContent).toBe('Contoso shop');
  });

  it('signs in, connects, lists orders and updates a row and a toast from the hub', async () => {
    const { $, $$, http, stable, connection } = await render();
    const input = $<HTMLInputElement>('#user-id')!;
    input.value = 'alice';
    input.dispatchEvent(new Event('input'));
    $<HTMLFormElement>('form.sign-in')!.dispatchEvent(new Event('submit', { cancelable: true }));
    http.expectOne('/api/dev/token').flush({ token: 'h.eyJzdWIiOiJhbGljZSJ9.s' });
    await stable();

    expect($('[data-testid="signed-in-user"]')?.textContent?.trim()).toBe('Signed in as alice');
    expect($('[data-testid="connection-state"]')?.textContent).toBe('connected');

    http.expectOne('/api/orders').flush([
      { correlationId: 'c-1', status: 'PROCESSING', orderId: null, totalCents: 2500, currency: 'EUR', createdAt: '2026-11-27T10:00:00Z', updatedAt: '2026-11-27T10:00:01Z' },
    ]);
    await stable();
    const row = $('[data-testid="order-row"][data-correlation-id="c-1"]')!;
    expect(row.querySelector('[data-testid="order-status"]')?.textContent).toBe('PROCESSING');

    connection().push('OrderCompleted', completed('1', 'c-1', 'CS-000001'));
    await stable();
    expect(row.querySelector('[data-testid="order-status"]')?.textContent).toBe('COMPLETED');
    expect(row.querySelector('[data-testid="order-id"]')?.textContent).toBe('CS-000001');
    const toasts = $$('[data-testid="toast"]');
    expect(toasts).toHaveLength(1);
    expect(toasts[0]!.dataset['correlationId']).toBe('c-1');
    expect(toasts[0]!.dataset['status']).toBe('COMPLETED');
    expect(toasts[0]!.textContent).toContain('Your order CS-000001 is complete.');
    expect(toasts[0]!.closest('[aria-live]')?.getAttribute('aria-live')).toBe('polite');
  });

  it('shows reconnecting while the hub reconnects, then connected again', async () => {
    const { $, http, stable, connection } = await render('alice');
    http.expectOne('/api/orders').flush([]);
    await stable();
    connection().drop();
    await stable();
    expect($('[data-testid="connection-state"]')?.textContent).toBe('reconnecting');
    connection().reconnect();
    await stable();
    expect($('[data-testid="connection-state"]')?.textContent).toBe('connected');
  });

  it('checks out the cart and shows the new order, then its failure toast', async () => {
    const { $, $$, http, stable, connection } = await render('alice');
    http.expectOne('/api/orders').flush([]);
    await stable();

    $<HTMLButtonElement>('[data-product-id="p-mug"] [data-testid="add-to-cart"]')!.click();
    await stable();
    expect($$('[data-testid="cart-line"]')).toHaveLength(1);
    $<HTMLButtonElement>('[data-testid="checkout"]')!.click();
    const req = http.expectOne((r) => r.method === 'POST' && r.url === '/api/orders');
    expect(req.request.headers.get('Idempotency-Key')).toBeTruthy();
    req.flush({ correlationId: 'c-9', status: 'ACCEPTED', totalCents: 1250, currency: 'EUR' }, { status: 202, statusText: 'Accepted' });
    await stable();

    expect($('[data-testid="checkout-result"]')?.textContent).toContain('Order accepted');
    expect(document.activeElement).toBe($('[data-testid="checkout-result"]'));
    const row = $('[data-testid="order-row"][data-correlation-id="c-9"]')!;
    expect(row.querySelector('[data-testid="order-status"]')?.textContent).toBe('ACCEPTED');

    connection().push('OrderFailed', failed('3', 'c-9', 'out of stock'));
    await stable();
    expect(row.querySelector('[data-testid="order-status"]')?.textContent).toBe('FAILED');
    expect($('[data-testid="toast"][data-correlation-id="c-9"]')?.dataset['status']).toBe('FAILED');
  });

  it('shows the problem detail when the server refuses an order', async () => {
    const { $, http, stable } = await render('alice');
    http.expectOne('/api/orders').flush([]);
    await stable();
    $<HTMLButtonElement>('[aria-label="Add to cart: T-shirt"]')!.click();
    await stable();
    $<HTMLButtonElement>('[data-testid="checkout"]')!.click();
    http
      .expectOne((r) => r.method === 'POST')
      .flush(
        { type: 'about:blank', title: 'Unprocessable Entity', status: 422, detail: 'quantity must be between 1 and 100', field: 'items[0].quantity' },
        { status: 422, statusText: 'Unprocessable Entity' },
      );
    await stable();
    const error = $('[data-testid="checkout-error"]');
    expect(error?.textContent).toBe('quantity must be between 1 and 100');
    expect(error?.getAttribute('role')).toBe('alert');
  });

  it('dismisses a toast from its button', async () => {
    const { $, $$, http, stable, connection } = await render('alice');
    http.expectOne('/api/orders').flush([]);
    await stable();
    connection().push('OrderCompleted', completed('1', 'c-1', 'CS-1'));
    await stable();
    http.match('/api/orders').forEach((r) => r.flush([]));
    await stable();
    $<HTMLButtonElement>('[data-testid="toast"] button')!.click();
    await stable();
    expect($$('[data-testid="toast"]')).toHaveLength(0);
  });
});
