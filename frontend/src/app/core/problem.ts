// Turns any HTTP failure into one sentence for the user, preferring the server's RFC 9457
// `detail`, so the UI never shows raw status codes or stack-like text.
import { HttpErrorResponse } from '@angular/common/http';

import type { ProblemDetails } from './models';

function asProblem(body: unknown): ProblemDetails | null {
  if (typeof body === 'string') {
    // A problem+json body can arrive unparsed when the response type was not JSON.
    try {
      return asProblem(JSON.parse(body));
    } catch {
      return null;
    }
  }
  return typeof body === 'object' && body !== null ? (body as ProblemDetails) : null;
}

export function problemMessage(error: unknown, fallback = 'Something went wrong. Please try again.'): string {
  if (!(error instanceof HttpErrorResponse)) {
    return error instanceof Error && error.message ? error.message : fallback;
  }
  if (error.status === 0) return 'The shop server could not be reached. Check your connection and try again.';
  const problem = asProblem(error.error);
  if (problem?.detail) return problem.detail;
  if (problem?.title) return problem.title;
  if (error.status === 401) return 'Your session has expired. Please sign in again.';
  if (error.status === 503) return 'The shop is busy right now. Please try again in a moment.';
  return fallback;
}

/** Whether repeating the same request later may succeed (so its idempotency key is kept). */
export function isTransient(error: unknown): boolean {
  if (!(error instanceof HttpErrorResponse)) return true;
  return error.status === 0 || error.status === 408 || error.status === 429 || error.status >= 500;
}
