// Typed access to the order API (CONTRACT.md section 2); one method per endpoint the SPA uses.
import { HttpClient, HttpHeaders } from '@angular/common/http';
import { Injectable, inject } from '@angular/core';
import { firstValueFrom } from 'rxjs';

import type { OrderLine, OrderSummary, PlacedOrder, Product } from './models';

@Injectable({ providedIn: 'root' })
export class ApiService {
  private readonly http = inject(HttpClient);

  products(): Promise<Product[]> {
    return firstValueFrom(this.http.get<Product[]>('/api/products'));
  }

  orders(): Promise<OrderSummary[]> {
    return firstValueFrom(this.http.get<OrderSummary[]>('/api/orders'));
  }

  placeOrder(items: readonly OrderLine[], idempotencyKey: string): Promise<PlacedOrder> {
    const headers = new HttpHeaders({ 'Idempotency-Key': idempotencyKey });
    return firstValueFrom(this.http.post<PlacedOrder>('/api/orders', { items }, { headers }));
  }
}
