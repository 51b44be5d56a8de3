// Shared TestBed setup for SPA unit tests: zoneless, HttpClient with the real interceptor against
// HttpTestingController, and the order-status client wired to fake hub connections.
import { provideHttpClient, withInterceptors } from '@angular/common/http';
import { HttpTestingController, provideHttpClientTesting } from '@angular/common/http/testing';
import { provideZonelessChangeDetection } from '@angular/core';
import { TestBed } from '@angular/core/testing';

import { authInterceptor } from '../app/core/auth.interceptor';
import { ORDER_STATUS_CLIENT_OPTIONS } from '../app/core/order-status.service';
import { fakeClientOptions, fakeJwt } from './fake-hub-connection';

export function signedInSession(userId: string): void {
  const token = fakeJwt({ sub: userId, exp: Math.floor(Date.now() / 1000) + 3600 });
  localStorage.setItem('contoso.session', JSON.stringify({ userId, token, expiresAt: Date.now() + 3_600_000 }));
}

export function setup(options: { signedInAs?: string } = {}) {
  localStorage.clear();
  if (options.signedInAs) signedInSession(options.signedInAs);
  const hub = fakeClientOptions();
  TestBed.configureTestingModule({
    providers: [
      provideZonelessChangeDetection(),
      provideHttpClient(withInterceptors([authInterceptor])),
      provideHttpClientTesting(),
      { provide: ORDER_STATUS_CLIENT_OPTIONS, useValue: hub.options },
    ],
  });
  return { hub, http: TestBed.inject(HttpTestingController) };
}
