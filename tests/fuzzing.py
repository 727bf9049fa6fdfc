"""What the property-based tests share: their hypothesis settings, hostile values, and a
log watcher that catches any server error.

Why derandomized: CI must run the same cases on every machine and every run, so a
failure is never a one-off that the next run hides, and a failing case reproduces from
its log alone. Exploring new cases is one variable away: ``BABYSIT_PROPERTY_RANDOM=1``
draws fresh ones (and hypothesis prints the seed of any failure it finds), and
``BABYSIT_PROPERTY_SCALE=10`` runs ten times as many.
"""
from __future__ import annotations

import logging
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

RANDOM = os.environ.get("BABYSIT_PROPERTY_RANDOM") == "1"
SCALE = float(os.environ.get("BABYSIT_PROPERTY_SCALE", "1"))


def property_settings(examples: int, **overrides) -> settings:
    """Settings for a property over a real server: ``examples`` cases, no deadline (a
    shared 2-core machine makes any one call slow now and then), no example database
    (nothing written into the tree), derandomized unless ``BABYSIT_PROPERTY_RANDOM=1``."""
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, database=None, derandomize=not RANDOM,
                    # The server is a module fixture on purpose (one per module, not one per
                    # case); each case writes to fresh run ids, so cases do not share state.
                    # too_slow / data_too_large: huge payloads are part of what is tested.
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example],
                    **overrides)


#: Strings that have broken servers: lone surrogates (JSON escapes can carry them), NUL,
#: markup, path and list separators, right-to-left and combining marks, a BOM.
HOSTILE = ("\ud800", "\udfff", "\udc80a", "a\ud83d", "\x00", "<script>alert(1)</script>", "\"'&<>",
           "../", "a,b", "%00", "\u202e", "e\u0301", "\ufeff", "NaN", "Infinity", "-0", "😀", "层",
           "$float", "$bytes")  # the codec's tags, as keys of any object

#: Any code point, lone surrogates (category Cs) included: hypothesis leaves them out by
#: default. One character strategy, not a union: hypothesis draws such text many times faster.
any_character = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None, exclude_categories=[])
any_text = st.one_of(st.text(any_character, max_size=24), st.sampled_from(HOSTILE),
                     st.tuples(st.text(any_character, max_size=8), st.sampled_from(HOSTILE),
                               st.text(any_character, max_size=8)).map("".join))


class ServerErrors(logging.Handler):
    """Collects what an operator would read as a server error: any record at ERROR or above
    and any record carrying a traceback, from every logger (babysit, flask, engineio,
    socketio); and, apart, babysit's one-line refusals."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.errors: list[logging.LogRecord] = []
        self.refusals: list[logging.LogRecord] = []

    #: Loggers of the client libraries: what a client of this or another test says about
    #: its own connection (a write loop that timed out once its server was gone) is no
    #: error of the server under test.
    CLIENT_LOGGERS = ("engineio.client", "socketio.client")

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.CLIENT_LOGGERS):
            return
        if record.levelno >= logging.ERROR or record.exc_info or record.exc_text:
            self.errors.append(record)
        elif record.name == "babysit.server" and "refused a batch" in record.getMessage():
            self.refusals.append(record)

    def shown(self) -> list[str]:
        """The errors as the log would show them, traceback included."""
        return [logging.Formatter("%(name)s %(levelname)s %(message)s").format(r) for r in self.errors]

    def __enter__(self) -> "ServerErrors":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)
