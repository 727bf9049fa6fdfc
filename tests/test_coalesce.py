"""The runs index is told at once after a quiet interval, then at most every interval with
every run noted meanwhile, and nothing noted is left untold."""
import threading
import time

from web.coalesce import Coalesced


def background(fn, *args):
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def test_notices_are_sent_at_once_then_gathered_per_interval_and_none_is_lost():
    sent, times = [], []

    def send(runs):
        sent.append(runs)
        times.append(time.monotonic())

    index = Coalesced(send, background, time.sleep, interval=0.2)
    index.note(["a"])
    assert sent == [["a"]]  # the first after a quiet interval: at once
    for run in ["b", "c", "b", "d"]:
        index.note([run])
    assert sent == [["a"]]  # the rest waits for the end of the interval
    deadline = time.monotonic() + 5
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent == [["a"], ["b", "c", "d"]]  # together, each once, in the order noted
    assert times[1] - times[0] >= 0.19
    time.sleep(0.3)
    index.note(["e"])
    assert sent[-1] == ["e"]  # quiet again: at once
    index.note([])
    time.sleep(0.3)
    assert sent == [["a"], ["b", "c", "d"], ["e"]]  # nothing noted, nothing sent
