"""Alert email settings: one frozen dataclass, from options, then ``BABYSIT_*`` variables.

Every field has a command-line option of ``babysit serve`` named after it (``smtp_host``:
``--smtp-host``) and an environment variable (``BABYSIT_SMTP_HOST``); an option given wins
over its variable. Alerts are off until both an SMTP host and a recipient are configured.
The password is never an option (it would show in ``ps`` and shell history): it is read
from the variable named by ``smtp_password_env`` (default ``BABYSIT_SMTP_PASSWORD``) and
kept out of ``repr``. An unknown ``BABYSIT_SMTP_*``, ``BABYSIT_MAIL_*`` or
``BABYSIT_ALERT_*`` variable is an error, so a typo does not silently turn alerts off.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from email.utils import parseaddr
from typing import Any, Mapping

from monitor.events import Severity

SECURITY_MODES = ("starttls", "ssl", "none")
#: The usual port of each mode: submission with STARTTLS (RFC 6409), implicit TLS (RFC 8314), relay.
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
#: An email interrupts a person: by default only what needs action now (a diverged run).
#: Warnings (dead units, plateau, overfitting) stay on the dashboard unless asked for.
ALERT_SEVERITY = Severity.CRITICAL
#: Seconds during which a repeat of the same (run, kind, layer) sends nothing.
ALERT_COOLDOWN = 30 * 60.0
#: Seconds an alert waits for others: a divergence arrives as several flags and the run's
#: end within a second or two, and they belong in one email.
ALERT_GATHER = 10.0
#: Seconds between two emails at least: a storm (a sweep whose runs all diverge) becomes
#: one digest a minute, not a flood.
ALERT_INTERVAL = 60.0
#: Tries per email when the SMTP server is unreachable or answers "try later" (4xx).
ALERT_TRIES = 5
#: Seconds before the second try; doubled for each next one (5, 10, 20, 40: about 75 s in all).
ALERT_BACKOFF = 5.0
#: Seconds to connect to the SMTP server or wait for one of its answers.
SMTP_TIMEOUT = 10.0
PASSWORD_ENV = "BABYSIT_SMTP_PASSWORD"
ENV_PREFIX = "BABYSIT_"
#: Variables under these prefixes must be known ones (a typo is an error, not silence).
OWNED_PREFIXES = ("BABYSIT_SMTP_", "BABYSIT_MAIL_", "BABYSIT_ALERT_")

_ADDRESS = re.compile(r"[^@\s<>,;:\"'()\[\]\\]+@[A-Za-z0-9.-]+")
#: A dashboard address as links use it (no spaces or quotes: it goes into an href).
URL_PATTERN = re.compile(r"https?://[^\s\"'<>\\]+")


@dataclass(frozen=True)
class AlertConfig:
    """Where alert emails go, how they are delivered, and what deserves one."""

    smtp_host: str
    mail_to: tuple[str, ...]
    mail_from: str | None = None  # default: smtp_user when it is an address
    smtp_port: int | None = None  # default: DEFAULT_PORTS[smtp_security]
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False, compare=False)
    smtp_password_env: str = PASSWORD_ENV
    smtp_ca_file: str | None = None  # CA certificates trusted instead of the system's (a relay's own CA)
    smtp_timeout: float = SMTP_TIMEOUT
    alert_severity: Severity = ALERT_SEVERITY
    alert_on_end: bool = True  # email when a run ends diverged or crashed
    alert_cooldown: float = ALERT_COOLDOWN
    alert_gather: float = ALERT_GATHER
    alert_interval: float = ALERT_INTERVAL
    alert_tries: int = ALERT_TRIES
    alert_backoff: float = ALERT_BACKOFF
    public_url: str | None = None  # default: the address the training process reached the server at

    def __post_init__(self):
        def set_(name, value):
            object.__setattr__(self, name, value)

        _check_text("smtp_host", self.smtp_host, "a host name or address")
        to = (self.mail_to,) if isinstance(self.mail_to, str) else tuple(self.mail_to)
        if not to:
            raise ValueError("mail_to: expected at least one recipient address")
        for address in to:
            _check_address("mail_to", address)
        set_("mail_to", to)
        if self.smtp_security not in SECURITY_MODES:
            raise ValueError(f"smtp_security: expected one of {', '.join(SECURITY_MODES)}, "
                             f"got {self.smtp_security!r}")
        port = DEFAULT_PORTS[self.smtp_security] if self.smtp_port is None else self.smtp_port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"smtp_port: expected 1..65535, got {port!r}")
        set_("smtp_port", port)
        if self.smtp_user is not None:
            _check_text("smtp_user", self.smtp_user, "a user name")
            if self.smtp_security == "none":
                raise ValueError("smtp_user: a login over smtp_security 'none' would send the password "
                                 "unencrypted; use 'starttls' or 'ssl', or no login for a local relay")
            if not self.smtp_password:
                raise ValueError(f"smtp_user: a login needs its password in ${self.smtp_password_env} "
                                 "(the environment, never an option); it is empty")
        if self.mail_from is None:
            if self.smtp_user is None or not _ADDRESS.fullmatch(self.smtp_user):
                raise ValueError("mail_from: expected the sender's address (it defaults to smtp_user only "
                                 "when that is an address)")
            set_("mail_from", self.smtp_user)
        _check_address("mail_from", self.mail_from)
        _check_text("smtp_password_env", self.smtp_password_env, "a variable name")
        if self.smtp_ca_file is not None:
            _check_text("smtp_ca_file", self.smtp_ca_file, "a file of PEM certificates")
        try:
            set_("alert_severity", Severity(self.alert_severity))
        except ValueError:
            raise ValueError(f"alert_severity: expected warning or critical, got {self.alert_severity!r}") from None
        if not isinstance(self.alert_on_end, bool):
            raise ValueError(f"alert_on_end: expected true or false, got {self.alert_on_end!r}")
        for name in ("smtp_timeout", "alert_cooldown", "alert_gather", "alert_interval", "alert_backoff"):
            value = getattr(self, name)
            positive = name == "smtp_timeout"  # 0 would mean "do not wait at all"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise ValueError(f"{name}: expected seconds {'above 0' if positive else '>= 0'}, got {value!r}")
            set_(name, float(value))
        if isinstance(self.alert_tries, bool) or not isinstance(self.alert_tries, int) or self.alert_tries < 1:
            raise ValueError(f"alert_tries: expected a whole number of tries, at least 1, got {self.alert_tries!r}")
        if self.public_url is not None:
            if not isinstance(self.public_url, str) or not URL_PATTERN.fullmatch(self.public_url):
                raise ValueError(f"public_url: expected the dashboard's address as http(s)://host[:port][/path], "
                                 f"got {self.public_url!r}")
            set_("public_url", self.public_url.rstrip("/"))

    def describe(self) -> str:
        """One line for the server's start-up message (no password)."""
        login = f", login {self.smtp_user}" if self.smtp_user else ""
        what = f"{self.alert_severity.value} flags" + (" and runs that diverge or crash" if self.alert_on_end else "")
        return (f"alert emails ({what}) to {', '.join(self.mail_to)} via {self.smtp_host}:{self.smtp_port} "
                f"({self.smtp_security}{login})")


#: The fields a user sets (options and variables); the password comes through smtp_password_env.
SETTINGS = tuple(f.name for f in fields(AlertConfig) if f.name != "smtp_password")


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def option_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def alert_config(options: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> AlertConfig | None:
    """The alert settings from ``options`` (field name to value; None: not given) and then
    ``environ`` (``BABYSIT_*`` variables as text), or None when alerts are off (neither an
    SMTP host nor a recipient given). A ``ValueError`` names the option or the variable."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    environ = environ or {}
    unknown = sorted(set(options) - set(SETTINGS))
    if unknown:
        raise ValueError(f"alert settings: unknown {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    password_env = options.get("smtp_password_env") or environ.get(env_name("smtp_password_env")) or PASSWORD_ENV
    known_env = {env_name(s) for s in SETTINGS} | {PASSWORD_ENV, password_env}
    typos = sorted(k for k in environ if k.startswith(OWNED_PREFIXES) and k not in known_env)
    if typos:
        raise ValueError(f"unknown variable {', '.join(typos)}: babysit reads "
                         f"{', '.join(sorted(known_env))}")
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for setting in SETTINGS:
        if setting in options:
            values[setting], labels[setting] = options[setting], option_name(setting)
        elif environ.get(env_name(setting), "").strip():
            labels[setting] = env_name(setting)
            values[setting] = _parse(setting, environ[env_name(setting)].strip(), labels[setting])
    if "smtp_host" not in values and "mail_to" not in values:
        return None
    for needed, other in (("smtp_host", "mail_to"), ("mail_to", "smtp_host")):
        if needed not in values:
            raise ValueError(f"{labels[other]} is set but {option_name(needed)} (or {env_name(needed)}) is not: "
                             "alert emails need both an SMTP host and a recipient")
    to = values["mail_to"]  # a comma list, or a repeated option whose items may be comma lists too
    values["mail_to"] = tuple(a for item in ([to] if isinstance(to, str) else to) for a in _split(str(item)))
    try:
        return AlertConfig(**values, smtp_password=environ.get(password_env) or None)
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        if name in labels:
            raise ValueError(f"{labels[name]}:{rest}") from None
        if name in SETTINGS:
            raise ValueError(f"{option_name(name)} (or {env_name(name)}):{rest}") from None
        raise


def _parse(setting: str, text: str, label: str) -> Any:
    """A variable's text as the field's type."""
    kind = {"smtp_port": int, "alert_tries": int, "alert_on_end": bool, "smtp_timeout": float,
            "alert_cooldown": float, "alert_gather": float, "alert_interval": float,
            "alert_backoff": float}.get(setting, str)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{label}: expected 1/0, true/false, yes/no or on/off, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{label}: expected {'a whole number' if kind is int else 'a number of seconds'}, "
                         f"got {text!r}") from None


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _check_text(name: str, value: Any, expected: str) -> None:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\r\n\x00"):
        raise ValueError(f"{name}: expected {expected} on one line, got {value!r}")


def _check_address(name: str, value: Any) -> None:
    """``user@domain`` or ``Name <user@domain>``, one line (a newline would inject headers)."""
    _check_text(name, value, "an email address")
    one = "," not in value and ";" not in value and ("<" in value) == value.rstrip().endswith(">")
    if not one or not _ADDRESS.fullmatch(parseaddr(value)[1] or ""):
        raise ValueError(f"{name}: expected an email address like ops@example.com, got {value!r}")
