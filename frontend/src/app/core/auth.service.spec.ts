// AuthService and the interceptor: dev-token sign-in, persistence across tabs/reloads, expiry,
// and which requests carry the bearer token.
import { HttpClient } from '@angular/common/http';
import { TestBed } from '@angular/core/testing';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';

import { fakeJwt, settle } from '../../testing/fake-hub-connection';
import { setup, signedInSession } from '../../testing/harness';
import { AuthService, tokenExpiry } from './auth.service';

describe('AuthService', () => {
  it('signs in through POST /api/dev/token and remembers the session', async () => {
    const { http } = setup();
    const auth = TestBed.inject(AuthService);
    const token = fakeJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 3600 });

    const signIn = auth.signIn('  alice ');
    const req = http.expectOne('/api/dev/token');
    expect(req.request.method).toBe('POST');
    expect(req.request.body).toEqual({ userId: 'alice' });
    expect(req.request.headers.has('Authorization')).toBe(false);
    req.flush({ token });
    await signIn;

    expect(auth.userId()).toBe('alice');
    expect(auth.token()).toBe(token);
    expect(JSON.parse(localStorage.getItem('contoso.session')!).userId).toBe('alice');
  });

  it('restores a stored session and forgets it on sign-out', () => {
    setup({ signedInAs: 'bob' });
    const auth = TestBed.inject(AuthService);
    expect(auth.userId()).toBe('bob');
    auth.signOut();
    expect(auth.userId()).toBeNull();
    expect(localStorage.getItem('contoso.session')).toBeNull();
  });

  it('drops an expired session instead of sending a dead token', async () => {
    setup();
    const expired = fakeJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) - 10 });
    localStorage.setItem('contoso.session', JSON.stringify({ userId: 'alice', token: expired, expiresAt: tokenExpiry(expired) }));
    const auth = TestBed.inject(AuthService);
    expect(auth.signedIn()).toBe(false);
    await expect(auth.accessToken()).rejects.toThrow('Not signed in.');
  });

  it('reads exp from a JWT and tolerates garbage', () => {
    expect(tokenExpiry(fakeJwt({ exp: 1_800_000_000 }))).toBe(1_800_000_000_000);
    expect(tokenExpiry('not-a-jwt')).toBeNull();
    expect(tokenExpiry('a.%%%.c')).toBeNull();
  });

  it('rejects an empty user id without calling the server', async () => {
    const { http } = setup();
    await expect(TestBed.inject(AuthService).signIn('   ')).rejects.toThrow('Enter a user id.');
    http.verify();
  });
});

describe('authInterceptor', () => {
  it('adds the bearer token to protected API calls only', async () => {
    const { http } = setup({ signedInAs: 'alice' });
    const client = TestBed.inject(HttpClient);
    const token = TestBed.inject(AuthService).token();

    void firstValueFrom(client.get('/api/orders'));
    void firstValueFrom(client.get('/api/products'));
    void firstValueFrom(client.get('/elsewhere'));
    expect(http.expectOne('/api/orders').request.headers.get('Authorization')).toBe(`Bearer ${token}`);
    expect(http.expectOne('/api/products').request.headers.has('Authorization')).toBe(false);
    expect(http.expectOne('/elsewhere').request.headers.has('Authorization')).toBe(false);
  });

  it('signs out when the server rejects the token', async () => {
    const { http } = setup({ signedInAs: 'alice' });
    const client = TestBed.inject(HttpClient);
    const failed = firstValueFrom(client.get('/api/orders')).catch((e: unknown) => e);
    http.expectOne('/api/orders').flush({ title: 'Unauthorized', status: 401 }, { status: 401, statusText: 'Unauthorized' });
    await failed;
    await settle();
    expect(TestBed.inject(AuthService).signedIn()).toBe(false);
  });

  it('keeps the session across instances (another tab or a reload)', () => {
    setup();
    signedInSession('carol');
    expect(TestBed.inject(AuthService).userId()).toBe('carol');
  });
});
