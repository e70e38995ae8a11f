// One connector live, with its input: keyboard, mouse, wheel and touch go back in the
// guest's pixel coordinates, whatever the canvas's on-page scale. The toolbar scales the
// canvas, goes full screen and sends keys a browser keeps for itself (Ctrl-Alt-Del, Esc).

import { Screen } from "/static/screen.js";
import { keysFor } from "/static/typing.js";

const [, , domid, devid, connector] = location.pathname.split("/");
const canvas = document.getElementById("screen");
const area = document.getElementById("area");
const overlay = document.getElementById("overlay");
const stateLabel = document.getElementById("state");
const infoLabel = document.getElementById("info");
const rateLabel = document.getElementById("rate");
const focusLabel = document.getElementById("focus");
const title = document.getElementById("title");
const typing = document.getElementById("typing");

const display = new Screen(canvas, `${domid}/${devid}/${connector}`, onStatus);
window.pvdisplay = display.stats;  // read by tests and benchmarks

const MESSAGES = {
  blank: "the guest shows nothing on this connector yet",
  guestGone: "guest disconnected: waiting for it to come back",
  backendGone: "display backend gone: waiting for it to come back",
  unreachable: "viewer server unreachable: reconnecting",
};

function onStatus(status) {
  const where = `domain ${domid} device ${devid} connector ${connector}`;
  title.textContent = status.name ? `${status.name}: ${where}` : where;
  document.title = `pvdisplay: ${status.name || `domain ${domid}`} connector ${connector}`;
  let message = "";
  if (status.state === "live") {
    const plane = status.plane;
    infoLabel.textContent = `${plane.unique_id}: ${plane.mode_width}×${plane.mode_height} ${plane.fourcc}`;
    layout();
  } else if (status.state === "blank") {
    message = MESSAGES.blank;
  } else if (status.state === "unreachable") {
    message = MESSAGES.unreachable;
  } else {
    message = status.backend ? MESSAGES.guestGone : MESSAGES.backendGone;
  }
  const state = display.stats.state;
  stateLabel.textContent = state;
  stateLabel.className = "state " + state;
  overlay.textContent = message;
  overlay.hidden = state === "live";
}

setInterval(() => {
  const { fps, latencyMs } = display.rate();
  rateLabel.textContent = Number.isNaN(latencyMs)
    ? `${fps.toFixed(0)} fps` : `${fps.toFixed(0)} fps · ${latencyMs.toFixed(0)} ms`;
}, 500);

// -- scaling and full screen ---------------------------------------------------------------

let scale = localStorage.getItem("pvdisplay.scale") || "fit";

// The canvas's CSS size for the chosen scaling, in the area left below the toolbar (or
// the whole screen, in full screen).
function layout() {
  const width = canvas.width, height = canvas.height;
  const room = { width: area.clientWidth, height: area.clientHeight };
  let shown = { width, height };
  if (scale === "fit") {
    const factor = Math.min(room.width / width, room.height / height);
    shown = { width: width * factor, height: height * factor };
  } else if (scale === "fill") {
    shown = room;
  }
  canvas.style.width = `${Math.round(shown.width)}px`;
  canvas.style.height = `${Math.round(shown.height)}px`;
  for (const button of document.querySelectorAll("[data-scale]")) {
    button.setAttribute("aria-pressed", String(button.dataset.scale === scale));
  }
}
for (const button of document.querySelectorAll("[data-scale]")) {
  button.addEventListener("click", () => {
    scale = button.dataset.scale;
    localStorage.setItem("pvdisplay.scale", scale);
    layout();
  });
}
new ResizeObserver(layout).observe(area);

const fullscreenButton = document.getElementById("fullscreen");
fullscreenButton.addEventListener("click", () => {
  if (document.fullscreenElement) {
    document.exitFullscreen();
  } else {
    area.requestFullscreen().then(() => canvas.focus({ preventScroll: true }));
  }
});
document.addEventListener("fullscreenchange", () => {
  fullscreenButton.textContent = document.fullscreenElement ? "leave full screen" : "full screen";
  layout();
});

// -- input -----------------------------------------------------------------------------------

function send(events) {
  if (display.stats.state === "live") display.send({ type: "input", events });
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

// Modifiers the toolbar holds down until the next other key goes up (or they are
// clicked again): how Ctrl-C is typed on a phone.
const MODIFIERS = new Set(["ControlLeft", "ControlRight", "AltLeft", "AltRight", "ShiftLeft",
  "ShiftRight", "MetaLeft", "MetaRight"]);
const stickyButtons = [...document.querySelectorAll("[data-sticky]")];

function stickyUps() {
  const ups = [];
  for (const sticky of stickyButtons) {
    if (sticky.getAttribute("aria-pressed") === "true") {
      sticky.setAttribute("aria-pressed", "false");
      ups.push({ t: "key", code: sticky.dataset.sticky, down: false });
    }
  }
  return ups;
}

function keys(events) {
  if (events.some((e) => !e.down && !MODIFIERS.has(e.code))) events = events.concat(stickyUps());
  send(events);
}

function tap(code) {
  keys([{ t: "key", code, down: true }, { t: "key", code, down: false }]);
}

// The page cannot see keys lifted while it has no focus, so it lets go of everything
// when it loses focus; the server lifts whatever is still held when the page goes away.
function releaseAll() {
  buttonsDown.clear();
  stickyUps();
  display.send({ type: "input", events: [{ t: "release" }] });
}
window.addEventListener("blur", () => { releaseAll(); showFocus(); });
window.addEventListener("focus", showFocus);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) releaseAll();
});

// -- focus: keys go to the guest only while the canvas (or the typing field) has focus --

function showFocus() {
  // A page in a window that lost the focus gets no keys, whatever element it focused.
  const active = document.hasFocus() ? document.activeElement : null;
  if (active === canvas) {
    focusLabel.textContent = "controlling · Esc releases";
  } else if (active === typing) {
    focusLabel.textContent = "typing · Esc releases";
  } else {
    focusLabel.textContent = "click to control";
  }
  focusLabel.className = "focus " + (active === canvas || active === typing ? "active" : "idle");
}
for (const element of [canvas, typing]) {
  element.addEventListener("focus", showFocus);
  element.addEventListener("blur", () => { releaseAll(); showFocus(); });
}

function key(event) {
  if (event.code === "Escape") {  // the way out; the toolbar's Esc reaches the guest
    if (event.type === "keydown") event.target.blur();
    event.preventDefault();
    return;
  }
  if (event.repeat) return;  // the guest repeats held keys itself
  keys([{ t: "key", code: event.code, down: event.type === "keydown" }]);
  event.preventDefault();
}
canvas.addEventListener("keydown", key);
canvas.addEventListener("keyup", key);

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

// -- the toolbar's keys ------------------------------------------------------------------------

// Toolbar buttons never take focus: pressing one must not release what the canvas holds.
for (const element of document.querySelectorAll("#toolbar button")) {
  element.addEventListener("pointerdown", (event) => event.preventDefault());
}
document.getElementById("ctrl-alt-del").addEventListener("click", () => {
  const combo = ["ControlLeft", "AltLeft", "Delete"];
  keys([...combo.map((code) => ({ t: "key", code, down: true })),
    ...combo.reverse().map((code) => ({ t: "key", code, down: false }))]);
});
for (const element of document.querySelectorAll("[data-key]")) {
  element.addEventListener("click", () => tap(element.dataset.key));
}
for (const sticky of stickyButtons) {
  sticky.addEventListener("click", () => {
    const down = sticky.getAttribute("aria-pressed") !== "true";
    sticky.setAttribute("aria-pressed", String(down));
    send([{ t: "key", code: sticky.dataset.sticky, down }]);
  });
}

// -- typing on a phone: a hidden field takes the on-screen keyboard's text -------------------

document.getElementById("type").addEventListener("click", () => {
  if (document.activeElement === typing) typing.blur(); else typing.focus();
});
typing.addEventListener("keydown", (event) => {
  // Phones' keyboards say "Unidentified" (or compose): their text comes as input events.
  if (event.isComposing || event.key === "Unidentified" || !event.code) return;
  key(event);
});
typing.addEventListener("keyup", (event) => {
  if (event.isComposing || event.key === "Unidentified" || !event.code) return;
  key(event);
});
typing.addEventListener("input", (event) => {
  if (event.isComposing) return;  // sent whole at compositionend
  if (event.inputType.startsWith("delete")) tap("Backspace");
  else if (event.inputType === "insertLineBreak") tap("Enter");
  else typeText(event.data || "");
  typing.value = "";
});
typing.addEventListener("compositionend", (event) => {
  typeText(event.data || "");
  typing.value = "";
});

function typeText(text) {
  let events = [];
  for (const char of text) {
    events.push(...keysFor(char));
    if (events.length > 200) {  // the server takes at most 256 events a message
      keys(events);
      events = [];
    }
  }
  if (events.length) keys(events);
}
