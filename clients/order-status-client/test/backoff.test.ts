// Full-jitter bounds and the never-give-up promise of the retry policy.
import { describe, expect, it } from "vitest";

import { FullJitterBackoff, backoffCeiling } from "../src/index.js";

describe("backoffCeiling", () => {
  it("doubles from the base and stops at the cap", () => {
    expect([0, 1, 2, 3, 4, 5, 6].map((n) => backoffCeiling(n, 1000, 30_000))).toEqual([
      1000, 2000, 4000, 8000, 16_000, 30_000, 30_000,
    ]);
  });

  it("stays at the cap when 2^attempt overflows", () => {
    expect(backoffCeiling(5000, 1000, 30_000)).toBe(30_000);
  });

  it("treats nonsense attempt counts as the first attempt", () => {
    expect(backoffCeiling(-3, 1000, 30_000)).toBe(1000);
    expect(backoffCeiling(Number.NaN, 1000, 30_000)).toBe(1000);
  });
});

describe("FullJitterBackoff", () => {
  it("draws each delay uniformly from [0, min(cap, base * 2^attempt))", () => {
    const policy = new FullJitterBackoff({ baseDelayMs: 100, maxDelayMs: 5000 });
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(5000, 100 * 2 ** attempt);
      const samples = Array.from({ length: 400 }, () => policy.delay(attempt));
      for (const d of samples) {
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(ceiling);
      }
      // Full jitter, not "equal jitter": the lower half of the window is used too.
      expect(samples.some((d) => d < ceiling / 2)).toBe(true);
      expect(samples.some((d) => d >= ceiling / 2)).toBe(true);
    }
  });

  it("maps the random source onto the window edges exactly", () => {
    expect(new FullJitterBackoff({ baseDelayMs: 1000, maxDelayMs: 8000, random: () => 0 }).delay(3)).toBe(0);
    expect(new FullJitterBackoff({ baseDelayMs: 1000, maxDelayMs: 8000, random: () => 0.5 }).delay(2)).toBe(2000);
    expect(new FullJitterBackoff({ baseDelayMs: 1000, maxDelayMs: 8000, random: () => 0.999 }).delay(10)).toBe(7992);
  });

  it("clamps a misbehaving random source", () => {
    expect(new FullJitterBackoff({ random: () => -1 }).delay(0)).toBe(0);
    expect(new FullJitterBackoff({ random: () => Number.NaN }).delay(0)).toBe(0);
    expect(new FullJitterBackoff({ baseDelayMs: 10, maxDelayMs: 10, random: () => 7 }).delay(0)).toBe(10);
  });

  it("never gives up: SignalR always gets a finite delay, never null", () => {
    const policy = new FullJitterBackoff({ baseDelayMs: 500, maxDelayMs: 30_000 });
    for (const previousRetryCount of [0, 1, 4, 10, 50, 1000, 1e6, Number.MAX_SAFE_INTEGER]) {
      const delay = policy.nextRetryDelayInMilliseconds({
        previousRetryCount,
        elapsedMilliseconds: previousRetryCount * 30_000,
        retryReason: new Error("WebSocket closed with status code: 1006 (no reason given)."),
      });
      expect(delay).not.toBeNull();
      expect(Number.isFinite(delay)).toBe(true);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(30_000);
    }
  });

  it("rejects negative settings", () => {
    expect(() => new FullJitterBackoff({ baseDelayMs: -1 })).toThrow(RangeError);
  });
});
