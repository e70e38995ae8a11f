// Every connector live at once, each on its own canvas and WebSocket (view only: a click
// opens the connector's page, where input goes to the guest).

import { Screen } from "/static/screen.js";
import { orNoneYet, watchPlanes } from "/static/planes.js";

const wall = document.getElementById("wall");
const tiles = new Map();  // key -> { figure, screen, caption }
window.pvdisplayWall = tiles;  // read by tests

function newTile(key) {
  const figure = document.createElement("figure");
  figure.dataset.key = key;
  const link = document.createElement("a");
  link.href = `/view/${key}`;
  const canvas = document.createElement("canvas");
  canvas.width = 640;
  canvas.height = 480;
  link.append(canvas);
  const caption = document.createElement("figcaption");
  figure.append(link, caption);
  const tile = { figure, caption, plane: null };
  tile.screen = new Screen(canvas, key, () => {});
  return tile;
}

function render(listing) {
  const keys = new Set();
  for (const p of listing.planes) {
    const key = `${p.domid}/${p.devid}/${p.connector}`;
    keys.add(key);
    if (!tiles.has(key)) tiles.set(key, newTile(key));
    tiles.get(key).plane = p;
  }
  for (const [key, tile] of tiles) {
    if (!keys.has(key)) {
      tile.screen.close();
      tiles.delete(key);
    }
  }
  wall.replaceChildren(...orNoneYet([...tiles.values()].map((tile) => tile.figure)));
}

// Captions say what each page draws: its own frame rate and latency.
setInterval(() => {
  for (const [key, tile] of tiles) {
    const { fps, latencyMs } = tile.screen.rate();
    const name = tile.plane && tile.plane.name ? tile.plane.name : `domain ${key.split("/")[0]}`;
    const late = Number.isNaN(latencyMs) ? "" : ` · ${latencyMs.toFixed(0)} ms`;
    tile.caption.textContent = `${name} · ${tile.plane ? tile.plane.unique_id : key} · `
      + `${tile.screen.stats.state} · ${fps.toFixed(0)} fps${late}`;
  }
}, 500);

watchPlanes(document.getElementById("backend"), render, false);
