"""The message queue: several ``babysit serve`` processes sharing their live channels through Redis.

Why: one process holds a trainer's socket, another a browser's (a reverse proxy spreads
them, docs/scale-out.md); an emit in one process must reach the sockets of all. python-
socketio's ``RedisManager`` does that: an emit is delivered to this process's sockets and
published on a Redis channel, and each process's listener thread delivers what the others
published to its own sockets. :class:`RedisQueueManager` is that manager with three changes:

- **Local delivery is bounded** (:class:`web.fanout.BoundedManager` sits behind it): a
  viewer that falls behind is dropped by the process it is connected to, whichever process
  the event came from.
- **Publishing never holds up the caller.** An emit on the ingest thread (a batch's events,
  after the commit) puts the message on a bounded outbox, and one publisher thread sends it
  to Redis, in order. While Redis does not answer, what does not fit is dropped and counted
  (the events are in the store: pages reload them), one line says so when it begins and one
  when it ends, and then the other processes' viewers are told to resync.
- **The listener says an outage once** (python-socketio logs every retry), and once it is
  subscribed again it tells this process's viewers to resync: what was published meanwhile
  never reached them.

Redis pub/sub ignores the database number, so the channel is named after it
(``babysit:<N>``): servers given ``redis://host/0`` and ``redis://host/1`` are two separate
groups. Live messages are at most once by nature; the store is what is kept.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from urllib.parse import urlsplit

from socketio import RedisManager

from monitor import protocol
from web import fanout
from web.fanout import BoundedManager

log = logging.getLogger("babysit.server")

#: URL schemes of a Redis message queue (``rediss``: over TLS).
SCHEMES = ("redis", "rediss")
#: Seconds to wait for Redis to accept a connection, and for one of its answers.
CONNECT_TIMEOUT, ANSWER_TIMEOUT = 3.0, 5.0
#: Messages waiting to be published at most; beyond, while Redis does not answer, they are dropped.
OUTBOX_MESSAGES = 1000
#: Messages published in one round trip at most.
PUBLISH_BATCH = 100
#: Seconds the listener waits for a message before it looks whether the server is stopping.
LISTEN_POLL_SECONDS = 0.5
#: Seconds between two health checks (PING) of the listener's connection, which finds a Redis gone silent.
HEALTH_CHECK_SECONDS = 15
#: Longest wait between two tries to reach Redis again.
MAX_RETRY_SECONDS = 30.0
EXAMPLE = "redis://127.0.0.1:6379/0"


class MessageQueueError(RuntimeError):
    """The message queue cannot work: its package is missing or Redis does not answer."""


def check_url(url) -> str:
    """``url`` as given if it is ``redis[s]://[user:password@]host[:port][/N]``; a ValueError says what to give."""
    problem = None
    if not isinstance(url, str):
        problem = f"got {type(url).__name__}"
    else:
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:
            port = 0
        if parts.scheme not in SCHEMES:
            problem = f"got {shown(url)!r}" + ("" if parts.scheme else " (no scheme)")
        elif not parts.hostname or port == 0:
            problem = f"got {shown(url)!r}: give the host, and the port as a number"
        elif (parts.path not in ("", "/") and not parts.path[1:].isdigit()) or parts.query or parts.fragment:
            problem = f"got {shown(url)!r}: after host:port only /N, the database number"
    if problem:
        raise ValueError(f"message_queue: expected the URL of the Redis server the server processes share, "
                         f"redis://host:port/N (rediss:// over TLS), e.g. {EXAMPLE}; {problem}")
    return url.strip()


def shown(url: str) -> str:
    """``url`` with its password hidden (it may reach a log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def channel(url: str) -> str:
    """The pub/sub channel of the servers sharing ``url`` (see the module doc)."""
    path = urlsplit(url).path.strip("/")
    return f"babysit:{path or '0'}"


def require_redis():
    """The ``redis`` module, or a :class:`MessageQueueError` saying which extra brings it."""
    try:
        import redis
    except ImportError:
        raise MessageQueueError("--message-queue needs the redis package: pip install 'babysit[scale]'") from None
    return redis


def check_reachable(url: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Ask Redis at ``url`` for a PING; a :class:`MessageQueueError` says what failed and what to do."""
    redis = require_redis()
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise MessageQueueError(f"the message queue {shown(url)} does not answer ({type(exc).__name__}: {exc}); "
                                "start Redis there, or give the right URL with --message-queue "
                                "(BABYSIT_MESSAGE_QUEUE)") from None
    finally:
        client.close()


class _Closed(BaseException):
    """Ends the listener's thread when the server stops. A BaseException: python-socketio's
    listening loop catches every Exception, logs it and listens again."""


class RedisQueueManager(RedisManager, BoundedManager):
    """python-socketio's Redis manager, bounded, non-blocking and quiet (see the module doc).
    Method resolution puts :class:`~web.fanout.BoundedManager` right after python-socketio's
    ``PubSubManager``, so its local delivery (``super().emit`` there) is the bounded one."""

    name = "babysit-redis"

    def __init__(self, url: str):
        self._redis = require_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(check_url(url), channel=channel(url), redis_options={
            "socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": ANSWER_TIMEOUT,
            "socket_keepalive": True, "health_check_interval": HEALTH_CHECK_SECONDS,
            # no retries inside redis-py: a failure reaches our loops, which say it and resync after
            "retry": Retry(NoBackoff(), 0)})
        self.dropped = 0  # messages not published (Redis did not answer), for the operator
        self._dropped_lock = threading.Lock()  # counted from the callers' threads and the publisher's
        self._outbox: queue.Queue = queue.Queue(OUTBOX_MESSAGES)
        self._publisher: threading.Thread | None = None
        self._publisher_lock = threading.Lock()
        self._closing = threading.Event()

    # ------------------------------------------------------------------ publishing

    def _publish(self, data) -> None:
        """Put ``data`` on the outbox for the publisher thread; never waits (module doc)."""
        if self._closing.is_set():
            return
        if self._publisher is None:
            with self._publisher_lock:
                if self._publisher is None:
                    self._publisher = threading.Thread(target=self._publish_loop, daemon=True,
                                                       name="babysit-queue-publisher")
                    self._publisher.start()
        try:
            self._outbox.put_nowait(data)
        except queue.Full:  # Redis is slow or gone: the events are in the store
            self._drop()

    def _publish_loop(self) -> None:
        client = self._redis.Redis.from_url(self.redis_url, **self.redis_options)
        failed, dropped_before = None, 0
        while True:
            waiting = self._waiting()
            closing = waiting[-1] is None
            messages = [data for data in waiting if data is not None]
            try:
                if messages:
                    # all that waits in one round trip, in order: one publish per round trip
                    # falls behind a busy ingest (its thread waits for the GIL after each answer)
                    pipe = client.pipeline(transaction=False)
                    for data in messages:
                        pipe.publish(self.channel, self.json.dumps(data))
                    pipe.execute()
            except Exception as exc:  # noqa: BLE001 - whatever Redis says, the server goes on
                for _ in messages:
                    self._drop()
                if failed is None:
                    failed, dropped_before = time.monotonic(), self.dropped - len(messages)
                    log.warning("babysit: cannot publish to the message queue %s (%s: %s); live events for the "
                                "other server processes are dropped until it answers (the store has them)",
                                shown(self.redis_url), type(exc).__name__, exc)
                if closing:
                    client.close()
                    return
                continue
            if closing:  # close(): what waited before it was sent
                client.close()
                return
            if failed is not None and messages:
                lost = self.dropped - dropped_before
                log.warning("babysit: the message queue %s answers again after %.0f s; %d live messages for "
                            "the other server processes were dropped, their viewers are told to resync",
                            shown(self.redis_url), time.monotonic() - failed, lost)
                failed = None
                self._publish_resync(client)

    def _waiting(self) -> list:
        """The next message (waiting for one) and every one behind it, up to :data:`PUBLISH_BATCH`;
        a ``None`` (close) ends the list."""
        out = [self._outbox.get()]
        while out[-1] is not None and len(out) < PUBLISH_BATCH:
            try:
                out.append(self._outbox.get_nowait())
            except queue.Empty:
                break
        return out

    def _drop(self) -> None:
        with self._dropped_lock:
            self.dropped += 1

    def _publish_resync(self, client) -> None:
        """Tell the other processes' viewers to reload from REST (what we published was lost)."""
        message = {"method": "emit", "event": protocol.RESYNC, "binary": False, "namespace":
                   protocol.DASHBOARD_NAMESPACE, "room": None, "skip_sid": None, "callback": None,
                   "data": [{"reason": "live events from another server process were dropped while the "
                                       "message queue did not answer; reload from REST"}],
                   "host_id": self.host_id}
        try:
            client.publish(self.channel, self.json.dumps(message))
        except Exception:  # noqa: BLE001 - gone again: the next recovery says it
            pass

    # ------------------------------------------------------------------ listening

    def initialize(self) -> None:
        """At the first connection: subscribe now (so that a stop published right after this
        process's first trainer connected reaches it), then start python-socketio's listener."""
        try:
            self._subscribe()
        except Exception:  # noqa: BLE001 - the listener says it and tries again
            self.connected = False
        super().initialize()

    def _subscribe(self) -> None:
        self._redis_connect()
        self.pubsub.subscribe(self.channel)

    def _redis_listen_with_retries(self):
        """python-socketio's listening loop, polling so that :meth:`close` ends it, saying an
        outage once, and telling this process's viewers to resync after one."""
        retry, failed = 1.0, None
        while not self._closing.is_set():
            try:
                if not self.connected:
                    self._subscribe()
                    if failed is not None:
                        log.warning("babysit: listening to the message queue %s again after %.0f s; this "
                                    "process's viewers are told to resync", shown(self.redis_url),
                                    time.monotonic() - failed)
                        self._resync_here()
                        retry, failed = 1.0, None
                message = self.pubsub.get_message(timeout=LISTEN_POLL_SECONDS)
            except Exception as exc:  # noqa: BLE001 - Redis went away: try again, backing off
                if failed is None:
                    failed = time.monotonic()
                    log.warning("babysit: lost the message queue %s (%s: %s); this process's viewers miss "
                                "the other processes' events until it answers", shown(self.redis_url),
                                type(exc).__name__, exc)
                self.connected = False
                self._closing.wait(retry)
                retry = min(2 * retry, MAX_RETRY_SECONDS)
                continue
            if message is not None:
                yield message
        raise _Closed

    def _resync_here(self) -> None:
        fanout.for_server(self.server).emit(
            protocol.RESYNC, {"reason": "live events from the other server processes were missed while the "
                                        "message queue did not answer; reload from REST"},
            to=None, namespace=protocol.DASHBOARD_NAMESPACE)

    def _thread(self) -> None:
        try:
            super()._thread()
        except _Closed:
            pass

    # ------------------------------------------------------------------ lifecycle

    def close(self, timeout: float = 2.0) -> None:
        """Stop publishing and listening (the server stops); what is still in the outbox is
        published first, for at most ``timeout`` seconds."""
        if self._closing.is_set():
            return
        self._closing.set()
        publisher = self._publisher
        if publisher is not None:
            try:
                self._outbox.put(None, timeout=timeout)
            except queue.Full:
                pass
            publisher.join(timeout)
        listener = getattr(self, "thread", None)  # python-socketio's, once initialized
        if listener is not None:
            listener.join(LISTEN_POLL_SECONDS + ANSWER_TIMEOUT)
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except Exception:  # noqa: BLE001 - already gone
                pass


def client_manager(url: str | None):
    """The client manager of a server: bounded local delivery, through Redis at ``url`` if given."""
    if url is None:
        return BoundedManager()
    check_reachable(url)
    return RedisQueueManager(url)
