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
    assert event.step == 13 and flag.evidence["step"] == 13  # 10 steps after the first low sample
    assert flag.evidence["steps"] == 10 and flag.evidence["samples"] == 11
    ev = flag.evidence
    assert ev["direction"] == "low" and ev["median"] == 2e-6 and list(ev["recent_medians"]) == [2e-6] * 5
    assert "far below ~0.001: the learning rate is probably too low" in flag.message
    assert "raise it" in flag.advice and "log scale" in flag.advice


def test_updates_far_above_1e_3_for_a_window_are_flagged_too_high():
    [(event, flag)] = flags_of([0.5] * 3 + [0.3] * 3 + [0.2] * 3 + [0.15] * 3 + [0.05])
    assert event.step == 10 and flag.evidence["direction"] == "high"
    assert "far above ~0.001: the learning rate is probably too high" in flag.message
    assert "lower it" in flag.advice


def test_both_directions_can_be_flagged_in_one_run():
    [(_, high), (_, low)] = flags_of([0.5] * 12 + [0.0] * 12)  # too fast, then the network died
    assert (high.evidence["direction"], low.evidence["direction"]) == ("high", "low")


def test_a_healthy_range_and_short_excursions_raise_nothing():
    # the demo's SGD run: 4e-2 in its first epoch, 1e-4 once converged; one sample out of band in five
    assert flags_of([4e-2, 3e-2, 1e-2, 3e-3, 1e-3, 5e-4, 1e-4] * 5) == []
    assert flags_of(([0.5] * 4 + [1e-2]) * 5 + ([1e-7] * 4 + [1e-3]) * 5) == []


def test_the_median_decides_not_one_layer():
    assert flags_of([[1e-7, 1e-3, 1e-3, 2e-3]] * 12) == []  # one frozen-looking layer
    assert len(flags_of([[1e-7, 1e-7, 1e-7, 2e-3]] * 12)) == 1


def test_biases_and_normalisation_layers_do_not_count():
    noisy = [("0.bias", "Conv2d", 5.0), ("1.weight", "BatchNorm2d", 5.0), ("1.bias", "BatchNorm2d", math.inf)]
    events = [params(i, 1e-3, extra=noisy) for i in range(10)]
    assert diagnose([UpdateRatio()], events) == []


def test_a_converged_loss_vetoes_the_too_low_side():
    ratios = [1e-3] * 5 + [1e-6] * 12
    fell = [2.3 * 0.5 ** i for i in range(17)]  # the loss fell to nothing: tiny steps are expected
    stuck = [2.3] * 17
    assert flags_of(ratios, fell) == []
    assert len(flags_of(ratios, stuck)) == 1
    assert len(flags_of(ratios, fell, stuck_level=0.0)) == 1
    assert flags_of([0.5] * 12, fell)[0][1].evidence["direction"] == "high"  # the high side has no veto


def test_the_same_run_gives_the_same_flags_at_every_1_and_every_10():
    def verdict(every, ratio):
        return [f.evidence["direction"] for _, f in diagnose(
            [UpdateRatio()], [params(step, ratio(step)) for step in range(0, 300, every)])]
    fast_start = lambda step: 0.5 if step < 6 else 1e-3  # noqa: E731 - six large first steps: early training
    too_high = lambda step: 0.5 if step >= 100 else 1e-3  # noqa: E731 - the rate was raised at step 100
    assert verdict(1, fast_start) == verdict(10, fast_start) == []
    assert verdict(1, too_high) == verdict(10, too_high) == ["high"]


def test_a_median_out_of_band_asks_for_the_next_steps_to_be_sampled():
    detector = UpdateRatio()
    detector.update(params(0, 0.5))
    assert detector.look_closer() == detector.min_steps
    detector.update(params(1, 1e-3))
    assert detector.look_closer() == 0


def test_missing_and_non_finite_ratios_are_skipped_without_crashing():
    odd = [[math.nan, None, math.inf, 1e-7], [None] * 4] * 12
    assert len(flags_of(odd)) == 1  # only the one finite ratio (a too-low one) counts, when there is one
    assert diagnose([UpdateRatio()], [params(0, [math.nan] * 4), loss(1, math.nan)]) == []


@pytest.mark.parametrize("options", [{"low": 0.0}, {"low": 1e-3}, {"high": 1e-3}, {"high": math.inf},
                                     {"min_samples": 0}, {"min_steps": -1}, {"stuck_level": 1.5},
                                     {"low": "1e-5"}])
def test_options_that_cannot_work_are_refused_naming_the_option(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        UpdateRatio(**options)


def test_the_demo_at_a_learning_rate_of_1e_6_is_flagged_too_low(tmp_path):
    mon = train_demo_cnn(tmp_path, [UpdateRatio()], epochs=1, lr=1e-6)
    [flag] = mon.flags
    assert flag.evidence["direction"] == "low" and flag.evidence["median"] < 1e-5
    assert flag.evidence["step"] == 10  # low from step 0: confirmed 10 steps later (every 2nd step sampled)
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id)
    assert [f for _, f in diagnose([UpdateRatio()], stored)] == mon.flags


def test_the_demo_at_a_learning_rate_of_2_is_flagged_too_high_before_anything_diverges(tmp_path):
    # 40x the demo's rate: the first steps rewrite the weights (ratios 0.3 to 2), the loss stays finite
    mon = train_demo_cnn(tmp_path, [UpdateRatio(), Divergence()], epochs=1, every=1, lr=2.0)
    [flag] = mon.flags
    assert flag.kind == "update_ratio" and flag.evidence["direction"] == "high"
    assert flag.evidence["step"] == 10 and min(flag.evidence["recent_medians"]) > 0.1  # high for 10 steps


def test_the_weight_matrices_of_recurrent_and_attention_layers_count_as_weights_and_their_biases_do_not():
    from monitor.detectors.update_ratio import is_weight
    names = {"lstm.weight_ih_l0": True, "lstm.weight_hh_l0": True, "attn.in_proj_weight": True, "fc.weight": True,
             "lstm.bias_ih_l0": False, "attn.in_proj_bias": False, "fc.bias": False}
    for name, expected in names.items():
        assert is_weight(summary(name, signal="param_grad", module="LSTM")) is expected, name
    assert not is_weight(summary("bn.weight", signal="param_grad", module="BatchNorm2d"))
