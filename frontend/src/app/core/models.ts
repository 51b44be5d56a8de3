// Shapes of the HTTP API (CONTRACT.md section 2) as the SPA uses them.
import type { OrderStatus } from '@contoso/order-status-client';

export type { OrderStatus };

export interface Product {
  readonly id: string;
  readonly name: string;
  readonly priceCents: number;
  readonly currency: string;
  /** false: orderable, but it always fails at processing (it shows the failure path). */
  readonly available?: boolean;
}

export interface OrderLine {
  readonly productId: string;
  readonly quantity: number;
}

/** 202 answer of POST /api/orders. */
export interface PlacedOrder {
  readonly correlationId: string;
  readonly status: OrderStatus;
  readonly totalCents: number;
  readonly currency: string;
}

/** One element of GET /api/orders. */
export interface OrderSummary {
  readonly correlationId: string;
  readonly status: OrderStatus;
  readonly orderId: string | null;
  readonly totalCents: number;
  readonly currency: string;
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** RFC 9457 problem details as the server sends them. */
export interface ProblemDetails {
  readonly type?: string;
  readonly title?: string;
  readonly status?: number;
  readonly detail?: string;
  readonly field?: string;
}

/** Limits the server enforces on an order (CONTRACT.md section 2); mirrored to fail early. */
export const MAX_QUANTITY = 100;
export const MAX_LINES = 50;
