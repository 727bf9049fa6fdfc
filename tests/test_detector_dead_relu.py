"""The dead-ReLU detector: scripted windows of dead units (no training), then real tiny trainings."""
import pytest

from monitor.detectors import diagnose
from monitor.detectors.dead_relu import DeadRelu
from monitor.detectors.initial_loss import InitialLoss
from monitor.detectors.input_normalization import InputNormalization
from monitor.detectors.saturation import Saturation
from monitor.events import Event, Kind, LayerStats
from monitor.store import RunStore

from conftest import summary
from trainings import train_demo_cnn, train_mlp


def relu(layer="9", dead=0, units=64, window=8, module="ReLU", **overrides):
    return summary(layer, module=module, units=units, dead_units=dead, window=window, nan=0, inf=0, std=1.0,
                   min=0.0, max=2.0, **overrides)


def samples(*steps_summaries):
    """One layer_stats event per sampled step (every 2 steps), each holding the given summaries."""
    return [Event("r", i, 2 * i, 1.0 + i, Kind.LAYER_STATS, LayerStats(tuple(s if isinstance(s, tuple) else (s,))))
            for i, s in enumerate(steps_summaries)]


def flags_of(events, **options):
    return [flag for _, flag in diagnose([DeadRelu(**options)], events)]


def growing_then(dead_counts, units=64, window=8):
    """The hooks' window fills over the first ``window`` samples, then ``dead_counts`` follow."""
    return samples(*[relu(dead=units, units=units, window=w) for w in range(1, window + 1)],
                   *[relu(dead=d, units=units, window=window) for d in dead_counts])


def all_dead(full=5, **overrides):
    """A layer wholly dead from the first batch: the window grows to 8, then ``full`` more samples."""
    return samples(*[relu(dead=64, window=w, **overrides) for w in range(1, 9)], *[relu(dead=64, **overrides)] * full)


def test_a_layer_mostly_dead_over_full_windows_is_flagged_once_after_the_patience():
    events = samples(*[relu(dead=44, window=w) for w in range(1, 9)], *[relu(dead=44)] * 10)
    [flag] = flags_of(events)
    assert flag.kind == "dead_relu" and flag.severity.value == "warning" and flag.layer == "9"
    # window 8 first at sample 7, full (stopped growing) from sample 8: the 3rd full sample is sample 10,
    # whose evidence reaches back to the first batch of sample 8's window (step 2): 18 steps
    assert flag.evidence["step"] == 20 and flag.evidence["samples"] == 3 and flag.evidence["steps"] == 18
    assert flag.evidence["dead_units"] == 44 and flag.evidence["units"] == 64 and flag.evidence["window"] == 8
    assert "44 of 64 units (69%) of layer 9 (ReLU)" in flag.message and "last 8 sampled batches" in flag.message
    assert "leaky" in flag.advice.lower() and "Kaiming" in flag.advice and "BatchNorm" in flag.advice


def every_step(dead_counts, every, units=64, window=8):
    """Samples every ``every`` steps of a layer whose units are dead in the counts given per
    sample (the window fills over the first ``window`` samples)."""
    return [Event("r", i, every * i, 1.0, Kind.LAYER_STATS,
                  LayerStats((relu(dead=d, units=units, window=min(i + 1, window)),)))
            for i, d in enumerate(dead_counts)]


def test_a_layer_dead_from_initialisation_is_flagged_by_step_11_when_every_step_is_sampled():
    [flag] = flags_of(every_step([50] * 25, every=1))
    assert flag.evidence["step"] == 11 and flag.evidence["samples"] == 4 and flag.layer == "9"


def test_the_same_dying_layer_gives_the_same_flag_at_every_1_and_every_10():
    def verdict(every):
        return [(f.kind, f.layer, f.severity.value) for f in flags_of(every_step([50] * (300 // every), every))]
    assert verdict(1) == verdict(10) == [("dead_relu", "9", "warning")]


def test_a_layer_over_the_bar_asks_for_the_next_steps_to_be_sampled():
    detector = DeadRelu()
    for event in every_step([50] * 3, every=1):
        detector.update(event)
    assert detector.look_closer() == detector.min_steps  # its window is still filling, all over the bar
    healthy = DeadRelu()
    for event in every_step([10] * 12, every=1):
        healthy.update(event)
    assert healthy.look_closer() == 0


def test_a_recent_window_over_half_dead_asks_for_a_closer_look_but_is_judged_on_a_full_window():
    # sparse sampling keeps one or two recent batches: 36 of 64 (56 %) silent on them is a
    # suspicion (SageMaker's bar), not yet a verdict (60 % over a full window)
    detector = DeadRelu()
    for event in samples(relu(dead=36, window=1), relu(dead=36, window=2)):
        assert detector.update(event) == []
    assert detector.look_closer() == detector.min_steps
    settled = DeadRelu()
    for event in samples(relu(dead=30, window=1), relu(dead=30, window=2)):
        settled.update(event)
    assert settled.look_closer() == 0  # 47 %: what healthy layers show
    assert flags_of(growing_then([36] * 20)) == []


def test_units_silent_while_the_window_still_grows_are_not_yet_dead():
    # every unit silent on the first 8 batches (the window growing 1..8), then alive
    assert flags_of(growing_then([0] * 10)) == []


def test_a_whole_dead_layer_is_critical():
    [flag] = flags_of(growing_then([64] * 3))
    assert flag.severity.value == "critical" and flag.evidence["dead_fraction"] == 1.0


def test_a_short_stretch_above_the_bar_does_not_fire():
    assert flags_of(growing_then([50, 50, 10, 50, 50, 10] * 3)) == []


def test_a_healthy_share_of_dead_units_does_not_fire():
    # the demo's healthy ConvNet settles at up to 31 of its 64 hidden units silent
    assert flags_of(growing_then([31] * 50)) == []


def test_a_warning_becomes_critical_once_and_then_stays_quiet():
    flags = flags_of(growing_then([44] * 5 + [64] * 5 + [44] * 5 + [64] * 5))
    assert [f.severity.value for f in flags] == ["warning", "critical"]


def test_each_layer_is_flagged_on_its_own():
    both = [(relu("2", dead=16, units=16, window=w), relu("9", dead=0, window=w)) for w in range(1, 9)]
    both += [(relu("2", dead=16, units=16), relu("9", dead=60))] * 4
    assert sorted(f.layer for f in flags_of(samples(*both))) == ["2", "9"]


def test_a_window_that_restarts_must_fill_again():
    # the window shrinks back to 1 (the unit count changed): the streak starts over
    events = growing_then([64, 64]) + samples(*[relu(dead=64, window=w) for w in range(1, 9)])
    assert flags_of(events) == []


@pytest.mark.parametrize("module", ["LeakyReLU", "GELU", "ELU", "Tanh", "Linear"])
def test_activations_that_pass_negative_values_are_not_judged(module):
    assert flags_of(all_dead(module=module)) == []


def test_other_module_names_can_be_judged_as_relus():
    assert [f.layer for f in flags_of(all_dead(module="MyReLU"), modules=("ReLU", "MyReLU"))] == ["9"]


def test_a_window_smaller_than_min_window_is_not_enough_evidence():
    small = samples(relu(dead=64, window=1), *[relu(dead=64, window=2)] * 10)
    assert flags_of(small) == []
    assert len(flags_of(small, min_window=2)) == 1


def test_gradient_summaries_are_not_judged():
    assert flags_of(all_dead(signal="output_grad")) == []


@pytest.mark.parametrize("options", [
    {"dead_fraction": 1.0}, {"dead_fraction": -0.1}, {"critical_fraction": 0.5}, {"critical_fraction": 1.5},
    {"patience": 0}, {"min_window": 0}, {"modules": ()}, {"modules": "ReLU"}, {"suspect_fraction": 0.0},
    {"suspect_fraction": 0.7},
])
def test_thresholds_that_cannot_work_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        DeadRelu(**options)


def stored_flags(mon, detector):
    with RunStore(mon.store_path.parent) as store:
        events = store.events(mon.run_id)
    return [flag for _, flag in diagnose([detector], events)]


def test_a_convnet_with_biases_of_minus_5_has_every_relu_layer_flagged_critical(tmp_path):
    mon = train_demo_cnn(tmp_path, [DeadRelu()], epochs=1, init_bias=-5)
    assert {f.layer for f in mon.flags} == {"2", "5", "9"}  # both conv ReLUs and the hidden one
    assert {f.severity.value for f in mon.flags} == {"critical"} and {f.kind for f in mon.flags} == {"dead_relu"}
    assert stored_flags(mon, DeadRelu()) == mon.flags  # the same diagnosis over the stored run


def test_a_healthy_mlp_has_no_dead_layer(tmp_path):
    assert train_mlp(tmp_path, [DeadRelu()]).flags == []


def test_the_healthy_demo_raises_none_of_the_four_over_its_eight_epochs(tmp_path):
    mon = train_demo_cnn(tmp_path, [DeadRelu(), Saturation(), InputNormalization(), InitialLoss()], epochs=8)
    assert mon.flags == []
