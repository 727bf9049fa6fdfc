"""The update-ratio detector: scripted parameter statistics (no training), then real tiny trainings."""
import math

import pytest

from monitor.detectors import diagnose
from monitor.detectors.divergence import Divergence
from monitor.detectors.update_ratio import UpdateRatio
from monitor.events import Event, Kind, LayerStats, Scalars
from monitor.store import RunStore

from conftest import summary
from trainings import train_demo_cnn

WEIGHTS = (("0.weight", "Conv2d"), ("3.weight", "Conv2d"), ("8.weight", "Linear"), ("10.weight", "Linear"))


def params(step, ratios, extra=()):
    """A layer_stats event whose four weight tensors moved by ``ratios`` (one number: all of them)."""
    ratios = ratios if isinstance(ratios, (list, tuple)) else [ratios] * len(WEIGHTS)
    summaries = [summary(name, signal="param_grad", module=module, update_ratio=r, weight_norm=3.0)
                 for (name, module), r in zip(WEIGHTS, ratios)]
    summaries += [summary(name, signal="param_grad", module=module, update_ratio=r, weight_norm=0.1)
                  for name, module, r in extra]
    return Event("r", step, step, 1.0, Kind.LAYER_STATS, LayerStats(tuple(summaries)))


def loss(step, value):
    return Event("r", step, step, 1.0, Kind.SCALARS, Scalars({"loss": value}))


def flags_of(ratios, losses=None, **options):
    events = []
    for i, r in enumerate(ratios):
        if losses is not None:
            events.append(loss(i, losses[i]))
        events.append(params(i, r))
    return diagnose([UpdateRatio(**options)], events)


def test_updates_far_below_1e_3_for_a_window_are_flagged_too_low_once():
    [(event, flag)] = flags_of([1e-3] * 3 + [2e-6] * 20)
    assert flag.kind == "update_ratio" and flag.severity.value == "warning" and flag.layer is None
    assert event.step == 7 and flag.evidence["step"] == 7  # the 5th low sample in a row
    ev = flag.evidence
    assert ev["direction"] == "low" and ev["median"] == 2e-6 and list(ev["recent_medians"]) == [2e-6] * 5
    assert "far below ~0.001: the learning rate is probably too low" in flag.message
    assert "raise it" in flag.advice and "log scale" in flag.advice


def test_updates_far_above_1e_3_for_a_window_are_flagged_too_high():
    [(event, flag)] = flags_of([0.5, 0.3, 0.2, 0.15, 0.12, 0.05])
    assert event.step == 4 and flag.evidence["direction"] == "high"
    assert "far above ~0.001: the learning rate is probably too high" in flag.message
    assert "lower it" in flag.advice


def test_both_directions_can_be_flagged_in_one_run():
    [(_, high), (_, low)] = flags_of([0.5] * 5 + [0.0] * 5)  # too fast, then the network died
    assert (high.evidence["direction"], low.evidence["direction"]) == ("high", "low")


def test_a_healthy_range_and_short_excursions_raise_nothing():
    # the demo's SGD run: 4e-2 in its first epoch, 1e-4 once converged; one sample out of band in five
    assert flags_of([4e-2, 3e-2, 1e-2, 3e-3, 1e-3, 5e-4, 1e-4] * 5) == []
    assert flags_of(([0.5] * 4 + [1e-2]) * 5 + ([1e-7] * 4 + [1e-3]) * 5) == []


def test_the_median_decides_not_one_layer():
    assert flags_of([[1e-7, 1e-3, 1e-3, 2e-3]] * 10) == []  # one frozen-looking layer
    assert len(flags_of([[1e-7, 1e-7, 1e-7, 2e-3]] * 10)) == 1


def test_biases_and_normalisation_layers_do_not_count():
    noisy = [("0.bias", "Conv2d", 5.0), ("1.weight", "BatchNorm2d", 5.0), ("1.bias", "BatchNorm2d", math.inf)]
    events = [params(i, 1e-3, extra=noisy) for i in range(10)]
    assert diagnose([UpdateRatio()], events) == []


def test_a_converged_loss_vetoes_the_too_low_side():
    ratios = [1e-3] * 5 + [1e-6] * 10
    fell = [2.3 * 0.5 ** i for i in range(15)]  # the loss fell to nothing: tiny steps are expected
    stuck = [2.3] * 15
    assert flags_of(ratios, fell) == []
    assert len(flags_of(ratios, stuck)) == 1
    assert len(flags_of(ratios, fell, stuck_level=0.0)) == 1
    assert flags_of([0.5] * 10, fell)[0][1].evidence["direction"] == "high"  # the high side has no veto


def test_missing_and_non_finite_ratios_are_skipped_without_crashing():
    odd = [[math.nan, None, math.inf, 1e-7], [None] * 4] * 10
    assert len(flags_of(odd)) == 1  # only the one finite ratio (a too-low one) counts, when there is one
    assert diagnose([UpdateRatio()], [params(0, [math.nan] * 4), loss(1, math.nan)]) == []


@pytest.mark.parametrize("options", [{"low": 0.0}, {"low": 1e-3}, {"high": 1e-3}, {"high": math.inf},
                                     {"window": 0}, {"window": 1.0}, {"stuck_level": 1.5}, {"low": "1e-5"}])
def test_options_that_cannot_work_are_refused_naming_the_option(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        UpdateRatio(**options)


def test_the_demo_at_a_learning_rate_of_1e_6_is_flagged_too_low(tmp_path):
    mon = train_demo_cnn(tmp_path, [UpdateRatio()], epochs=1, lr=1e-6)
    [flag] = mon.flags
    assert flag.evidence["direction"] == "low" and flag.evidence["median"] < 1e-5
    assert flag.evidence["step"] == 8  # every 2nd step sampled: the 5th sample
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id)
    assert [f for _, f in diagnose([UpdateRatio()], stored)] == mon.flags


def test_the_demo_at_a_learning_rate_of_2_is_flagged_too_high_before_anything_diverges(tmp_path):
    # 40x the demo's rate: the first steps rewrite the weights (ratios 0.3 to 2), the loss stays finite
    mon = train_demo_cnn(tmp_path, [UpdateRatio(), Divergence()], epochs=1, every=1, lr=2.0)
    [flag] = mon.flags
    assert flag.kind == "update_ratio" and flag.evidence["direction"] == "high"
    assert flag.evidence["step"] == 4 and min(flag.evidence["recent_medians"]) > 0.5
