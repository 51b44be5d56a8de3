// Full-jitter exponential backoff, used both as SignalR's IRetryPolicy and around the first
// start(). Full jitter spreads the reconnect storm that follows a notify pod draining its sockets.
import type { IRetryPolicy, RetryContext } from "@microsoft/signalr";

export interface BackoffOptions {
  /** Ceiling of the first delay (attempt 0), in ms. */
  readonly baseDelayMs?: number;
  /** Largest ceiling any attempt can reach, in ms. */
  readonly maxDelayMs?: number;
  /** Uniform source in [0, 1); injectable so tests can pin the jitter. */
  readonly random?: () => number;
}

export const DEFAULT_BASE_DELAY_MS = 1_000;
export const DEFAULT_MAX_DELAY_MS = 30_000;

/** Ceiling of the jitter window for an attempt: min(cap, base * 2^attempt). */
export function backoffCeiling(attempt: number, baseDelayMs: number, maxDelayMs: number): number {
  // 2^attempt overflows to Infinity after ~1000 attempts; min() keeps the cap, but a NaN from a
  // negative or fractional attempt count would not be caught, so normalise the count first.
  const n = Number.isFinite(attempt) && attempt > 0 ? Math.floor(attempt) : 0;
  return Math.min(maxDelayMs, baseDelayMs * 2 ** n);
}

/**
 * Delay in ms before retry number `attempt` (0-based): uniform in [0, ceiling).
 * Never null: this project's clients keep trying for as long as the page is open.
 */
export class FullJitterBackoff implements IRetryPolicy {
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.baseDelayMs = options.baseDelayMs ?? DEFAULT_BASE_DELAY_MS;
    this.maxDelayMs = options.maxDelayMs ?? DEFAULT_MAX_DELAY_MS;
    this.random = options.random ?? Math.random;
    if (!(this.baseDelayMs >= 0) || !(this.maxDelayMs >= 0)) {
      throw new RangeError("backoff delays must be non-negative numbers");
    }
  }

  delay(attempt: number): number {
    const ceiling = backoffCeiling(attempt, this.baseDelayMs, this.maxDelayMs);
    // A misbehaving injected random must not produce a negative or NaN delay.
    const r = this.random();
    const unit = Number.isFinite(r) ? Math.min(Math.max(r, 0), 1) : 0;
    return Math.floor(unit * ceiling);
  }

  /** SignalR's reconnect hook; returning a number (never null) means "never give up". */
  nextRetryDelayInMilliseconds(retryContext: RetryContext): number {
    return this.delay(retryContext.previousRetryCount);
  }
}
