"""Many trainers, many viewers, several server processes: what is committed, fanned out, and how fast.

The scaled-out shape of ARCHITECTURE.md, all real and on loopback: PostgreSQL (durable
defaults: fsync and synchronous commit on) and Redis started here (``tests/services.py``,
the servers the tests start), ``--processes`` ``babysit serve`` processes sharing both
(``--store``, ``--message-queue``), one process of ``--trainers`` trainers and one of
``--viewers`` viewers (asyncio python-socketio clients speaking the real protocol).

* **A trainer** logs ``--rate`` scalar events a second, spread evenly in time (each event's
  ``wall`` is when it was logged), and sends what it logged every ``--interval`` seconds as
  one batch, waiting for the acknowledgement (given after the commit) before the next, as
  the trainer's sender does; if an acknowledgement is late, the next batch holds more.
  Trainer ``i`` streams run ``load-i`` to server ``i % processes``.
* **A viewer** joins one run's room on ``/dashboard``; the viewers of a run are spread over
  the server processes, so most deliveries cross the message queue. Each notes, for every
  event, its arrival minus its ``wall`` (one machine, one clock), and every seq it received.
* **Checked**: the store holds every seq each trainer had acknowledged, exactly once
  (``count`` = ``count distinct`` = ``max + 1``); every viewer got every seq of its run from
  its first, once and in order (a viewer the server dropped for falling behind says so).
* **Figures**: events committed per second (acknowledged, over the sending time); event
  deliveries to viewers per second; ``log()`` -> viewer latency p50 / p95 / max; peak RSS
  and CPU seconds of each server process.

Run: ``python benchmarks/scale_out.py`` (50 trainers x 1,000 events/s, 100 viewers, 2
processes, 20 s); ``--grid`` for the growth table of benchmarks/README.md. The test suite
runs the same code briefly (tests/test_scale_out_load.py) for the nothing-lost checks.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the servers the tests start

#: Seconds between starting the trainers' process and their first batch (they connect meanwhile).
START_DELAY = 2.0
#: One scalar event on the wire, as monitor.codec writes it (built by hand: the load
#: generators must not cost more than what they measure).
_EVENT = ('{{"run":"{run}","seq":{seq},"step":{seq},"wall":{wall!r},"kind":"scalars",'
          '"data":{{"values":{{"loss":{loss!r}}}}}}}')


@dataclass
class LoadResult:
    trainers: int
    viewers: int
    processes: int
    store: str
    seconds: float
    rate: float
    interval: float
    acknowledged: int = 0
    stored: int = 0
    duplicates_stored: int = 0
    missing_stored: int = 0
    batches: int = 0
    deliveries: int = 0
    expected_deliveries: int = 0
    viewer_duplicates: int = 0
    viewer_gaps: int = 0
    viewers_dropped: int = 0
    latency_ms: dict = field(default_factory=dict)
    ack_ms: dict = field(default_factory=dict)
    server_rss_mb: list = field(default_factory=list)
    server_cpu_s: list = field(default_factory=list)
    #: CPU seconds of the rest while the trainers sent: postgres, redis-server, the trainers' and the viewers' processes
    other_cpu_s: dict = field(default_factory=dict)
    send_seconds: float = 0.0
    #: Seconds after the last acknowledgement until the viewers had everything (the fan-out's backlog)
    drain_seconds: float = 0.0

    @property
    def committed_per_s(self) -> float:
        return self.acknowledged / self.send_seconds if self.send_seconds else 0.0

    @property
    def delivered_per_s(self) -> float:
        seconds = self.send_seconds + self.drain_seconds
        return self.deliveries / seconds if seconds else 0.0

    @property
    def lost(self) -> bool:
        return bool(self.missing_stored or self.duplicates_stored or self.viewer_gaps or self.viewer_duplicates
                    or self.deliveries < self.expected_deliveries)


def quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "max": math.nan, "n": 0}
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": pick(0.50) * 1000, "p95": pick(0.95) * 1000, "max": values[-1] * 1000, "n": len(values)}


# ------------------------------------------------------------------------- load generators

async def _trainer(url: str, run: str, rate: float, interval: float, start: float, until: float, out: dict):
    import socketio

    sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.2, reconnection_delay_max=1)
    await sio.connect(url, namespaces=["/ingest"], transports=["websocket"], wait_timeout=20)
    seq, acked, batches, ack_times = 0, 0, 0, []
    await asyncio.sleep(max(0.0, start - time.time()))
    logged_until = time.time()
    while logged_until < until:
        await asyncio.sleep(max(0.0, logged_until + interval - time.time()))
        now = min(time.time(), until)
        n = max(1, round(rate * (now - logged_until)))
        step = (now - logged_until) / n
        text = "[" + ",".join(_EVENT.format(run=run, seq=seq + i, wall=logged_until + (i + 1) * step,
                                            loss=1.0 / (seq + i + 1)) for i in range(n)) + "]"
        sent_at = time.time()
        while True:
            try:
                ack = await sio.call("batch", text, namespace="/ingest", timeout=60)
            except Exception:  # noqa: BLE001 - disconnected: the client reconnects, send it again
                await asyncio.sleep(0.2)
                continue
            if ack.get("ok"):
                break
            await asyncio.sleep(0.2)  # refused for now: the sender keeps it and sends it again
        ack_times.append(time.time() - sent_at)
        seq, acked, batches = seq + n, acked + n, batches + 1
        logged_until = now
    out[run] = {"acked": acked, "last_seq": seq - 1, "batches": batches, "ack": ack_times}
    await sio.disconnect()


async def _viewer(url: str, run: str, out: list, ready: asyncio.Event, joined: list):
    import socketio

    from monitor import codec

    sio = socketio.AsyncClient(reconnection=False)
    seen = {"run": run, "seqs": [], "latency": [], "dropped": False}

    @sio.on("events", namespace="/dashboard")
    async def on_events(message):
        now = time.time()
        for e in codec.loads(message["events"]):
            seen["seqs"].append(e["seq"])
            seen["latency"].append(now - e["wall"])

    @sio.on("resync", namespace="/dashboard")
    async def on_resync(_message):
        seen["dropped"] = True

    await sio.connect(url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=20)
    await sio.call("join", run, namespace="/dashboard", timeout=20)
    joined.append(run)
    out.append(seen)
    await ready.wait()
    await sio.disconnect()


def _trainers_main(spec: dict) -> None:
    out: dict = {}

    async def main():
        await asyncio.gather(*(_trainer(spec["urls"][i % len(spec["urls"])], f"load-{i}", spec["rate"],
                                        spec["interval"], spec["start"], spec["until"], out)
                               for i in range(spec["trainers"])))

    asyncio.run(main())
    out["_cpu"] = time.process_time()
    print(json.dumps(out), flush=True)


def _viewers_main(spec: dict) -> None:
    out: list = []

    async def main():
        done = asyncio.Event()
        joined: list = []
        tasks = [asyncio.create_task(_viewer(spec["urls"][(j // spec["trainers"]) % len(spec["urls"])],
                                             f"load-{j % spec['trainers']}", out, done, joined))
                 for j in range(spec["viewers"])]
        while len(joined) < spec["viewers"]:
            await asyncio.sleep(0.05)
        print("ready", flush=True)

        async def progress():  # how many deliveries so far, for the run to wait for the fan-out to drain
            while not done.is_set():
                Path(spec["progress"]).write_text(str(sum(len(v["seqs"]) for v in out)))
                await asyncio.sleep(0.25)

        reporter = asyncio.create_task(progress())
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # told to finish
        done.set()
        await asyncio.gather(*tasks, reporter)

    asyncio.run(main())
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ the run

def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"babysit serve at {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"babysit serve at {url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def _services(store: str, processes: int, fsync: bool):
    """(store URL or None, message queue URL or None). ``store``: ``postgresql`` (a server
    started here), ``sqlite``, or the URL of a PostgreSQL database to use."""
    from services import postgres_server, redis_server

    with contextlib.ExitStack() as stack:
        store_url = store if store.startswith("postgresql://") else None
        if store == "postgresql":
            settings = {} if fsync else {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
            store_url = stack.enter_context(postgres_server(**settings)).create_database("load")
        queue = stack.enter_context(redis_server()) if processes > 1 else None
        yield store_url, queue


def _python_of(child: str, spec: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, child, json.dumps(spec)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, **popen)


def run_load(*, trainers: int = 50, viewers: int = 100, processes: int = 2, rate: float = 1000.0,
             interval: float = 0.05, seconds: float = 20.0, store: str = "postgresql", fsync: bool = True
             ) -> LoadResult:
    """One load run (see the module doc); the result with its checks and figures."""
    import psutil

    from services import free_port, stop

    result = LoadResult(trainers, viewers, processes, store, seconds, rate, interval)
    with _services(store, processes, fsync) as (store_url, queue), \
            tempfile.TemporaryDirectory(prefix="babysit-load-") as logdir:
        servers, urls, logs, children = [], [], [], []
        try:
            for _ in range(processes):
                port = free_port()
                cmd = [sys.executable, "-m", "monitor.cli", "serve", "--port", str(port), "--logdir", logdir,
                       "--lost-after", "600"]
                cmd += ["--store", store_url] if store_url else []
                cmd += ["--message-queue", queue] if queue else []
                log = open(Path(logdir) / f"serve-{port}.log", "w")  # noqa: SIM115 - closed with the server
                servers.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
                logs.append(log)
                urls.append(f"http://127.0.0.1:{port}")
            for url, server in zip(urls, servers):
                _wait_healthy(url, server)
            # babysit serve is gunicorn: its master and the worker that serves
            watched = [[psutil.Process(s.pid), *psutil.Process(s.pid).children(recursive=True)] for s in servers]
            progress = Path(logdir) / "delivered"
            spec = {"urls": urls, "trainers": trainers, "viewers": viewers, "rate": rate, "interval": interval,
                    "progress": str(progress)}
            viewer_proc = _python_of("_viewers", spec, stdin=subprocess.PIPE)
            children.append(viewer_proc)
            if viewer_proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the viewers did not join their rooms")
            start = time.time() + START_DELAY  # every trainer connected by then
            spec.update(start=start, until=start + seconds)
            trainer_proc = _python_of("_trainers", spec)
            children.append(trainer_proc)
            peaks = [0.0] * processes
            sampling = threading.Event()

            def sample():
                while not sampling.wait(0.5):
                    for i, family in enumerate(watched):
                        with contextlib.suppress(psutil.Error):
                            peaks[i] = max(peaks[i], max(p.memory_info().rss for p in family) / 2**20)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            def cpu(family):
                total = 0.0
                for p in family:
                    with contextlib.suppress(psutil.Error):
                        total += sum(p.cpu_times()[:2])
                return total

            cpu_before = [cpu(family) for family in watched]
            others = {"postgres": _named("postgres"), "redis": _named("redis-server"),
                      "trainers": [psutil.Process(trainer_proc.pid)], "viewers": [psutil.Process(viewer_proc.pid)]}
            others_before = {role: {p.pid: cpu([p]) for p in family} for role, family in others.items()}
            sent = json.loads(trainer_proc.stdout.readline())
            trainers_cpu = sent.pop("_cpu")
            trainer_proc.wait(30)
            result.send_seconds = time.time() - start
            result.acknowledged = sum(r["acked"] for r in sent.values())
            result.batches = sum(r["batches"] for r in sent.values())
            result.ack_ms = quantiles([t for r in sent.values() for t in r["ack"]])
            result.expected_deliveries = sum(sent[f"load-{j % trainers}"]["acked"] for j in range(viewers))
            _drain(progress, result.expected_deliveries)
            result.drain_seconds = round(time.time() - start - result.send_seconds, 1)
            result.server_cpu_s = [round(cpu(family) - before, 1) for family, before in zip(watched, cpu_before)]
            result.other_cpu_s = {role: round(sum(max(0.0, cpu([p]) - before[p.pid]) for p in others[role]
                                                  if p.pid in before), 1) for role, before in others_before.items()}
            result.other_cpu_s["trainers"] = round(trainers_cpu, 1)  # its own count: it has exited
            viewer_proc.stdin.write("\n")
            viewer_proc.stdin.flush()
            seen = json.loads(viewer_proc.stdout.readline())
            viewer_proc.wait(30)
            sampling.set()
            result.server_rss_mb = [round(p, 1) for p in peaks]
            _check_viewers(result, seen, sent)
            _check_store(result, store_url or logdir, sent)
        finally:
            for child in children:
                stop(child)
                for pipe in (child.stdin, child.stdout):
                    if pipe is not None:
                        pipe.close()
            for server in servers:
                stop(server)
            for log in logs:
                log.close()
    return result


#: Seconds the fan-out may take to drain after the trainers stop (what is late is not lost).
DRAIN_TIMEOUT = 120.0


def _drain(progress: Path, expected: int) -> None:
    """Wait until the viewers received every delivery, or their count stopped growing for 3 s."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            count = int(progress.read_text() or 0)
        except (OSError, ValueError):
            count = 0
        if count >= expected:
            return
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > 3.0:
            return
        time.sleep(0.25)


def _named(name: str) -> list:
    import psutil

    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == name]


def _check_viewers(result: LoadResult, seen: list, sent: dict) -> None:
    latencies = []
    for viewer in seen:
        seqs = viewer["seqs"]
        result.deliveries += len(seqs)
        result.viewer_duplicates += len(seqs) - len(set(seqs))
        expected = sent[viewer["run"]]["last_seq"] + 1
        result.viewer_gaps += expected - len(set(seqs)) if not viewer["dropped"] else 0
        result.viewers_dropped += viewer["dropped"]
        latencies += viewer["latency"]
    result.latency_ms = quantiles(latencies)


def _check_store(result: LoadResult, where: str, sent: dict) -> None:
    from monitor.store import open_store

    with open_store(where) as store:
        for run, r in sent.items():
            rows = store._query("SELECT count(*), count(DISTINCT seq), coalesce(max(seq), -1) FROM events "
                                "WHERE run = ?", (run,))
            count, distinct, last = rows[0]
            result.stored += distinct
            result.duplicates_stored += count - distinct
            result.missing_stored += max(0, r["last_seq"] + 1 - distinct) + max(0, last - r["last_seq"])


# ------------------------------------------------------------------------------ printing

def report(r: LoadResult) -> str:
    ok = "nothing lost, nothing duplicated" if not r.lost else (
        f"LOST OR DUPLICATED: store missing {r.missing_stored}, duplicated {r.duplicates_stored}; viewers: "
        f"{r.deliveries}/{r.expected_deliveries} delivered, {r.viewer_gaps} gaps, {r.viewer_duplicates} duplicates, "
        f"{r.viewers_dropped} dropped")
    return "\n".join([
        f"{os.cpu_count()} CPUs; {r.trainers} trainers x {r.rate:,.0f} events/s (a batch every "
        f"{r.interval * 1000:.0f} ms), {r.viewers} viewers, {r.processes} server process(es), store {r.store}, "
        f"{r.seconds:.0f} s",
        f"committed and acknowledged: {r.acknowledged:,} events in {r.batches:,} batches, "
        f"{r.committed_per_s:,.0f} events/s; ack p50 {r.ack_ms['p50']:.1f} ms, p95 {r.ack_ms['p95']:.1f} ms",
        f"fanned out: {r.deliveries:,} deliveries of {r.expected_deliveries:,}, {r.delivered_per_s:,.0f} events/s "
        f"(the last {r.drain_seconds:.1f} s after the last acknowledgement)",
        f"log() -> viewer: p50 {r.latency_ms['p50']:.1f} ms, p95 {r.latency_ms['p95']:.1f} ms, "
        f"max {r.latency_ms['max']:.1f} ms",
        f"server processes (worker): peak RSS {', '.join(f'{m:.0f}' for m in r.server_rss_mb)} MB; "
        f"CPU {', '.join(f'{c:.1f}' for c in r.server_cpu_s)} s; others' CPU: "
        + ", ".join(f"{role} {c:.1f} s" for role, c in r.other_cpu_s.items()),
        ok])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", type=int, default=50)
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0, help="scalar events a second per trainer")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between a trainer's batches")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--no-fsync", action="store_true", help="PostgreSQL without fsync (not durable)")
    parser.add_argument("--grid", action="store_true", help="the growth table: trainers, viewers, processes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    shapes = [(args.trainers, args.viewers, args.processes)]
    if args.grid:
        shapes = [(10, 20, 2), (25, 50, 2), (50, 100, 2), (50, 0, 2), (50, 200, 2), (50, 100, 1), (50, 100, 3)]
    for trainers, viewers, processes in shapes:
        r = run_load(trainers=trainers, viewers=viewers, processes=processes, rate=args.rate, interval=args.interval,
                     seconds=args.seconds, store=args.store, fsync=not args.no_fsync)
        print(json.dumps({**asdict(r), "committed_per_s": r.committed_per_s, "delivered_per_s": r.delivered_per_s})
              if args.json else report(r), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("_trainers", "_viewers"):
        {"_trainers": _trainers_main, "_viewers": _viewers_main}[sys.argv[1]](json.loads(sys.argv[2]))
    else:
        sys.exit(main())
