// A deliberately low-level WebSocket client for wire-level assertions the official client
// hides: exact records, frame types, what the server does NOT send.
import WebSocket from "ws";

export class RawClient {
  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => ws.on("close", (code) => resolve(code)));
    ws.on("message", (data, isBinary) => {
      this.frames.push({ data: Buffer.from(data), isBinary });
      this.waiters.splice(0).forEach((w) => w());
    });
  }

  static async connect(url, { token, query = true, headers = {} } = {}) {
    const full = token && query ? `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}` : url;
    const h = { ...headers };
    if (token && !query) h.authorization = `Bearer ${token}`;
    // handshakeTimeout: an upgrade the server never answers fails instead of hanging.
    const ws = new WebSocket(full.replace(/^http/, "ws"), { headers: h, handshakeTimeout: 10000 });
    return new Promise((resolve, reject) => {
      ws.once("open", () => resolve(new RawClient(ws)));
      ws.once("unexpected-response", (_req, res) => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode, headers: res.headers })));
      ws.once("error", reject);
    });
  }

  send(text) {
    this.ws.send(text);
  }

  sendBinary(buf) {
    this.ws.send(buf, { binary: true });
  }

  /** Waits for the next frame (or null after `timeoutMs`). */
  async nextFrame(timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.frames.shift();
  }

  /** The next frame; fails with `what` when none arrives within `timeoutMs`. */
  async expectFrame(what, timeoutMs = 5000) {
    const frame = await this.nextFrame(timeoutMs);
    if (!frame) throw new Error(`no frame within ${timeoutMs} ms: expected ${what}`);
    return frame;
  }

  /** The next frame's records; fails with `what` when none arrives within `timeoutMs`. */
  async expectRecords(what, timeoutMs = 5000) {
    const batch = await this.nextRecords(timeoutMs);
    if (!batch) throw new Error(`no frame within ${timeoutMs} ms: expected ${what}`);
    return batch;
  }

  /** The WebSocket close code; fails when the server has not closed within `timeoutMs`. */
  async closeCode(timeoutMs = 5000) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the server did not close the WebSocket within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** JSON records of the next frame, split on 0x1E (each frame must end on a record boundary). */
  async nextRecords(timeoutMs) {
    const frame = await this.nextFrame(timeoutMs);
    if (!frame) return null;
    const text = frame.data.toString("utf8");
    if (!text.endsWith("\x1e")) throw new Error(`frame does not end on a record boundary: ${JSON.stringify(text)}`);
    return { isBinary: frame.isBinary, records: text.split("\x1e").slice(0, -1).map((r) => JSON.parse(r)) };
  }

  /** Collects records until one matches `pred`, skipping Pings. */
  async until(pred, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    const seen = [];
    for (;;) {
      const batch = await this.nextRecords(Math.max(1, deadline - Date.now()));
      if (!batch) throw new Error(`no matching record; seen ${JSON.stringify(seen)}`);
      for (const r of batch.records) {
        seen.push(r);
        if (pred(r)) return { record: r, seen };
      }
    }
  }

  close() {
    this.ws.close();
  }
}
