// Every guest connector as a card, pushed by the server over /ws/index: a thumbnail
// (refreshed about once a second, fetched only when the server made a new one), then what
// the connector shows and how fast.

import { orNoneYet, watchPlanes } from "/static/planes.js";

const cards = document.getElementById("planes");

function field(name, label, className = "") {
  const item = document.createElement("div");
  const term = document.createElement("dt");
  const value = document.createElement("dd");
  term.textContent = label;
  value.dataset.field = name;
  value.className = className;
  item.append(term, value);
  return item;
}

function newCard(key) {
  const card = document.createElement("article");
  card.className = "card";
  card.dataset.key = key;
  const link = document.createElement("a");
  link.href = `/view/${key}`;
  link.className = "thumb";
  const image = document.createElement("img");
  image.alt = "";  // until there is a thumbnail: the card says what it is
  link.append(image);
  const heading = document.createElement("h2");
  const details = document.createElement("dl");
  details.append(
    field("domid", "Domain"), field("devid", "Device"), field("connector", "Connector"),
    field("unique_id", "Unique-id"), field("resolution", "Resolution"), field("fourcc", "Format"),
    field("fps", "Frames/s", "number"), field("latency", "Flip latency", "number"),
    field("state", "State"));
  card.append(link, heading, details);
  return card;
}

function fill(card, p) {
  const shown = p.fb_cookie !== 0;
  const set = (name, text) => { card.querySelector(`[data-field=${name}]`).textContent = text; };
  card.querySelector("h2").textContent = `${p.name || "–"} · ${p.unique_id}`;
  set("domid", p.domid);
  set("devid", p.devid);
  set("connector", p.connector);
  set("unique_id", p.unique_id);
  set("resolution", `${p.mode_width}×${p.mode_height}`);
  set("fourcc", shown ? p.fourcc : "–");
  set("fps", p.fps.toFixed(1));
  set("latency", `${p.latency_ms.toFixed(2)} ms`);
  set("state", shown ? "live" : "blank");
  card.querySelector("[data-field=state]").className = "state " + (shown ? "live" : "blank");
  const image = card.querySelector("img");
  image.style.aspectRatio = `${p.mode_width} / ${p.mode_height}`;
  if (p.thumb && image.dataset.version !== String(p.thumb)) {
    image.dataset.version = p.thumb;
    image.src = `/thumb/${card.dataset.key}?v=${p.thumb}`;
    image.alt = `${p.name || `domain ${p.domid}`} ${p.unique_id}`;
  }
}

function render(listing) {
  const known = new Map([...cards.querySelectorAll(".card")].map((c) => [c.dataset.key, c]));
  const shown = [];
  for (const p of listing.planes) {
    const key = `${p.domid}/${p.devid}/${p.connector}`;
    const card = known.get(key) || newCard(key);
    fill(card, p);
    shown.push(card);
  }
  cards.replaceChildren(...orNoneYet(shown));
}

watchPlanes(document.getElementById("backend"), render);
