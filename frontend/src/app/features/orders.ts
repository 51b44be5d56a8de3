// "My orders": one row per order with a live status cell. Test hooks: rows are
// [data-testid=order-row][data-correlation-id], the status cell is [data-testid=order-status].
import { DatePipe } from '@angular/common';
import { ChangeDetectionStrategy, Component, inject } from '@angular/core';

import { AuthService } from '../core/auth.service';
import { formatMoney } from '../core/money';
import { OrdersStore } from '../core/orders.store';

@Component({
  selector: 'app-orders',
  changeDetection: ChangeDetectionStrategy.OnPush,
  imports: [DatePipe],
  template: `
    <section class="card" aria-labelledby="orders-heading">
      <div class="section-head">
        <h2 id="orders-heading">My orders</h2>
        @if (auth.signedIn()) {
          <button type="button" class="secondary" [disabled]="store.loading()" (click)="store.load()">Refresh</button>
        }
      </div>
      @if (!auth.signedIn()) {
        <p>Sign in to see your orders.</p>
      } @else {
        @if (store.error(); as message) {
          <p class="error" role="alert">{{ message }}</p>
        }
        @if (store.rows().length === 0) {
          <p>{{ store.loading() ? 'Loading your orders…' : 'No orders yet.' }}</p>
        } @else {
          <table class="orders">
            <caption class="visually-hidden">Your orders, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Placed</th>
                <th scope="col">Order</th>
                <th scope="col">Total</th>
                <th scope="col">Status</th>
              </tr>
            </thead>
            <tbody>
              @for (row of store.rows(); track row.correlationId) {
                <tr data-testid="order-row" [attr.data-correlation-id]="row.correlationId" [attr.data-status]="row.status">
                  <td data-label="Placed"><time [attr.datetime]="row.createdAt">{{ row.createdAt | date: 'short' }}</time></td>
                  <td data-label="Order">
                    <span data-testid="order-id">{{ row.orderId ?? (row.status === 'FAILED' ? '—' : 'pending') }}</span>
                    <span class="ref">ref {{ row.correlationId.slice(0, 8) }}</span>
                    @if (row.reason) {
                      <span class="reason">{{ row.reason }}</span>
                    }
                  </td>
                  <td data-label="Total">{{ money(row.totalCents, row.currency) }}</td>
                  <td data-label="Status" data-testid="order-status" [class]="'status status-' + row.status.toLowerCase()">{{ row.status }}</td>
                </tr>
              }
            </tbody>
          </table>
        }
      }
    </section>
  `,
})
export class Orders {
  protected readonly store = inject(OrdersStore);
  protected readonly auth = inject(AuthService);

  protected money(cents: number, currency: string): string {
    return formatMoney(cents, currency);
  }
}
