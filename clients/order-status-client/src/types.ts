// Wire shapes of the order-status hub (CONTRACT.md section 5) and the events this client emits.
// Kept free of runtime code so the SPA and the Node tests can share them without side effects.

/** Order lifecycle as the HTTP API and the hub report it. */
export type OrderStatus = "ACCEPTED" | "PROCESSING" | "COMPLETED" | "FAILED";

/** What the UI shows about the hub connection; the strings are part of the SPA's test hooks. */
export type ConnectionState = "connected" | "reconnecting" | "offline";

/** Server-to-client `OrderCompleted(n)`. */
export interface OrderCompletedNotification {
  readonly notificationId: string;
  readonly correlationId: string;
  readonly orderId: string;
  readonly status: "COMPLETED";
  readonly occurredAt: string;
}

/** Server-to-client `OrderFailed(n)`. */
export interface OrderFailedNotification {
  readonly notificationId: string;
  readonly correlationId: string;
  readonly reason: string;
  readonly status: "FAILED";
  readonly occurredAt: string;
}

export type OrderNotification = OrderCompletedNotification | OrderFailedNotification;

/** Result of the hub method `GetCurrentStatus(correlationId)`. */
export interface OrderStatusSnapshot {
  readonly correlationId: string;
  readonly status: OrderStatus;
  readonly orderId: string | null;
}

/** Result of the hub method `ResumeNotifications(lastNotificationId | null)`. */
export interface ResumeResult {
  readonly replayed: number;
  readonly complete: boolean;
}

/**
 * One piece of news about an order, whichever way it arrived: a (possibly replayed) hub
 * notification, or a synthetic update built from `GetCurrentStatus` when the server could not
 * replay everything that was missed.
 */
export interface OrderStatusUpdate {
  readonly correlationId: string;
  readonly status: OrderStatus;
  readonly orderId: string | null;
  /** Failure reason; only for FAILED updates that came from a notification. */
  readonly reason?: string;
  readonly source: "notification" | "status-query";
  /** Present when `source` is "notification". */
  readonly notificationId?: string;
  readonly occurredAt?: string;
}

/** What one catch-up after a (re)connect did; reported for logs and tests. */
export interface CatchUpOutcome {
  /** The id sent to `ResumeNotifications`. */
  readonly from: string | null;
  /** The server's answer, or null when the call failed (every attempt, or the connection dropped). */
  readonly result: ResumeResult | null;
  /**
   * How many times `ResumeNotifications` was called: more than 1 when hub errors on a live
   * connection were retried (up to the client's `resumeAttempts`).
   */
  readonly attempts: number;
  /** Correlation ids queried with `GetCurrentStatus` because the replay was incomplete. */
  readonly queried: readonly string[];
}

export const TERMINAL_STATUSES: ReadonlySet<OrderStatus> = new Set<OrderStatus>(["COMPLETED", "FAILED"]);

export function isTerminal(status: OrderStatus): boolean {
  return TERMINAL_STATUSES.has(status);
}
