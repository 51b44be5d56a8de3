// Public surface of @contoso/order-status-client; everything a consumer may import.
export {
  ClientStoppedError,
  DEFAULT_HUB_URL,
  DEFAULT_RESUME_REWIND_MS,
  DEFAULT_RESUME_ATTEMPTS,
  DEFAULT_RESUME_RETRY_BASE_DELAY_MS,
  DEFAULT_RESUME_RETRY_MAX_DELAY_MS,
  rewind,
  OrderStatusClient,
  type Clock,
  type OrderStatusClientEvents,
  type OrderStatusClientOptions,
} from "./client.js";
export {
  FullJitterBackoff,
  backoffCeiling,
  DEFAULT_BASE_DELAY_MS,
  DEFAULT_MAX_DELAY_MS,
  type BackoffOptions,
} from "./backoff.js";
export {
  createHubConnection,
  quietLogger,
  type ConnectionFactory,
  type ConnectionFactoryOptions,
  type HubConnectionLike,
  type HubProtocolName,
} from "./connection.js";
export { RecentIds } from "./recent-ids.js";
export {
  isTerminal,
  TERMINAL_STATUSES,
  type CatchUpOutcome,
  type ConnectionState,
  type OrderCompletedNotification,
  type OrderFailedNotification,
  type OrderNotification,
  type OrderStatus,
  type OrderStatusSnapshot,
  type OrderStatusUpdate,
  type ResumeResult,
} from "./types.js";
