// A tiny in-process SignalR hub speaking just enough of the JSON and MessagePack hub protocols
// (handshake, invocation, completion, push) to run the real @microsoft/signalr client against it.
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";

import { decode, encode } from "@msgpack/msgpack";
import { WebSocketServer, type RawData, type WebSocket } from "ws";

const RS = "\u001e";

type Method = (args: unknown[], hub: MockHub, socket: WebSocket) => unknown;

interface Peer {
  protocol: "json" | "messagepack" | undefined;
}

export interface Upgrade {
  readonly url: string;
  readonly authorization: string | undefined;
  readonly protocolHeader: string | undefined;
}

export class MockHub {
  readonly upgrades: Upgrade[] = [];
  readonly calls: Array<{ target: string; args: unknown[] }> = [];
  readonly methods = new Map<string, Method>();
  /** How many of the next upgrade requests to refuse with 401. */
  refuseNext = 0;

  private readonly http: Server = createServer((_req, res) => res.writeHead(404).end());
  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly peers = new Map<WebSocket, Peer>();

  async listen(): Promise<string> {
    this.http.on("upgrade", (req: IncomingMessage, socket, head) => {
      this.upgrades.push({
        url: req.url ?? "",
        authorization: req.headers.authorization,
        protocolHeader: req.headers["sec-websocket-protocol"] as string | undefined,
      });
      if (this.refuseNext > 0) {
        this.refuseNext--;
        socket.end("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws));
    });
    await new Promise<void>((resolve) => this.http.listen(0, "127.0.0.1", resolve));
    const { port } = this.http.address() as AddressInfo;
    return `http://127.0.0.1:${port}/hubs/order-status`;
  }

  get openSockets(): number {
    return this.peers.size;
  }

  /** A non-blocking server-to-client invocation (no invocation id), to every socket. */
  push(target: string, ...args: unknown[]): void {
    for (const ws of this.peers.keys()) this.pushTo(ws, target, ...args);
  }

  pushTo(ws: WebSocket, target: string, ...args: unknown[]): void {
    const peer = this.peers.get(ws);
    if (peer?.protocol === "json") ws.send(JSON.stringify({ type: 1, target, arguments: args }) + RS);
    if (peer?.protocol === "messagepack") ws.send(frame([1, {}, null, target, args]));
  }

  /** Kills every socket without a Close message, like a crashed pod. */
  dropAll(): void {
    for (const ws of this.peers.keys()) ws.terminate();
  }

  async close(): Promise<void> {
    this.dropAll();
    this.wss.close();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  private accept(ws: WebSocket): void {
    const peer: Peer = { protocol: undefined };
    this.peers.set(ws, peer);
    ws.on("close", () => this.peers.delete(ws));
    ws.on("message", (data: RawData, isBinary: boolean) => {
      const bytes = toBuffer(data);
      if (!peer.protocol) {
        const handshake = JSON.parse(bytes.toString("utf8").split(RS)[0] ?? "{}") as { protocol?: string };
        peer.protocol = handshake.protocol === "messagepack" ? "messagepack" : "json";
        // The reply's frame type follows the negotiated transfer format.
        ws.send(peer.protocol === "json" ? `{}${RS}` : Buffer.from(`{}${RS}`));
        return;
      }
      const messages = peer.protocol === "json" || !isBinary ? parseJson(bytes) : parseMessagePack(bytes);
      for (const message of messages) void this.dispatch(ws, peer, message);
    });
  }

  private async dispatch(ws: WebSocket, peer: Peer, message: HubInvocation): Promise<void> {
    if (message.type !== 1) return;
    this.calls.push({ target: message.target, args: message.args });
    const method = this.methods.get(message.target);
    let error: string | undefined;
    let result: unknown = null;
    try {
      if (!method) throw new Error("HubException: Method does not exist.");
      result = await method(message.args, this, ws);
    } catch (e) {
      error = (e as Error).message;
    }
    if (message.invocationId === undefined) return;
    if (peer.protocol === "json") {
      const completion =
        error === undefined
          ? { type: 3, invocationId: message.invocationId, result }
          : { type: 3, invocationId: message.invocationId, error };
      ws.send(JSON.stringify(completion) + RS);
    } else {
      ws.send(frame(error === undefined ? [3, {}, message.invocationId, 3, result] : [3, {}, message.invocationId, 1, error]));
    }
  }
}

interface HubInvocation {
  type: number;
  invocationId: string | undefined;
  target: string;
  args: unknown[];
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function parseJson(bytes: Buffer): HubInvocation[] {
  return bytes
    .toString("utf8")
    .split(RS)
    .filter((s) => s.length > 0)
    .map((s) => {
      const m = JSON.parse(s) as { type: number; invocationId?: string; target?: string; arguments?: unknown[] };
      return { type: m.type, invocationId: m.invocationId, target: m.target ?? "", args: m.arguments ?? [] };
    });
}

function parseMessagePack(bytes: Buffer): HubInvocation[] {
  const out: HubInvocation[] = [];
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
      out.push({ type: 1, invocationId: (m[2] as string | null) ?? undefined, target: m[3] as string, args: m[4] as unknown[] });
    } else {
      out.push({ type: m[0] as number, invocationId: undefined, target: "", args: [] });
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
