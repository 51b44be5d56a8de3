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
  /**
   * Asks for SignalR stateful reconnect (negotiate with `useStatefulReconnect=true`, handshake
   * version 2) so a dropped socket resumes the same connection on any notify pod, with nothing
   * lost or repeated and no `onreconnecting`/`onreconnected`. Default true. When false the
   * connection skips negotiate, as CONTRACT.md section 5 shows.
   */
  readonly statefulReconnect?: boolean;
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

/**
 * The production factory: WebSockets only, token per connect, chosen protocol, our retry policy.
 *
 * With `statefulReconnect` (the default) it negotiates (`POST <url>/negotiate?negotiateVersion=1
 * &useStatefulReconnect=true`, answered by any notify pod: the connection token is signed, no
 * sticky sessions) and enables stateful reconnect: when the socket drops, SignalR reconnects it
 * once, at once, with the same connection token, and the server (any pod) resends what the tab
 * had not acknowledged and what it missed meanwhile. The application sees nothing of it. If
 * that one attempt is refused (the server's window or buffer was exceeded), SignalR's automatic
 * reconnect starts a new connection and `onreconnected` runs the client's catch-up
 * (`ResumeNotifications`). A server that does not offer stateful reconnect gives an ordinary
 * connection. Without it, it skips negotiate (one request fewer per connect).
 */
export const createHubConnection: ConnectionFactory = async (options) => {
  const stateful = options.statefulReconnect ?? true;
  let builder = new HubConnectionBuilder()
    .withUrl(options.url, {
      ...options.httpOptions,
      // WebSockets with a token per connect is what lets a socket land on any notify pod
      // without sticky sessions; a negotiate is needed only for stateful reconnect.
      transport: HttpTransportType.WebSockets,
      skipNegotiation: !stateful,
      accessTokenFactory: options.accessTokenFactory,
    })
    .withAutomaticReconnect(options.retryPolicy)
    .configureLogging(options.logger);
  if (stateful) builder = builder.withStatefulReconnect();
  if (options.protocol === "messagepack") {
    // Loaded on demand so a JSON-only SPA bundle does not carry the MessagePack codec.
    const { MessagePackHubProtocol } = await import("@microsoft/signalr-protocol-msgpack");
    builder.withHubProtocol(new MessagePackHubProtocol());
  }
  return builder.build();
};
