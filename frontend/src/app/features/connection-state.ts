// The hub connection indicator. The text of [data-testid=connection-state] is exactly
// connected | reconnecting | offline: browser tests read it.
import { ChangeDetectionStrategy, Component, inject } from '@angular/core';

import { OrderStatusService } from '../core/order-status.service';

@Component({
  selector: 'app-connection-state',
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <p class="connection" [attr.data-state]="state()" aria-live="polite">
      <span class="dot" aria-hidden="true"></span>
      <span>Live updates:</span>
      <span data-testid="connection-state">{{ state() }}</span>
    </p>
  `,
})
export class ConnectionStateIndicator {
  protected readonly state = inject(OrderStatusService).connectionState;
}
