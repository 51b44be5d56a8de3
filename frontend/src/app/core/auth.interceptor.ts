// Adds the bearer token to API calls and signs the user out when the server rejects it
// (e.g. a dev server restarted with a new random signing secret).
import { HttpErrorResponse, type HttpInterceptorFn } from '@angular/common/http';
import { inject } from '@angular/core';
import { catchError, throwError } from 'rxjs';

import { AuthService } from './auth.service';

const PUBLIC_PATHS = ['/api/dev/token', '/api/products'];

function isApi(url: string): boolean {
  const path = url.replace(/^https?:\/\/[^/]+/, '');
  return path.startsWith('/api/') && !PUBLIC_PATHS.some((p) => path === p || path.startsWith(`${p}?`));
}

export const authInterceptor: HttpInterceptorFn = (req, next) => {
  if (!isApi(req.url)) return next(req);
  const auth = inject(AuthService);
  const token = auth.token();
  const authed = token ? req.clone({ setHeaders: { Authorization: `Bearer ${token}` } }) : req;
  return next(authed).pipe(
    catchError((error: unknown) => {
      if (error instanceof HttpErrorResponse && error.status === 401 && token) auth.signOut();
      return throwError(() => error);
    }),
  );
};
