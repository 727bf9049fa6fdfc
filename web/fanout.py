"""Live events to a room's viewers, with a bound on what each viewer may have waiting.

Why: in threading mode python-engineio gives every client an unbounded queue of outgoing
packets and a writer thread that blocks in the socket's ``send`` once the peer stops
reading (TCP backpressure). A browser tab that froze, or a client that never reads, then
keeps everything fanned out to it in the server's memory (five such sockets grew a server
by 7.6 MB/s and held on to it), and a close would wait for that queue to drain.

In one line: each live viewer may have at most 4 MiB (and 1,000 messages) waiting on the
server; one that falls further behind is told to resync from REST, its backlog is freed at
once and its connection closed (its socket cut once it has taken nothing for 2 s).

**The bound.** A viewer may have at most :data:`MAX_PENDING_BYTES` (4 MiB) of encoded
packets and at most :data:`MAX_PENDING_PACKETS` (1,000) packets waiting in its queue. Bytes
are what memory is made of (one live batch may hold one event or two thousand); the count
keeps the check itself cheap (it reads the viewer's queue) and bounds many small packets.
A packet bigger than the byte bound still goes to a viewer with nothing waiting, so a big
batch reaches everyone who keeps up. What one viewer can hold is then at most the bound
(plus one packet) in its queue and the packets its writer had taken from the queue when it
blocked (no more than the bound either), besides the kernel's socket buffers; the packets
are shared by all the viewers of a room, so many stuck viewers hold hardly more than one.

**A viewer over the bound is dropped**, without blocking the ingest thread: its queue is
emptied at once (that memory returns), it is sent ``resync`` and an engine.io close (a
viewer that is slow but reading reloads from REST and reconnects by itself: the page
reloads its history on every connection), and if its connection is still open once its
peer has taken no byte for :data:`DROP_GRACE_SECONDS` (or :data:`DROP_MAX_SECONDS` after
the drop), its TCP socket is shut down, which wakes the blocked writer, frees what it held
and ends the connection's threads. The resync waits behind what the writer had already
taken (up to the bound, plus the kernel's buffers): a viewer that is slow but reading needs
time to get to it, and cutting it on a clock alone would cut it before its resync, leaving
it with neither the events nor the word that it missed them (a viewer of 60,000 events/s on
a loaded machine got 88,000 of 200,000 and no resync). So the clock restarts while the peer
takes bytes (TCP acknowledged them: ``SIOCOUTQ``), and only a peer that stopped reading is
cut on it. Sending only puts packets on queues, so the other viewers keep receiving
everything and the trainer's ack never waits.

The cut needs the viewer's socket, which :func:`for_server` can only know for connections
made after it was first called: call it when the app is built. A viewer connected before
still has its backlog freed and its connection closed; only its stuck writer (and what it
took) stays until the peer goes.

**Where it applies.** The server's client manager (:class:`BoundedManager`) delivers every
emit to the ``/dashboard`` namespace through this fan-out, so the app itself just calls
``socketio.emit``. With a message queue (several server processes, :mod:`web.message_queue`)
an emit is published to the other processes and each delivers it to its own viewers through
its own fan-out: the bound is per process, for the viewers connected to it. Emits to the
training processes (``/ingest``: a stop) and those that wait for an answer go out unbounded,
as python-socketio sends them.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import socket
import struct
import threading
import time
import weakref

try:
    import fcntl
    import termios
except ImportError:  # not POSIX: what a peer took is what was sent to it
    fcntl = termios = None

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from socketio import Manager
from socketio import packet as sio_packet

from monitor import protocol

log = logging.getLogger("babysit.server")

#: Most bytes of encoded packets one viewer may have waiting before it is dropped.
MAX_PENDING_BYTES = 4 * 1024 * 1024
#: Most packets one viewer may have waiting before it is dropped.
MAX_PENDING_PACKETS = 1000
#: Seconds a dropped viewer may take no byte before its socket is cut (it has not read its ``resync``).
DROP_GRACE_SECONDS = 2.0
#: Most seconds a dropped viewer that keeps reading, however slowly, has to reach its ``resync``.
DROP_MAX_SECONDS = 60.0


class BoundedFanOut:
    """Emits to a room's viewers; drops (see the module doc) those over the bound.

    Get the one of a server with :func:`for_server`; ``dropped`` counts the viewers
    dropped so far, for the operator (each drop is also one log line)."""

    def __init__(self, socketio, *, max_bytes: int = MAX_PENDING_BYTES, max_packets: int = MAX_PENDING_PACKETS,
                 grace: float = DROP_GRACE_SECONDS, most: float = DROP_MAX_SECONDS):
        self.server = _sio_server(socketio)
        self.eio = self.server.eio
        self.max_bytes, self.max_packets, self.grace, self.most = max_bytes, max_packets, grace, most
        self.dropped = 0
        self._lock = threading.RLock()  # one fan-out at a time (a viewer's count is exact when
        # checked); re-entrant: a disconnect handler run by a drop may emit too
        self._connections = _track_websockets(self.eio)

    def emit(self, event: str, data, *, to: str | None, namespace: str, skip_sid=None) -> int:
        """``event`` with ``data`` (one argument; a tuple: several) to every viewer of this process
        in room ``to`` (None: every viewer of ``namespace``) but ``skip_sid`` (a sid or a list);
        returns how many were dropped. Local only: ``socketio.emit`` reaches the other processes."""
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
        # A batch of live events holds text and numbers only (web.live.fan_out): no need for
        # python-socketio to search its thousands of values for bytes.
        binary = False if event == protocol.EVENTS else None
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args],
                                           binary=binary).encode()
        packets = [eio_packet.Packet(eio_packet.MESSAGE, text)  # encoded once, shared by every viewer
                   for text in (encoded if isinstance(encoded, list) else [encoded])]
        size = sum(_size(p) for p in packets)
        dropped = 0
        with self._lock:
            for sid, eio_sid in list(self.server.manager.get_participants(namespace, to)):
                client = None if sid in skip else self.eio.sockets.get(eio_sid)
                if client is None or client.closed or client.closing:
                    continue
                waiting, waiting_bytes = _pending(client.queue)
                if waiting and (waiting + len(packets) > self.max_packets
                                or waiting_bytes + size > self.max_bytes):
                    self._drop(eio_sid, client, waiting, waiting_bytes, namespace)
                    dropped += 1
                    continue
                try:
                    for p in packets:
                        client.send(p)
                except eio_exceptions.SocketIsClosedError:  # it closed meanwhile (its own thread)
                    continue
        return dropped

    def _drop(self, eio_sid: str, client, waiting: int, waiting_bytes: int, namespace: str) -> None:
        freed = _empty(client.queue)  # the backlog goes now, whatever happens to the connection
        peer = self.server.environ.get(eio_sid, {}).get("REMOTE_ADDR", "?")  # gone once it is closed
        reason = (f"this viewer fell behind: {waiting} live messages ({waiting_bytes / 1e6:.1f} MB) were "
                  f"waiting for it, at most {self.max_bytes / 1e6:.1f} MB; they were dropped, reload from REST")
        resync = self.server.packet_class(sio_packet.EVENT, namespace=namespace,
                                          data=[protocol.RESYNC, {"reason": reason}]).encode()
        try:
            for text in resync if isinstance(resync, list) else [resync]:
                client.send(eio_packet.Packet(eio_packet.MESSAGE, text))
            # An engine.io close, not a socket.io disconnect: the page's client then reconnects
            # by itself. wait=False: never wait for the writer, which may be stuck in send.
            client.close(wait=False, abort=False)
        except eio_exceptions.SocketIsClosedError:  # it closed meanwhile: still cut it below
            pass
        self.dropped += 1
        log.warning("babysit: dropped a live viewer at %s (session %s) that fell behind: %d messages, %.1f MB "
                    "waiting (freed), told to resync; %d dropped so far", peer, eio_sid, freed,
                    waiting_bytes / 1e6, self.dropped)
        connection = self._connections.get(eio_sid)
        if connection is not None:
            self._cut_once_idle(eio_sid, connection, _taken(connection), time.monotonic() + self.most)

    def _cut_once_idle(self, eio_sid: str, connection, taken: int, last: float) -> None:
        """In ``grace`` seconds, cut the connection if its peer took no byte meanwhile (or
        ``last`` has passed); otherwise look again ``grace`` seconds later."""
        def check():
            if self._connections.get(eio_sid) is not connection:
                return  # it ended by itself (it took the resync and the close)
            now = _taken(connection)
            if now > taken and time.monotonic() < last:
                self._cut_once_idle(eio_sid, connection, now, last)
            else:
                _cut(self._connections, eio_sid, connection)

        timer = threading.Timer(self.grace, check)
        timer.daemon = True
        timer.start()


    def close_all(self, timeout: float = DROP_GRACE_SECONDS) -> None:
        """Close every client (the server is stopping), so each sees the end at once and
        reconnects elsewhere or later. Each close is sent without waiting for its queue to
        drain: python-engineio's own ``disconnect()`` waits (``queue.join``) client after
        client, and in threading mode that wait can last forever when a WebSocket's reader
        leaves its wake-up in the queue after the writer has gone (python-engineio PR #60's
        class; one stop in six hung on a loaded host, and the clients after it stayed
        connected). The WebSockets still open ``timeout`` seconds later are cut."""
        clients = list(self.eio.sockets.items())
        for _eio_sid, client in clients:
            try:
                client.close(wait=False, abort=False)
            except eio_exceptions.SocketIsClosedError:  # it closed meanwhile
                pass
            except Exception:  # noqa: BLE001 - a disconnect handler's error must not keep the others open
                log.exception("babysit: closing a client while the server stops")
        self.eio.sockets = {}
        deadline = time.monotonic() + timeout
        while any(self._connections.get(sid) is not None for sid, _ in clients) and time.monotonic() < deadline:
            time.sleep(0.02)
        for eio_sid, _ in clients:
            connection = self._connections.get(eio_sid)
            if connection is not None:
                _cut(self._connections, eio_sid, connection)


def for_server(socketio) -> BoundedFanOut:
    """The :class:`BoundedFanOut` of a Flask-SocketIO server (or of its python-socketio
    ``Server``), made on first use. Making it early (when the app is built) lets it cut the
    sockets of every viewer, not only of those that connected after it was made."""
    server = _sio_server(socketio)
    with _made_lock:
        made = _made.get(server)
        if made is None:
            made = _made[server] = BoundedFanOut(server)
        return made


class BoundedManager(Manager):
    """python-socketio's client manager, delivering to this process's viewers (the
    ``/dashboard`` namespace) through :func:`for_server`'s bounded fan-out; every other emit
    as python-socketio does. The message-queue manager (:mod:`web.message_queue`) puts
    itself in front of it: its local delivery, of this process's emits and of those the
    queue brings from the others, comes here."""

    def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if namespace != protocol.DASHBOARD_NAMESPACE or callback is not None:
            return super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)
        for_server(self.server).emit(event, data, to=room, namespace=namespace, skip_sid=skip_sid)


_made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_made_lock = threading.Lock()


def _sio_server(socketio):
    """python-socketio's ``Server``: Flask-SocketIO's ``SocketIO`` holds it as ``.server``."""
    return getattr(socketio, "server", socketio)


def _size(p) -> int:
    data = getattr(p, "data", None)  # None: the writer's stop sentinel, or a packet with no data
    return len(data) if isinstance(data, (str, bytes)) else 0


def _pending(q: queue.Queue) -> tuple[int, int]:
    """Packets and bytes waiting in a client's engine.io queue."""
    mutex = getattr(q, "mutex", None)  # gevent's queue has none: no other greenlet runs meanwhile
    with mutex or contextlib.nullcontext():  # the writer takes from it meanwhile: read it as one snapshot
        return len(q.queue), sum(_size(p) for p in q.queue)


def _empty(q: queue.Queue) -> int:
    """Take everything off a queue (as its consumer would, so a ``join`` still returns)."""
    freed = 0
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return freed
        q.task_done()
        freed += 1


def _track_websockets(eio) -> dict:
    """Remember each WebSocket connection of ``eio`` by session id while it is open, so a
    dropped viewer's socket can be cut. engine.io keeps no such reference (the connection
    lives in its handler's frame), so this server's WebSocket driver is replaced by one
    that records it; other servers in the process keep theirs. Empty in a mode other than
    threading or gevent (whose WebSockets are simple-websocket's too)."""
    connections: dict = {}
    if eio.async_mode not in ("threading", "gevent") or not isinstance(eio._async.get("websocket"), type) \
            or not issubclass(eio._async["websocket"], SimpleWebSocketWSGI):
        return connections

    class Tracked(eio._async["websocket"]):
        def __init__(self, handler, server, **kwargs):
            super().__init__(handler, server, **kwargs)
            self._sid = getattr(getattr(handler, "__self__", None), "sid", None)  # the engine.io session
            if self._sid is not None:
                connections[self._sid] = self

        def __call__(self, environ, start_response):
            for key in _SOCKET_KEYS:  # the socket simple-websocket takes from the environment
                if key in environ and not isinstance(environ[key], WholeSends):
                    environ[key] = WholeSends(environ[key])
            try:
                return super().__call__(environ, start_response)
            finally:
                if connections.get(self._sid) is self:
                    del connections[self._sid]

    eio._async = {**eio._async, "websocket": Tracked}  # a copy: the module's table is shared
    return connections


#: Where the WSGI servers we run under put a WebSocket's socket (gunicorn, Werkzeug).
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


class WholeSends:
    """A WebSocket's socket whose ``send`` sends all it is given, one frame at a time.

    Why: simple-websocket (1.1.0) writes each frame with one ``socket.send`` and ignores
    what it returns; a send may take only part of a big frame, and what follows is then
    read as garbage: the connection breaks. Under gevent it happened to live batches of
    2,000 events at 55,000 events/s: a viewer stopped receiving, with no resync (known
    upstream: simple-websocket issue 45, closed; 1.1.0, its latest release, still sends so).
    ``sendall`` under a lock also keeps the frames of two senders of one connection
    (engine.io's writer, simple-websocket's ping) from interleaving when a send yields
    halfway. Everything else is the socket's own."""

    def __init__(self, sock):
        self._sock = sock
        self._sending = threading.Lock()
        self.sent = 0  # bytes the kernel took so far (what the peer took: :func:`_taken`)

    def send(self, data, *flags) -> int:
        with self._sending:
            view = memoryview(data).cast("B")
            while view:  # sendall, counting as it goes: a blocked send's progress is the peer's
                done = self._sock.send(view, *flags)
                self.sent += done
                view = view[done:]
        return len(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _taken(connection) -> int:
    """Bytes the peer of a tracked WebSocket has taken so far: what its socket sent, less what
    the kernel still holds unacknowledged (``SIOCOUTQ``, Linux; elsewhere what was sent)."""
    sock = getattr(getattr(connection, "ws", None), "sock", None)
    if not isinstance(sock, WholeSends):
        return 0
    unacknowledged = 0
    if fcntl is not None:
        with contextlib.suppress(OSError, ValueError):  # closed, or a system whose sockets lack it
            unacknowledged = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    return sock.sent - unacknowledged


def _cut(connections: dict, eio_sid: str, connection) -> None:
    """Shut a dropped viewer's TCP socket if its connection is still open: the writer blocked
    in ``send`` gets an error and ends, the reader sees the end, and what they held is freed.
    Linger 0: the kernel drops the unsent bytes too, instead of keeping them for the peer."""
    if connections.get(eio_sid) is not connection:
        return  # it ended by itself (it took the resync and the close)
    sock = getattr(getattr(connection, "ws", None), "sock", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass
