// Helpers of the stateful-reconnect suite (stateful.test.mjs): a TCP proxy between a tab and the
// load balancer that reads the WebSocket frames going through it (so a test can cut a socket at
// an exact point, hold a resume, stop the server's bytes from reaching the client, and see every
// hub message each side sent), the resume metrics, and a tab of the official client with
// `withStatefulReconnect()`.
import { createConnection, createServer } from "node:net";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import { eventually, explained, fetchWithin, hubConnections, metric, openTab, placeOrder, signalR, sleep, within } from "./harness.mjs";

const RS = 0x1e;
const msgpack = new MessagePackHubProtocol();

/** Incremental parser of WebSocket frames (RFC 6455), masked or not; payloads are unmasked. */
class FrameReader {
  constructor() {
    this.buf = Buffer.alloc(0);
  }

  /** Appends `data`; returns the frames it completed, each with its original bytes. */
  push(data) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    const frames = [];
    for (;;) {
      const b = this.buf;
      if (b.length < 2) break;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      const masked = (b[1] & 0x80) !== 0;
      const maskAt = off;
      if (masked) off += 4;
      if (b.length < off + len) break;
      const payload = Buffer.from(b.subarray(off, off + len));
      if (masked) for (let i = 0; i < payload.length; i += 1) payload[i] ^= b[maskAt + (i % 4)];
      frames.push({ fin: (b[0] & 0x80) !== 0, rsv1: (b[0] & 0x40) !== 0, opcode: b[0] & 0x0f, payload, raw: Buffer.from(b.subarray(0, off + len)) });
      this.buf = b.subarray(off + len);
    }
    return frames;
  }
}

/** Hub messages of one WebSocket message (text: JSON records; binary: MessagePack). */
export function decodeHubMessages(payload, binary) {
  if (payload.length === 0) return [];
  if (!binary) {
    return payload
      .toString("utf8")
      .split("\x1e")
      .filter((r) => r.length > 0)
      .map((r) => JSON.parse(r));
  }
  const ab = payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.length);
  return msgpack.parseMessages(ab, signalR.NullLogger.instance);
}

/** `payload` without the handshake record at its start (everything up to the first 0x1E). */
function afterHandshake(payload) {
  const i = payload.indexOf(RS);
  return i < 0 ? Buffer.alloc(0) : payload.subarray(i + 1);
}

/**
 * A TCP proxy in front of `targetPort` (nginx) for one tab. It forwards HTTP as is and, on
 * WebSocket connections, whole frames, decoding the hub messages of both directions:
 * - `requests`: every connection's first request (method, path, connection token `id`, whether
 *   it resumes a connection token already upgraded, the answer's status), and, on plain HTTP
 *   connections, the request lines that followed (keep-alive);
 * - `toClient` / `toServer`: the hub messages forwarded each way, with the connection's index;
 * - `cut()`: closes both sides of every connection (new connections are still accepted);
 * - `holdResumes(ms)`: a resume (an upgrade with a connection token seen before) is forwarded
 *   only after `ms`;
 * - `freeze()`: from now on, the server's frames on the open connections are read and dropped,
 *   not forwarded (`swallowed` counts their bytes), so the client gets and acknowledges nothing;
 * - `trapInvocation(target, mode)`: on the next client Invocation of `target`, `"cut-after"`
 *   forwards it and cuts at once (FIN towards the server after the frame, the client's side
 *   closed); `"drop-completion"` forwards it and cuts when its Completion comes back, which is
 *   not forwarded. Resolves with `{ invocationId }` when it has cut.
 */
export async function tabProxy(targetPort) {
  const conns = new Set();
  const requests = [];
  const toClient = [];
  const toServer = [];
  const upgradedIds = new Set();
  const problems = [];
  const handshakes = [];
  let swallowedBytes = 0;
  let holdMs = 0;
  let trap = null;
  let nextIndex = 0;

  const kill = (c, by = "proxy") => {
    if (c.record && !c.record.end) c.record.end = { by, after: Date.now() - c.record.at };
    c.dead = true;
    c.inbound.destroy();
    c.outbound?.destroy();
    conns.delete(c);
  };

  const writeServer = (c, bytes) => {
    if (c.outbound) c.outbound.write(bytes);
    else c.pending.push(bytes);
  };

  const connectOutbound = (c, delay) => {
    const go = () => {
      if (c.dead) return;
      const out = createConnection({ port: targetPort, host: "127.0.0.1" });
      c.outbound = out;
      out.on("data", (d) => onServerData(c, d));
      const ended = () => {
        if (!c.halfClosing) kill(c, "server");
        else conns.delete(c);
      };
      out.on("error", ended).on("close", ended);
      for (const p of c.pending.splice(0)) out.write(p);
    };
    if (delay > 0) setTimeout(go, delay);
    else go();
  };

  const onClientData = (c, d) => {
    if (c.dead) return;
    if (!c.record) {
      c.head = Buffer.concat([c.head, d]);
      const end = c.head.indexOf("\r\n\r\n");
      if (end < 0) return;
      const headText = c.head.subarray(0, end).toString("latin1");
      const rest = c.head.subarray(end + 4);
      const [method, target] = headText.split("\r\n")[0].split(" ");
      const url = new URL(target, "http://proxy");
      url.searchParams.delete("access_token");
      const id = url.searchParams.get("id");
      c.upgrade = /^upgrade:\s*websocket/im.test(headText);
      c.resume = Boolean(c.upgrade && id && upgradedIds.has(id));
      c.record = { conn: c.index, method, path: url.pathname + url.search, id, upgrade: c.upgrade, resume: c.resume, status: null, at: Date.now() };
      requests.push(c.record);
      writeServer(c, c.head.subarray(0, end + 4));
      connectOutbound(c, c.resume ? holdMs : 0);
      if (rest.length) onClientData(c, rest);
      return;
    }
    if (!c.upgrade) {
      // Later requests on a kept-alive HTTP connection (a negotiate, ...): logged, forwarded.
      for (const m of d.toString("latin1").matchAll(/(?:^|\r\n)(GET|POST|PUT|DELETE) (\S+) HTTP\/1\.1\r\n/g)) {
        const url = new URL(m[2], "http://proxy");
        url.searchParams.delete("access_token");
        requests.push({ conn: c.index, method: m[1], path: url.pathname + url.search, id: url.searchParams.get("id"), upgrade: false, resume: false, status: null, at: Date.now() });
      }
      writeServer(c, d);
      return;
    }
    for (const frame of c.fromClient.push(d)) {
      const messages = decodeFrame(c, frame, "client");
      for (const m of messages) toServer.push({ conn: c.index, at: Date.now(), ...m });
      const hit = trap && !trap.fired && messages.find((m) => m.type === 1 && m.target === trap.target);
      if (hit) {
        trap.fired = true;
        trap.invocationId = hit.invocationId;
        if (trap.mode === "cut-after") {
          writeServer(c, frame.raw);
          // The frame, then FIN to the server; the client's side goes at once.
          c.halfClosing = true;
          c.dead = true;
          c.outbound?.end();
          c.inbound.destroy();
          setTimeout(() => c.outbound?.destroy(), 5000).unref();
          trap.resolve({ invocationId: hit.invocationId });
          return;
        }
        c.awaitCompletion = hit.invocationId;
      }
      writeServer(c, frame.raw);
    }
  };

  const onServerData = (c, d) => {
    if (c.dead) return;
    if (!c.upgrade || c.plain) {
      c.inbound.write(d);
      return;
    }
    if (!c.headDone) {
      c.sHead = Buffer.concat([c.sHead, d]);
      const end = c.sHead.indexOf("\r\n\r\n");
      if (end < 0) return;
      const headText = c.sHead.subarray(0, end).toString("latin1");
      c.record.status = Number(headText.split(" ")[1]);
      c.headDone = true;
      if (/^sec-websocket-extensions:/im.test(headText)) problems.push(`the server accepted a WebSocket extension: ${headText}`);
      const rest = c.sHead.subarray(end + 4);
      c.inbound.write(c.sHead.subarray(0, end + 4));
      if (c.record.status !== 101) {
        c.plain = true;
        if (rest.length) c.inbound.write(rest);
        return;
      }
      if (c.record.id) upgradedIds.add(c.record.id);
      if (!rest.length) return;
      d = rest;
    }
    for (const frame of c.fromServer.push(d)) {
      const messages = decodeFrame(c, frame, "server");
      if (c.frozen) {
        swallowedBytes += frame.raw.length;
        continue;
      }
      if (c.awaitCompletion !== undefined && messages.some((m) => m.type === 3 && m.invocationId === c.awaitCompletion)) {
        c.droppedCompletion = messages;
        const t = trap;
        kill(c);
        t.resolve({ invocationId: c.awaitCompletion });
        return;
      }
      for (const m of messages) toClient.push({ conn: c.index, at: Date.now(), ...m });
      c.inbound.write(frame.raw);
    }
  };

  /** The hub messages of a data frame (a fresh connection's first one starts with the handshake). */
  const decodeFrame = (c, frame, from) => {
    if (frame.opcode === 8) return [{ wsClose: true, code: frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : null }];
    if (frame.opcode !== 1 && frame.opcode !== 2 && frame.opcode !== 0) return [];
    if (frame.rsv1) {
      problems.push(`a compressed frame from the ${from}`);
      return [];
    }
    if (!frame.fin || frame.opcode === 0) {
      problems.push(`a fragmented message from the ${from}`);
      return [];
    }
    let payload = frame.payload;
    const firstKey = from === "client" ? "clientFirst" : "serverFirst";
    if (!c.resume && !c[firstKey]) {
      c[firstKey] = true;
      const handshake = payload.subarray(0, Math.max(0, payload.indexOf(RS)));
      try {
        handshakes.push({ conn: c.index, from, ...JSON.parse(handshake.toString("utf8")) });
      } catch {
        problems.push(`no handshake record from the ${from}: ${payload.toString("latin1")}`);
      }
      payload = afterHandshake(payload);
    }
    try {
      return decodeHubMessages(payload, frame.opcode === 2);
    } catch (err) {
      problems.push(`undecodable frame from the ${from}: ${err.message}`);
      return [];
    }
  };

  const server = createServer((inbound) => {
    const c = {
      index: nextIndex++,
      inbound,
      outbound: null,
      pending: [],
      head: Buffer.alloc(0),
      sHead: Buffer.alloc(0),
      record: null,
      headDone: false,
      fromClient: new FrameReader(),
      fromServer: new FrameReader(),
      dead: false,
    };
    conns.add(c);
    inbound.on("data", (d) => onClientData(c, d));
    inbound.on("error", () => kill(c, "client")).on("close", () => {
      if (!c.halfClosing) kill(c, "client");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    hubUrl: `http://127.0.0.1:${port}/hubs/order-status`,
    requests,
    toClient,
    toServer,
    problems,
    /** The WebSocket upgrades, in order. */
    upgrades: () => requests.filter((r) => r.upgrade),
    negotiates: () => requests.filter((r) => r.method === "POST" && r.path.includes("/negotiate")),
    /** The handshake requests (client) and answers (server) of fresh WebSocket connections. */
    handshakes,
    /** The server's bytes read and dropped since `freeze()`. */
    swallowed: () => swallowedBytes,
    openUpgraded: () => [...conns].filter((c) => c.upgrade && c.headDone && !c.dead).length,
    cut() {
      for (const c of [...conns]) kill(c, "cut");
    },
    holdResumes(ms) {
      holdMs = ms;
    },
    freeze() {
      for (const c of conns) if (c.upgrade) c.frozen = true;
    },
    trapInvocation(target, mode) {
      return new Promise((resolve) => {
        trap = { target, mode, fired: false, resolve };
      });
    },
    /** One line per request, for failure messages. */
    describe() {
      const types = (list, conn) => list.filter((m) => m.conn === conn).map((m) => (m.wsClose ? `wsclose${m.code ?? ""}` : m.type === 9 || m.type === 8 ? `${m.type}:${m.sequenceId}` : m.type)).join(",");
      return requests
        .map((r) => {
          let line = `#${r.conn} ${r.method} ${r.path.replace(/id=[^&]+/, `id=${(r.id ?? "").slice(-6)}`)}${r.resume ? " (resume)" : ""} -> ${r.status ?? "-"}`;
          if (r.upgrade && r.status === 101) line += ` [server: ${types(toClient, r.conn)}] [client: ${types(toServer, r.conn)}]`;
          if (r.end) line += ` ended by ${r.end.by} after ${r.end.after} ms`;
          return line;
        })
        .join("; ");
    },
    close() {
      for (const c of [...conns]) kill(c);
      server.close();
    },
  };
}

/** The sum over `servers` of metric `name`'s samples whose labels include every one of `labels`. */
export async function metricWhere(servers, name, labels = {}) {
  let total = 0;
  for (const server of servers) {
    const text = await (await fetchWithin(`${server.base}/metrics`)).text();
    for (const line of text.split("\n")) {
      if (!(line.startsWith(`${name} `) || line.startsWith(`${name}{`))) continue;
      if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
      total += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return total;
}

export const RESUMES = "contoso_hub_stateful_resumes_total";
const OUTCOMES = ["resumed", "unknown", "in-use", "overflowed"];

/** `contoso_hub_stateful_resumes_total` by outcome, summed over `servers`. */
export async function resumeOutcomes(servers) {
  const out = {};
  for (const outcome of OUTCOMES) out[outcome] = await metricWhere(servers, RESUMES, { outcome });
  return out;
}

/** `after - before`, outcome by outcome. */
export function delta(before, after) {
  return Object.fromEntries(OUTCOMES.map((o) => [o, after[o] - before[o]]));
}

/** How many times the hub ran `method` (its invocation-duration count), summed over `servers`. */
export function invocationsRun(servers, method) {
  return metricWhere(servers, "contoso_hub_invocation_duration_seconds_count", { method: method.toLowerCase() });
}

/**
 * A tab of the official client: `openTab` (every notification in `received`, every
 * reconnecting / reconnected / close in `events`) through its own `tabProxy` in front of
 * `lbPort`, with `withStatefulReconnect()` unless `stateful: false`; `invoked` records each hub
 * method this tab invoked. With `notifiers`, `process` is the notify process that took the
 * tab's WebSocket (the one whose connection gauge went up; tabs must be opened one at a time).
 */
export async function openStatefulTab(lbPort, tok, { msgpack = false, stateful = true, notifiers } = {}) {
  const proxy = await tabProxy(lbPort);
  const connects = () => Promise.all(notifiers.map((n) => metric(n, "contoso_hub_connects_total")));
  const before = notifiers ? await connects() : null;
  const tab = await openTab(proxy.hubUrl, tok, { msgpack, stateful, skipNegotiation: !stateful });
  tab.proxy = proxy;
  tab.protocol = msgpack ? "messagepack" : "json";
  tab.invoked = [];
  const invoke = tab.conn.invoke.bind(tab.conn);
  tab.conn.invoke = (method, ...args) => {
    tab.invoked.push(method);
    return invoke(method, ...args);
  };
  if (notifiers) {
    // The process whose connects counter moved (a counter: other tabs leaving cannot hide it).
    let moved = [];
    await explained(
      eventually("the tab's connection on a notify process", async () => {
        const now = await connects();
        moved = notifiers.filter((_, i) => now[i] > before[i]);
        return moved.length > 0;
      }),
      () => `connects before ${before}; ${proxy.describe()}`,
    );
    if (moved.length > 1) throw new Error(`a tab opened alone counted as a connect on ${moved.length} processes (ports ${moved.map((n) => n.port)})`);
    tab.process = moved[0];
    const gauge = await hubConnections(tab.process);
    if (gauge < 1) throw new Error(`the process that took the tab reports ${gauge} connections`);
  }
  return tab;
}

