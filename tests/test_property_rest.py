"""Property-based tests of the REST routes and pages, through a real server and real HTTP.

Every route the Flask app has (read from its url_map, so a new route is covered the day
it is added) is called with fuzzed path arguments (stored run ids, valid unknown ones,
any Unicode with lone surrogates, raw bytes that are not UTF-8, markup) and fuzzed query
parameters (the ones the routes read, ``max_points``, ``names``, ``layers``, ``layer``,
``fields``, ``signal``, ``seq``, ``format``, ``runs``, and any others, valid and not,
repeated), with GET, HEAD, OPTIONS and the methods no route takes, over runs stored
through the real ingest with the values that break servers (steps up to 2**63-1, NaN and
±Inf, hostile and 512-character names). These hold:

- no request gets a server error (5xx);
- under ``/api`` every error is JSON ``{"error": ...}`` that names the problem, and every
  JSON body is strict JSON (NaN and ±Inf tagged, never bare);
- an HTML page never shows a fuzzed value unescaped;
- no server error is logged, and the server still serves afterwards.
"""
from __future__ import annotations

import http.client
import json
import math
import re
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, urlsplit

import pytest
import socketio
from hypothesis import given, note
from hypothesis import strategies as st

from conftest import make_run, summary
from fuzzing import ServerErrors, any_text, property_settings
from monitor import codec
from monitor.events import (Event, Filters, InputStats, Kind, LayerStats, Scalars, Signal, Status)
from monitor.export import FORMATS
from monitor.protocol import BATCH, INGEST_NAMESPACE
from monitor.store.layers import LAYER_FIELDS
from monitor.validation import RUN_ID_PATTERN
from servers import serving_app

#: Cases per route, and for paths no route matches: 20 routes and the unrouted paths today
#: make 2,592 (19 x 128 + 2 x 80); the count grows with the routes, the suite's time with it
#: (256 a route took a minute of the 15 the suite may take in CI; ``BABYSIT_PROPERTY_SCALE``
#: and ``BABYSIT_PROPERTY_RANDOM`` run more, and fresh ones: tests/fuzzing.py).
CASES_PER_ROUTE = 128
#: Routes whose every valid call does real work (a zip of the run's tables; a sweep read from
#: every run of the store) or that take one name only: fewer cases.
CASES_FOR = {"api.export": 80, "api.sweep": 80}
MAX_ERROR = 1_000  # longest error a 4xx may carry (it names the problem, it does not echo the request)
HTTP_TIMEOUT = 20.0
MAX_REQUEST_LINE = 65_536  # http.server's limit, under Werkzeug's server: longer is answered 414 unread
#: Markup a page must never show as it came: any fuzzed value may carry it.
MARKUP = '<i id="fuzz">'
METHODS = st.sampled_from(["GET"] * 12 + ["HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"])

STORED = ("rest-sample", "rest-extreme", "rest-long", "rest-bare")


@dataclass
class Served:
    host: str
    port: int
    app: object
    log: ServerErrors


def _extreme_run(run: str) -> list[Event]:
    """Valid events with the values that break servers: steps up to 2**63-1, huge walls, NaN
    and ±Inf in every float, hostile, Unicode and 512-character names, empty optional parts."""
    big = 2**63 - 1
    layers = ["<script>alert(1)</script>", "a,b", "层.😀", "x" * 512, MARKUP, "%2F..%2F", "e\u0301"]
    summaries = tuple(summary(name, mean=v, max=math.inf, min=-math.inf) for name, v in
                      zip(layers, [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.0]))
    odd = (summary("zero-units", units=0, dead_units=0, quantiles=()),
           summary("grad", signal=Signal.PARAM_GRAD, units=None, dead_units=None, window=None,
                   update_ratio=math.nan, weight_norm=math.inf, sat_frac=math.nan))
    return [
        *make_run(run, wall=1e9)[:1],
        Event(run, 1, big, 1e308, Kind.SCALARS, Scalars({"loss": math.nan, "a" * 128: math.inf,
                                                          "x:y/z.w-v": -math.inf, "val_loss": -0.0})),
        Event(run, 2, 2**53 + 1, 1.5, Kind.SCALARS, Scalars({"loss": 1e308, "epoch": 3.0})),
        Event(run, 3, big, 2.0, Kind.LAYER_STATS, LayerStats(summaries + odd)),
        Event(run, 4, 2**62, 3.0, Kind.LAYER_STATS, LayerStats(summaries)),
        Event(run, 5, big, 4.0, Kind.INPUT_STATS, InputStats(shape=(), mean=math.nan, std=math.inf, min=-math.inf,
                                                             max=math.inf, nan=2**62, inf=0)),
        Event(run, 6, 0, 5.0, Kind.FILTERS, Filters(layer=MARKUP, count=1, height=1, width=1, channels=1,
                                                    pixels=b"\xff")),
        Event(run, 7, big, 6.0, Kind.STATUS, Status(state="crashed", reason=MARKUP + "\u202e", by="<b>")),
        # a series in a dozen scalar blocks just below 2**63: read as block summaries when cut to 10 points
        *(Event(run, 8 + k, big - 300 * (11 - k), 7.0 + k, Kind.SCALARS, Scalars({"deep": float(k)}))
          for k in range(12)),
    ]


def _long_run(run: str) -> list[Event]:
    """Longer than any max_points: 3,000 losses (a spike, a NaN) and 250 layer samples."""
    events = [Event(run, i, i, 1000.0 + i, Kind.SCALARS,
                    Scalars({"loss": 50.0 if i == 1234 else (math.nan if i == 2345 else 1.0 / (1 + i))}))
              for i in range(3000)]
    events += [Event(run, 3000 + i, i * 12, 5000.0 + i, Kind.LAYER_STATS,
                     LayerStats((summary("conv1", mean=float(i)), summary("fc", signal="output_grad"))))
               for i in range(250)]
    return events


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with ServerErrors() as log, serving_app(tmp_path_factory.mktemp("rest")) as (running, app):
        client = socketio.Client(reconnection=False)
        client.connect(running.url, namespaces=[INGEST_NAMESPACE], transports=["websocket"], wait_timeout=10)
        try:
            runs = [("rest-sample", make_run("rest-sample")), ("rest-extreme", _extreme_run("rest-extreme")),
                    ("rest-long", _long_run("rest-long")),
                    ("rest-bare", [Event("rest-bare", 0, 0, 1.0, Kind.STATUS, Status(state="running"))])]
            for run, events in runs:
                for start in range(0, len(events), 1000):
                    text = codec.dumps([e.to_dict() for e in events[start:start + 1000]])
                    ack = client.call(BATCH, text, namespace=INGEST_NAMESPACE, timeout=HTTP_TIMEOUT)
                    assert ack["ok"], (run, ack)
        finally:
            client.disconnect()
        address = urlsplit(running.url)
        yield Served(address.hostname, address.port, app, log)


# ---------------------------------------------------------------------- strategies

def encoded(value: str | bytes) -> str:
    """A path segment or query part percent-encoded; lone surrogates as their (invalid) UTF-8 bytes."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return quote_from_bytes(raw, safe="")


class Call:
    """A request as drawn: method and path (with its query). Its repr is short, since a
    failing case's path can be 200 kB long."""

    def __init__(self, method: str, path: str):
        self.method, self.path = method, path

    def __repr__(self) -> str:
        shown = self.path if len(self.path) <= 300 else f"{self.path[:300]}... ({len(self.path)} characters)"
        return f"Call({self.method!r}, {shown!r})"


HOSTILE_TEXT = st.one_of(any_text, st.just(MARKUP), st.just(""))
HOSTILE_VALUES = st.one_of(HOSTILE_TEXT, st.binary(max_size=16),  # bytes: sent as they are, not UTF-8
                           st.integers(1, 200_000).map(lambda n: "x" * n if n > 1000 else MARKUP * n))
UNKNOWN_RUN_IDS = ("unknown-run", "A.b_c-1", "0", "x" * 128)
assert all(RUN_ID_PATTERN.fullmatch(r) for r in STORED + UNKNOWN_RUN_IDS)
VALID_RUN_IDS = st.one_of(st.sampled_from(STORED), st.sampled_from(STORED), st.sampled_from(UNKNOWN_RUN_IDS),
                          st.integers(0, 10**6).map(lambda n: f"r{n}"))
RUN_IDS = st.one_of(VALID_RUN_IDS, HOSTILE_VALUES)
NUMBERS = st.one_of(st.integers(-5, 200_000), st.sampled_from([2**31, 2**63, 10**30]),
                    st.floats()).map(str)
#: What each path argument and query parameter takes: the values its route reads, and any other.
VALUES = {
    "run": RUN_IDS,
    "kind": st.one_of(st.sampled_from([k.value for k in Kind]), HOSTILE_VALUES),
    "filename": st.one_of(st.sampled_from(["babysit.css", "dist/run.js", "js/bokeh.min.js", "../app.py",
                                           "..%2f..%2fetc/passwd", "a/../../x", "nope.js"]), HOSTILE_VALUES),
    "max_points": st.one_of(NUMBERS, st.sampled_from(["10", "2000", "100000", "9", "100001", "０", "1e3", " 50"]),
                            HOSTILE_VALUES),
    "names": st.one_of(st.sampled_from(["loss", "loss,val_loss", "a" * 128, "x:y/z.w-v,epoch", ",", "nope"]),
                       HOSTILE_VALUES),
    "layers": st.one_of(st.sampled_from(["conv1", "conv1,fc", "a,b", "fc,,", "nope"]), HOSTILE_VALUES),
    "layer": st.one_of(st.sampled_from(["conv1", "a,b", "x" * 512, "<script>alert(1)</script>", MARKUP]),
                       HOSTILE_VALUES),
    "fields": st.one_of(st.lists(st.sampled_from(LAYER_FIELDS), max_size=4).map(",".join),
                        st.sampled_from(["nope", "step,,max"]), HOSTILE_VALUES),
    "signal": st.one_of(st.sampled_from([s.value for s in Signal]), HOSTILE_VALUES),
    "seq": st.one_of(NUMBERS, st.sampled_from(["6", "0", "999999999999999999", "9" * 19]), HOSTILE_VALUES),
    "format": st.one_of(st.sampled_from([*FORMATS, "xlsx", ""]), HOSTILE_VALUES),
    "runs": st.one_of(st.lists(st.sampled_from(STORED), max_size=2).map(",".join),
                      # a few ids the compare page has seen, so that most cases reuse its cached figures
                      st.lists(st.sampled_from(STORED + UNKNOWN_RUN_IDS[:1]), max_size=3).map(",".join),
                      st.lists(st.one_of(VALID_RUN_IDS, HOSTILE_TEXT), max_size=12).map(",".join), HOSTILE_VALUES),
}
KNOWN_PARAMETERS = ("max_points", "names", "layers", "layer", "fields", "signal", "seq", "format", "runs")
PARAMETER_NAMES = st.one_of(st.sampled_from(KNOWN_PARAMETERS), st.sampled_from(KNOWN_PARAMETERS), any_text)


@st.composite
def queries(draw) -> list[tuple[str, str | bytes]]:
    """Query parameters, repeats allowed, each with a value of its kind or any other."""
    pairs = []
    for name in draw(st.lists(PARAMETER_NAMES, max_size=5)):
        pairs.append((name, draw(VALUES.get(name, HOSTILE_VALUES) if isinstance(name, str) else HOSTILE_VALUES)))
    return pairs


_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")  # <run>, <path:filename>


def _rule_path(rule) -> list[tuple[str, str | None]]:
    """The rule's path as (literal text, None) and ("", argument name) pieces."""
    pieces, at = [], 0
    for m in _ARGUMENT.finditer(rule.rule):
        pieces += [(rule.rule[at:m.start()], None), ("", m.group(1))]
        at = m.end()
    return pieces + [(rule.rule[at:], None)]


@st.composite
def requests_for(draw, rule) -> Call:
    """A request to one url_map rule with fuzzed arguments and query, or, for None, to a
    path under /api that no rule matches."""
    if rule is None:
        segments = draw(st.lists(st.one_of(HOSTILE_VALUES, st.sampled_from(["runs", "rest-sample", "series", ".."])),
                                 min_size=1, max_size=4))
        path = "/api/" + "/".join(encoded(s) for s in segments)
    else:
        path = ""
        for text, argument in _rule_path(rule):
            if argument is None:
                path += text
            else:
                value = draw(VALUES.get(argument, HOSTILE_VALUES))
                path += encoded(value) if value != "" else "x"  # an empty segment matches no rule
    query = draw(queries())
    if query:
        path += "?" + "&".join(f"{encoded(name)}={encoded(value)}" for name, value in query)
    return Call(draw(METHODS), path)


def routes(app) -> list:
    return sorted(app.flask.url_map.iter_rules(), key=lambda rule: rule.rule)


# ---------------------------------------------------------------------- checks

def fetch(served: Served, method: str, path: str) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(served.host, served.port, timeout=HTTP_TIMEOUT)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _strict(token: str):
    raise ValueError(f"bare {token} in a JSON body (browsers cannot parse it)")


def check_response(served: Served, call: Call) -> None:
    method, path = call.method, call.path
    logged = len(served.log.errors)
    status, headers, body = fetch(served, method, path)
    note(f"{status} {headers.get('content-type')} {body[:300]!r}")
    assert len(served.log.errors) == logged, "\n".join(served.log.shown()[logged:])
    assert status < 500, f"a server error: {status} {body[:500]!r}"
    if status == 414:  # the HTTP server's own limit (64 kB request line), before the app sees anything
        assert len(path) > MAX_REQUEST_LINE - 100, f"a path of {len(path)} characters refused as too long"
        return
    kind = headers.get("content-type", "")
    if kind.startswith("application/json") and method != "HEAD":
        parsed = json.loads(body, parse_constant=_strict)  # strict JSON: NaN and ±Inf tagged
        if status >= 400:
            error = parsed.get("error") if isinstance(parsed, dict) else None
            assert isinstance(error, str) and error and len(error) <= MAX_ERROR, parsed
    elif status >= 400 and path.startswith("/api/") and method != "HEAD":
        pytest.fail(f"an API error that is not JSON naming the problem: {status} {kind} {body[:300]!r}")
    if kind.startswith("text/html"):
        assert MARKUP.encode() not in body, "a page showed fuzzed markup unescaped"


def test_no_fuzzed_request_to_any_route_gets_a_server_error_and_api_errors_are_json_naming_the_problem(served):
    for rule in [*routes(served.app), None]:  # None: paths under /api that no rule matches
        endpoint = "unrouted" if rule is None else rule.endpoint

        @property_settings(CASES_FOR.get(endpoint, CASES_PER_ROUTE))
        @given(request=requests_for(rule))
        def answers_well(request):
            check_response(served, request)  # the failing case's path says which route

        answers_well()


def test_the_server_still_serves_and_logged_no_error_after_the_fuzzing(served):
    status, _, body = fetch(served, "GET", "/api/runs")
    assert status == 200 and set(STORED) <= {r["run"] for r in codec.loads(body)}
    assert not served.log.errors, "\n".join(served.log.shown())


# ---------------------------------------------------------------------- defects the properties found

def _json(served: Served, path: str):
    status, headers, body = fetch(served, "GET", path)
    assert status == 200 and headers["content-type"] == "application/json", (status, body[:300])
    return codec.loads(body)


def test_steps_past_2_to_the_53_come_back_exact_from_series_layers_and_inputs(served):
    big = 2**63 - 1
    assert _json(served, "/api/runs/rest-extreme/series?names=loss")["loss"]["step"] == [2**53 + 1, big]
    deep = _json(served, "/api/runs/rest-extreme/series?names=deep&max_points=10")["deep"]  # from block summaries
    assert deep["total"] == 12 and deep["step"][-1] == big and deep["step"][0] == big - 300 * 11
    layer = _json(served, "/api/runs/rest-extreme/layers?signal=activation&layer=a,b&fields=step")["layers"]["a,b"]
    assert layer["step"] == [2**62, big]
    assert _json(served, "/api/runs/rest-extreme/inputs")["step"] == [big]


def test_an_unknown_api_route_and_a_method_no_route_takes_get_json_errors_naming_them(served):
    status, headers, body = fetch(served, "GET", "/api/nope")
    assert (status, headers["content-type"]) == (404, "application/json")
    assert codec.loads(body)["error"].startswith("no API route '/api/nope'; the routes are ")
    status, headers, body = fetch(served, "POST", "/api/runs")
    assert (status, codec.loads(body)) == (405, {"error": "POST is not allowed on '/api/runs'; use GET"})


def test_a_page_error_stays_an_html_page(served):
    status, headers, _ = fetch(served, "GET", "/runs/..%2Fetc")
    assert status == 404 and headers["content-type"].startswith("text/html")


def test_the_compare_page_without_runs_opens_without_a_warning(served):
    status, _, body = fetch(served, "GET", "/compare")  # pytest turns a warning in the server into a 500
    assert status == 200 and b"compare 0 runs" in body
