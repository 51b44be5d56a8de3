// The only place that knows how tokens are obtained. Today: the dev endpoint POST /api/dev/token;
// in production an identity provider would sit behind the same signIn/accessToken surface.
import { HttpClient } from '@angular/common/http';
import { Injectable, computed, inject, signal } from '@angular/core';
import { firstValueFrom } from 'rxjs';

export interface Session {
  readonly userId: string;
  readonly token: string;
  /** Epoch ms after which the token is useless; null when the token carries no `exp`. */
  readonly expiresAt: number | null;
}

const STORAGE_KEY = 'contoso.session';
/** Stop using a token slightly before it expires, so a connect does not race the expiry. */
const EXPIRY_MARGIN_MS = 30_000;

/** Reads `exp` from a JWT payload; the server validates the token, the SPA only schedules. */
export function tokenExpiry(token: string): number | null {
  const payload = token.split('.')[1];
  if (!payload) return null;
  try {
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch {
    return null;
  }
}

function isUsable(session: Session, now: number): boolean {
  return session.expiresAt === null || session.expiresAt - EXPIRY_MARGIN_MS > now;
}

@Injectable({ providedIn: 'root' })
export class AuthService {
  private readonly http = inject(HttpClient);
  private readonly state = signal<Session | null>(this.restore());

  readonly session = this.state.asReadonly();
  readonly userId = computed(() => this.state()?.userId ?? null);
  readonly signedIn = computed(() => this.state() !== null);

  async signIn(userId: string): Promise<void> {
    const id = userId.trim();
    if (!id) throw new Error('Enter a user id.');
    const { token } = await firstValueFrom(this.http.post<{ token: string }>('/api/dev/token', { userId: id }));
    if (typeof token !== 'string' || !token) throw new Error('The server returned no token.');
    const session: Session = { userId: id, token, expiresAt: tokenExpiry(token) };
    this.persist(session);
    this.state.set(session);
  }

  signOut(): void {
    this.persist(null);
    this.state.set(null);
  }

  /** The bearer token for HTTP calls, or null when signed out or expired. */
  token(): string | null {
    const session = this.state();
    if (!session) return null;
    if (!isUsable(session, Date.now())) {
      this.signOut();
      return null;
    }
    return session.token;
  }

  /** For the hub's accessTokenFactory, which is awaited before every (re)connect. */
  accessToken(): Promise<string> {
    const token = this.token();
    return token ? Promise.resolve(token) : Promise.reject(new Error('Not signed in.'));
  }

  private restore(): Session | null {
    try {
      const raw = globalThis.localStorage?.getItem(STORAGE_KEY);
      if (!raw) return null;
      const session = JSON.parse(raw) as Session;
      if (typeof session.userId !== 'string' || typeof session.token !== 'string') return null;
      return isUsable(session, Date.now()) ? session : null;
    } catch {
      return null;
    }
  }

  private persist(session: Session | null): void {
    // localStorage, not sessionStorage: every tab of the user should be signed in, since every
    // tab is meant to receive the order toasts.
    try {
      if (session) globalThis.localStorage?.setItem(STORAGE_KEY, JSON.stringify(session));
      else globalThis.localStorage?.removeItem(STORAGE_KEY);
    } catch {
      // Storage can be disabled (private mode); the session then lasts as long as the tab.
    }
  }
}
