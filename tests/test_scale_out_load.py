"""The load of the scaled-out shape, briefly, for what must hold under it: 50 trainers and
100 viewers on 2 ``babysit serve`` processes sharing real PostgreSQL and Redis servers
(benchmarks/scale_out.py, which also gives the figures). Nothing lost, nothing duplicated:
the store holds every acknowledged seq of every run once, and every viewer received every
seq of its run once. Bounded in time: a few seconds of load at a rate this 2-core machine
keeps up with under the rest of the suite."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cores import all_cores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from scale_out import report, run_load  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fifty_trainers_and_a_hundred_viewers_on_two_processes_lose_and_duplicate_nothing(postgres_url):
    with all_cores():  # two servers, the trainers' and the viewers' processes
        result = run_load(trainers=50, viewers=100, processes=2, rate=100.0, interval=0.1, seconds=3.0,
                          store=postgres_url)
    print(report(result))
    assert result.acknowledged > 50 * 100 * 1.5  # every trainer got through, most of the time asked
    assert result.stored == result.acknowledged and result.missing_stored == 0 and result.duplicates_stored == 0
    assert result.viewers_dropped == 0 and result.viewer_gaps == 0 and result.viewer_duplicates == 0
    assert result.deliveries == result.expected_deliveries == 2 * result.acknowledged
