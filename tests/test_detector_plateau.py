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


def test_a_loss_stuck_at_chance_is_flagged_once_within_a_hundred_steps():
    [(event, flag)] = flags_of(noisy(math.log(10), 600))
    assert flag.kind == "plateau" and flag.severity.value == "warning" and flag.layer is None
    ev = flag.evidence
    assert ev["step"] == event.step < 100 and ev["window"] >= 50 and not ev["above_start"]
    assert ev["level"] == pytest.approx(1.0, abs=0.05) and ev["improvement"] < 0.05 * ev["later_median"]
    assert "not making progress: it has not moved beyond its noise over the last" in flag.message
    assert "raise the rate" in flag.advice and "log scale" in flag.advice and "labels" in flag.advice


def test_a_falling_loss_is_not_a_plateau():
    assert flags_of([2.3 * 0.995 ** i for i in range(1000)]) == []
    assert flags_of([2.3 / (1 + i / 20) for i in range(1000)]) == []  # slowing down, but still improving


def test_a_noisy_slowly_learning_run_with_small_batches_is_not_a_plateau():
    rng = random.Random(3)
    # 5000 steps of a hard task: the loss comes down from 2.3 to 1.3 under noise of +-60 %, then stays
    values = [(1.3 + 1.0 * math.exp(-i / 500)) * math.exp(rng.gauss(0, 0.6)) for i in range(5000)]  # flat tail
    assert flags_of(values) == []


def test_a_loss_converged_near_zero_is_not_a_plateau():
    # falls from 2.3 to ~1e-3 and then moves only by noise: flat, but 0.04 % of its start
    values = [2.3 * 0.95 ** i for i in range(150)] + noisy(1e-3, 800, spread=0.9)
    assert flags_of(values) == []
    assert flags_of(values, min_level=0.0) == []  # that noise is too loud to call it flat anyway
    quiet = [2.3 * 0.95 ** i for i in range(150)] + noisy(1e-3, 800, spread=0.01)
    assert flags_of(quiet) == [] and len(flags_of(quiet, min_level=0.0)) == 1  # the level is what spares it


def test_a_loss_that_levels_off_with_little_progress_is_flagged():
    values = [2.3 * 0.995 ** i for i in range(20)] + noisy(2.0, 400)  # 2.0 is 87 % of the start
    [(event, flag)] = flags_of(values)
    assert flag.evidence["from_step"] >= 0 and 0.8 < flag.evidence["level"] < 0.95
    # after real progress (down to 37 % of the start) a flat tail may be the task's floor: left alone
    assert flags_of([2.3 * 0.99 ** i for i in range(100)] + noisy(0.85, 400)) == []


def test_a_loss_that_climbed_or_stands_above_its_start_is_not_a_plateau():
    assert flags_of([2.3 * (1.02 ** i) for i in range(40)] + noisy(2.3 * 1.02 ** 40, 400)) == []  # 2.2x: divergence
    assert flags_of(noisy(2.3, 10) + noisy(2.9, 400)) == []  # 1.26x its start, flat: it went the wrong way


def test_a_learning_rate_warm_up_is_not_a_plateau():
    events = [Event("r", i, i, 1.0, Kind.SCALARS, Scalars({"loss": v, "lr": 1e-3 * min(1.0, i / 300)}))
              for i, v in enumerate(noisy(2.3, 300))]
    assert diagnose([Plateau()], events) == []


def test_the_window_and_the_horizon_are_options():
    [(event, _)] = flags_of(noisy(2.3, 300), min_window=20)
    assert event.step < 40
    # a loss creeping down 0.5 % per 100 steps would halve in 10,000 steps: over 100 times
    # the 55 logged when it is first judged, under 1000 times
    slow = [2.3 * (1 - 0.00005 * i) for i in range(600)]
    [(event, flag)] = flags_of(slow)
    assert event.step < 60 and "halving it would take" in flag.message
    assert flag.evidence["halving_steps"] > 100 * flag.evidence["logged"]
    assert flags_of(slow, horizon=1000) == []


def test_a_slow_start_well_beyond_its_noise_is_not_a_plateau():
    """The README example's first steps: 4 % down in 54 steps under a noise of 0.01, on its
    way to 0.1: significant, and halving at that rate takes a few hundred steps."""
    rng = random.Random(5)
    values = [2.309 - 0.0016 * i + rng.gauss(0, 0.01) for i in range(120)]
    assert flags_of(values) == []


def test_a_floor_moves_the_level():
    # a loss that can only go down to 2.0 (say, a regularised objective), stuck at 2.05
    values = [3.0 * 0.99 ** i for i in range(10)] + noisy(2.6, 400, spread=0.001)
    assert len(flags_of(values)) == 1  # 87 % of its start: stuck
    assert flags_of(values, floor=2.55) == []  # 10 % of the way from its floor: converged


def test_nan_and_infinite_losses_are_skipped_without_crashing():
    values = noisy(2.3, 400)
    values[10:20] = [math.nan] * 10
    values[50] = math.inf
    [(_, flag)] = flags_of(values)
    assert math.isfinite(flag.evidence["later_median"]) and math.isfinite(flag.evidence["noise"])
    assert diagnose([Plateau()], [Event("r", 0, 0, 1.0, Kind.SCALARS, Scalars({"val_loss": 1.0}))]) == []


def test_the_smoothed_loss_knows_how_far_it_has_come():
    ema = SmoothedLoss(span=1)  # alpha 1: the last value
    assert ema.level() is None and not ema.add(math.nan) and ema.add(2.0) and ema.add(0.5)
    assert ema.first == 2.0 and ema.level() == 0.25 and ema.level(floor=1.0) == -0.5
    assert SmoothedLoss(first=-1.0, value=-1.0).level() is None  # below the floor from the start: unknown


@pytest.mark.parametrize("options", [{"min_window": 0}, {"min_window": 2.5}, {"max_window": 10}, {"min_delta": 1.0},
                                     {"min_delta": -0.1}, {"floor": math.inf}, {"min_level": 1.0},
                                     {"min_level": math.nan}, {"scalar": ""}, {"min_window": True}, {"z": -1.0},
                                     {"climbed": 0.5}])
def test_options_that_cannot_work_are_refused_naming_the_option(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        Plateau(**options)


def test_the_demo_at_a_learning_rate_of_1e_6_is_flagged_while_its_loss_sits_at_ln_10(tmp_path):
    mon = train_demo_cnn(tmp_path, [Plateau()], epochs=5, lr=1e-6)
    [flag] = mon.flags
    assert flag.kind == "plateau" and flag.evidence["step"] < 100  # the window of 200 logged values waited to 200
    assert flag.evidence["later_median"] == pytest.approx(math.log(10), rel=0.05)
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id)
    assert [f for _, f in diagnose([Plateau()], stored)] == mon.flags
