// The server's list of connectors, live over /ws/index: `onListing` hears each new list,
// `onLost` hears the socket close (it is opened again, backing off from 0.25 s to 4 s).
// The server makes thumbnails only while some page asks for them (`thumbnails`).

export function watchPlanes(onListing, onLost, thumbnails = true) {
  let retry = 250;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/index${thumbnails ? "" : "?thumbnails=0"}`);
    ws.onopen = () => { retry = 250; };
    ws.onmessage = (message) => onListing(JSON.parse(message.data));
    ws.onclose = () => {
      onLost();
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 4000);
    };
  }
  connect();
}
