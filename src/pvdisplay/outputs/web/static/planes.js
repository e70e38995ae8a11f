// The server's list of connectors, live over /ws/index: `onListing` hears each new list,
// and `status` says whether the display backend is connected, or the server lost (the
// socket is then opened again, backing off from 0.25 s to 4 s). The server makes
// thumbnails only while some page asks for them (`thumbnails`).

export function watchPlanes(status, onListing, thumbnails = true) {
  let retry = 250;
  function show(text, live) {
    status.textContent = text;
    status.className = "state " + (live ? "live" : "disconnected");
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/index${thumbnails ? "" : "?thumbnails=0"}`);
    ws.onopen = () => { retry = 250; };
    ws.onmessage = (message) => {
      const listing = JSON.parse(message.data);
      show(listing.backend ? "backend connected" : "waiting for the display backend", listing.backend);
      onListing(listing);
    };
    ws.onclose = () => {
      show("viewer server unreachable; retrying", false);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 4000);
    };
  }
  connect();
}

// What a page lists: `elements`, or while there are none, a line saying so.
export function orNoneYet(elements) {
  if (elements.length > 0) return elements;
  const empty = document.createElement("p");
  empty.className = "empty";
  empty.textContent = "no guest display yet";
  return [empty];
}
