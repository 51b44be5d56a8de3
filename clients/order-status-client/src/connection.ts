// Builds the real @microsoft/signalr HubConnection the way CONTRACT.md section 5 prescribes, and
// defines the narrow connection surface the client needs so tests can substitute a fake.
import {
  HttpTransportType,
  HubConnectionBuilder,
  HubConnectionState,
  LogLevel,
  type IHttpConnectionOptions,
  type ILogger,
  type IRetryPolicy,
} from "@microsoft/signalr";

export type HubProtocolName = "json" | "messagepack";

/** The part of `HubConnection` this package uses; a real HubConnection satisfies it. */
export interface HubConnectionLike {
  readonly state: HubConnectionState;
  start(): Promise<void>;
  stop(): Promise<void>;
  invoke<T = unknown>(methodName: string, ...args: unknown[]): Promise<T>;
  on(methodName: string, handler: (...args: any[]) => void): void;
  onclose(callback: (error?: Error) => void): void;
  onreconnecting(callback: (error?: Error) => void): void;
  onreconnected(callback: (connectionId?: string) => void): void;
}

export interface ConnectionFactoryOptions {
  readonly url: string;
  readonly accessTokenFactory: () => string | Promise<string>;
  readonly retryPolicy: IRetryPolicy;
  readonly protocol: HubProtocolName;
  readonly logger: ILogger | LogLevel;
  /** Extra transport options (e.g. headers or a WebSocket constructor in Node tests). */
  readonly httpOptions?: Partial<IHttpConnectionOptions>;
}

export type ConnectionFactory = (
  options: ConnectionFactoryOptions,
) => HubConnectionLike | Promise<HubConnectionLike>;

/**
 * SignalR logs every dropped socket at Error level although reconnecting is routine here, which
 * would put errors on the console during an ordinary pod drain; demote those to warnings.
 */
export const quietLogger: ILogger = {
  log(level: LogLevel, message: string): void {
    if (level >= LogLevel.Critical && level !== LogLevel.None) {
      console.error(`[order-status] ${message}`);
    } else if (level >= LogLevel.Warning && level !== LogLevel.None) {
      console.warn(`[order-status] ${message}`);
    }
  },
};

/** The production factory: WebSockets only, no negotiate, token per connect, chosen protocol. */
export const createHubConnection: ConnectionFactory = async (options) => {
  const builder = new HubConnectionBuilder()
    .withUrl(options.url, {
      ...options.httpOptions,
      // These three are what lets a WebSocket land on any notify pod without sticky sessions.
      transport: HttpTransportType.WebSockets,
      skipNegotiation: true,
      accessTokenFactory: options.accessTokenFactory,
    })
    .withAutomaticReconnect(options.retryPolicy)
    .configureLogging(options.logger);
  if (options.protocol === "messagepack") {
    // Loaded on demand so a JSON-only SPA bundle does not carry the MessagePack codec.
    const { MessagePackHubProtocol } = await import("@microsoft/signalr-protocol-msgpack");
    builder.withHubProtocol(new MessagePackHubProtocol());
  }
  return builder.build();
};
