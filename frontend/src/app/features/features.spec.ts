// Component-level checks that the whole-page test does not reach: sign-in failure, catalogue
// error and retry, narrow quantity input handling, and the exact connection-state texts.
import { provideZonelessChangeDetection, signal, type Type } from '@angular/core';
import { TestBed } from '@angular/core/testing';
import { describe, expect, it } from 'vitest';

import { settle } from '../../testing/fake-hub-connection';
import { setup } from '../../testing/harness';
import { CartService } from '../core/cart.service';
import { OrderStatusService } from '../core/order-status.service';
import { Cart } from './cart';
import { Catalogue } from './catalogue';
import { ConnectionStateIndicator } from './connection-state';
import { SignIn } from './sign-in';

async function mount<T>(component: Type<T>) {
  const fixture = TestBed.createComponent(component);
  fixture.autoDetectChanges();
  await fixture.whenStable();
  const el = fixture.nativeElement as HTMLElement;
  const stable = async () => {
    await settle();
    await fixture.whenStable();
  };
  return { fixture, el, stable };
}

describe('SignIn', () => {
  it('shows the server problem detail when sign-in is refused', async () => {
    const { http } = setup();
    const { el, stable } = await mount(SignIn);
    el.querySelector('form')!.dispatchEvent(new Event('submit', { cancelable: true }));
    http.expectOne('/api/dev/token').flush(
      { title: 'Not Found', status: 404, detail: 'Dev authentication is disabled.' },
      { status: 404, statusText: 'Not Found' },
    );
    await stable();
    expect(el.querySelector('[data-testid="sign-in-error"]')?.textContent).toBe('Dev authentication is disabled.');
    expect(el.querySelector('[role="alert"]')).not.toBeNull();
  });

  it('offers sign-out once signed in', async () => {
    setup({ signedInAs: 'alice' });
    const { el, stable } = await mount(SignIn);
    expect(el.querySelector<HTMLInputElement>('#user-id')?.value).toBe('alice');
    const signOut = Array.from(el.querySelectorAll('button')).find((b) => b.textContent?.trim() === 'Sign out')!;
    signOut.click();
    await stable();
    expect(el.querySelector('[data-testid="signed-in-user"]')?.textContent?.trim()).toBe('Not signed in');
  });
});

describe('Catalogue', () => {
  it('reports a failed load and retries on request', async () => {
    const { http } = setup();
    const { el, stable } = await mount(Catalogue);
    http.expectOne('/api/products').error(new ProgressEvent('error'), { status: 0, statusText: 'Unknown Error' });
    await stable();
    expect(el.querySelector('[role="alert"]')?.textContent).toContain('could not be reached');
    el.querySelector<HTMLButtonElement>('button')!.click();
    http.expectOne('/api/products').flush([{ id: 'p-1', name: 'Pen', priceCents: 199, currency: 'USD' }]);
    await stable();
    expect(el.querySelector('[data-testid="product"] .name')?.textContent).toBe('Pen');
    expect(el.querySelector('[data-testid="product"] .price')?.textContent).toContain('1.99');
  });

  it('says which product always fails at processing', async () => {
    const { http } = setup();
    const { el, stable } = await mount(Catalogue);
    http.expectOne('/api/products').flush([
      { id: 'pen', name: 'Pen', priceCents: 199, currency: 'USD', available: true },
      { id: 'gone', name: 'Gone', priceCents: 299, currency: 'USD', available: false },
    ]);
    await stable();
    const notes = [...el.querySelectorAll('[data-testid="product"]')].map((li) => li.querySelector('[data-testid="fails-note"]')?.textContent ?? null);
    expect(notes[0]).toBeNull();
    expect(notes[1]).toContain('failure path');
  });
});

describe('Cart', () => {
  it('writes a clamped quantity back into the field', async () => {
    setup({ signedInAs: 'alice' });
    const cart = TestBed.inject(CartService);
    cart.add({ id: 'p-1', name: 'Pen', priceCents: 199, currency: 'USD' });
    cart.setQuantity('p-1', 100);
    const { el, stable } = await mount(Cart);
    const input = el.querySelector<HTMLInputElement>('#qty-p-1')!;
    expect(el.querySelector('label[for="qty-p-1"]')?.textContent).toBe('Quantity of Pen');
    input.value = '250';
    input.dispatchEvent(new Event('change'));
    await stable();
    expect(input.value).toBe('100');
    expect(cart.lines()[0]?.quantity).toBe(100);
  });
});

describe('ConnectionStateIndicator', () => {
  it('prints exactly the state word', async () => {
    const state = signal<'connected' | 'reconnecting' | 'offline'>('offline');
    TestBed.configureTestingModule({
      providers: [provideZonelessChangeDetection(), { provide: OrderStatusService, useValue: { connectionState: state } }],
    });
    const { el, stable } = await mount(ConnectionStateIndicator);
    const text = () => el.querySelector('[data-testid="connection-state"]')?.textContent;
    for (const s of ['connected', 'reconnecting', 'offline'] as const) {
      state.set(s);
      await stable();
      expect(text()).toBe(s);
      expect(el.querySelector('.connection')?.getAttribute('data-state')).toBe(s);
    }
  });
});
