// Cart and checkout UI: quantities, estimated total, "Place order", and the server's problem
// `detail` when an order is refused.
import { ChangeDetectionStrategy, Component, ElementRef, Injector, afterNextRender, inject, signal, viewChild } from '@angular/core';

import { AuthService } from '../core/auth.service';
import { CartService, type CartLine } from '../core/cart.service';
import { MAX_QUANTITY } from '../core/models';
import { formatMoney } from '../core/money';

@Component({
  selector: 'app-cart',
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <section class="card" aria-labelledby="cart-heading">
      <h2 id="cart-heading">Cart</h2>
      @if (cart.lines().length === 0) {
        <p>Your cart is empty.</p>
      } @else {
        <ul class="cart-lines">
          @for (line of cart.lines(); track line.product.id) {
            <li data-testid="cart-line" [attr.data-product-id]="line.product.id">
              <span class="name">{{ line.product.name }}</span>
              <label class="visually-hidden" [for]="'qty-' + line.product.id">Quantity of {{ line.product.name }}</label>
              <input
                #qty
                type="number"
                inputmode="numeric"
                min="1"
                [max]="maxQuantity"
                [id]="'qty-' + line.product.id"
                [value]="line.quantity"
                (change)="setQuantity(line, qty)"
              />
              <span class="price">{{ money(line.product.priceCents * line.quantity, line.product.currency) }}</span>
              <button type="button" class="secondary" [attr.aria-label]="'Remove ' + line.product.name" (click)="cart.remove(line.product.id)">
                Remove
              </button>
            </li>
          }
        </ul>
        @if (cart.currency(); as currency) {
          <p class="total">Estimated total: <strong>{{ money(cart.estimatedTotalCents(), currency) }}</strong></p>
        }
      }
      <button
        type="button"
        data-testid="checkout"
        [disabled]="cart.lines().length === 0 || !auth.signedIn() || cart.busy()"
        (click)="checkout()"
      >
        {{ cart.busy() ? 'Placing order…' : 'Place order' }}
      </button>
      @if (!auth.signedIn()) {
        <p class="hint">Sign in to place an order.</p>
      }
      <p #result class="result" role="status" tabindex="-1" data-testid="checkout-result">{{ message() }}</p>
      @if (error(); as problem) {
        <p class="error" role="alert" data-testid="checkout-error">{{ problem }}</p>
      }
    </section>
  `,
})
export class Cart {
  protected readonly cart = inject(CartService);
  protected readonly auth = inject(AuthService);
  protected readonly message = signal('');
  protected readonly error = signal<string | null>(null);
  protected readonly maxQuantity = MAX_QUANTITY;
  private readonly result = viewChild.required<ElementRef<HTMLElement>>('result');
  private readonly injector = inject(Injector);

  protected money(cents: number, currency: string): string {
    return formatMoney(cents, currency);
  }

  protected setQuantity(line: CartLine, input: HTMLInputElement): void {
    this.cart.setQuantity(line.product.id, input.valueAsNumber);
    // The signal may not change when the value is clamped back to the same number, so the
    // field would keep showing what was typed; write the effective quantity back.
    const effective = this.cart.lines().find((l) => l.product.id === line.product.id)?.quantity;
    if (effective !== undefined) input.value = String(effective);
  }

  protected async checkout(): Promise<void> {
    this.message.set('');
    this.error.set(null);
    const outcome = await this.cart.checkout();
    if (outcome.ok) {
      const { order } = outcome;
      this.message.set(
        `Order accepted (ref ${order.correlationId.slice(0, 8)}, ${formatMoney(order.totalCents, order.currency)}). You will be notified when it is complete.`,
      );
      // The button is disabled now that the cart is empty; keep keyboard focus somewhere useful.
      // After the render: until the message is in the DOM the (empty) result is not displayed,
      // and an element that is not displayed cannot take focus.
      afterNextRender(() => this.result().nativeElement.focus(), { injector: this.injector });
    } else {
      this.error.set(outcome.message);
    }
  }
}
