// Root component: page layout (header with connection state and sign-in, shop, orders, toasts).
// Injecting the stores here starts the hub connection and the orders list with the session.
import { ChangeDetectionStrategy, Component, inject } from '@angular/core';

import { OrderStatusService } from './core/order-status.service';
import { OrdersStore } from './core/orders.store';
import { Cart } from './features/cart';
import { Catalogue } from './features/catalogue';
import { ConnectionStateIndicator } from './features/connection-state';
import { Orders } from './features/orders';
import { SignIn } from './features/sign-in';
import { Toasts } from './features/toasts';

@Component({
  selector: 'app-root',
  changeDetection: ChangeDetectionStrategy.OnPush,
  imports: [Cart, Catalogue, ConnectionStateIndicator, Orders, SignIn, Toasts],
  template: `
    <a class="skip-link" href="#main">Skip to content</a>
    <header class="site-header">
      <h1>Contoso shop</h1>
      <app-connection-state />
      <app-sign-in />
    </header>
    <main id="main" tabindex="-1">
      <div class="shop">
        <app-catalogue />
        <app-cart />
      </div>
      <app-orders />
    </main>
    <app-toasts />
  `,
})
export class App {
  constructor() {
    inject(OrderStatusService);
    inject(OrdersStore);
  }
}
