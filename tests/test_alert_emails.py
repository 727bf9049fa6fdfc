"""Alert emails delivered to a real SMTP server (aiosmtpd) that each test starts on a loopback
port: STARTTLS and implicit TLS with a login, a plain relay, refusals, an unreachable
server, and real trainings streaming to a real babysit server that emails their flags."""
from __future__ import annotations

import base64
import contextlib
import datetime
import email
import email.policy
import ipaddress
import logging
import math
import random
import re
import socket
import ssl
import threading
import time

import pytest
import socketio
import torch
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from torch import nn

from monitor import codec
from monitor.alert_config import AlertConfig, alert_config
from monitor.events import Event, Flag, Kind
from monitor.mailer import AlertMailer, send_message
from monitor.store import RunStore
from trainer_hooks import watch
from web.app import ServerConfig, create_app
from web.serving import serve_in_thread

USER, PASSWORD = "babysit@example.com", "s3cret-Pa55word"


# ----------------------------------------------------------------- an SMTP server

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (server context, path of the CA file clients trust)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "babysit test SMTP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, str(folder / "cert.pem")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd's handler: keeps what it receives; ``refuse`` answers RCPT with a code while it lasts."""

    def __init__(self, refuse: list[str] | None = None):
        self.messages: list[email.message.EmailMessage] = []
        self.sessions: list[tuple[bool, bool]] = []  # (over TLS, logged in) per message
        self.refuse = list(refuse or [])
        self.rcpt_answers: list[str] = []
        self._arrived = threading.Condition()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.refuse.pop(0) if self.refuse else "250 OK"
        self.rcpt_answers.append(answer)
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server, session, envelope):
        with self._arrived:
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            self.sessions.append((session.ssl is not None, bool(session.authenticated)))
            self._arrived.notify_all()
        return "250 OK"

    def wait(self, count: int, timeout: float = 10.0) -> list:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.messages) >= count, timeout), \
                f"{len(self.messages)} emails arrived, expected {count}"
            return list(self.messages)


def authenticate(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@contextlib.contextmanager
def smtp_server(security="none", tls=None, login=False, refuse=None):
    """A real SMTP server on a loopback port: yields (port, inbox)."""
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's chatter
    inbox, port = Inbox(refuse), free_port()
    kwargs = {}
    if login:  # with implicit TLS aiosmtpd cannot see the TLS: it offers AUTH, the session records the login
        kwargs.update(authenticator=authenticate, auth_required=security != "ssl")
    if security == "starttls":
        kwargs.update(tls_context=tls[0], require_starttls=True)
    elif security == "ssl":
        kwargs.update(ssl_context=tls[0], auth_require_tls=False)  # the whole connection is TLS
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def settings(port, **overrides) -> AlertConfig:
    """Alert settings for a test: small delays so each test takes a fraction of a second."""
    fields = dict(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", mail_to=("ops@example.com",),
                  mail_from="babysit@example.com", alert_gather=0.05, alert_interval=0.0, alert_cooldown=600.0,
                  alert_tries=3, alert_backoff=0.05, smtp_timeout=5.0)
    return AlertConfig(**{**fields, **overrides})


def flag_event(run="r1", seq=1, kind="divergence", layer=None, message="loss is NaN"):
    return Event(run, seq, seq, 1_700_000_000.0 + seq, Kind.FLAG,
                 Flag(kind=kind, severity="critical", message=message, advice="Lower the learning rate.",
                      layer=layer, evidence={"loss": math.nan}))


@contextlib.contextmanager
def mailer(config):
    m = AlertMailer(config)
    try:
        yield m
    finally:
        m.close(timeout=5.0)


# ------------------------------------------------------------------- delivery

def test_an_alert_goes_out_over_starttls_after_a_login(tls, caplog):
    caplog.set_level(logging.INFO, logger="babysit.alerts")
    with smtp_server("starttls", tls, login=True) as (port, inbox):
        config = alert_config({"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_user": USER,
                               "smtp_ca_file": tls[1], "mail_to": ["ops@example.com", "ml@example.com"],
                               "alert_gather": 0.05},
                              {"BABYSIT_SMTP_PASSWORD": PASSWORD})
        assert (config.smtp_security, config.mail_from) == ("starttls", USER)
        with mailer(config) as m:
            m.observe([flag_event()], base_url="http://gpu-box:5000/")
            assert m.flush(10)
        (message,) = inbox.wait(1)
        assert inbox.sessions == [(True, True)]
    assert message["Subject"] == "[babysit] critical divergence in run r1 at step 1: loss is NaN"
    assert (message["From"], message["To"]) == (USER, "ops@example.com, ml@example.com")
    assert message["Auto-Submitted"] == "auto-generated"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Run page: http://gpu-box:5000/runs/r1" in text and "  loss: NaN" in text
    assert '<a href="http://gpu-box:5000/runs/r1">' in html
    assert (m.sent, m.failed, m.tries) == (1, 0, 1)
    assert "alert email sent (1 alerts)" in caplog.text


def test_an_alert_goes_out_over_implicit_tls_after_a_login(tls):
    with smtp_server("ssl", tls, login=True) as (port, inbox):
        with mailer(settings(port, smtp_security="ssl", smtp_user=USER, smtp_password=PASSWORD,
                             smtp_ca_file=tls[1])) as m:
            m.observe([flag_event()])
            assert m.flush(10)
        (message,) = inbox.wait(1)
    assert inbox.sessions[0][1] and "divergence" in message["Subject"]


def test_a_server_whose_certificate_is_not_trusted_is_refused_for_good(tls, caplog):
    with smtp_server("starttls", tls) as (port, inbox):
        with mailer(settings(port, smtp_security="starttls")) as m:  # no CA file: the system's CAs only
            m.observe([flag_event()])
            assert m.flush(10)
    assert (m.sent, m.failed, m.tries, inbox.messages) == (0, 1, 1, [])
    assert "certificate is not trusted" in caplog.text and "smtp_ca_file" in caplog.text


def test_a_plain_local_relay_needs_no_tls_and_no_login():
    with smtp_server() as (port, inbox):
        with mailer(settings(port)) as m:
            m.observe([flag_event()])
            assert m.flush(10)
        inbox.wait(1)
    assert inbox.sessions == [(False, False)]


def test_a_wrong_password_fails_for_good_without_retries_and_is_never_logged(tls, caplog):
    caplog.set_level(logging.DEBUG, logger="babysit.alerts")
    wrong = "wr0ng-Secret-Value"
    with smtp_server("starttls", tls, login=True) as (port, inbox):
        with mailer(settings(port, smtp_security="starttls", smtp_user=USER, smtp_password=wrong,
                             smtp_ca_file=tls[1])) as m:
            m.observe([flag_event()])
            assert m.flush(10)
    assert (m.sent, m.failed, m.tries, inbox.messages) == (0, 1, 1, [])
    assert "SMTPAuthenticationError: 535" in caplog.text and "refused it for good" in caplog.text
    for secret in (wrong, base64.b64encode(wrong.encode()).decode(),
                   base64.b64encode(f"\0{USER}\0{wrong}".encode()).decode()):
        assert secret not in caplog.text


def test_a_refused_recipient_is_logged_once_and_the_next_alert_still_goes_out(caplog):
    with smtp_server(refuse=["550 5.1.1 no such mailbox"]) as (port, inbox):
        with mailer(settings(port)) as m:
            m.observe([flag_event(layer="a")])
            assert m.flush(10)
            assert (m.sent, m.failed, m.tries) == (0, 1, 1)
            m.observe([flag_event(layer="b", seq=2)])
            assert m.flush(10)
        (message,) = inbox.wait(1)
    assert m.sent == 1 and "Layer: b" in message.get_body(("plain",)).get_content()
    assert "550 5.1.1 no such mailbox" in caplog.text and "not retried" in caplog.text


def test_a_busy_server_is_retried_with_back_off_and_the_email_arrives(caplog):
    with smtp_server(refuse=["451 4.3.0 try again later", "451 4.3.0 try again later"]) as (port, inbox):
        with mailer(settings(port, alert_tries=3)) as m:
            m.observe([flag_event()])
            assert m.flush(10)
        inbox.wait(1)
    assert (m.sent, m.failed, m.tries) == (1, 0, 3)
    assert inbox.rcpt_answers == ["451 4.3.0 try again later"] * 2 + ["250 OK"]
    assert caplog.text.count("try again later") == 2 and "next try in 0.05 s" in caplog.text \
        and "next try in 0.1 s" in caplog.text


def test_an_unreachable_server_is_retried_with_growing_back_off_then_given_up(caplog):
    port = free_port()  # nothing listens there
    times = []

    def timed(config, message):
        times.append(time.monotonic())
        return send_message(config, message)

    m = AlertMailer(settings(port, alert_tries=4, alert_backoff=0.1), send=timed)
    try:
        m.observe([flag_event()])
        assert m.flush(10)
    finally:
        m.close(5)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert (m.sent, m.failed, m.tries) == (0, 1, 4)
    assert len(gaps) == 3 and all(0.9 * b <= g < b + 0.3 for g, b in zip(gaps, [0.1, 0.2, 0.4])), gaps
    assert "ConnectionRefusedError" in caplog.text and "given up after 4 tries" in caplog.text


def test_alerts_that_arrive_together_go_out_as_one_digest_and_a_repeat_is_silenced():
    with smtp_server() as (port, inbox):
        with mailer(settings(port, alert_gather=0.3)) as m:
            m.observe([flag_event(layer="conv1", seq=1)])
            m.observe([flag_event(layer="conv2", seq=2), flag_event(kind="exploding_gradient", seq=3)])
            m.observe([flag_event(layer="conv1", seq=4)])  # the same run, kind and layer: cooling down
            (message,) = inbox.wait(1)
            time.sleep(0.3)
        assert len(inbox.messages) == 1 and m.alerter.suppressed == 1
    assert message["Subject"] == "[babysit] 3 alerts in run r1: divergence x2, exploding_gradient"
    text = message.get_body(("plain",)).get_content()
    assert "1. run r1: critical divergence, layer conv1" in text and "3. run r1: critical exploding_gradient" in text


# ----------------------------------------------------------- through the server

@contextlib.contextmanager
def serving_with_alerts(logdir, config):
    app = create_app(ServerConfig(logdir=logdir, alerts=config))
    running = serve_in_thread(app)
    try:
        yield running, app
    finally:
        running.stop()
        app.alerts.close(5)
        app.store.close()


def train(url, logdir, run, steps=6, nan_at=None, flags=(), crash=False):
    """A real tiny training streaming to ``url``; returns the closed handle."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = watch(model, optimizer, run=run, logdir=logdir, every=2, server=url)
    try:
        with mon:
            for step in range(steps):
                loss = model(torch.randn(16, 4)).pow(2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                mon.log(loss=math.nan if step == nan_at else loss)
            for flag in flags:
                mon.add_flag(flag)
            if crash:
                raise RuntimeError("CUDA out of memory <simulated>")
    except RuntimeError:
        pass
    return mon


def test_a_nan_loss_in_a_real_training_arrives_as_one_email_with_the_run_page_link(tmp_path):
    with smtp_server() as (port, inbox), serving_with_alerts(tmp_path, settings(port)) as (running, app):
        mon = train(running.url, tmp_path, "nan", nan_at=3)
        (message,) = inbox.wait(1)
        assert app.alerts.flush(5) and len(inbox.messages) == 1  # the run finished: nothing more
    assert [f.kind for f in mon.flags] == ["divergence"]
    assert message["Subject"].startswith(f"[babysit] critical divergence in run {mon.run_id} at step 3: loss is NaN")
    text = message.get_body(("plain",)).get_content()
    assert f"Run page: {running.url}/runs/{mon.run_id}" in text and "Advice: Lower the learning rate" in text
    assert f"Run: {mon.run_id} (nan on {socket.gethostname()})" in text


def test_a_crashed_run_is_emailed_once_with_its_reason(tmp_path):
    with smtp_server() as (port, inbox), serving_with_alerts(tmp_path, settings(port)) as (running, app):
        mon = train(running.url, tmp_path, "crash", crash=True)
        (message,) = inbox.wait(1)
        assert app.alerts.flush(5) and len(inbox.messages) == 1
    assert message["Subject"] == (f"[babysit] run {mon.run_id} crashed after 6 steps: "
                                  "RuntimeError: CUDA out of memory <simulated>")
    html = message.get_body(("html",)).get_content()
    assert "&lt;simulated&gt;" in html and "<simulated>" not in html
    assert f'href="{running.url}/runs/{mon.run_id}"' in html


def test_several_flags_at_once_are_one_digest_and_a_repeat_within_the_cooldown_is_not_sent(tmp_path):
    flags = [Flag(kind=kind, severity="critical", message=f"{kind} in {layer}", advice="see the notes",
                  layer=layer) for kind, layer in [("exploding_gradient", "0"), ("exploding_gradient", "2"),
                                                   ("dead_relu", "1"), ("exploding_gradient", "0")]]
    with smtp_server() as (port, inbox), serving_with_alerts(tmp_path, settings(port, alert_gather=0.5)) \
            as (running, app):
        mon = train(running.url, tmp_path, "many", flags=flags)
        (message,) = inbox.wait(1)
        assert app.alerts.flush(5) and len(inbox.messages) == 1
    assert app.alerts.alerter.suppressed == 1
    assert message["Subject"] == f"[babysit] 3 alerts in run {mon.run_id}: exploding_gradient x2, dead_relu"


def until(condition, timeout: float = 10.0) -> None:
    """Wait for the mailer's thread to reach a state (it works on its own clock)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the mailer"
        time.sleep(0.02)


def test_an_unreachable_smtp_server_never_slows_ingest_or_training(tmp_path, caplog):
    config = settings(free_port(), alert_tries=5, alert_backoff=60.0)  # in back-off for the whole test
    with serving_with_alerts(tmp_path, config) as (running, app):
        client = socketio.Client()
        client.connect(running.url, namespaces=["/ingest"], transports=["websocket"], wait_timeout=5)
        try:
            acks = []
            for seq in range(20):  # a flag each: the first is alerted, the rest cool down
                started = time.perf_counter()
                ack = client.call("batch", codec.dumps([flag_event("direct", seq).to_dict()]), namespace="/ingest",
                                  timeout=5)
                acks.append(time.perf_counter() - started)
                assert ack["ok"] and ack["stored"] == 1
        finally:
            client.disconnect()
        until(lambda: app.alerts.tries == 1)  # the first email failed once and waits to retry
        mon = train(running.url, tmp_path, "unreachable", crash=True)
        until(lambda: app.alerts.alerter.pending)  # the crash's alert waits behind it
        assert app.alerts.tries == 1
        app.alerts.close(0.5)  # retries cut short: both emails given up, logged
    assert max(acks) < 0.5, acks
    with RunStore(tmp_path) as store:
        assert len(store.events("direct")) == 20 and store.run_info(mon.run_id).status == "crashed"
    assert (app.alerts.sent, app.alerts.failed) == (0, 2)
    assert "ConnectionRefusedError" in caplog.text and caplog.text.count("given up after") == 2


def test_the_in_process_dashboard_emails_a_crash_and_leaves_the_users_random_stream_alone(tmp_path, monkeypatch):
    """Served inside the training process, the email's Message-ID and MIME boundary must not be
    drawn from the global ``random`` (the standard library's are): a seeded script would draw
    differently after an alert."""
    random.seed(7)
    state = random.getstate()
    with smtp_server() as (port, inbox):
        for name, value in {"BABYSIT_SMTP_HOST": "127.0.0.1", "BABYSIT_SMTP_PORT": str(port),
                            "BABYSIT_SMTP_SECURITY": "none", "BABYSIT_MAIL_TO": "ops@example.com",
                            "BABYSIT_MAIL_FROM": "babysit@example.com", "BABYSIT_ALERT_GATHER": "0.05"}.items():
            monkeypatch.setenv(name, value)
        model = nn.Linear(4, 1)
        mon = watch(model, run="embedded", logdir=tmp_path, dashboard=True)
        try:
            with pytest.raises(ValueError), mon:
                mon.log(loss=1.0)
                raise ValueError("bad batch")
            (message,) = inbox.wait(1)
        finally:
            mon.dashboard.stop()
            mon.dashboard._app.alerts.close(5)
    assert message["Subject"] == f"[babysit] run {mon.run_id} crashed after 1 steps: ValueError: bad batch"
    assert f"Run page: {mon.dashboard_url}" in message.get_body(("plain",)).get_content()
    assert random.getstate() == state, "babysit drew from the user's random stream"
    assert re.fullmatch(r"<\d+\.[0-9a-f]{16}\.babysit@example\.com>", message["Message-ID"])
    assert message.get_boundary() not in message.get_body(("html",)).get_content()


# ------------------------------------------------------------- whole processes

CRASHING_SCRIPT = """
import torch
from torch import nn
from trainer_hooks import watch

with watch(nn.Linear(4, 1), run="exits", logdir={logdir!r}, dashboard=True) as mon:
    mon.log(loss=1.0)
    raise SystemExit("the data loader died")
"""


def test_a_training_process_that_crashes_sends_the_email_of_its_own_dashboard_before_it_exits(tmp_path):
    import os
    import subprocess
    import sys

    with smtp_server() as (port, inbox):
        environ = {**os.environ, "BABYSIT_SMTP_HOST": "127.0.0.1", "BABYSIT_SMTP_PORT": str(port),
                   "BABYSIT_SMTP_SECURITY": "none", "BABYSIT_MAIL_TO": "ops@example.com",
                   "BABYSIT_MAIL_FROM": "babysit@example.com", "BABYSIT_ALERT_GATHER": "600"}  # exit does not wait
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", CRASHING_SCRIPT.format(logdir=str(tmp_path))], env=environ,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "the data loader died" in done.stderr, done.stderr
        (message,) = inbox.wait(1, timeout=1)  # sent before the process ended
    assert time.monotonic() - started < 60
    assert re.fullmatch(r"\[babysit\] run exits-[-\w]+ crashed after 1 steps: SystemExit: the data loader died",
                        message["Subject"]), message["Subject"]


def test_babysit_serve_emails_with_its_options(tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    web_port = free_port()
    url = f"http://127.0.0.1:{web_port}"
    with smtp_server() as (port, inbox):
        serve = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "serve", "--port", str(web_port), "--logdir", str(tmp_path),
             "--smtp-host", "127.0.0.1", "--smtp-port", str(port), "--smtp-security", "none",
             "--mail-from", "babysit@example.com", "--mail-to", "ops@example.com,ml@example.com",
             "--alert-gather", "0.05", "--public-url", "https://babysit.example.com/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url + "/api/runs", timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline and serve.poll() is None, "babysit serve did not start"
                    time.sleep(0.1)
            client = socketio.Client()
            client.connect(url, namespaces=["/ingest"], transports=["websocket"], wait_timeout=5)
            try:
                assert client.call("batch", codec.dumps([flag_event("served").to_dict()]), namespace="/ingest",
                                   timeout=5)["ok"]
                (message,) = inbox.wait(1)
            finally:
                client.disconnect()
        finally:
            serve.send_signal(signal.SIGTERM)
            output = serve.communicate(timeout=20)[0]
    assert "alert emails (critical flags and runs that diverge or crash) to ops@example.com, ml@example.com " \
           f"via 127.0.0.1:{port} (none)" in output
    assert message["To"] == "ops@example.com, ml@example.com"
    assert "Run page: https://babysit.example.com/runs/served" in message.get_body(("plain",)).get_content()


def test_a_failure_that_quotes_the_password_is_logged_without_it(caplog):
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()

    def echoing(config, message):  # a server (or library) that echoes what it was sent
        raise OSError(f"451 could not check AUTH PLAIN {plain} for {USER}:{PASSWORD}")

    m = AlertMailer(settings(free_port(), smtp_security="starttls", smtp_user=USER, smtp_password=PASSWORD,
                             alert_tries=2, alert_backoff=0.01), send=echoing)
    try:
        m.observe([flag_event()])
        assert m.flush(5)
    finally:
        m.close(1)
    assert m.failed == 1 and f"AUTH PLAIN *** for {USER}:***" in caplog.text
    assert PASSWORD not in caplog.text and plain not in caplog.text
