"use strict";
// The live list of every guest connector, pushed by the server over /ws/index.

const body = document.getElementById("planes");
const backend = document.getElementById("backend");

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function render(listing) {
  backend.textContent = listing.backend ? "backend connected" : "waiting for the display backend";
  backend.className = "state " + (listing.backend ? "live" : "disconnected");
  body.replaceChildren();
  if (listing.planes.length === 0) {
    const row = document.createElement("tr");
    row.append(cell("no guest display yet"));
    row.firstChild.colSpan = 11;
    body.append(row);
    return;
  }
  for (const p of listing.planes) {
    const row = document.createElement("tr");
    const shown = p.fb_cookie !== 0;
    const link = document.createElement("a");
    link.href = `/view/${p.domid}/${p.devid}/${p.connector}`;
    link.textContent = "view";
    const action = document.createElement("td");
    action.append(link);
    row.dataset.key = `${p.domid}/${p.devid}/${p.connector}`;
    row.append(
      cell(p.domid), cell(p.name || "–"), cell(p.devid), cell(p.connector), cell(p.unique_id),
      cell(`${p.mode_width}×${p.mode_height}`), cell(shown ? p.fourcc : "–"),
      cell(p.fps.toFixed(1), "number"), cell(`${p.latency_ms.toFixed(2)} ms`, "number"),
      cell(shown ? "live" : "blank", "state " + (shown ? "live" : "blank")), action);
    body.append(row);
  }
}

let retry = 250;
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/index`);
  ws.onopen = () => { retry = 250; };
  ws.onmessage = (message) => render(JSON.parse(message.data));
  ws.onclose = () => {
    backend.textContent = "viewer server unreachable; retrying";
    backend.className = "state disconnected";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 4000);
  };
}
connect();
