"""The wire protocol is defined once: the page's copy is generated from monitor.protocol,
and both sides read an answer's meaning from its fields."""
from pathlib import Path

import pytest

from monitor import protocol
from monitor.protocol import Ack

PAGE_COPY = Path(__file__).resolve().parent.parent / "web" / "js" / "src" / "protocol.js"


def test_the_pages_protocol_module_is_generated_from_the_python_one():
    assert PAGE_COPY.read_text() == protocol.javascript(), \
        "regenerate it: python -m monitor.protocol > web/js/src/protocol.js"


def test_the_page_scripts_name_no_event_or_namespace_of_their_own():
    names = {getattr(protocol, n) for n in protocol._FOR_THE_PAGE if isinstance(getattr(protocol, n), str)}
    for script in PAGE_COPY.parent.glob("*.js"):
        if script == PAGE_COPY:
            continue
        text = script.read_text()
        for name in names:
            for quoted in (f'"{name}"', f"'{name}'"):
                assert f"emit({quoted}" not in text and f"on({quoted}" not in text and \
                    f"request(socket, {quoted}" not in text and f"io({quoted}" not in text, (script.name, name)


@pytest.mark.parametrize("reply, ok, permanent", [
    ({"ok": True, "stored": 3, "last_seq": 2}, True, False),
    ({"ok": False, "error": "bad", "permanent": True}, False, True),
    ({"ok": False, "error": "disk full", "permanent": False}, False, False),
    ({"ok": False, "error": "an old server says retry"}, False, False),  # no field: keep the batch
    (None, False, False),
    ("ok", False, False),
    ({"ok": "yes"}, False, False),
])
def test_an_answer_is_read_from_its_fields_and_anything_else_keeps_the_batch(reply, ok, permanent):
    ack = Ack.from_reply(reply)
    assert (ack.ok, ack.permanent) == (ok, permanent)


def test_acks_round_trip_through_their_wire_form():
    for ack in (Ack(True, stored=2, last_seq=9), Ack(False, "no", permanent=True), Ack(False, "later")):
        again = Ack.from_reply(ack.to_dict())
        assert (again.ok, again.error, again.permanent, again.stored, again.last_seq) == \
            (ack.ok, ack.error, ack.permanent, ack.stored, ack.last_seq)
