// OrderStatusClient: one resilient hub connection per signed-in user. Owns reconnect policy,
// first-start retries, notification de-duplication, resume-after-reconnect and the
// GetCurrentStatus fallback, so every consumer (SPA, Node tests) gets the same semantics.
import { HubConnectionState, type ILogger, type IHttpConnectionOptions, LogLevel } from "@microsoft/signalr";

import { FullJitterBackoff } from "./backoff.js";
import {
  createHubConnection,
  quietLogger,
  type ConnectionFactory,
  type HubConnectionLike,
  type HubProtocolName,
} from "./connection.js";
import { RecentIds } from "./recent-ids.js";
import {
  isTerminal,
  type CatchUpOutcome,
  type ConnectionState,
  type OrderNotification,
  type OrderStatus,
  type OrderStatusSnapshot,
  type OrderStatusUpdate,
  type ResumeResult,
} from "./types.js";

export const DEFAULT_HUB_URL = "/hubs/order-status";

/** Timer functions, injectable so tests control every backoff wait. */
export interface Clock {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface OrderStatusClientOptions {
  /** Hub URL; relative in browsers, absolute (http://host/hubs/order-status) in Node. */
  readonly url?: string;
  /** Awaited before every connect, so a refreshed token is used on each reconnect. */
  readonly accessTokenFactory: () => string | Promise<string>;
  readonly protocol?: HubProtocolName;
  readonly baseDelayMs?: number;
  readonly maxDelayMs?: number;
  readonly random?: () => number;
  readonly clock?: Clock;
  readonly connectionFactory?: ConnectionFactory;
  readonly logger?: ILogger | LogLevel;
  readonly httpOptions?: Partial<IHttpConnectionOptions>;
  /**
   * SignalR stateful reconnect (default true): the connection negotiates and asks for it, and a
   * dropped socket resumes the same connection, on any notify pod, without a reconnect event or
   * a catch-up; the server replays what the tab missed. When a resume is refused (the tab was
   * away longer than the server's window, or missed too much) SignalR starts a new connection
   * and the client catches up with `ResumeNotifications` as without it. False: no negotiate, an
   * ordinary reconnect and catch-up after every drop.
   */
  readonly statefulReconnect?: boolean;
  /** How many notification ids are remembered for de-duplication. */
  readonly dedupeCapacity?: number;
  /**
   * How far before the last notification seen a catch-up resumes, in ms (default 5000). Two
   * notify pods can log a user's notifications in one order and publish them in the other: a
   * tab that dropped in between has seen the later one but not the earlier one, and resuming
   * strictly after the later one would skip it. Notification ids are log positions (`<ms>-<seq>`),
   * so the client resumes from a position this much earlier; what it already had is dropped by
   * de-duplication. 0 resumes exactly after the last id.
   */
  readonly resumeRewindMs?: number;
  /**
   * How many times in all a catch-up calls `ResumeNotifications` when the server answers with a
   * hub error while the connection stays up (default 6; 1 disables retrying). Such errors are
   * usually brief, e.g. the server's notification log being unreachable during a Redis
   * failover right after it sent `ResumeNeeded`; every retry asks from the same position (what
   * the client already had is dropped by de-duplication). Only when every attempt failed are
   * the watched orders queried with GetCurrentStatus instead.
   */
  readonly resumeAttempts?: number;
  /**
   * Full-jitter backoff between those attempts: the wait before retry n (1-based) is uniform in
   * [0, min(resumeRetryMaxDelayMs, resumeRetryBaseDelayMs * 2^(n-1))). Defaults 500 and 5000 ms.
   */
  readonly resumeRetryBaseDelayMs?: number;
  readonly resumeRetryMaxDelayMs?: number;
}

export interface OrderStatusClientEvents {
  /** A notification seen for the first time (live or replayed). */
  notification: (notification: OrderNotification) => void;
  /** Every status news, including synthetic ones from GetCurrentStatus. */
  status: (update: OrderStatusUpdate) => void;
  state: (state: ConnectionState) => void;
  /** Recoverable problems (failed connects, failed hub calls, malformed messages). */
  error: (error: Error) => void;
  /** A catch-up (after a reconnect, a re-start or ResumeNeeded) has finished, retries included. */
  catchUp: (outcome: CatchUpOutcome) => void;
}

type Listeners = { [K in keyof OrderStatusClientEvents]: Set<OrderStatusClientEvents[K]> };

/** Raised by start() when stop() is called before a connection was established. */
export class ClientStoppedError extends Error {
  constructor() {
    super("The order-status client was stopped.");
    this.name = "ClientStoppedError";
  }
}

const ORDER_NOT_FOUND = "order not found";

export const DEFAULT_RESUME_REWIND_MS = 5_000;
export const DEFAULT_RESUME_ATTEMPTS = 6;
export const DEFAULT_RESUME_RETRY_BASE_DELAY_MS = 500;
export const DEFAULT_RESUME_RETRY_MAX_DELAY_MS = 5_000;

/**
 * The resume position `rewindMs` before notification id `id` (`<ms>-<seq>`, a log position);
 * ids of any other shape are passed through unchanged.
 */
export function rewind(id: string | null, rewindMs: number): string | null {
  const match = id === null ? null : /^(\d+)-\d+$/.exec(id);
  if (!match || !(rewindMs > 0)) return id;
  return `${Math.max(0, Number(match[1]) - rewindMs)}-0`;
}

export class OrderStatusClient {
  private readonly url: string;
  private readonly options: OrderStatusClientOptions;
  private readonly backoff: FullJitterBackoff;
  private readonly resumeBackoff: FullJitterBackoff;
  private readonly resumeAttempts: number;
  private readonly clock: Clock;
  private readonly connectionFactory: ConnectionFactory;
  private readonly seen: RecentIds;
  private readonly pending = new Set<string>();
  private readonly listeners: Listeners = {
    notification: new Set(),
    status: new Set(),
    state: new Set(),
    error: new Set(),
    catchUp: new Set(),
  };

  private connection: HubConnectionLike | undefined;
  private connectionPromise: Promise<HubConnectionLike> | undefined;
  private connectLoop: Promise<void> | undefined;
  private running = false;
  private everConnected = false;
  private currentState: ConnectionState = "offline";
  private lastId: string | null = null;
  private cancelWait: (() => void) | undefined;
  /** Bumped by every catch-up and by stop(): a catch-up that sees another value was superseded. */
  private catchUpGeneration = 0;
  /** Ends the backoff wait of the catch-up that is retrying ResumeNotifications, if any. */
  private cancelResumeWait: (() => void) | undefined;

  constructor(options: OrderStatusClientOptions) {
    this.options = options;
    this.url = options.url ?? DEFAULT_HUB_URL;
    this.backoff = new FullJitterBackoff({
      ...(options.baseDelayMs !== undefined ? { baseDelayMs: options.baseDelayMs } : {}),
      ...(options.maxDelayMs !== undefined ? { maxDelayMs: options.maxDelayMs } : {}),
      ...(options.random !== undefined ? { random: options.random } : {}),
    });
    this.resumeBackoff = new FullJitterBackoff({
      baseDelayMs: options.resumeRetryBaseDelayMs ?? DEFAULT_RESUME_RETRY_BASE_DELAY_MS,
      maxDelayMs: options.resumeRetryMaxDelayMs ?? DEFAULT_RESUME_RETRY_MAX_DELAY_MS,
      ...(options.random !== undefined ? { random: options.random } : {}),
    });
    this.resumeAttempts = options.resumeAttempts ?? DEFAULT_RESUME_ATTEMPTS;
    if (!Number.isInteger(this.resumeAttempts) || this.resumeAttempts < 1) {
      throw new RangeError("resumeAttempts must be a whole number of at least 1");
    }
    this.clock = options.clock ?? {
      setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
      clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
    };
    this.connectionFactory = options.connectionFactory ?? createHubConnection;
    this.seen = new RecentIds(options.dedupeCapacity ?? 1_000);
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The last notification id received, as the server will want it for ResumeNotifications. */
  get lastNotificationId(): string | null {
    return this.lastId;
  }

  get pendingOrders(): readonly string[] {
    return [...this.pending];
  }

  /** The retry policy in use (also handed to SignalR's automatic reconnect). */
  get retryPolicy(): FullJitterBackoff {
    return this.backoff;
  }

  on<K extends keyof OrderStatusClientEvents>(event: K, handler: OrderStatusClientEvents[K]): () => void {
    const set = this.listeners[event] as Set<OrderStatusClientEvents[K]>;
    set.add(handler);
    return () => {
      set.delete(handler);
    };
  }

  /**
   * Registers an order whose outcome the app is waiting for. It is queried with
   * GetCurrentStatus when a replay was incomplete (or every resume attempt failed), until a
   * terminal status is known.
   */
  watchOrder(correlationId: string): void {
    this.pending.add(correlationId);
  }

  unwatchOrder(correlationId: string): void {
    this.pending.delete(correlationId);
  }

  /**
   * Connects, retrying with full-jitter backoff for as long as it takes (SignalR itself never
   * retries a failed first start). Resolves once connected; rejects only if stop() comes first.
   */
  start(): Promise<void> {
    this.running = true;
    if (this.connection?.state === HubConnectionState.Connected) return Promise.resolve();
    return this.ensureConnectLoop();
  }

  /** Closes the connection and ends every retry; the client can be started again later. */
  async stop(): Promise<void> {
    this.running = false;
    this.cancelWait?.();
    this.supersedeCatchUp();
    const connection = this.connection ?? (await this.connectionPromise?.catch(() => undefined));
    try {
      await connection?.stop();
    } catch (error) {
      this.emitError(error);
    }
    this.setState("offline");
  }

  private ensureConnectLoop(delayFirst = false): Promise<void> {
    if (!this.connectLoop) {
      const loop = this.runConnectLoop(delayFirst);
      this.connectLoop = loop;
      const clear = (): void => {
        if (this.connectLoop === loop) this.connectLoop = undefined;
      };
      loop.then(clear, clear);
    }
    return this.connectLoop;
  }

  private async runConnectLoop(delayFirst: boolean): Promise<void> {
    let attempt = 0;
    // After a server-side close every tab of every user comes back at once; wait a jittered
    // moment first instead of hammering the pod that just said goodbye.
    if (delayFirst) await this.wait(this.backoff.delay(attempt++));
    for (;;) {
      if (!this.running) throw new ClientStoppedError();
      let connection: HubConnectionLike;
      try {
        connection = await this.getConnection();
        await connection.start();
      } catch (error) {
        if (!this.running) throw new ClientStoppedError();
        this.emitError(error);
        await this.wait(this.backoff.delay(attempt++));
        continue;
      }
      if (!this.running) {
        // stop() raced with a start that still succeeded: honour the stop.
        await connection.stop().catch(() => undefined);
        throw new ClientStoppedError();
      }
      const isRestart = this.everConnected;
      this.everConnected = true;
      this.setState("connected");
      if (isRestart) void this.catchUp(connection);
      return;
    }
  }

  private getConnection(): Promise<HubConnectionLike> {
    if (!this.connectionPromise) {
      this.connectionPromise = Promise.resolve(
        this.connectionFactory({
          url: this.url,
          accessTokenFactory: this.options.accessTokenFactory,
          retryPolicy: this.backoff,
          protocol: this.options.protocol ?? "json",
          logger: this.options.logger ?? quietLogger,
          statefulReconnect: this.options.statefulReconnect ?? true,
          ...(this.options.httpOptions ? { httpOptions: this.options.httpOptions } : {}),
        }),
      ).then((connection) => {
        this.attach(connection);
        this.connection = connection;
        return connection;
      });
      // A factory failure is permanent for this attempt; let a later start() build afresh.
      this.connectionPromise.catch(() => {
        this.connectionPromise = undefined;
      });
    }
    return this.connectionPromise;
  }

  private attach(connection: HubConnectionLike): void {
    connection.on("OrderCompleted", (payload: unknown) => this.receive("COMPLETED", payload));
    connection.on("OrderFailed", (payload: unknown) => this.receive("FAILED", payload));
    // The server's backplane lost its connection for a while: live delivery may have a gap.
    connection.on("ResumeNeeded", () => void this.catchUp(connection));
    // With stateful reconnect a socket that resumed fires neither onreconnecting nor
    // onreconnected (the server replayed what was missed); they fire only when SignalR had to
    // start a new connection, which needs the catch-up.
    connection.onreconnecting(() => {
      this.setState("reconnecting");
      // A catch-up waiting to retry gives up now; the reconnect runs a fresh one.
      this.cancelResumeWait?.();
    });
    connection.onreconnected(() => {
      this.setState("connected");
      void this.catchUp(connection);
    });
    connection.onclose((error) => {
      this.cancelResumeWait?.();
      if (error) this.emitError(error);
      if (!this.running) {
        this.setState("offline");
        return;
      }
      // Closed for good by the server (Close without allowReconnect) or by an exhausted policy:
      // start over with the same jittered backoff; the catch-up runs once connected.
      this.setState(this.everConnected ? "reconnecting" : "offline");
      this.ensureConnectLoop(true).catch((loopError: unknown) => {
        if (!(loopError instanceof ClientStoppedError)) this.emitError(loopError);
      });
    });
  }

  /** The connect loop's backoff wait; stop() ends it early through `cancelWait`. */
  private wait(ms: number): Promise<void> {
    const { done, cancel } = this.sleep(ms, () => {
      if (this.cancelWait === cancel) this.cancelWait = undefined;
    });
    this.cancelWait = cancel;
    return done;
  }

  /** A catch-up's wait between ResumeNotifications attempts; ended early through `cancelResumeWait`. */
  private resumeWait(ms: number): Promise<void> {
    const { done, cancel } = this.sleep(ms, () => {
      if (this.cancelResumeWait === cancel) this.cancelResumeWait = undefined;
    });
    this.cancelResumeWait = cancel;
    return done;
  }

  /** A timer on the injected clock; `cancel` clears it and resolves at once. */
  private sleep(ms: number, onEnd: () => void): { done: Promise<void>; cancel: () => void } {
    let resolveDone!: () => void;
    const done = new Promise<void>((resolve) => {
      resolveDone = resolve;
    });
    const handle = this.clock.setTimeout(() => {
      onEnd();
      resolveDone();
    }, ms);
    const cancel = (): void => {
      this.clock.clearTimeout(handle);
      onEnd();
      resolveDone();
    };
    return { done, cancel };
  }

  /** Makes any running catch-up stop at its next step (without reporting) and ends its wait. */
  private supersedeCatchUp(): number {
    this.catchUpGeneration++;
    this.cancelResumeWait?.();
    return this.catchUpGeneration;
  }

  private receive(status: "COMPLETED" | "FAILED", payload: unknown): void {
    const notification = parseNotification(status, payload);
    if (!notification) {
      this.emitError(new Error(`Ignored a malformed Order${status === "COMPLETED" ? "Completed" : "Failed"} message.`));
      return;
    }
    if (!this.seen.add(notification.notificationId)) return;
    // Only fresh ids move the resume point: a duplicate is an older, already-handled message.
    this.lastId = notification.notificationId;
    this.pending.delete(notification.correlationId);
    this.emit("notification", notification);
    this.emit("status", {
      correlationId: notification.correlationId,
      status: notification.status,
      orderId: notification.status === "COMPLETED" ? notification.orderId : null,
      ...(notification.status === "FAILED" ? { reason: notification.reason } : {}),
      source: "notification",
      notificationId: notification.notificationId,
      occurredAt: notification.occurredAt,
    });
  }

  /**
   * Asks the server to replay what this connection missed; the replay arrives through the
   * normal handlers (and is de-duplicated there). A hub error on a connection that stays up
   * (e.g. the server's log unreachable during a Redis failover) is retried from the same
   * position with full-jitter backoff, up to `resumeAttempts` calls in all. When the server no
   * longer has everything, or every attempt failed, the watched orders are queried one by one.
   *
   * Only the newest catch-up runs: another one (ResumeNeeded, a reconnect) or stop() supersedes
   * it, and a superseded catch-up stops at its next step without reporting; the newer one
   * reports. If the connection drops, it stops and reports a failed call (result null); the
   * reconnect runs a fresh catch-up. Each catch-up that is not superseded emits `catchUp` once.
   */
  private async catchUp(connection: HubConnectionLike): Promise<void> {
    const generation = this.supersedeCatchUp();
    if (!this.running) return; // a stopped client starts nothing
    const superseded = (): boolean => generation !== this.catchUpGeneration;
    const from = rewind(this.lastId, this.options.resumeRewindMs ?? DEFAULT_RESUME_REWIND_MS);
    const gaveUp = (attempts: number): void => this.emit("catchUp", { from, result: null, queried: [], attempts });
    let result: ResumeResult | null = null;
    let attempts = 0;
    for (;;) {
      attempts++;
      try {
        const answer = await connection.invoke<unknown>("ResumeNotifications", from);
        if (superseded()) return;
        result = parseResumeResult(answer);
        // A malformed answer is not a transient server error: fall back at once.
        if (!result) this.emitError(new Error("ResumeNotifications returned an unexpected value."));
        break;
      } catch (error) {
        if (superseded()) return;
        this.emitError(error);
        // Dropped again mid-call: the next reconnect runs a fresh catch-up.
        if (connection.state !== HubConnectionState.Connected) {
          gaveUp(attempts);
          return;
        }
        if (attempts >= this.resumeAttempts) break;
      }
      await this.resumeWait(this.resumeBackoff.delay(attempts - 1));
      if (superseded()) return;
      if (connection.state !== HubConnectionState.Connected) {
        gaveUp(attempts);
        return;
      }
    }
    const queried = result?.complete ? [] : await this.queryPending(connection);
    this.emit("catchUp", { from, result, queried, attempts });
  }

  private async queryPending(connection: HubConnectionLike): Promise<string[]> {
    const ids = [...this.pending];
    await Promise.all(
      ids.map(async (correlationId) => {
        let snapshot: OrderStatusSnapshot | null;
        try {
          snapshot = parseSnapshot(await connection.invoke<unknown>("GetCurrentStatus", correlationId));
        } catch (error) {
          // "order not found" is final (expired, or not this user's): stop asking about it.
          if (error instanceof Error && error.message.includes(ORDER_NOT_FOUND)) this.pending.delete(correlationId);
          this.emitError(error);
          return;
        }
        if (!snapshot) {
          this.emitError(new Error("GetCurrentStatus returned an unexpected value."));
          return;
        }
        // A notification that arrived meanwhile is newer news than this snapshot.
        if (!this.pending.has(correlationId)) return;
        if (isTerminal(snapshot.status)) this.pending.delete(correlationId);
        this.emit("status", {
          correlationId,
          status: snapshot.status,
          orderId: snapshot.orderId,
          source: "status-query",
        });
      }),
    );
    return ids;
  }

  private setState(state: ConnectionState): void {
    if (this.currentState === state) return;
    this.currentState = state;
    this.emit("state", state);
  }

  private emitError(error: unknown): void {
    const err = error instanceof Error ? error : new Error(String(error));
    for (const handler of this.listeners.error) {
      try {
        handler(err);
      } catch {
        // An error handler that throws has nowhere better to report to.
      }
    }
  }

  private emit<K extends Exclude<keyof OrderStatusClientEvents, "error">>(
    event: K,
    ...args: Parameters<OrderStatusClientEvents[K]>
  ): void {
    for (const handler of this.listeners[event]) {
      try {
        (handler as (...a: Parameters<OrderStatusClientEvents[K]>) => void)(...args);
      } catch (error) {
        // One faulty subscriber must not stop the others or the client's own bookkeeping.
        this.emitError(error);
      }
    }
  }
}

const STATUSES: ReadonlySet<string> = new Set(["ACCEPTED", "PROCESSING", "COMPLETED", "FAILED"]);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function parseNotification(status: "COMPLETED" | "FAILED", payload: unknown): OrderNotification | null {
  if (!isRecord(payload)) return null;
  const { notificationId, correlationId, occurredAt } = payload;
  if (typeof notificationId !== "string" || typeof correlationId !== "string") return null;
  const at = typeof occurredAt === "string" ? occurredAt : "";
  if (status === "COMPLETED") {
    const orderId = payload["orderId"];
    if (typeof orderId !== "string") return null;
    return { notificationId, correlationId, orderId, status, occurredAt: at };
  }
  const reason = payload["reason"];
  return { notificationId, correlationId, reason: typeof reason === "string" ? reason : "", status, occurredAt: at };
}

function parseResumeResult(value: unknown): ResumeResult | null {
  if (!isRecord(value) || typeof value["complete"] !== "boolean") return null;
  const replayed = value["replayed"];
  return { replayed: typeof replayed === "number" ? replayed : 0, complete: value["complete"] };
}

function parseSnapshot(value: unknown): OrderStatusSnapshot | null {
  if (!isRecord(value)) return null;
  const { correlationId, status, orderId } = value;
  if (typeof correlationId !== "string" || typeof status !== "string" || !STATUSES.has(status)) return null;
  return {
    correlationId,
    status: status as OrderStatus,
    orderId: typeof orderId === "string" ? orderId : null,
  };
}
