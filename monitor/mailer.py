"""Alert delivery: a background thread that turns due alerts into emails and sends them.

The server calls :meth:`AlertMailer.observe` after each committed batch; it only applies
the policy (:class:`monitor.alerts.Alerter`) under a lock, never touches the network, and
never raises, so ingest and its acknowledgement do not wait on email. The thread, started
at the first alert, sleeps until the policy says the pending alerts are due, composes one
email (:mod:`monitor.alert_email`) and delivers it with :mod:`smtplib`: STARTTLS, implicit
TLS or plain (a local relay), and a login when a user is configured.

Failures follow SMTP's own split (RFC 5321): a server that cannot be reached, a timeout or
a 4xx answer ("try later") is retried with exponential back-off (``alert_backoff``,
doubled per try, ``alert_tries`` in all); a 5xx answer (recipient or sender refused,
authentication failed) is permanent and logged once, not retried, since the same request
gets the same answer and repeated failed logins get an account locked. An email that
cannot be delivered is logged and dropped; the alerts that follow still go out. The
password is never logged: every message about a failure is scrubbed of it.
"""
from __future__ import annotations

import atexit
import base64
import logging
import secrets
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Callable, Iterable

from monitor.alert_config import AlertConfig
from monitor.alert_email import EmailContent, compose
from monitor.alerts import Alerter
from monitor.events import Event, Kind

log = logging.getLogger("babysit.alerts")

#: Seconds the process gives pending alerts at exit (a run that crashed in a process
#: serving its own dashboard: the crash email should still go out).
EXIT_FLUSH_SECONDS = 15.0
#: The event kinds the policy reads; a batch without them costs one pass over its kinds.
_ALERT_KINDS = frozenset({Kind.FLAG, Kind.STATUS, Kind.RUN_END, Kind.RUN_START})


class PermanentError(Exception):
    """An SMTP answer that retrying cannot change (5xx), or a server that lacks what the config needs."""


def build_message(config: AlertConfig, content: EmailContent) -> EmailMessage:
    """The MIME message: plain text, with the HTML as its alternative."""
    message = EmailMessage()
    message["Subject"] = content.subject
    message["From"] = config.mail_from
    message["To"] = ", ".join(config.mail_to)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = message_id(parseaddr(config.mail_from)[1].rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    message.set_boundary(boundary(content.text + content.html))
    return message


# The standard library's make_msgid and its MIME generator draw from the global ``random``
# stream, which is the user's own when the dashboard is served inside the training process:
# an alert would change what a seeded script draws next. Both come from ``secrets`` here.

def message_id(domain: str) -> str:
    """A unique Message-ID (RFC 5322) at the sender's domain (not this host's name: no DNS query)."""
    return f"<{time.time_ns()}.{secrets.token_hex(8)}.babysit@{domain}>"


def boundary(body: str) -> str:
    """A MIME boundary that occurs nowhere in ``body`` (RFC 2046, section 5.1.1)."""
    while True:
        candidate = f"==============={secrets.token_hex(16)}=="
        if candidate not in body:
            return candidate


def send_message(config: AlertConfig, message: EmailMessage) -> dict:
    """Deliver one message over one SMTP session; return the recipients refused (a partial
    failure). Raises :class:`PermanentError` for a 5xx answer, OSError or smtplib errors else."""
    context = ssl.create_default_context(cafile=config.smtp_ca_file) if config.smtp_security != "none" else None
    try:
        if config.smtp_security == "ssl":
            smtp = smtplib.SMTP_SSL(config.smtp_host, config.smtp_port, timeout=config.smtp_timeout,
                                    context=context)
        else:
            smtp = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=config.smtp_timeout)
        with smtp:
            if config.smtp_security == "starttls":
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise PermanentError("the server does not offer STARTTLS: set smtp_security to ssl "
                                         "(or none for a local relay without login)")
                smtp.starttls(context=context)
                smtp.ehlo()
            if config.smtp_user:
                smtp.login(config.smtp_user, config.smtp_password)
            return smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = {code for code, _ in exc.recipients.values()}
        if all(code >= 500 for code in codes):
            raise PermanentError(f"every recipient refused: {_answers(exc.recipients)}") from None
        raise
    except smtplib.SMTPResponseException as exc:
        if exc.smtp_code >= 500:
            raise PermanentError(f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}") from None
        raise
    except ssl.SSLCertVerificationError as exc:
        raise PermanentError(f"the SMTP server's certificate is not trusted ({exc.verify_message}): give "
                             "smtp_ca_file with the CA that signed it") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(f"the server does not support what the config needs: {exc}") from None


class AlertMailer:
    """The policy and its delivery thread, for one server. ``send`` delivers one message
    (default :func:`send_message`; a test may wrap it to time the tries)."""

    def __init__(self, config: AlertConfig, *, send: Callable[[AlertConfig, EmailMessage], dict] = send_message):
        self.config = config
        self.alerter = Alerter(config)
        self.sent = 0  # emails delivered
        self.failed = 0  # emails given up on
        self.tries = 0  # connection attempts, successful or not
        self._clock = time.monotonic  # the policy's clock, and the one the waits use
        self._send = send
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._sending = False
        self._flush = False  # send what waits now, without the gather delay
        self._closing = False
        # At exit, send what waits. Registered now, before a training process in which this
        # server runs registers its own close (atexit runs last-in first-out): the run's end
        # reaches us first, and its email goes out with the rest.
        atexit.register(self.close)

    def observe(self, events: Iterable[Event], base_url: str | None = None) -> None:
        """Apply the policy to a stored batch; wake the thread if that queued an alert. Never raises."""
        try:
            relevant = [e for e in events if e.kind in _ALERT_KINDS]
            if not relevant:
                return
            with self._cond:
                if self.alerter.observe(relevant, self._clock(), base_url) and not self._closing:
                    self._start()
                    self._cond.notify_all()
        except Exception:  # a policy bug must not cost the server its batch
            log.exception("babysit: alerts could not read a batch (it is stored; alerting goes on)")

    def lost(self, run: str, step: int, wall: float, reason: str, base_url: str | None = None,
             name: str | None = None, host: str | None = None) -> None:
        """A run the server marked lost (:meth:`monitor.alerts.Alerter.lost`). Never raises."""
        try:
            with self._cond:
                if self.alerter.lost(run, step, wall, reason, self._clock(), base_url, name, host) \
                        and not self._closing:
                    self._start()
                    self._cond.notify_all()
        except Exception:
            log.exception("babysit: alerts could not take a lost run (it is marked; alerting goes on)")

    def flush(self, timeout: float = 30.0) -> bool:
        """Send what waits now (no gather delay) and wait until it is delivered or given up;
        True when nothing is left pending or in flight."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self.alerter.pending and not self._sending:
                return True
            if self._thread is None:
                self._start()
            self._flush = True
            self._cond.notify_all()
            while self.alerter.pending or self._sending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = EXIT_FLUSH_SECONDS) -> None:
        """Send what waits (for up to ``timeout`` seconds, retries cut short), then stop the thread."""
        if self._thread is not None and not self._closing:
            self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(timeout, 1.0))
        atexit.unregister(self.close)

    # ------------------------------------------------------------------ thread

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="babysit-alerts", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    due = self.alerter.due_at()
                    if due is not None and (self._flush or self._closing or self._clock() >= due):
                        alerts, overflow = self.alerter.take(self._clock(), force=True)
                        break
                    if due is None:
                        self._flush = False
                        if self._closing:
                            return
                    self._cond.notify_all()  # a flush waiting on an empty queue returns
                    self._cond.wait(None if due is None else max(0.0, due - self._clock()))
                self._sending = True
            try:
                self._deliver(compose(alerts, overflow), len(alerts) + overflow)
            except Exception as exc:  # never let the thread die: the next alerts still go out
                self.failed += 1
                log.error("babysit: an alert email could not be built or sent: %s", self._scrub(_describe(exc)))
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()

    def _deliver(self, content: EmailContent, count: int) -> None:
        message = build_message(self.config, content)
        backoff = self.config.alert_backoff
        for attempt in range(1, self.config.alert_tries + 1):
            self.tries += 1
            try:
                refused = self._send(self.config, message)
            except PermanentError as exc:
                self.failed += 1
                log.error("babysit: alert email %r not sent, the SMTP server refused it for good (not "
                          "retried): %s", content.subject, self._scrub(str(exc)))
                return
            except (OSError, smtplib.SMTPException) as exc:  # unreachable, timeout, 4xx: may pass
                if attempt == self.config.alert_tries or self._closing:
                    self.failed += 1
                    log.error("babysit: alert email %r given up after %d tries: %s", content.subject, attempt,
                              self._scrub(_describe(exc)))
                    return
                log.warning("babysit: alert email try %d of %d failed (%s); next try in %.3g s", attempt,
                            self.config.alert_tries, self._scrub(_describe(exc)), backoff)
                with self._cond:
                    self._cond.wait_for(lambda: self._closing, backoff)
                backoff *= 2
                continue
            self.sent += 1
            if refused:
                log.warning("babysit: alert email %r: these recipients were refused: %s", content.subject,
                            self._scrub(_answers(refused)))
            log.info("babysit: alert email sent (%d alerts): %s", count, content.subject)
            return

    def _scrub(self, text: str) -> str:
        """``text`` without the password, plain or as AUTH PLAIN/LOGIN would encode it."""
        password = self.config.smtp_password
        if not password:
            return text
        user = self.config.smtp_user or ""
        secrets = {password, _b64(password), _b64(f"\0{user}\0{password}"), _b64(f"{user}\0{password}")}
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"recipients refused: {_answers(exc.recipients)}"
    return f"{type(exc).__name__}: {exc}"


def _answers(refused: dict) -> str:
    return "; ".join(f"{address}: {code} {_text(text)}" for address, (code, text) in refused.items())


def _text(answer) -> str:
    return answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
