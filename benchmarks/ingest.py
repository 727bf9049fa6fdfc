"""How many events per second does the server commit and fan out? (issue 3's ingest figure)

A real server (``babysit serve``'s app under gunicorn's gevent worker, in a subprocess,
as users run it) on a loopback port; ``--trainers`` python-socketio clients each send
batches of ``--batch`` scalar events (the size a trainer's writer sends at most) and wait
for each acknowledgement, which the server gives after the batch is committed to SQLite and
emitted to the run's dashboard room, where one browser-like client listens and counts.
The figure is events acknowledged per second of wall time, with the count the listener
received as a check that the fan-out kept up.

Run: ``python benchmarks/ingest.py`` (about 20 s); ``--events`` to change the total.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import socketio

from monitor import codec
from monitor.events import Event, Kind, Scalars


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batches(run: str, total: int, size: int) -> list[str]:
    events = [Event(run, i, i, 1e9 + i, Kind.SCALARS, Scalars({"loss": 1.0 / (i + 1)})) for i in range(total)]
    return [codec.dumps([e.to_dict() for e in events[i:i + size]]) for i in range(0, total, size)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in all (default: 200000)")
    parser.add_argument("--batch", type=int, default=2000, help="events per batch (default: 2000)")
    parser.add_argument("--trainers", type=int, default=2, help="clients sending at once (default: 2)")
    args = parser.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="babysit-ingest-") as logdir:
        server = subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve", "--port", str(port),
                                   "--logdir", logdir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(200):
                try:
                    with urllib.request.urlopen(url + "/api/runs", timeout=1) as response:
                        response.read()
                    break
                except OSError:
                    time.sleep(0.1)
            per_trainer = args.events // args.trainers
            work = [batches(f"bench-{i}", per_trainer, args.batch) for i in range(args.trainers)]
            received = [0]
            listener = socketio.Client()

            @listener.on("events", namespace="/dashboard")
            def count(message):
                received[0] += message["events"].count('"seq":')  # one a event (JSON escapes a quote inside a string)

            listener.connect(url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=10)
            for i in range(args.trainers):
                listener.call("join", f"bench-{i}", namespace="/dashboard", timeout=10)
            clients = []
            for _ in range(args.trainers):
                c = socketio.Client()
                c.connect(url, namespaces=["/ingest"], transports=["websocket"], wait_timeout=10)
                clients.append(c)
            acked = [0] * args.trainers

            def send(i):
                for text in work[i]:
                    ack = clients[i].call("batch", text, namespace="/ingest", timeout=60)
                    acked[i] += ack["stored"]

            threads = [threading.Thread(target=send, args=(i,)) for i in range(args.trainers)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            deadline = time.monotonic() + 30
            while received[0] < sum(acked) and time.monotonic() < deadline:
                time.sleep(0.05)
            for c in clients:
                c.disconnect()
            listener.disconnect()
        finally:
            server.terminate()
            _, log = server.communicate(timeout=20)
    dropped = log.count("dropped a live viewer")
    total = sum(acked)
    print(f"{os.cpu_count()} CPUs; {args.trainers} trainers x {per_trainer} scalar events in batches of "
          f"{args.batch}, gunicorn gevent worker, SQLite WAL")
    print(f"committed and acknowledged: {total} events in {elapsed:.2f} s = {total / elapsed:,.0f} events/s; "
          f"fanned out to the dashboard room: {received[0]} ({received[0] / max(total, 1):.0%})"
          + (f"; the listener was dropped {dropped} time(s) for falling behind (the server's bound on what a "
             "viewer may have waiting: web/fanout.py)" if dropped else ""))
    print(f"issue 3 target: >= 20,000 scalar events/s: {'met' if total / elapsed >= 20_000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
