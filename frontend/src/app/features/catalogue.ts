// Product catalogue (GET /api/products, public): lists products with a price and an add button.
import { ChangeDetectionStrategy, Component, inject, signal } from '@angular/core';

import { ApiService } from '../core/api.service';
import { CartService } from '../core/cart.service';
import type { Product } from '../core/models';
import { formatMoney } from '../core/money';
import { problemMessage } from '../core/problem';

@Component({
  selector: 'app-catalogue',
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <section class="card" aria-labelledby="catalogue-heading">
      <h2 id="catalogue-heading">Products</h2>
      @if (loading()) {
        <p role="status">Loading products…</p>
      } @else if (error(); as message) {
        <p class="error" role="alert">{{ message }}</p>
        <button type="button" (click)="load()">Try again</button>
      } @else if (products().length === 0) {
        <p>No products available.</p>
      } @else {
        <ul class="products">
          @for (product of products(); track product.id) {
            <li data-testid="product" [attr.data-product-id]="product.id">
              <span class="name">{{ product.name }}</span>
              @if (product.available === false) {
                <span class="note" data-testid="fails-note">always fails at processing: it shows the failure path</span>
              }
              <span class="price">{{ price(product) }}</span>
              <button
                type="button"
                data-testid="add-to-cart"
                [attr.aria-label]="'Add to cart: ' + product.name"
                [disabled]="cart.full() && !inCart(product)"
                (click)="cart.add(product)"
              >
                Add to cart
              </button>
            </li>
          }
        </ul>
      }
    </section>
  `,
})
export class Catalogue {
  private readonly api = inject(ApiService);
  protected readonly cart = inject(CartService);
  protected readonly products = signal<readonly Product[]>([]);
  protected readonly loading = signal(true);
  protected readonly error = signal<string | null>(null);

  constructor() {
    void this.load();
  }

  protected async load(): Promise<void> {
    this.loading.set(true);
    this.error.set(null);
    try {
      this.products.set(await this.api.products());
    } catch (error) {
      this.error.set(problemMessage(error, 'The catalogue could not be loaded.'));
    } finally {
      this.loading.set(false);
    }
  }

  protected price(product: Product): string {
    return formatMoney(product.priceCents, product.currency);
  }

  protected inCart(product: Product): boolean {
    return this.cart.lines().some((l) => l.product.id === product.id);
  }
}
