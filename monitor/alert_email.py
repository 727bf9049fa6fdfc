"""What an alert email says: subject, plain text and HTML from a list of alerts.

Pure text building. One alert makes a focused email; several make a digest (the first
:data:`DIGEST_DETAILED` in full, the rest one line each). Every text that came from a
training process (run and layer names, messages, evidence, advice) is escaped in the HTML
and flattened to one line in the subject, so a hostile name can neither run script in a
mail reader nor inject a header.
"""
from __future__ import annotations

import html
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from monitor.alerts import RUN_END, Alert

#: Alerts a digest shows in full; the rest get one line each.
DIGEST_DETAILED = 20
#: Characters of a subject (mail readers cut it anyway; a cap keeps a hostile message short).
SUBJECT_LENGTH = 160
#: Evidence entries shown per alert, and characters per value.
EVIDENCE_ITEMS = 20
EVIDENCE_VALUE_LENGTH = 200
PREFIX = "[babysit]"


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str


def compose(alerts: Sequence[Alert], overflow: int = 0) -> EmailContent:
    """The email for ``alerts`` (at least one); ``overflow`` alerts were not kept and are counted."""
    if not alerts:
        raise ValueError("compose: expected at least one alert")
    if len(alerts) == 1 and not overflow:
        return _single(alerts[0])
    return _digest(list(alerts), overflow)


# ----------------------------------------------------------------------------- one

def _single(alert: Alert) -> EmailContent:
    if alert.kind == RUN_END:
        subject = f"{PREFIX} {alert.message}"
        intro = (f"Run {alert.run} went silent: the server marked it lost." if alert.evidence.get("state") == "lost"
                 else f"Run {alert.run} ended abnormally.")
    else:
        subject = (f"{PREFIX} {alert.severity.value} {alert.kind} in run {alert.run} at step {alert.step}: "
                   f"{alert.message}")
        intro = f"babysit flagged run {alert.run}."
    text = "\n".join([intro, "", *_text_block(alert), "", "-- babysit (alert emails: see docs/alerts.md)", ""])
    body = f"<p>{_e(intro)}</p>\n{_html_block(alert)}"
    return EmailContent(_subject(subject), text, _page(subject, body))


# -------------------------------------------------------------------------- digest

def _digest(alerts: list[Alert], overflow: int) -> EmailContent:
    runs = list(dict.fromkeys(a.run for a in alerts))
    total = len(alerts) + overflow
    kinds = Counter("run ended" if a.kind == RUN_END else a.kind for a in alerts)
    what = ", ".join(f"{kind} x{n}" if n > 1 else kind for kind, n in kinds.most_common())
    where = f"run {runs[0]}" if len(runs) == 1 else f"{len(runs)} runs"
    subject = f"{PREFIX} {total} alerts in {where}: {what}"
    intro = f"babysit has {total} alerts in {where} ({', '.join(runs[:10])}{', ...' if len(runs) > 10 else ''})."
    detailed, brief = alerts[:DIGEST_DETAILED], alerts[DIGEST_DETAILED:]
    lines = [intro, ""]
    parts = [f"<p>{_e(intro)}</p>"]
    for number, alert in enumerate(detailed, 1):
        lines += [f"{number}. {_headline(alert)}", *("   " + line for line in _text_block(alert)), ""]
        parts.append(f"<h3>{number}. {_e(_headline(alert))}</h3>\n{_html_block(alert)}")
    if brief:
        lines.append("More:")
        items = []
        for alert in brief:
            lines.append(f"- {_headline(alert)}: {_line(alert.message)}" + (f" ({alert.url})" if alert.url else ""))
            items.append(f"<li>{_link(alert.url, _headline(alert))}: {_e(_line(alert.message))}</li>")
        parts.append("<p>More:</p><ul>" + "".join(items) + "</ul>")
    if overflow:
        note = (f"{overflow} more alerts arrived while this email waited and were not kept; "
                "the dashboard lists every flag.")
        lines.append(note)
        parts.append(f"<p>{_e(note)}</p>")
    lines += ["", "-- babysit (alert emails: see docs/alerts.md)", ""]
    return EmailContent(_subject(subject), "\n".join(lines), _page(subject, "\n".join(parts)))


def _headline(alert: Alert) -> str:
    if alert.kind == RUN_END:
        return f"run {alert.run} ended: {alert.evidence.get('state', '?')}"
    layer = f", layer {_line(alert.layer)}" if alert.layer else ""
    return f"run {alert.run}: {alert.severity.value} {alert.kind}{layer} at step {alert.step}"


# --------------------------------------------------------------------------- parts

def _facts(alert: Alert) -> list[tuple[str, str]]:
    """The labelled facts of one alert, shared by the text and the HTML."""
    run = alert.run + (f" ({alert.name} on {alert.host})" if alert.name and alert.host else "")
    facts = [("Run", run)]
    if alert.kind != RUN_END:
        facts.append(("Flag", f"{alert.kind} ({alert.severity.value})"))
        if alert.layer:
            facts.append(("Layer", alert.layer))
    facts += [("Step", str(alert.step)), ("When", _when(alert.wall)), ("What", alert.message)]
    return facts


def _evidence(alert: Alert) -> list[tuple[str, str]]:
    items = list(alert.evidence.items())
    shown = [(str(k), _value(v)) for k, v in items[:EVIDENCE_ITEMS]]
    if len(items) > EVIDENCE_ITEMS:
        shown.append(("...", f"{len(items) - EVIDENCE_ITEMS} more on the run page"))
    return shown


def _text_block(alert: Alert) -> list[str]:
    lines = [f"{label}: {_line(value)}" for label, value in _facts(alert)]
    if alert.evidence:
        lines += ["Evidence:", *(f"  {_line(k)}: {_line(v)}" for k, v in _evidence(alert))]
    lines.append(f"Advice: {alert.advice}" if alert.advice else "Advice: see the run page")
    lines.append(f"Run page: {alert.url}" if alert.url else "Run page: (no public URL configured)")
    return lines


def _html_block(alert: Alert) -> str:
    rows = [(label, _e(value)) for label, value in _facts(alert)]
    if alert.evidence:
        rows.append(("Evidence", "<br>".join(f"<code>{_e(k)}</code>: {_e(v)}" for k, v in _evidence(alert))))
    rows.append(("Advice", _e(alert.advice or "see the run page")))
    rows.append(("Run page", _link(alert.url, alert.url) if alert.url else "(no public URL configured)"))
    cells = "".join(f'<tr><th style="text-align:left;vertical-align:top;padding:2px 12px 2px 0">{_e(label)}</th>'
                    f'<td style="padding:2px 0">{value}</td></tr>' for label, value in rows)
    return f'<table style="border-collapse:collapse">{cells}</table>'


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{_e(_line(title))}</title></head>\n'
            f'<body style="font-family:sans-serif;font-size:14px">\n{body}\n'
            f'<p style="color:#666">-- babysit (alert emails: see docs/alerts.md)</p>\n</body></html>\n')


def _link(url: str | None, label: str | None) -> str:
    if not url:
        return _e(label or "")
    return f'<a href="{_e(url)}">{_e(label or url)}</a>'


def _value(value: Any) -> str:
    """An evidence value as a person reads it (NaN and Inf named, numbers to 6 digits)."""
    if isinstance(value, bool) or value is None:
        text = str(value).lower() if value is not None else "null"
    elif isinstance(value, float):
        text = ("NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf")) if not math.isfinite(value) \
            else f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_value(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= EVIDENCE_VALUE_LENGTH else text[:EVIDENCE_VALUE_LENGTH - 3] + "..."


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _line(text: Any) -> str:
    """One line: control characters (newlines included) become spaces."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())


def _subject(text: str) -> str:
    text = _line(text)
    return text if len(text) <= SUBJECT_LENGTH else text[:SUBJECT_LENGTH - 3] + "..."


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
