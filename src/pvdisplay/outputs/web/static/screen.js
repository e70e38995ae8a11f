// One connector live on a canvas: frames arrive as changed tiles (JPEG or PNG) over a
// WebSocket and are acknowledged once drawn. Used by the connector page (with input) and
// by the wall (many at once, view only).

const RATE_WINDOW = 1;  // seconds of drawn frames the frame rate and latency are taken over

export class Screen {
  // `key` is "DOMID/DEVID/CONNECTOR"; `onStatus(status)` hears every status message.
  constructor(canvas, key, onStatus) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.key = key;
    this.onStatus = onStatus;
    // Read by tests and benchmarks: what the page has drawn.
    this.stats = {
      state: "connecting", frames: 0, seq: 0, guestFrame: -1, plane: null, name: "", bytes: 0,
      latencies: [],  // seconds from the backend presenting a frame to the page drawing it
      decoding: [],   // seconds of those spent here, from the message arriving to drawn
    };
    this.drawn = [];  // [time drawn, latency] of the last RATE_WINDOW seconds
    this.socket = null;
    this.drawing = Promise.resolve();
    this.retry = 250;
    this.closed = false;
    this.connect();
  }

  // For good: no reconnecting.
  close() {
    this.closed = true;
    if (this.socket) this.socket.close();
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(message) {
    if (this.open) this.socket.send(JSON.stringify(message));
  }

  // Frames drawn per second and their median latency (ms), over the last second.
  rate() {
    const now = Date.now() / 1000;
    while (this.drawn.length && this.drawn[0][0] < now - RATE_WINDOW) this.drawn.shift();
    const latencies = this.drawn.map(([, latency]) => latency).sort((a, b) => a - b);
    const median = latencies.length ? latencies[latencies.length >> 1] * 1000 : NaN;
    return { fps: this.drawn.length / RATE_WINDOW, latencyMs: median };
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/view/${this.key}`);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    ws.onopen = () => { this.retry = 250; };
    ws.onmessage = (message) => {
      if (typeof message.data === "string") {
        const status = JSON.parse(message.data);
        this.drawing = this.drawing.then(() => this.status(status));
      } else {
        const received = Date.now() / 1000;
        const frame = decodeFrame(message.data);
        this.drawing = this.drawing.then(() => this.draw(frame, received))
          .catch((error) => console.error(error));
      }
    };
    ws.onclose = () => {
      this.socket = null;
      if (this.closed) return;
      this.status({ state: "unreachable", backend: false, plane: null, name: this.stats.name });
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 4000);
    };
  }

  status(status) {
    const plane = status.plane;
    this.stats.state = status.state === "unreachable" ? "disconnected" : status.state;
    this.stats.plane = plane;
    this.stats.name = status.name;
    if (status.state === "live"
        && (this.canvas.width !== plane.mode_width || this.canvas.height !== plane.mode_height)) {
      this.canvas.width = plane.mode_width;
      this.canvas.height = plane.mode_height;
    }
    this.onStatus(status);
  }

  async draw(frame, received) {
    const header = frame.header;
    const bitmaps = await frame.bitmaps;
    header.tiles.forEach(([x, y], index) => {
      this.context.drawImage(bitmaps[index], header.x + x, header.y + y);
      bitmaps[index].close();
    });
    const stats = this.stats;
    stats.frames += 1;
    stats.seq = header.seq;
    stats.guestFrame = header.frame;
    stats.bytes += frame.bytes;
    const now = Date.now() / 1000;
    stats.latencies.push(now - header.presented);
    stats.decoding.push(now - received);
    this.drawn.push([now, now - header.presented]);
    if (stats.latencies.length > 2000) {
      stats.latencies.splice(0, 1000);
      stats.decoding.splice(0, 1000);
    }
    this.send({ type: "ack", seq: header.seq });
  }
}

// Starts decoding at once (off the main thread, frames overlapping); `draw` then waits.
function decodeFrame(buffer) {
  const view = new DataView(buffer);
  const headerLength = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
  let offset = 4 + headerLength;
  // Default options: the images carry no colour profile, so nothing is converted, and
  // opaque pixels need no (un)premultiplying; asking for "none" costs a slower decode.
  const bitmaps = header.tiles.map(([, , , , kind, length]) => {
    const blob = new Blob([new Uint8Array(buffer, offset, length)], { type: `image/${kind}` });
    offset += length;
    return createImageBitmap(blob);
  });
  return { header, bitmaps: Promise.all(bitmaps), bytes: buffer.byteLength };
}
