"""The plateau detector: scripted loss curves (no training), then a real tiny training."""
import math
import random

import pytest

from monitor.detectors import diagnose
from monitor.detectors.common import SmoothedLoss
from monitor.detectors.plateau import Plateau
from monitor.events import Event, Kind, Scalars
from monitor.store import RunStore

from trainings import train_demo_cnn


def losses(values):
    return [Event("r", i, i, 1.0 + i, Kind.SCALARS, Scalars({"loss": v})) for i, v in enumerate(values)]


def flags_of(values, **options):
    return diagnose([Plateau(**options)], losses(values))


def noisy(level, n, spread=0.05, seed=0):
    rng = random.Random(seed)
    return [level * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_a_loss_stuck_at_chance_is_flagged_once_after_the_window():
    [(event, flag)] = flags_of(noisy(math.log(10), 600))
    assert flag.kind == "plateau" and flag.severity.value == "warning" and flag.layer is None
    ev = flag.evidence
    assert ev["logged"] == 200 and ev["step"] == event.step == ev["best_step"] + 200  # noise may set a new best
    assert ev["level"] == pytest.approx(1.0, abs=0.05) and ev["best"] <= ev["smoothed"]
    assert "has not improved by 1% in 200 logged steps" in flag.message
    assert "learning rate" in flag.advice and "log scale" in flag.advice and "labels" in flag.advice


def test_a_falling_loss_is_not_a_plateau():
    assert flags_of([2.3 * 0.995 ** i for i in range(1000)]) == []
    assert flags_of([2.3 / (1 + i / 20) for i in range(1000)]) == []  # slowing down, but still improving


def test_a_loss_converged_near_zero_is_not_a_plateau():
    # falls from 2.3 to ~1e-3 and then moves only by noise: flat, but 0.04 % of its start
    values = [2.3 * 0.95 ** i for i in range(150)] + noisy(1e-3, 800, spread=0.9)
    assert flags_of(values) == []
    assert len(flags_of(values, min_level=0.0)) == 1  # without the level, noise near 0 looks flat


def test_a_loss_that_levels_off_after_progress_is_flagged_counting_from_its_last_improvement():
    values = [2.3 * 0.99 ** i for i in range(100)] + noisy(0.85, 400)  # 0.84 is 37 % of the start
    [(event, flag)] = flags_of(values)
    assert flag.evidence["best_step"] >= 100 and event.step == flag.evidence["best_step"] + 200
    assert 0.3 < flag.evidence["level"] < 0.45


def test_the_window_and_min_delta_are_options():
    [(event, _)] = flags_of(noisy(2.3, 300), window=50)
    assert event.step < 100
    # a loss falling 0.5 % per 100 steps improves on its best by less than 1 %, but more than 0.1 %
    slow = [2.3 * (1 - 0.00005 * i) for i in range(600)]
    assert len(flags_of(slow)) == 1 and flags_of(slow, min_delta=0.001) == []


def test_a_floor_moves_the_level():
    # a loss that can only go down to 2.0 (say, a regularised objective), stuck at 2.05
    values = [3.0 * 0.98 ** i for i in range(21)] + noisy(2.05, 400, spread=0.001)
    assert len(flags_of(values)) == 1  # 68 % of its start: stuck
    assert flags_of(values, floor=2.0) == []  # 5 % of the way from its floor: converged


def test_nan_and_infinite_losses_are_skipped_without_crashing():
    values = noisy(2.3, 400)
    values[10:20] = [math.nan] * 10
    values[50] = math.inf
    [(_, flag)] = flags_of(values)
    assert math.isfinite(flag.evidence["smoothed"]) and flag.evidence["logged"] == 200
    assert diagnose([Plateau()], [Event("r", 0, 0, 1.0, Kind.SCALARS, Scalars({"val_loss": 1.0}))]) == []


def test_the_smoothed_loss_knows_how_far_it_has_come():
    ema = SmoothedLoss(span=1)  # alpha 1: the last value
    assert ema.level() is None and not ema.add(math.nan) and ema.add(2.0) and ema.add(0.5)
    assert ema.first == 2.0 and ema.level() == 0.25 and ema.level(floor=1.0) == -0.5
    assert SmoothedLoss(first=-1.0, value=-1.0).level() is None  # below the floor from the start: unknown


@pytest.mark.parametrize("options", [{"span": 0}, {"window": 0}, {"window": 2.5}, {"min_delta": 1.0},
                                     {"min_delta": -0.1}, {"floor": math.inf}, {"min_level": 1.0},
                                     {"min_level": math.nan}, {"scalar": ""}, {"window": True}])
def test_options_that_cannot_work_are_refused_naming_the_option(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        Plateau(**options)


def test_the_demo_at_a_learning_rate_of_1e_6_is_flagged_while_its_loss_sits_at_ln_10(tmp_path):
    mon = train_demo_cnn(tmp_path, [Plateau()], epochs=5, lr=1e-6)
    [flag] = mon.flags
    assert flag.kind == "plateau" and flag.evidence["step"] == 200  # the window, counted from the first loss
    assert flag.evidence["smoothed"] == pytest.approx(math.log(10), rel=0.05)
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id)
    assert [f for _, f in diagnose([Plateau()], stored)] == mon.flags
