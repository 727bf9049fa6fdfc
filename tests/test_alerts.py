"""The alert policy, the email text and the alert settings, on scripted events (no network)."""
import math

import pytest

from monitor import cli
from monitor.alert_config import AlertConfig, alert_config
from monitor.alert_email import DIGEST_DETAILED, compose
from monitor.alerts import MAX_PENDING, RUN_END, Alerter
from monitor.events import Event, Flag, Kind, RunEnd, RunStart, Status

BASE = "http://gpu-box:5000"


def config(**overrides) -> AlertConfig:
    fields = dict(smtp_host="smtp.example.com", mail_to=("ops@example.com",), mail_from="babysit@example.com",
                  alert_gather=10.0, alert_interval=60.0, alert_cooldown=1800.0)
    return AlertConfig(**{**fields, **overrides})


def flag(run="r1", kind="divergence", severity="critical", layer=None, step=12, seq=None, message="loss is NaN",
         evidence=None):
    data = Flag(kind=kind, severity=severity, message=message, advice="Lower the learning rate.", layer=layer,
                evidence={"loss": math.nan, "best": 2.31} if evidence is None else evidence)
    return Event(run, step if seq is None else seq, step, 1_700_000_000.0 + step, Kind.FLAG, data)


def status(run="r1", state="diverged", reason="loss is NaN", step=20):
    return Event(run, 1000 + step, step, 1_700_000_100.0, Kind.STATUS, Status(state, reason, "early_stopping"))


def run_end(run="r1", state="diverged", step=20):
    return Event(run, 2000 + step, step, 1_700_000_101.0, Kind.RUN_END, RunEnd(state, step, 12.34))


def run_start(run="r1"):
    return Event(run, 0, 0, 1_700_000_000.0, Kind.RUN_START,
                 RunStart(name="digits", config={}, model=(), host="gpu-1", pid=1, rank=0, world=1, versions={},
                          sampling={}))


# ---------------------------------------------------------------------- policy

def test_a_critical_flag_is_alerted_and_a_warning_is_not_by_default():
    alerter = Alerter(config())
    assert alerter.observe([flag(severity="warning", kind="plateau")], now=0.0, base_url=BASE) == 0
    assert alerter.observe([flag()], now=0.0, base_url=BASE) == 1
    (alert,) = alerter.pending
    assert (alert.run, alert.kind, alert.step, alert.url) == ("r1", "divergence", 12, f"{BASE}/runs/r1")


def test_warnings_are_alerted_when_the_severity_is_lowered():
    alerter = Alerter(config(alert_severity="warning"))
    assert alerter.observe([flag(severity="warning", kind="plateau"), flag()], now=0.0) == 2


def test_a_repeat_of_the_same_run_kind_and_layer_is_silenced_for_the_cooldown():
    alerter = Alerter(config(alert_cooldown=100.0))
    assert alerter.observe([flag(layer="fc1", seq=1)], now=0.0) == 1
    assert alerter.observe([flag(layer="fc1", seq=2)], now=99.0) == 0  # the same (run, kind, layer)
    assert alerter.suppressed == 1
    assert alerter.observe([flag(layer="fc2", seq=3), flag(run="r2", layer="fc1", seq=4),
                            flag(kind="exploding_gradient", layer="fc1", seq=5)], now=99.0) == 3
    alerter.take(now=99.0, force=True)
    assert alerter.observe([flag(layer="fc1", seq=6)], now=100.0) == 1  # the cool-down is over


def test_alerts_gather_for_the_window_and_go_out_together():
    alerter = Alerter(config(alert_gather=10.0))
    alerter.observe([flag(layer="a")], now=100.0)
    alerter.observe([flag(layer="b")], now=105.0)
    assert alerter.due_at() == 110.0
    assert alerter.take(now=109.9) == ([], 0)
    alerts, overflow = alerter.take(now=110.0)
    assert [a.layer for a in alerts] == ["a", "b"] and overflow == 0
    assert alerter.due_at() is None and alerter.take(now=1e6) == ([], 0)


def test_two_emails_are_at_least_the_interval_apart():
    alerter = Alerter(config(alert_gather=10.0, alert_interval=60.0))
    alerter.observe([flag(layer="a")], now=0.0)
    assert len(alerter.take(now=10.0)[0]) == 1
    alerter.observe([flag(layer="b")], now=20.0)
    assert alerter.due_at() == 70.0  # not 30: the last email went at 10
    alerter.observe([flag(layer="c")], now=65.0)
    assert [a.layer for a in alerter.take(now=70.0)[0]] == ["b", "c"]


def test_a_run_that_diverges_is_one_alert_with_the_reason_and_the_steps():
    alerter = Alerter(config())
    assert alerter.observe([run_start(), status(), run_end()], now=0.0, base_url=BASE) == 1
    (alert,) = alerter.pending
    assert alert.kind == RUN_END and alert.severity.value == "critical"
    assert alert.evidence == {"state": "diverged", "reason": "loss is NaN", "by": "early_stopping", "steps": 20,
                              "duration_s": 12.3}
    assert alert.message == "run r1 diverged after 20 steps: loss is NaN"
    assert (alert.name, alert.host) == ("digits", "gpu-1")
    alerter.take(now=100.0)
    assert alerter.observe([run_end()], now=5000.0) == 0  # a run ends once
    assert alerter.observe([run_start(), status(state="crashed", reason="RuntimeError: boom")], now=5000.0) == 1


def test_a_diverged_end_after_its_divergence_flag_was_alerted_is_not_alerted_again():
    alerter = Alerter(config())
    assert alerter.observe([run_start(), flag(), status(), run_end()], now=0.0) == 1  # the flag tells it
    assert [a.kind for a in alerter.pending] == ["divergence"]
    other = Alerter(config())
    assert other.observe([run_start(), flag(kind="dead_relu"), status(), run_end()], now=0.0) == 2


@pytest.mark.parametrize("state", ["finished", "stopped", "stopping", "running", "interrupted"])
def test_a_run_that_ends_normally_or_is_stopped_is_not_alerted(state):
    alerter = Alerter(config())
    assert alerter.observe([status(state=state), run_end(state="finished" if state == "running" else state)],
                           now=0.0) == 0


def test_abnormal_ends_are_not_alerted_when_turned_off():
    assert Alerter(config(alert_on_end=False)).observe([status(state="crashed"), run_end(state="crashed")],
                                                       now=0.0) == 0


def test_a_lost_run_is_one_alert_like_a_crash_and_going_silent_again_within_the_cooldown_is_not():
    alerter = Alerter(config(alert_cooldown=100.0))
    alerter.observe([run_start()], now=0.0)
    assert alerter.lost("r1", 40, 1_700_000_200.0, "no heartbeat for 31 s", now=0.0, base_url=BASE) == 1
    (alert,) = alerter.pending
    assert (alert.kind, alert.severity.value, alert.step, alert.url) == (RUN_END, "critical", 40, f"{BASE}/runs/r1")
    assert alert.message == "run r1 lost after 40 steps: no heartbeat for 31 s"
    assert "stopped talking to the server" in alert.advice and (alert.name, alert.host) == ("digits", "gpu-1")
    content = compose(alerter.take(now=10.0, force=True)[0], 0)
    assert content.subject == "[babysit] run r1 lost after 40 steps: no heartbeat for 31 s"
    assert content.text.startswith("Run r1 went silent: the server marked it lost.")
    assert alerter.lost("r1", 41, 1_700_000_300.0, "no heartbeat for 31 s", now=99.0) == 0  # it came back, and went
    assert alerter.observe([status(state="crashed", reason="boom")], now=99.0) == 1  # a crash after it still counts
    assert alerter.lost("r1", 42, 1_700_000_400.0, "no heartbeat for 31 s", now=100.0) == 1


def test_a_lost_run_is_not_alerted_when_abnormal_ends_are_off_and_names_its_host_when_its_start_was_not_seen():
    assert Alerter(config(alert_on_end=False)).lost("r1", 1, 1.0, "silent", now=0.0) == 0
    alerter = Alerter(config())
    alerter.lost("r9", 1, 1.0, "silent", now=0.0, name="digits", host="gpu-7")
    assert (alerter.pending[0].name, alerter.pending[0].host) == ("digits", "gpu-7")


def test_beyond_the_pending_limit_alerts_are_counted_and_the_digest_says_so():
    alerter = Alerter(config(alert_cooldown=0.0))
    alerter.observe([flag(layer=f"l{i}", seq=i) for i in range(MAX_PENDING + 7)], now=0.0)
    alerts, overflow = alerter.take(now=1e3)
    assert (len(alerts), overflow) == (MAX_PENDING, 7)
    content = compose(alerts, overflow)
    assert content.subject.startswith(f"[babysit] {MAX_PENDING + 7} alerts in run r1")
    assert "7 more alerts arrived" in content.text and "7 more alerts arrived" in content.html


def test_a_bad_base_url_gives_no_link_and_the_public_url_wins_over_the_address_used():
    assert Alerter(config()).observe([flag()], 0.0, base_url='http://x/"><script>') == 1
    alerter = Alerter(config())
    alerter.observe([flag()], 0.0, base_url='http://x/"><script>')
    assert alerter.pending[0].url is None
    alerter = Alerter(config(public_url="https://babysit.example.com/"))
    alerter.observe([flag()], 0.0, base_url=BASE)
    assert alerter.pending[0].url == "https://babysit.example.com/runs/r1"


# ----------------------------------------------------------------------- email

def test_one_alert_names_the_run_flag_evidence_advice_and_link():
    alerter = Alerter(config())
    alerter.observe([run_start(), flag(layer="conv1")], now=0.0, base_url=BASE)
    content = compose(*alerter.take(now=1e3))
    assert content.subject == "[babysit] critical divergence in run r1 at step 12: loss is NaN"
    for part in ("Run: r1 (digits on gpu-1)", "Flag: divergence (critical)", "Layer: conv1", "Step: 12",
                 "What: loss is NaN", "  loss: NaN", "  best: 2.31", "Advice: Lower the learning rate.",
                 f"Run page: {BASE}/runs/r1", "2023-11-14 22:13:32 UTC"):
        assert part in content.text
    assert f'<a href="{BASE}/runs/r1">' in content.html and "NaN" in content.html


def test_a_digest_lists_each_alert_in_full_and_the_rest_in_a_line():
    alerter = Alerter(config())
    alerter.observe([flag(layer=f"l{i}", seq=i) for i in range(DIGEST_DETAILED + 3)]
                    + [status(run="r2", state="crashed", reason="boom")], now=0.0, base_url=BASE)
    content = compose(*alerter.take(now=1e3))
    assert content.subject == (f"[babysit] {DIGEST_DETAILED + 4} alerts in 2 runs: "
                               f"divergence x{DIGEST_DETAILED + 3}, run ended")
    assert f"{DIGEST_DETAILED}. run r1: critical divergence, layer l{DIGEST_DETAILED - 1} at step" in content.text
    assert f"- run r1: critical divergence, layer l{DIGEST_DETAILED} at step" in content.text
    assert "- run r2 ended: crashed: run r2 crashed after 20 steps: boom" in content.text
    assert content.html.count(f'href="{BASE}/runs/r1"') == DIGEST_DETAILED + 3


def test_hostile_names_are_escaped_in_the_html_and_cannot_break_the_subject():
    hostile = '<script>alert("x")</script>'
    alerter = Alerter(config(alert_severity="warning"))
    alerter.observe([flag(layer=f"fc{hostile}", message=f"boom\r\nBcc: victim@example.com {hostile}",
                          evidence={"<img src=x onerror=alert(1)>": "</td><b>"}, kind="odd")], 0.0, BASE)
    content = compose(*alerter.take(now=1e3))
    assert "\n" not in content.subject and "\r" not in content.subject
    assert content.subject.endswith("boom Bcc: victim@example.com " + hostile)  # flattened to one line
    assert "<script" not in content.html and "<img" not in content.html and "</td><b>" not in content.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in content.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in content.html
    assert hostile in content.text  # plain text is shown as text


# ---------------------------------------------------------------------- config

def test_alerts_are_off_without_a_host_and_recipients():
    assert alert_config({}, {}) is None
    assert alert_config({"smtp_host": None}, {"BABYSIT_TOKEN": "x"}) is None


def test_settings_come_from_variables_and_an_option_wins():
    environ = {"BABYSIT_SMTP_HOST": "smtp.example.com", "BABYSIT_SMTP_USER": "me@example.com",
               "BABYSIT_SMTP_PASSWORD": "pw", "BABYSIT_MAIL_TO": "a@example.com, b@example.com",
               "BABYSIT_SMTP_SECURITY": "ssl", "BABYSIT_ALERT_SEVERITY": "warning",
               "BABYSIT_ALERT_COOLDOWN": "60", "BABYSIT_ALERT_ON_END": "no"}
    c = alert_config({"smtp_host": "relay.example.com"}, environ)
    assert (c.smtp_host, c.smtp_port, c.smtp_security, c.mail_from) == ("relay.example.com", 465, "ssl",
                                                                        "me@example.com")
    assert c.mail_to == ("a@example.com", "b@example.com") and c.smtp_password == "pw"
    assert (c.alert_severity.value, c.alert_cooldown, c.alert_on_end) == ("warning", 60.0, False)
    c = alert_config({"smtp_host": "h", "mail_to": ["a@example.com,b@example.com", "c@example.com"],
                      "mail_from": "Babysit <babysit@example.com>"}, {})
    assert c.mail_to == ("a@example.com", "b@example.com", "c@example.com") and c.smtp_port == 587


def test_the_password_is_never_in_the_repr():
    c = alert_config({"smtp_host": "h", "mail_to": ["a@example.com"], "smtp_user": "me@example.com"},
                     {"BABYSIT_SMTP_PASSWORD": "hunter2-secret"})
    assert "hunter2" not in repr(c) and "hunter2" not in c.describe()


def test_the_password_can_come_from_another_variable():
    c = alert_config({"smtp_host": "h", "mail_to": ["a@example.com"], "smtp_user": "me@example.com",
                      "smtp_password_env": "BABYSIT_SMTP_SECRET"}, {"BABYSIT_SMTP_SECRET": "s"})
    assert c.smtp_password == "s"


@pytest.mark.parametrize("options, environ, message", [
    ({"smtp_host": "h"}, {}, "--smtp-host is set but --mail-to (or BABYSIT_MAIL_TO) is not"),
    ({}, {"BABYSIT_MAIL_TO": "a@example.com"}, "BABYSIT_MAIL_TO is set but --smtp-host (or BABYSIT_SMTP_HOST)"),
    ({}, {"BABYSIT_SMTP_HOTS": "h"}, "unknown variable BABYSIT_SMTP_HOTS"),
    ({"smtp_port": 0}, {}, "--smtp-port: expected 1..65535, got 0"),
    ({}, {"BABYSIT_SMTP_PORT": "five"}, "BABYSIT_SMTP_PORT: expected a whole number, got 'five'"),
    ({}, {"BABYSIT_ALERT_ON_END": "maybe"}, "BABYSIT_ALERT_ON_END: expected 1/0"),
    ({"smtp_security": "tls"}, {}, "--smtp-security: expected one of starttls, ssl, none"),
    ({"smtp_user": "me@example.com"}, {}, "--smtp-user: a login needs its password in $BABYSIT_SMTP_PASSWORD"),
    ({"smtp_user": "me", "smtp_security": "none"}, {"BABYSIT_SMTP_PASSWORD": "p"}, "unencrypted"),
    ({"mail_from": None, "smtp_user": "me"}, {"BABYSIT_SMTP_PASSWORD": "p"}, "--mail-from (or BABYSIT_MAIL_FROM)"),
    ({"mail_to": ["not an address"]}, {}, "--mail-to: expected an email address"),
    ({"mail_from": "a@example.com\r\nBcc: x@example.com"}, {}, "--mail-from: expected an email address on one line"),
    ({"alert_severity": "info"}, {}, "--alert-severity: expected warning or critical"),
    ({"alert_cooldown": -1.0}, {}, "--alert-cooldown: expected seconds >= 0"),
    ({"alert_tries": 0}, {}, "--alert-tries: expected a whole number of tries, at least 1"),
    ({}, {"BABYSIT_PUBLIC_URL": "babysit.example.com"}, "BABYSIT_PUBLIC_URL: expected the dashboard's address"),
])
def test_a_bad_setting_is_refused_naming_the_option_or_variable(options, environ, message):
    base = {"smtp_host": "h", "mail_to": ["a@example.com"], "mail_from": "b@example.com"}
    if "smtp_host" in options and len(options) == 1 or "BABYSIT_MAIL_TO" in environ:
        base = {}
    with pytest.raises(ValueError) as error:
        alert_config({**base, **options}, environ)
    assert message in str(error.value)


def test_serve_refuses_half_an_alert_setup_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BABYSIT_MAIL_TO", raising=False)
    assert cli.main(["serve", "--logdir", str(tmp_path), "--smtp-host", "smtp.example.com"]) == cli.USAGE_ERROR
    assert capsys.readouterr().err == ("babysit serve: error: --smtp-host is set but --mail-to (or BABYSIT_MAIL_TO) "
                                       "is not: alert emails need both an SMTP host and a recipient\n")
