// OrderStatusService: one client per signed-in user, connection-state signal, live statuses,
// toasts on final transitions only, resume after reconnect.
import { TestBed } from '@angular/core/testing';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { completed, failed, settle } from '../../testing/fake-hub-connection';
import { setup } from '../../testing/harness';
import { AuthService } from './auth.service';
import { OrderStatusService, TOAST_LIFETIME_MS, laterStatus } from './order-status.service';

describe('laterStatus', () => {
  it('only lets statuses move forward', () => {
    expect(laterStatus(undefined, 'ACCEPTED')).toBe(true);
    expect(laterStatus('ACCEPTED', 'PROCESSING')).toBe(true);
    expect(laterStatus('PROCESSING', 'ACCEPTED')).toBe(false);
    expect(laterStatus('PROCESSING', 'FAILED')).toBe(true);
    expect(laterStatus('COMPLETED', 'FAILED')).toBe(false);
    expect(laterStatus('COMPLETED', 'COMPLETED')).toBe(false);
  });
});

describe('OrderStatusService', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  describe('signed out', () => {
    it('opens no connection and reports offline', async () => {
      const { hub } = setup();
      const service = TestBed.inject(OrderStatusService);
      TestBed.tick();
      await settle();
      expect(hub.connections).toHaveLength(0);
      expect(service.connectionState()).toBe('offline');
    });
  });

  describe('signed in', () => {
    let ctx: ReturnType<typeof setup>;
    let service: OrderStatusService;

    beforeEach(async () => {
      ctx = setup({ signedInAs: 'alice' });
      service = TestBed.inject(OrderStatusService);
      TestBed.tick();
      await settle();
    });

    function hub() {
      const connection = ctx.hub.connections.at(-1);
      if (!connection) throw new Error('no hub connection was opened');
      return connection;
    }

    it('connects with the session token and shows connected', async () => {
      expect(ctx.hub.connections).toHaveLength(1);
      expect(hub().startCalls).toBe(1);
      expect(service.connectionState()).toBe('connected');
      const [token] = await ctx.hub.tokens();
      expect(token).toBe(TestBed.inject(AuthService).token());
    });

    it('records a completed order and toasts it once, even when the notification repeats', () => {
      hub().push('OrderCompleted', completed('1', 'c-1', 'CS-000001'));
      hub().push('OrderCompleted', completed('1', 'c-1', 'CS-000001'));
      expect(service.statuses().get('c-1')).toEqual({ status: 'COMPLETED', orderId: 'CS-000001' });
      expect(service.toasts()).toEqual([
        { id: 1, correlationId: 'c-1', status: 'COMPLETED', orderId: 'CS-000001', message: 'Your order CS-000001 is complete.' },
      ]);
    });

    it('toasts a failure with its reason', () => {
      hub().push('OrderFailed', failed('2', 'c-2abcdefgh', 'payment declined'));
      expect(service.toasts()[0]).toMatchObject({
        correlationId: 'c-2abcdefgh',
        status: 'FAILED',
        message: 'Your order ref c-2abcde failed: payment declined',
      });
      expect(service.statuses().get('c-2abcdefgh')?.reason).toBe('payment declined');
    });

    it('stays silent for orders it already knows as finished (replays after a reconnect)', () => {
      service.track([{ correlationId: 'c-1', status: 'COMPLETED', orderId: 'CS-1' }]);
      hub().push('OrderCompleted', completed('1', 'c-1', 'CS-1'));
      expect(service.toasts()).toEqual([]);
    });

    it('watches tracked orders that are still in flight and resumes after a reconnect', async () => {
      service.track([
        { correlationId: 'c-1', status: 'PROCESSING', orderId: null },
        { correlationId: 'c-2', status: 'COMPLETED', orderId: 'CS-2' },
      ]);
      hub().push('OrderCompleted', completed('7', 'c-9', 'CS-9'));
      hub().invokeImpl = (method) =>
        method === 'ResumeNotifications'
          ? { replayed: 0, complete: false }
          : { correlationId: 'c-1', status: 'COMPLETED', orderId: 'CS-1' };

      hub().drop();
      expect(service.connectionState()).toBe('reconnecting');
      hub().reconnect();
      await settle();

      expect(service.connectionState()).toBe('connected');
      expect(hub().invocations).toEqual([
        { method: 'ResumeNotifications', args: ['7'] },
        { method: 'GetCurrentStatus', args: ['c-1'] },
      ]);
      expect(service.statuses().get('c-1')).toEqual({ status: 'COMPLETED', orderId: 'CS-1' });
      expect(service.toasts().map((t) => t.correlationId)).toEqual(['c-9', 'c-1']);
    });

    it('closes the connection on sign-out and opens a new one for the next user', async () => {
      hub().push('OrderCompleted', completed('1', 'c-1', 'CS-1'));
      const auth = TestBed.inject(AuthService);
      auth.signOut();
      TestBed.tick();
      await settle();
      expect(service.connectionState()).toBe('offline');
      expect(ctx.hub.connections[0]?.state).toBe('Disconnected');
      expect(service.statuses().size).toBe(0);
    });

    it('dismisses toasts on request and after their lifetime', () => {
      vi.useFakeTimers();
      hub().push('OrderCompleted', completed('1', 'c-1', 'CS-1'));
      hub().push('OrderCompleted', completed('2', 'c-2', 'CS-2'));
      service.dismissToast(service.toasts()[0]!.id);
      expect(service.toasts().map((t) => t.correlationId)).toEqual(['c-2']);
      vi.advanceTimersByTime(TOAST_LIFETIME_MS);
      expect(service.toasts()).toEqual([]);
    });
  });
});
