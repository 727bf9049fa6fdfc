"""The ``babysit`` command: the composition root that joins trainer_hooks, monitor and web.

Each sub-command imports what it needs inside its own function, so ``babysit --help`` and
``babysit runs`` start without loading torch, and importing this module keeps the rule of
the ``monitor`` package (no torch, no web framework). Problems a user can fix (an unknown
run, a bad option) print one line to stderr and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from monitor.tables import format_table

USAGE_ERROR = 2  # the exit status argparse uses for bad arguments; we use it for every user error


class CliError(Exception):
    """A problem the user can fix; :func:`main` prints it as one line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage block before it)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------- argument types
# Each says what it expects and shows what came; argparse puts the option in front
# ("argument --port: ...") and _Parser prints it as one line, exit status 2.

def _whole(minimum: int | None, unit: str, example: int):
    """A whole number of ``unit`` >= ``minimum`` (None: the range is checked later, by the
    options it goes to, which know it)."""
    bound = f" >= {minimum}" if minimum is not None else ""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"expected a whole number{' of ' + unit if unit else ''}{bound}, "
                                             f"e.g. {example}; got {text!r}")
        return value
    return whole


def _number(unit: str, example: str, *, minimum: float | None = None, positive: bool = False):
    """A finite number (``positive``: above 0; ``minimum``: at least that)."""
    bound = " above 0" if positive else f" >= {minimum:g}" if minimum is not None else ""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"expected {unit}{bound}, e.g. {example}; got {text!r}")
        return value
    return number


def _port(free: bool, example: int = 5000):
    """A TCP port, 1..65535 (``free``: 0 too, for a free one)."""
    def port(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not (0 if free else 1) <= value <= 65535:
            raise argparse.ArgumentTypeError("expected a port number 1..65535" + (" (or 0 for a free one)" if free
                                             else "") + f", e.g. {example}; got {text!r}")
        return value
    return port


def _directory(text: str) -> str:
    """A directory path (created where needed); an existing file in its place is refused."""
    for place in (Path(text), *Path(text).parents):
        if place.exists():
            if not place.is_dir():
                where = "which is a file" if place == Path(text) else f"and {str(place)!r} on its way is a file"
                raise argparse.ArgumentTypeError(f"expected a directory, got {text!r}, {where}: give a directory "
                                                 "path, e.g. runs")
            break
    return text


def _token(text: str) -> str:
    """The server's shared secret (never shown back: the message may reach a log)."""
    if not text:
        raise argparse.ArgumentTypeError("expected the server's shared secret, got an empty one: give a "
                                         "non-empty token, or leave --token out to use $BABYSIT_TOKEN")
    return text


def _server(text: str) -> str:
    """The URL of ``babysit serve``; the rule is the one watch() applies (monitor.protocol)."""
    from monitor.protocol import server_url_problem

    problem = server_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"expected the URL of `babysit serve`, http(s)://host:port; "
                                         f"got {text!r}: {problem}")
    return text.strip()


# ------------------------------------------------------------------------------- demo

#: The served demo's pause per step: its 360 steps then take about 20 s instead of 2,
#: long enough to open the page and watch the curves grow.
DEMO_LIVE_STEP_DELAY = 0.05
#: ``--pathology`` names: the keys of trainer_hooks.demo.PATHOLOGIES (which imports torch),
#: kept equal by a test.
DEMO_PATHOLOGIES = ("divergence", "dead_relu", "overfitting", "input_not_normalized", "saturation", "plateau",
                    "update_ratio", "vanishing_gradient", "exploding_gradient", "initial_loss")

def _add_demo(commands) -> None:
    # Defaults live in trainer_hooks.demo.DemoOptions (importing it would load torch);
    # options the user does not give are left out and DemoOptions fills them in. The
    # "(default: ...)" texts are checked against DemoOptions by a test.
    p = commands.add_parser(
        "demo", help="train a small ConvNet on scikit-learn's digits, watched by babysit",
        description="Train a small ConvNet (conv, BatchNorm, ReLU) on scikit-learn's bundled 8x8 digits "
                    "for a few epochs with babysit watching, print one line per epoch, and say where the "
                    "run is stored. Provoke a pathology to see what babysit flags: --pathology NAME picks "
                    "the options (e.g. dead_relu is --init-bias -5, overfitting is --train-size 100 "
                    "--epochs 60 without BatchNorm). "
                    "It stops early when the validation loss stops improving (restoring the best weights) "
                    "or the run diverges. The live dashboard is served on 127.0.0.1 while "
                    "it trains (the URL is printed) and stays up afterwards until Ctrl-C; the run is "
                    "stored under --logdir.",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--pathology", metavar="NAME",
                   help=f"provoke one detector's flag: {', '.join(DEMO_PATHOLOGIES)}; options given "
                        "as well win over the preset's (default: a healthy run)")
    p.add_argument("--lr", type=_number("a learning rate", "0.05", positive=True),
                   help="learning rate (default: 0.05 for sgd, 0.001 for adam)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="sgd (momentum 0.9) or adam (default: sgd)")
    p.add_argument("--epochs", type=_whole(1, "epochs", 8), metavar="N",
                   help="passes over the training images (default: 8)")
    p.add_argument("--batch-size", type=_whole(1, "images", 32), metavar="N", help="images per step (default: 32)")
    p.add_argument("--train-size", type=_whole(None, "images", 1000), metavar="N",
                   help="training images, 1..1437; 360 more are held out for validation (default: all 1437)")
    p.add_argument("--init-bias", type=_number("a finite bias", "-5"), metavar="B",
                   help="start the bias of every layer that feeds a ReLU at this value; -5 kills the ReLUs "
                        "(default: PyTorch's init)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="feed raw pixel values instead of zero mean, unit variance (default: normalize)")
    p.add_argument("--patience", type=_whole(0, "epochs", 5), metavar="N",
                   help="stop after N epochs without a better validation loss and restore the best weights "
                        "(default: 5)")
    p.add_argument("--no-early-stopping", dest="patience", action="store_const", const=None,
                   help="train all epochs, even through a diverged loss (default: stop early)")
    p.add_argument("--seed", type=_whole(0, "", 0), metavar="N",
                   help="seed for the split, the initial weights and the batch order (default: 0)")
    p.add_argument("--every", type=_every, metavar="N", help="sample the layer statistics every N steps, or 'auto' "
                                                            "to let babysit size the interval (default: 5)")
    p.add_argument("--run", metavar="NAME", help="run name; the stored run id adds the time "
                                                 "(default: digits-cnn)")
    p.add_argument("--logdir", type=_directory, metavar="DIR", help="where runs are stored (default: runs)")
    p.add_argument("--no-serve", dest="serve", action="store_false",
                   help="train without the live dashboard (headless; the run is stored either way) "
                        "(default: serve on 127.0.0.1 and keep serving after training until Ctrl-C)")
    p.add_argument("--port", type=_port(free=True), metavar="N", help="the dashboard's port (default: a free one)")
    p.add_argument("--step-delay", type=_number("seconds", "0.05", minimum=0), metavar="S",
                   help=f"pause after each step so the run can be watched live (default: "
                        f"{DEMO_LIVE_STEP_DELAY} while serving, 0 with --no-serve)")
    p.set_defaults(func=_demo)


def _every(text: str) -> int | None:
    """``--every``: a whole number of steps, or ``auto`` (None: the automatic schedule)."""
    if text == "auto":
        return None
    try:
        every = int(text)
    except ValueError:
        every = 0
    if every < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps >= 1, e.g. 5, or 'auto' to let "
                                         f"babysit size the interval; got {text!r}")
    return every


def _demo(args: argparse.Namespace) -> int:
    from trainer_hooks.demo import DemoOptions, run_demo, with_pathology

    options = vars(args).copy()
    serve = options.pop("serve", True)
    port = options.pop("port", 0)
    pathology = options.pop("pathology", None)
    for key in ("func", "command"):
        options.pop(key, None)
    if serve:
        options.setdefault("step_delay", DEMO_LIVE_STEP_DELAY)
    try:
        demo_options = DemoOptions(**options) if pathology is None else with_pathology(pathology, **options)
    except ValueError as exc:  # DemoOptions names the field ("train_size: ..."); name the option
        field, _, rest = str(exc).partition(":")
        raise CliError(f"--{field.replace('_', '-')}:{rest}" if field in options or rest else str(exc)) from None
    if not serve:
        run_demo(demo_options)
        return 0
    try:
        server = start_dashboard(demo_options.logdir, port)
    except OSError as exc:  # the port is taken
        raise CliError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc})") from None
    except ValueError as exc:  # a BABYSIT_* alert variable that cannot work: it is named
        raise CliError(str(exc)) from None
    print(f"babysit demo: live dashboard at {server.url}/", flush=True)
    try:
        run_demo(replace(demo_options, server=server.url))
        print(f"babysit demo: training done; the dashboard stays up at {server.url}/ "
              "(press Ctrl-C to stop it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("babysit demo: stopped", flush=True)
    finally:
        server.stop()
    return 0


def start_dashboard(logdir: str | Path = "runs", port: int = 0):
    """The embedded dashboard (``babysit demo``, ``watch(dashboard=True)``): the server of
    ``babysit serve`` in a daemon thread of this process, on 127.0.0.1 (this machine only,
    so no token) and ``port`` (0: a free one). Returns a ``web.serving.RunningServer``
    (``.url``, ``.stop()``). Werkzeug's threaded server, not gunicorn: it runs inside the
    training process, which must not fork or be monkey-patched. Alert emails are configured
    by the ``BABYSIT_*`` variables of ``babysit serve`` (docs/alerts.md); a bad one raises a
    ValueError that names it."""
    import os

    from monitor.alert_config import alert_config
    from web.app import ServerConfig, create_app
    from web.serving import serve_in_thread

    config = ServerConfig(logdir=Path(logdir), alerts=alert_config(None, os.environ))
    return serve_in_thread(create_app(config), "127.0.0.1", port)


# ----------------------------------------------------------------------------- export

def _add_export(commands) -> None:
    p = commands.add_parser(
        "export", help="write a stored run as CSV or Parquet files",
        description="Write a stored run's tables (scalars, layer statistics, flags, ...) as one file each, "
                    "and print the paths written.")
    p.add_argument("run", metavar="RUN", help="the run id, as `babysit runs` lists it, or its name (the newest run "
                                              "of that name)")
    p.add_argument("--logdir", type=_directory, metavar="DIR", default="runs",
                   help="where runs are stored (default: runs)")
    p.add_argument("--format", dest="fmt", choices=("csv", "parquet"), default="csv",
                   help="file format (default: csv)")
    p.add_argument("--out", type=_directory, metavar="DIR", default=None,
                   help="directory to write into (default: chosen by the exporter, printed at the end; "
                        "required with --store)")
    _add_read_store_option(p)
    p.set_defaults(func=_export)


def _add_read_store_option(p) -> None:
    p.add_argument("--store", metavar="URL", default=None,
                   help="read the runs from PostgreSQL, as `babysit serve --store` keeps them: "
                        "postgresql://user:password@host:port/database (default: $BABYSIT_STORE, else --logdir)")


def _read_store(args: argparse.Namespace) -> str:
    """Where a reading command finds the runs: the --store URL (or $BABYSIT_STORE), else the logdir."""
    import os

    from monitor.store import is_database_url

    url = args.store or os.environ.get("BABYSIT_STORE") or None
    if url is None:
        _require_logdir(args.logdir)
        return args.logdir
    if not is_database_url(url):
        raise CliError(f"--store: expected a postgresql://user:password@host:port/database URL, got {url!r}")
    return url


def _export(args: argparse.Namespace) -> int:
    where = _read_store(args)
    if where != args.logdir and args.out is None:
        raise CliError("export --store: give the folder to write into with --out DIR")
    from monitor.export import export
    from monitor.store import StoreUnavailable

    try:
        done = export(args.run, where, args.fmt, args.out)
    except StoreUnavailable as exc:
        raise CliError(str(exc)) from None
    except (LookupError, ValueError) as exc:  # an unknown run or a format the exporter refuses
        raise CliError(_message(exc)) from None
    if done.note:
        print(f"babysit: {done.note}", file=sys.stderr)
    for path in done.paths:
        print(path)
    if done.empty:
        print(f"babysit: run {done.run} has no {', '.join(done.empty)}: not written", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------- runs

RUN_COLUMNS = ("run", "name", "status", "started", "updated", "last_step", "last_loss", "flags")
RUN_HEADERS = ("RUN", "NAME", "STATUS", "STARTED", "UPDATED", "STEP", "LOSS", "FLAGS")


def _add_runs(commands) -> None:
    p = commands.add_parser("runs", help="list the stored runs",
                            description="List the runs stored under --logdir, newest first.")
    p.add_argument("--logdir", type=_directory, metavar="DIR", default="runs",
                   help="where runs are stored (default: runs)")
    _add_read_store_option(p)
    p.set_defaults(func=_runs)


def _runs(args: argparse.Namespace) -> int:
    where = _read_store(args)
    from monitor.store import StoreUnavailable, open_store

    try:
        with open_store(where) as store:
            runs = list(store.runs())
            location = store.location if where != args.logdir else args.logdir
    except StoreUnavailable as exc:
        raise CliError(str(exc)) from None
    if not runs:
        print(f"no runs stored in {location}")
        return 0
    rows = [[_cell(getattr(r, c, "")) for c in RUN_COLUMNS] for r in runs]
    print(format_table(RUN_HEADERS, rows))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        if value > 1e9 and value < 1e10:  # unix seconds (2001..2286), the store's wall clock
            return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return str(len(value))
    return str(getattr(value, "value", value))  # enums show their value


# ------------------------------------------------------------------------------- main

def _require_logdir(logdir: str) -> None:
    if not Path(logdir).is_dir():
        raise CliError(f"no run store at {logdir!r}: the directory does not exist "
                       f"(pass --logdir DIR, or create a run with `babysit demo`)")


# ------------------------------------------------------------------------------- serve

def _add_serve(commands) -> None:
    p = commands.add_parser(
        "serve", help="the dashboard server that training processes stream to",
        description="Serve the dashboard and the ingest channel for training processes (watch(server=URL)) "
                    "on HOST:PORT, storing runs under --logdir. Beyond 127.0.0.1 a token is required "
                    "(--token or BABYSIT_TOKEN): training processes and the stop button must present it.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port(free=False), default=5000, help="port (default: 5000)")
    p.add_argument("--logdir", type=_directory, metavar="DIR", default="runs",
                   help="where runs are stored (default: runs)")
    p.add_argument("--store", metavar="URL", default=None,
                   help="keep runs in PostgreSQL, shared by several server processes: "
                        "postgresql://user:password@host:port/database (needs babysit[scale]; default: "
                        "$BABYSIT_STORE, else SQLite under --logdir)")
    p.add_argument("--message-queue", metavar="URL", default=None,
                   help="share live channels with the other server processes through Redis: "
                        "redis://host:port/N (needs babysit[scale]; default: $BABYSIT_MESSAGE_QUEUE, else none)")
    p.add_argument("--token", type=_token, default=None,
                   help="shared secret for ingest and stop (default: $BABYSIT_TOKEN)")
    p.add_argument("--allowed-origin", action="append", metavar="ORIGIN", default=None,
                   help="a browser origin besides the server's own whose pages may open its sockets, as "
                        "scheme://host[:port], e.g. the https:// address of a reverse proxy; repeat it or give a "
                        "comma list (default: $BABYSIT_ALLOWED_ORIGINS, else the server's own origin only)")
    p.add_argument("--connections", "--threads", dest="connections", type=_whole(1, "connections", 1000),
                   default=1000, metavar="N",
                   help="connections served at once: training processes, browser tabs, REST requests "
                        "(default: 1000)")
    p.add_argument("--lost-after", type=_number("seconds", "30", positive=True), default=None, metavar="S",
                   help="mark a run lost when its training process has sent nothing, not even its heartbeat "
                        "(every 5 s), for S seconds; it is marked running again if it comes back (default: 30)")
    _add_alert_options(p)
    p.set_defaults(func=_serve)


def _add_alert_options(p) -> None:
    """``babysit serve``'s alert email options; each falls back to its ``BABYSIT_*`` variable
    (monitor.alert_config, docs/alerts.md). Defaults are None here so that a variable can fill in."""
    from monitor import alert_config as ac

    g = p.add_argument_group(
        "alert emails", "Email flags and runs that diverge or crash (docs/alerts.md). Off until an SMTP host "
        "and a recipient are given. Each option falls back to the variable named after it "
        "(--smtp-host: BABYSIT_SMTP_HOST). The password is read from $BABYSIT_SMTP_PASSWORD only.")
    g.add_argument("--smtp-host", metavar="HOST", help="the SMTP server")
    g.add_argument("--smtp-port", type=_port(free=False, example=587), metavar="N",
                   help="its port (default: 587 for starttls, 465 for ssl, 25 for none)")
    g.add_argument("--smtp-security", choices=ac.SECURITY_MODES,
                   help="starttls (submission), ssl (implicit TLS) or none (a local relay) (default: starttls)")
    g.add_argument("--smtp-user", metavar="USER", help="log in as USER, with the password from the environment")
    g.add_argument("--smtp-password-env", metavar="VAR",
                   help=f"the variable holding the password (default: {ac.PASSWORD_ENV})")
    g.add_argument("--smtp-ca-file", metavar="PEM",
                   help="trust these CA certificates instead of the system's (a relay with its own CA)")
    g.add_argument("--smtp-timeout", type=_number("seconds", "30"), metavar="S",
                   help=f"seconds to wait for the SMTP server (default: {ac.SMTP_TIMEOUT:g})")
    g.add_argument("--mail-from", metavar="ADDRESS", help="the sender (default: --smtp-user if it is an address)")
    g.add_argument("--mail-to", action="append", metavar="ADDRESS",
                   help="a recipient; repeat it or give a comma list")
    g.add_argument("--alert-severity", choices=[s.value for s in ac.Severity],
                   help=f"the least severe flag that is emailed (default: {ac.ALERT_SEVERITY.value})")
    g.add_argument("--alert-on-end", action=argparse.BooleanOptionalAction, default=None,
                   help="email when a run ends diverged or crashed (default: yes)")
    g.add_argument("--alert-cooldown", type=_number("seconds", "30"), metavar="S",
                   help=f"seconds in which a repeat of the same run, kind and layer sends nothing "
                        f"(default: {ac.ALERT_COOLDOWN:g})")
    g.add_argument("--alert-gather", type=_number("seconds", "30"), metavar="S",
                   help=f"seconds an alert waits for others to share its email (default: {ac.ALERT_GATHER:g})")
    g.add_argument("--alert-interval", type=_number("seconds", "30"), metavar="S",
                   help=f"seconds between two emails at least (default: {ac.ALERT_INTERVAL:g})")
    g.add_argument("--alert-tries", type=_whole(1, "tries", 3), metavar="N",
                   help=f"tries per email while the SMTP server is unreachable or busy (default: {ac.ALERT_TRIES})")
    g.add_argument("--alert-backoff", type=_number("seconds", "30"), metavar="S",
                   help=f"seconds before the second try, doubled for each next (default: {ac.ALERT_BACKOFF:g})")
    g.add_argument("--public-url", metavar="URL",
                   help="the dashboard's address in links, e.g. https://babysit.example.com (default: the address "
                        "each training process reached this server at)")


def _alerts(options: dict, environ) -> object:
    """The alert config of a server (None: alerts off), or a CliError naming the option or variable."""
    from monitor.alert_config import SETTINGS, alert_config

    try:
        return alert_config({k: options.get(k) for k in SETTINGS}, environ)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    import os

    from web.app import ServerConfig
    from web.message_queue import MessageQueueError, check_reachable, shown
    from web.production import serve

    alerts = _alerts(vars(args), os.environ)
    try:
        origins = args.allowed_origin or [os.environ.get("BABYSIT_ALLOWED_ORIGINS", "")]
        config = ServerConfig(logdir=Path(args.logdir), host=args.host,
                              token=args.token or os.environ.get("BABYSIT_TOKEN") or None, alerts=alerts,
                              allowed_origins=[o for text in origins for o in text.split(",") if o.strip()],
                              store=args.store or os.environ.get("BABYSIT_STORE") or None,
                              message_queue=args.message_queue or os.environ.get("BABYSIT_MESSAGE_QUEUE") or None,
                              **({} if args.lost_after is None else {"lost_after": args.lost_after}))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if config.message_queue is not None:  # here, before gunicorn: its worker would print a traceback
        try:
            check_reachable(config.message_queue)
        except MessageQueueError as exc:
            raise CliError(str(exc)) from None
    if config.store is not None:
        from monitor.store.postgres import redact

        where = redact(config.store)
    else:
        where = config.logdir
    print(f"babysit serve: http://{args.host}:{args.port}/  (runs in {where})", flush=True)
    print(f"babysit serve: {alerts.describe()}" if alerts else
          "babysit serve: no alert emails (give --smtp-host and --mail-to, see docs/alerts.md)", flush=True)
    if config.message_queue is not None:
        print(f"babysit serve: live channels shared with the other server processes through "
              f"{shown(config.message_queue)} (docs/scale-out.md)", flush=True)
    serve(config, args.port, args.connections)
    return 0


# ------------------------------------------------------------------------------ replay

def _add_replay(commands) -> None:
    p = commands.add_parser(
        "replay", help="send spooled events of runs that ended before their server answered",
        description="Training processes streaming to a server keep what it has not acknowledged in "
                    "LOGDIR/spool. If a process ended while the server was down, send the rest now; each "
                    "event is stored once however often this runs.")
    p.add_argument("--server", type=_server, required=True, metavar="URL",
                   help="the babysit serve URL, e.g. http://host:5000")
    p.add_argument("--logdir", type=_directory, metavar="DIR", default="runs",
                   help="the training processes' logdir (default: runs)")
    p.add_argument("--token", type=_token, default=None, help="the server's token (default: $BABYSIT_TOKEN)")
    p.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    import os

    from trainer_hooks.stream import replay_spools

    spool = Path(args.logdir) / "spool"
    if not spool.is_dir():
        print(f"nothing spooled under {spool}")
        return 0
    results = replay_spools(args.server, spool, token=args.token or os.environ.get("BABYSIT_TOKEN") or None)
    for run, done in results.items():
        print(f"{run}: {'sent' if done else 'NOT all sent (server unreachable?); run again later'}")
    if not results:
        print(f"nothing spooled under {spool}")
    return 0 if all(results.values()) else 1


# ------------------------------------------------------------------------------- sync

def _add_sync(commands) -> None:
    p = commands.add_parser(
        "sync", help="upload runs recorded offline to a server, each event exactly once",
        description="Upload the runs a logdir holds (its store, babysit.sqlite3, and its spool/ of events a "
                    "server never acknowledged), a spool folder or one spool file (<run>.jsonl) to `babysit "
                    "serve`: every event in seq order, each batch acknowledged after the server committed it. "
                    "The server stores each (run, seq) once, so running sync again sends again and stores "
                    "nothing new. Prints per run the events read, new on the server and already there.")
    p.add_argument("path", metavar="SPOOL_OR_LOGDIR", help="a logdir, a spool folder, or a spool file")
    p.add_argument("--server", type=_server, metavar="URL",
                   help="the babysit serve URL, e.g. http://host:5000 (default: $BABYSIT_SERVER)")
    p.add_argument("--token", type=_token, default=None, help="the server's token (default: $BABYSIT_TOKEN)")
    p.add_argument("--run", action="append", default=[], metavar="ID_OR_NAME",
                   help="upload only this run (its id, or a name: every run of that name); repeat it for more")
    p.add_argument("--dry-run", action="store_true", help="list the runs and batches that would be sent; send nothing")
    p.add_argument("--remove-spool", action="store_true",
                   help="delete a spool file once the server acknowledged every event in it (default: keep it)")
    p.set_defaults(func=_sync)


def _sync(args: argparse.Namespace) -> int:
    import os

    from monitor import sync
    from monitor.store import RunStore, StoreUnavailable
    from monitor.validation import SchemaError

    server = args.server or os.environ.get("BABYSIT_SERVER") or None
    if server is None and not args.dry_run:
        raise CliError("give the server to upload to: --server http://host:5000 (or set $BABYSIT_SERVER)")
    if server is not None and args.server is None:  # the variable's value, held to the option's rule
        try:
            server = _server(server)
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"$BABYSIT_SERVER: {exc}") from None
    try:
        sources = sync.find_sources(args.path)
        stamps = {path: _stamp(path) for path in sources.spools}  # before reading: a trainer may still append
        store = RunStore(sources.store) if sources.store is not None else None
        try:
            every = sync.plan(sources, store)
            chosen = sync.select(every, args.run)
            if args.dry_run:
                return _sync_dry_run(chosen, server)
            return _sync_upload(chosen, every, stamps, server, args.token or os.environ.get("BABYSIT_TOKEN") or None,
                                args.remove_spool)
        finally:
            if store is not None:
                store.close()
    except (sync.SyncError, SchemaError, StoreUnavailable) as exc:
        raise CliError(_message(exc)) from None


def _sync_dry_run(chosen, server: str | None) -> int:
    from trainer_hooks.upload import run_batches

    read = sent = 0
    for entry in chosen:
        batches = list(run_batches(entry))
        count = sum(b.count for b in batches)
        where = ", ".join((["store"] if entry.store is not None else []) + [str(p) for p in entry.spools])
        seqs = f"seqs {batches[0].first_seq}..{batches[-1].last_seq}" if batches else "no events"
        print(f"{entry.run}  {entry.name}: {count} events ({seqs}) in {len(batches)} batches, from {where}")
        read, sent = read + count, sent + len(batches)
    print(f"total: {len(chosen)} runs, {read} events in {sent} batches would be sent"
          f"{' to ' + server if server else ''} (--dry-run: nothing sent)")
    return 0


def _sync_upload(chosen, every, stamps, server: str, token: str | None, remove_spool: bool) -> int:
    from trainer_hooks.upload import Uploader, UploadError

    uploader = Uploader(server, token)
    done: set[str] = set()
    read = new = 0
    try:
        uploader.connect()
        for entry in chosen:
            result = uploader.upload(entry)
            done.add(entry.run)
            read, new = read + result.read, new + result.new
            print(f"{result.run}  {result.name}: {result.read} events read, {result.new} new on the server, "
                  f"{result.already} already there", flush=True)
            if remove_spool:
                for path in entry.spools:
                    if all(other.run in done for other in every if path in other.spools):
                        _remove_spool(path, stamps[path])
    except UploadError as exc:
        print(f"babysit sync: error: {exc}", file=sys.stderr)
        if done:
            print(f"babysit sync: {len(done)} of {len(chosen)} runs were uploaded completely", file=sys.stderr)
        return 1
    finally:
        uploader.close()
    print(f"total: {len(chosen)} runs, {read} events read, {new} new on the server, {read - new} already there")
    return 0


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _remove_spool(path: Path, stamp: tuple[int, int]) -> None:
    """Delete an uploaded spool file and its read position (first: a position without its
    file would make a resumed spool skip lines), unless it changed since it was read."""
    try:
        changed = _stamp(path) != stamp
    except OSError:  # removed meanwhile
        return
    if changed:
        print(f"babysit sync: kept {path}: it changed while it was uploaded (a trainer still writes it?)",
              file=sys.stderr)
        return
    path.with_suffix(".sent").unlink(missing_ok=True)
    path.unlink()
    print(f"babysit sync: removed {path} (every event in it is on the server)")


# -------------------------------------------------------------------------------- run

#: ``babysit run``'s own options that take a value; everything from the script (or
#: ``-m MODULE``) on belongs to the script, options included.
RUN_VALUE_OPTIONS = ("--logdir", "--server", "--token", "--every", "--run", "--sweep")


def _add_run(commands) -> None:
    p = commands.add_parser(
        "run", help="run an unmodified training script, watched by babysit",
        usage="babysit run [--logdir DIR] [--server URL] [--dashboard] [--every N] [--run NAME] [--sweep NAME] "
              "(SCRIPT | -m MODULE) [ARGS ...]",
        description="Run a training script as `python SCRIPT ARGS` (or `python -m MODULE ARGS`) would, with no "
                    "change to it: babysit finds the models it trains and their optimizers through PyTorch's "
                    "global hooks, takes the loss from backward(), and records the run. The script's output, "
                    "exceptions and exit status are its own. `python -m trainer_hooks ...` is the same command.")
    p.add_argument("--logdir", type=_directory, metavar="DIR", help="where runs are stored (default: runs)")
    p.add_argument("--server", type=_server, metavar="URL",
                   help="stream to `babysit serve` at URL (default: $BABYSIT_SERVER, else the local store)")
    p.add_argument("--token", type=_token, metavar="TOKEN", help="the server's token (default: $BABYSIT_TOKEN)")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the live dashboard from this process on 127.0.0.1 while the script runs")
    p.add_argument("--every", type=_every, metavar="N",
                   help="sample the layer statistics every N steps (default: auto, led by diagnosis)")
    p.add_argument("--run", metavar="NAME", help="run name (default: the script's name)")
    p.add_argument("--sweep", metavar="NAME", help="record the run as part of the sweep NAME")
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a module as `python -m MODULE` would")
    p.add_argument("target", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS ...]", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def split_run_argv(argv: Sequence[str]) -> list[str]:
    """``babysit run``'s arguments with ``--`` where the script's begin, so that argparse
    leaves the script's own options (``--lr 3``) to it."""
    argv = list(argv)
    i = 1
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv
        if token == "-m":
            return argv[:i + 2] + ["--"] + argv[i + 2:]
        if not token.startswith("-"):
            return argv[:i] + ["--"] + argv[i:]
        i += 2 if token in RUN_VALUE_OPTIONS else 1
    return argv


def _run(args: argparse.Namespace) -> int:
    watch = {key: value for key in ("logdir", "server", "token") if (value := getattr(args, key)) is not None}
    if args.every is not None:
        watch["every"] = args.every
    if args.dashboard and args.server:
        raise CliError("--dashboard serves from this process: it cannot be combined with --server")
    if args.run is not None:
        from monitor.validation import is_run_id

        if not is_run_id(args.run):
            raise CliError(f"--run: expected 1-100 characters from A-Z a-z 0-9 . _ - (starting with a letter or "
                           f"digit), got {args.run!r}")
    target = list(args.target)
    if target[:1] == ["--"]:  # put there by split_run_argv
        target = target[1:]
    if args.module is None and not target:
        raise CliError("give the script to run (babysit run train.py ARGS...) or a module (-m MODULE ARGS...)")
    if args.module is None and not Path(target[0]).is_file():
        raise CliError(f"no script at {target[0]!r} (give the path of a Python file, or -m MODULE for a module)")
    from trainer_hooks.runner import RunOptions, Target, run

    where = Target(module=args.module, args=tuple(target)) if args.module is not None else \
        Target(path=target[0], args=tuple(target[1:]))
    return run(where, RunOptions(run=args.run, sweep=args.sweep, dashboard=args.dashboard, watch=watch))


# ------------------------------------------------------------------------------ sweep

#: ``babysit sweep``'s default number of trials.
SWEEP_TRIALS = 20


def _add_sweep(commands) -> None:
    p = commands.add_parser(
        "sweep", help="search hyper-parameters: each trial a script run watched by babysit, pruned by diagnosis",
        usage="babysit sweep --space SPEC [--space SPEC ...] [--trials N] [--parallel N] [--sampler random|tpe|grid] "
              "[--sweep NAME] [--storage URL] [options] -- python train.py --lr {lr} ...",
        description="Search hyper-parameters with Optuna, the way the practice notes say: on a log scale, at "
                    "random, coarse to fine. Each trial runs the command after -- under `babysit run`, its "
                    "{name} fields filled in with the trial's values, and is pruned the moment babysit "
                    "diagnoses it hopeless (a divergence, critically dead ReLUs, a loss flat from the start). "
                    "At the end it prints every trial, the best, what pruning saved and the search's advice "
                    "(a best value on the border of its range, a grid, the next finer range as --space "
                    "options to paste). Other processes, on this machine or others, join the same sweep with "
                    "the same --sweep, --space and --storage.")
    p.add_argument("--space", action="append", required=True, metavar="SPEC",
                   help="a dimension, NAME=DIST(ARGS): loguniform(1e-5,1e-1), uniform(0,0.5), logint(16,512), "
                        "int(1,8), choice(32,64,128); repeat for each")
    p.add_argument("--trials", type=_whole(1, "trials", SWEEP_TRIALS), default=SWEEP_TRIALS, metavar="N",
                   help=f"the sweep's trials, shared by every process that joins it (default: {SWEEP_TRIALS})")
    p.add_argument("--parallel", type=_whole(1, "trials", 2), default=1, metavar="N",
                   help="trials this process runs at once (default: 1)")
    p.add_argument("--sampler", choices=("random", "tpe", "grid"), default="random",
                   help="random search (the notes' advice), Optuna's TPE, or a grid (warned against) "
                        "(default: random)")
    p.add_argument("--grid-points", type=_whole(2, "values", 4), default=4, metavar="N",
                   help="values per numeric dimension with --sampler grid (default: 4)")
    p.add_argument("--sweep", metavar="NAME", help="the sweep's name; another process joins it by the same name "
                                                   "(default: sweep-DATE-TIME)")
    p.add_argument("--storage", metavar="URL", help="the study's storage: an SQLite file or URL, or "
                                                   "postgresql://... (default: LOGDIR/sweeps.sqlite3)")
    p.add_argument("--objective", default="val_loss", metavar="NAME",
                   help="the logged metric each trial is judged by, its best value (default: val_loss)")
    p.add_argument("--direction", choices=("minimize", "maximize"), default="minimize",
                   help="minimize a loss, maximize an accuracy (default: minimize)")
    p.add_argument("--no-prune", dest="prune", action="store_false",
                   help="do not prune trials by diagnosis (default: prune on divergence, critically dead ReLUs "
                        "and an early plateau)")
    p.add_argument("--pruner", choices=("median", "halving"), default=None,
                   help="also prune with Optuna's median or successive-halving pruner on the objective "
                        "(default: none)")
    p.add_argument("--seed", type=_whole(0, "", 0), default=None, metavar="N",
                   help="make the trials' values reproducible (default: fresh each sweep)")
    p.add_argument("--trial-timeout", type=_number("seconds", "600", positive=True), default=None, metavar="S",
                   help="end a trial that runs longer, as failed (default: no limit)")
    p.add_argument("--logdir", type=_directory, metavar="DIR", default="runs",
                   help="where runs, trial logs and the default storage go (default: runs)")
    p.add_argument("--server", type=_server, metavar="URL", help="trials stream to `babysit serve` at URL "
                                                                 "(default: the local store)")
    p.add_argument("--token", type=_token, default=None, help="the server's token (default: $BABYSIT_TOKEN)")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the live dashboard from this process on 127.0.0.1; trials stream to it, and it "
                        "stays up after the sweep until Ctrl-C")
    p.add_argument("--every", type=_every, metavar="N", help="the trials' sampling interval (default: auto)")
    p.set_defaults(func=_sweep, trial_command=())


def _sweep(args: argparse.Namespace) -> int:
    import os

    from monitor.sweeps import command, study as studies
    from monitor.sweeps.space import SpaceError, parse_all
    from monitor.validation import is_run_id

    try:
        space = parse_all(args.space)
        command.check(args.trial_command, space)
    except (SpaceError, command.CommandError) as exc:
        raise CliError(str(exc)) from None
    name = args.sweep or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    if not is_run_id(name) or len(name) > 90:
        raise CliError(f"--sweep: expected 1-90 characters from A-Z a-z 0-9 . _ - (starting with a letter or "
                       f"digit), got {name!r}")
    if args.dashboard and args.server:
        raise CliError("--dashboard serves from this process: it cannot be combined with --server")
    try:
        studies.optuna()
    except ImportError as exc:
        raise CliError(str(exc)) from None
    from monitor.sweeps.launch import Sweep, SweepPlan, trials_of
    from monitor.sweeps.report import lines, report

    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    server = start_dashboard(args.logdir) if args.dashboard else None
    plan = SweepPlan(name, space, tuple(args.trial_command), args.trials,
                     studies.storage_url(args.storage, args.logdir), args.parallel, args.sampler, args.objective,
                     args.direction, args.prune, args.pruner, args.logdir,
                     server.url if server else args.server, args.token or os.environ.get("BABYSIT_TOKEN") or None,
                     args.every, args.seed, args.grid_points, args.trial_timeout)
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        try:
            sweep = Sweep(plan, say)
        except studies.StudyError as exc:
            raise CliError(str(exc)) from None
        say(f"babysit sweep: {name}: {plan.budget} trials of {', '.join(d.spec() for d in space)}, {plan.sampler} "
            f"search, {plan.parallel} at a time; study in {plan.storage}")
        if server is not None:
            say(f"babysit sweep: live dashboard at {server.url}/sweeps/{name}")
        if plan.sampler == "grid":
            say(f"babysit sweep: warning: a grid of {studies.grid_size(space, plan.grid_points)} points tries only "
                f"{plan.grid_points} values of each dimension; random search tries a new value of every dimension "
                "in every trial (Bergstra & Bengio 2012): prefer --sampler random")
        say(f"babysit sweep: join from another process: babysit sweep --sweep {name} --storage {plan.storage} "
            "with the same --space and command")
        def print_report():
            for line in lines(report(trials_of(sweep.study), space, plan.direction, plan.sampler), space,
                              plan.objective):
                say(line)
        try:
            sweep.run()
        except KeyboardInterrupt:  # the trials so far are worth their report
            say("babysit sweep: interrupted; the trials so far:")
            print_report()
            raise
        print_report()
        if server is not None:
            say(f"babysit sweep: done; the dashboard stays up at {server.url}/sweeps/{name} (press Ctrl-C to stop it)")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        if server is None:
            raise
        say("babysit sweep: stopped")
    finally:
        if server is not None:
            server.stop()
    return 0


def _message(exc: BaseException) -> str:
    # KeyError quotes its argument; show the text as written.
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).splitlines()[0] if str(text) else type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="babysit", description="babysit watches PyTorch training: per-layer statistics "
                                                 "of every step it samples, stored for pandas.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    _add_demo(commands)
    _add_export(commands)
    _add_runs(commands)
    _add_serve(commands)
    _add_replay(commands)
    _add_sync(commands)
    _add_run(commands)
    _add_sweep(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``babysit`` with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        argv = split_run_argv(argv)
    trial_command: list[str] = []
    if argv[:1] == ["sweep"] and "--" in argv:  # the trial's command is the script's, options and all
        cut = argv.index("--")
        argv, trial_command = argv[:cut], argv[cut + 1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed it
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    if args.command == "sweep":
        args.trial_command = tuple(trial_command)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"babysit {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"babysit {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it


if __name__ == "__main__":
    sys.exit(main())
