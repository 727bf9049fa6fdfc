// The page's Socket.IO connection to the server's /dashboard namespace, with the header's
// connection indicator. socket.io-client reconnects by itself; `onConnect` runs on every
// (re)connection, so a page joins its room again and reloads what it missed.
import { io } from "socket.io-client";
import { parse } from "./codec.js";
import { DASHBOARD_NAMESPACE } from "./protocol.js";

export function connect(onConnect) {
  const socket = io(DASHBOARD_NAMESPACE, { reconnectionDelayMax: 5000 });
  const indicator = document.getElementById("connection");
  const show = (text, state) => {
    if (!indicator) return;
    indicator.textContent = text;
    indicator.className = `connection ${state}`;
  };
  socket.on("connect", () => {
    show("live", "live");
    // A server that goes away while the page joins rejects the join (socket.io-client: "socket
    // has been disconnected"); the next connection joins again, so that is a warning, not an error.
    Promise.resolve(onConnect(socket)).catch((err) => {
      if (socket.connected) console.error(err);
      else console.warn(`babysit: the connection dropped while joining (${err.message}); joining again on reconnection`);
    });
  });
  socket.on("disconnect", () => show("reconnecting…", "down"));
  socket.on("connect_error", () => show("server unreachable, retrying…", "down"));
  return socket;
}

// Emit with an acknowledgement, as a promise (rejects after `timeoutMs`).
export function request(socket, event, payload, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    socket.timeout(timeoutMs).emit(event, payload, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// A live batch's events as the server fans them out: one codec JSON text of [{seq, step, wall, kind, data}].
export function decodeEvents(text) {
  return parse(text);
}
