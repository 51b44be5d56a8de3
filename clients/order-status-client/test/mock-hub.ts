// A tiny in-process SignalR hub speaking just enough of the JSON and MessagePack hub protocols
// (negotiate, handshake, invocation, completion, push, and stateful reconnect: Ack, Sequence
// and the resume of a connection on a new socket) to run the real @microsoft/signalr client
// against it.
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";

import { decode, encode } from "@msgpack/msgpack";
import { WebSocketServer, type RawData, type WebSocket } from "ws";

const RS = "\u001e";

/** Message types counted by stateful reconnect's sequence ids (Invocation .. CancelInvocation). */
const COUNTED = new Set([1, 2, 3, 4, 5]);

type Method = (args: unknown[], hub: MockHub, connection: MockConnection) => unknown;

/** One hub connection: a socket, or (stateful, after a drop) none until the client resumes it. */
export interface MockConnection {
  readonly token: string | undefined;
  protocol: "json" | "messagepack" | undefined;
  /** The handshake's version (2 when the client uses stateful reconnect). */
  version: number | undefined;
  stateful: boolean;
  socket: WebSocket | undefined;
  /** Stateful: counted messages sent so far, and those the client has not acknowledged. */
  sent: number;
  unacked: Array<{ id: number; bytes: string | Buffer }>;
  /** Stateful: the id the next counted client message has, and the last one executed. */
  nextIncoming: number;
  lastExecuted: number;
  /** A resumed socket ignores the client's messages until its Sequence message. */
  awaitingSequence: boolean;
}

export interface Upgrade {
  readonly url: string;
  readonly authorization: string | undefined;
  readonly protocolHeader: string | undefined;
  /** What the mock answered: 101, or the refusal's status. */
  readonly status: number;
}

export interface Negotiate {
  readonly url: string;
  readonly authorization: string | undefined;
  readonly statefulOffered: boolean;
}

export class MockHub {
  readonly upgrades: Upgrade[] = [];
  readonly negotiates: Negotiate[] = [];
  readonly calls: Array<{ target: string; args: unknown[] }> = [];
  readonly methods = new Map<string, Method>();
  /** Handshake versions, one per handshake. */
  readonly handshakes: number[] = [];
  /** Sequence messages the clients sent on resumed sockets. */
  readonly clientSequences: number[] = [];
  /** How many of the next upgrade requests to refuse with 401. */
  refuseNext = 0;
  /** Answer `useStatefulReconnect: true` to negotiates that ask for it. */
  offerStatefulReconnect = true;
  /** Refuse resumes (404 "No Connection with that ID"), as a server past its window does. */
  refuseResumes = false;

  private readonly http: Server = createServer((req, res) => this.handleHttp(req, res));
  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly connections = new Set<MockConnection>();
  private readonly byToken = new Map<string, MockConnection>();

  async listen(): Promise<string> {
    this.http.on("upgrade", (req: IncomingMessage, socket, head) => {
      const refuse = (status: number, text: string): void => {
        this.recordUpgrade(req, status);
        socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      };
      if (this.refuseNext > 0) {
        this.refuseNext--;
        return refuse(401, "Unauthorized");
      }
      const token = new URL(req.url ?? "/", "http://x").searchParams.get("id") ?? undefined;
      let connection: MockConnection | undefined;
      let resume = false;
      if (token !== undefined) {
        connection = this.byToken.get(token);
        if (!connection) return refuse(404, "Not Found");
        if (connection.socket) return refuse(409, "Conflict");
        resume = connection.protocol !== undefined;
        if (resume && (!connection.stateful || this.refuseResumes)) {
          this.forget(connection);
          return refuse(404, "Not Found");
        }
      }
      this.recordUpgrade(req, 101);
      this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, connection ?? this.newConnection(undefined), resume));
    });
    await new Promise<void>((resolve) => this.http.listen(0, "127.0.0.1", resolve));
    const { port } = this.http.address() as AddressInfo;
    return `http://127.0.0.1:${port}/hubs/order-status`;
  }

  get openSockets(): number {
    return [...this.connections].filter((c) => c.socket).length;
  }

  /** A non-blocking server-to-client invocation (no invocation id), to every connection. */
  push(target: string, ...args: unknown[]): void {
    for (const connection of this.connections) this.pushTo(connection, target, ...args);
  }

  pushTo(connection: MockConnection, target: string, ...args: unknown[]): void {
    this.sendCounted(connection, { type: 1, target, arguments: args }, [1, {}, null, target, args]);
  }

  /** Kills every socket without a Close message, like a crashed pod or a cut network. */
  dropAll(): void {
    for (const connection of this.connections) this.drop(connection);
  }

  /** Kills one connection's socket; a stateful connection waits for the client to resume it. */
  drop(connection: MockConnection): void {
    const ws = connection.socket;
    // Forgotten at once, not when `ws` reports its close: the client's resume may come first.
    connection.socket = undefined;
    if (!connection.stateful) this.forget(connection);
    ws?.terminate();
  }

  async close(): Promise<void> {
    this.dropAll();
    this.connections.clear();
    this.byToken.clear();
    this.wss.close();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  private handleHttp(req: IncomingMessage, res: import("node:http").ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://x");
    if (req.method !== "POST" || !url.pathname.endsWith("/negotiate")) {
      res.writeHead(404).end();
      return;
    }
    const asked = url.searchParams.get("useStatefulReconnect") === "true";
    const offered = asked && this.offerStatefulReconnect;
    this.negotiates.push({ url: req.url ?? "", authorization: req.headers.authorization, statefulOffered: offered });
    const token = randomUUID();
    const connection = this.newConnection(token);
    connection.stateful = offered;
    const body = {
      ...(offered ? { useStatefulReconnect: true } : {}),
      negotiateVersion: 1,
      connectionId: randomUUID(),
      connectionToken: token,
      availableTransports: [{ transport: "WebSockets", transferFormats: ["Text", "Binary"] }],
    };
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(body));
  }

  private recordUpgrade(req: IncomingMessage, status: number): void {
    this.upgrades.push({
      url: req.url ?? "",
      authorization: req.headers.authorization,
      protocolHeader: req.headers["sec-websocket-protocol"] as string | undefined,
      status,
    });
  }

  private newConnection(token: string | undefined): MockConnection {
    const connection: MockConnection = {
      token,
      protocol: undefined,
      version: undefined,
      stateful: false,
      socket: undefined,
      sent: 0,
      unacked: [],
      nextIncoming: 1,
      lastExecuted: 0,
      awaitingSequence: false,
    };
    if (token !== undefined) this.byToken.set(token, connection);
    return connection;
  }

  private forget(connection: MockConnection): void {
    this.connections.delete(connection);
    if (connection.token !== undefined) this.byToken.delete(connection.token);
  }

  private accept(ws: WebSocket, connection: MockConnection, resume: boolean): void {
    connection.socket = ws;
    connection.awaitingSequence = resume;
    this.connections.add(connection);
    ws.on("close", () => {
      if (connection.socket === ws) connection.socket = undefined;
      // Only a stateful connection outlives its socket (until the client resumes it).
      if (!connection.stateful) this.forget(connection);
    });
    ws.on("message", (data: RawData, isBinary: boolean) => {
      const bytes = toBuffer(data);
      if (!connection.protocol) {
        const handshake = JSON.parse(bytes.toString("utf8").split(RS)[0] ?? "{}") as { protocol?: string; version?: number };
        connection.protocol = handshake.protocol === "messagepack" ? "messagepack" : "json";
        connection.version = handshake.version;
        this.handshakes.push(handshake.version ?? 0);
        // Stateful reconnect needs protocol version 2; a client that says 1 gets none.
        if ((handshake.version ?? 1) < 2) connection.stateful = false;
        // The reply's frame type follows the negotiated transfer format.
        ws.send(connection.protocol === "json" ? `{}${RS}` : Buffer.from(`{}${RS}`));
        return;
      }
      const messages = connection.protocol === "json" || !isBinary ? parseJson(bytes) : parseMessagePack(bytes);
      for (const message of messages) this.receive(connection, message);
    });
  }

  private receive(connection: MockConnection, message: HubMessage): void {
    if (connection.awaitingSequence) {
      if (message.type !== 9) return;
      connection.awaitingSequence = false;
      this.clientSequences.push(message.sequenceId);
      connection.nextIncoming = message.sequenceId;
      // Our Sequence (the oldest id the client may not have), then what it has not acknowledged.
      const first = connection.unacked[0]?.id ?? connection.sent + 1;
      const ws = connection.socket!;
      ws.send(this.encode(connection, { type: 9, sequenceId: first }, [9, first]));
      for (const item of connection.unacked) ws.send(item.bytes);
      return;
    }
    if (message.type === 8) {
      connection.unacked = connection.unacked.filter((item) => item.id > message.sequenceId);
      return;
    }
    if (!connection.stateful || !COUNTED.has(message.type)) {
      if (message.type === 1) void this.dispatch(connection, message);
      return;
    }
    const id = connection.nextIncoming++;
    if (id <= connection.lastExecuted) return; // resent after a resume: executed already
    connection.lastExecuted = id;
    connection.socket?.send(this.encode(connection, { type: 8, sequenceId: id }, [8, id]));
    if (message.type === 1) void this.dispatch(connection, message);
  }

  private async dispatch(connection: MockConnection, message: HubMessage): Promise<void> {
    this.calls.push({ target: message.target, args: message.args });
    const method = this.methods.get(message.target);
    let error: string | undefined;
    let result: unknown = null;
    try {
      if (!method) throw new Error("HubException: Method does not exist.");
      result = await method(message.args, this, connection);
    } catch (e) {
      error = (e as Error).message;
    }
    if (message.invocationId === undefined) return;
    const id = message.invocationId;
    if (error === undefined) this.sendCounted(connection, { type: 3, invocationId: id, result }, [3, {}, id, 3, result]);
    else this.sendCounted(connection, { type: 3, invocationId: id, error }, [3, {}, id, 1, error]);
  }

  /** Sends a counted message; a stateful connection keeps it until the client acknowledges it. */
  private sendCounted(connection: MockConnection, json: object, messagePack: unknown[]): void {
    if (!connection.protocol) return;
    const bytes = this.encode(connection, json, messagePack);
    if (connection.stateful) {
      connection.sent++;
      connection.unacked.push({ id: connection.sent, bytes });
    }
    // A resumed socket sends nothing new before its Sequence; what is kept goes after it.
    if (connection.socket && !connection.awaitingSequence) connection.socket.send(bytes);
  }

  private encode(connection: MockConnection, json: object, messagePack: unknown[]): string | Buffer {
    return connection.protocol === "messagepack" ? frame(messagePack) : JSON.stringify(json) + RS;
  }
}

interface HubMessage {
  type: number;
  invocationId: string | undefined;
  target: string;
  args: unknown[];
  /** Ack and Sequence. */
  sequenceId: number;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function parseJson(bytes: Buffer): HubMessage[] {
  return bytes
    .toString("utf8")
    .split(RS)
    .filter((s) => s.length > 0)
    .map((s) => {
      const m = JSON.parse(s) as { type: number; invocationId?: string; target?: string; arguments?: unknown[]; sequenceId?: number };
      return { type: m.type, invocationId: m.invocationId, target: m.target ?? "", args: m.arguments ?? [], sequenceId: m.sequenceId ?? 0 };
    });
}

function parseMessagePack(bytes: Buffer): HubMessage[] {
  const out: HubMessage[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    let length = 0;
    let shift = 0;
    for (;;) {
      const b = bytes[offset++]!;
      length |= (b & 0x7f) << shift;
      shift += 7;
      if ((b & 0x80) === 0) break;
    }
    const m = decode(bytes.subarray(offset, offset + length)) as unknown[];
    offset += length;
    if (m[0] === 1) {
      out.push({ type: 1, invocationId: (m[2] as string | null) ?? undefined, target: m[3] as string, args: m[4] as unknown[], sequenceId: 0 });
    } else if (m[0] === 8 || m[0] === 9) {
      out.push({ type: m[0], invocationId: undefined, target: "", args: [], sequenceId: Number(m[1]) });
    } else {
      out.push({ type: m[0] as number, invocationId: undefined, target: "", args: [], sequenceId: 0 });
    }
  }
  return out;
}

function frame(message: unknown[]): Buffer {
  const body = encode(message);
  const prefix: number[] = [];
  let n = body.length;
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n > 0) b |= 0x80;
    prefix.push(b);
  } while (n > 0);
  return Buffer.concat([Buffer.from(prefix), Buffer.from(body)]);
}

/** Polls with real timers; the integration tests use real sockets, so real time too. */
export async function waitFor(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
