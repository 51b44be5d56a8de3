// Toasts for finished orders, in a polite live region. Test hooks: [data-testid=toast] with
// data-correlation-id and data-status.
import { ChangeDetectionStrategy, Component, ElementRef, Injector, afterNextRender, inject } from '@angular/core';

import { OrderStatusService } from '../core/order-status.service';

@Component({
  selector: 'app-toasts',
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <section class="toasts" aria-label="Order notifications" aria-live="polite" aria-relevant="additions text">
      @for (toast of service.toasts(); track toast.id) {
        <div
          class="toast"
          [class.toast-failed]="toast.status === 'FAILED'"
          data-testid="toast"
          [attr.data-correlation-id]="toast.correlationId"
          [attr.data-status]="toast.status"
        >
          <p>{{ toast.message }}</p>
          <button type="button" class="dismiss" aria-label="Dismiss notification" (click)="dismiss(toast.id)">×</button>
        </div>
      }
    </section>
  `,
})
export class Toasts {
  protected readonly service = inject(OrderStatusService);
  private readonly host = inject<ElementRef<HTMLElement>>(ElementRef);
  private readonly injector = inject(Injector);

  protected dismiss(id: number): void {
    const hadFocus = this.host.nativeElement.contains(document.activeElement);
    this.service.dismissToast(id);
    if (!hadFocus) return;
    // The focused button just disappeared; move focus to a neighbour or back to the page.
    afterNextRender(
      () => {
        const next = this.host.nativeElement.querySelector<HTMLElement>('.dismiss');
        (next ?? document.getElementById('main'))?.focus();
      },
      { injector: this.injector },
    );
  }
}
