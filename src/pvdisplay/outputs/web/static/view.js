"use strict";
// One connector live: frames arrive as changed tiles (JPEG or PNG) over a WebSocket and
// are acknowledged once drawn; keyboard, mouse, wheel and touch go back in the guest's
// pixel coordinates, whatever the canvas's on-page scale.

const [, , domid, devid, connector] = location.pathname.split("/");
const canvas = document.getElementById("screen");
const context = canvas.getContext("2d");
const overlay = document.getElementById("overlay");
const stateLabel = document.getElementById("state");
const infoLabel = document.getElementById("info");
document.getElementById("title").textContent = `domain ${domid} device ${devid} connector ${connector}`;

// Read by tests and benchmarks: what the page has drawn.
const stats = window.pvdisplay = {
  state: "connecting", frames: 0, seq: 0, guestFrame: -1, plane: null, bytes: 0,
  latencies: [],  // seconds from the backend presenting a frame to the page drawing it
  decoding: [],   // seconds of those spent here, from the message arriving to drawn
};

let socket = null;
let drawing = Promise.resolve();
let retry = 250;

function setState(state, message) {
  stats.state = state;
  stateLabel.textContent = state;
  stateLabel.className = "state " + state;
  overlay.textContent = message;
  overlay.hidden = state === "live";
}

function onStatus(status) {
  const plane = status.plane;
  stats.plane = plane;
  if (status.state === "live") {
    if (canvas.width !== plane.mode_width || canvas.height !== plane.mode_height) {
      canvas.width = plane.mode_width;
      canvas.height = plane.mode_height;
    }
    infoLabel.textContent = `${plane.unique_id}: ${plane.mode_width}×${plane.mode_height} ${plane.fourcc}`;
    setState("live", "");
  } else if (status.state === "blank") {
    setState("blank", "the guest shows nothing on this connector yet");
  } else {
    setState("disconnected", status.backend
      ? "guest disconnected: waiting for it to come back"
      : "display backend gone: waiting for it to come back");
  }
}

// Starts decoding at once (off the main thread, frames overlapping); `drawFrame` then waits.
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

async function drawFrame(frame, received) {
  const header = frame.header;
  const bitmaps = await frame.bitmaps;
  header.tiles.forEach(([x, y], index) => {
    context.drawImage(bitmaps[index], header.x + x, header.y + y);
    bitmaps[index].close();
  });
  stats.frames += 1;
  stats.seq = header.seq;
  stats.guestFrame = header.frame;
  stats.bytes += frame.bytes;
  const now = Date.now() / 1000;
  stats.latencies.push(now - header.presented);
  stats.decoding.push(now - received);
  if (stats.latencies.length > 2000) {
    stats.latencies.splice(0, 1000);
    stats.decoding.splice(0, 1000);
  }
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "ack", seq: header.seq }));
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/view/${domid}/${devid}/${connector}`);
  ws.binaryType = "arraybuffer";
  socket = ws;
  ws.onopen = () => { retry = 250; };
  ws.onmessage = (message) => {
    if (typeof message.data === "string") {
      const status = JSON.parse(message.data);
      drawing = drawing.then(() => onStatus(status));
    } else {
      const received = Date.now() / 1000;
      const frame = decodeFrame(message.data);
      drawing = drawing.then(() => drawFrame(frame, received))
        .catch((error) => console.error(error));
    }
  };
  ws.onclose = () => {
    socket = null;
    setState("disconnected", "viewer server unreachable: reconnecting");
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 4000);
  };
}

// -- input -------------------------------------------------------------------------------

function send(events) {
  if (socket && socket.readyState === WebSocket.OPEN && stats.state === "live") {
    socket.send(JSON.stringify({ type: "input", events }));
  }
}

function guestPosition(event) {
  const box = canvas.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * canvas.width / box.width,
    y: (event.clientY - box.top) * canvas.height / box.height,
  };
}

// MouseEvent.button -> its bit in MouseEvent.buttons.
const BUTTON_BITS = [1, 4, 2, 8, 16];
// Mouse buttons sent down: a cancelled pointer says no button (-1), yet these are held.
const buttonsDown = new Set();

function button(number, down, at) {
  if (down) buttonsDown.add(number); else buttonsDown.delete(number);
  send([{ t: "button", button: number, down, ...at }]);
}

// The page cannot see keys lifted while it has no focus, so it lets go of everything
// when it loses focus; the server lifts whatever is still held when the page goes away.
function releaseAll() {
  buttonsDown.clear();
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "input", events: [{ t: "release" }] }));
  }
}
window.addEventListener("blur", releaseAll);
canvas.addEventListener("blur", releaseAll);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) releaseAll();
});

canvas.addEventListener("pointerdown", (event) => {
  const at = guestPosition(event);
  canvas.focus({ preventScroll: true });  // scrolling now would move what the pointer is over
  canvas.setPointerCapture(event.pointerId);
  if (event.pointerType === "touch") {
    send([{ t: "touch", phase: "down", id: event.pointerId, ...at }]);
  } else {
    button(event.button, true, at);
  }
  event.preventDefault();
});

canvas.addEventListener("pointermove", (event) => {
  const at = guestPosition(event);
  if (event.pointerType === "touch") {
    send([{ t: "touch", phase: "move", id: event.pointerId, ...at }]);
  } else if (event.button >= 0) {
    // A second mouse button pressed or released while another is held (a chord).
    button(event.button, (event.buttons & BUTTON_BITS[event.button]) !== 0, at);
  } else {
    send([{ t: "move", ...at }]);
  }
});

function pointerEnd(event) {
  const at = guestPosition(event);
  if (event.pointerType === "touch") {
    send([{ t: "touch", phase: "up", id: event.pointerId, ...at }]);
  } else if (event.button >= 0) {
    button(event.button, false, at);
  } else {
    [...buttonsDown].forEach((number) => button(number, false, at));
  }
}
canvas.addEventListener("pointerup", pointerEnd);
canvas.addEventListener("pointercancel", pointerEnd);
canvas.addEventListener("contextmenu", (event) => event.preventDefault());

// One wheel step is a notch: 100 pixels in Chromium, 3 lines elsewhere.
const WHEEL_UNITS = [100, 3, 1];
let wheelSteps = 0;
canvas.addEventListener("wheel", (event) => {
  wheelSteps -= event.deltaY / WHEEL_UNITS[event.deltaMode];
  const steps = Math.trunc(wheelSteps);
  if (steps !== 0) {
    wheelSteps -= steps;
    send([{ t: "wheel", steps }]);
  }
  event.preventDefault();
}, { passive: false });

function key(event) {
  if (event.repeat) return;  // the guest repeats held keys itself
  send([{ t: "key", code: event.code, down: event.type === "keydown" }]);
  event.preventDefault();
}
canvas.addEventListener("keydown", key);
canvas.addEventListener("keyup", key);

connect();
