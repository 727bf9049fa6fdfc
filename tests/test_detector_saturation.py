"""The saturation detector: scripted saturated fractions (no training), then real tiny trainings."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import monitor
from monitor.detectors import diagnose
from monitor.detectors.saturation import Saturation
from monitor.events import Event, Kind, LayerStats
from monitor.store import RunStore
from trainer_hooks import watch

from conftest import summary
from trainings import blobs, make_mlp, train_mlp


def act(layer="1", sat=0.0, module="Tanh", **overrides):
    return summary(layer, module=module, sat_frac=sat, nan=0, inf=0, std=0.5, min=-1.0, max=1.0,
                   units=None, dead_units=None, window=None, **overrides)


def output(layer="4"):
    return act(layer, sat=None, module="Linear")


def samples(*steps_summaries):
    """One layer_stats event per sampled step (every 2 steps); a lone summary is followed by the
    output layer's (a Linear), as in a real forward pass."""
    return [Event("r", i, 2 * i, 1.0 + i, Kind.LAYER_STATS,
                  LayerStats(s if isinstance(s, tuple) else (s, output())))
            for i, s in enumerate(steps_summaries)]


def flags_of(events, **options):
    return [flag for _, flag in diagnose([Saturation(**options)], events)]


def test_a_layer_pinned_at_its_bounds_for_the_patience_is_flagged_once():
    [flag] = flags_of(samples(*[act(sat=0.1)] * 3, *[act(sat=0.88)] * 20))
    assert flag.kind == "saturation" and flag.severity.value == "warning" and flag.layer == "1"
    # saturated from step 6 (every 2nd step sampled): confirmed 10 steps later, on the 6th sample
    assert flag.evidence["step"] == 16 and flag.evidence["samples"] == 6 and flag.evidence["steps"] == 10
    assert flag.evidence["sat_frac"] == 0.88
    assert "88% of the outputs of layer 1 (Tanh)" in flag.message and "over 10 steps (6 samples)" in flag.message
    assert "Xavier" in flag.advice and "BatchNorm" in flag.advice and "ReLU" in flag.advice
    assert "Normalise the inputs" in flag.advice


def test_a_few_saturated_batches_do_not_fire():
    assert flags_of(samples(*([act(sat=0.9)] * 4 + [act(sat=0.2)]) * 5)) == []


def test_the_saturation_of_a_confident_healthy_network_does_not_fire():
    # a tanh MLP trained with Adam to confidence: its last hidden layer reaches 0.45
    assert flags_of(samples(*[act(sat=0.45)] * 50)) == []


def test_almost_every_output_pinned_is_critical_and_follows_a_warning_once():
    flags = flags_of(samples(*[act(sat=0.7)] * 8, *[act(sat=0.99)] * 5, *[act(sat=0.7)] * 5, *[act(sat=1.0)] * 5))
    assert [f.severity.value for f in flags] == ["warning", "critical"]


def sampled_every(every, steps, sat):
    return [Event("r", i, step, 1.0, Kind.LAYER_STATS, LayerStats((act(sat=sat(step)), output())))
            for i, step in enumerate(range(0, steps, every))]


def test_a_layer_saturated_from_initialisation_is_flagged_at_step_10_when_every_step_is_sampled():
    [flag] = flags_of(sampled_every(1, 25, lambda step: 0.8))
    assert flag.evidence["step"] == 10 and flag.layer == "1"


def test_the_same_run_gives_the_same_flags_at_every_1_and_every_10():
    def verdict(every, sat):
        return [(f.kind, f.layer, f.severity.value) for f in flags_of(sampled_every(every, 400, sat))]
    pinned = lambda step: 0.8 if step >= 100 else 0.2  # noqa: E731 - saturates at step 100 and stays
    blips = lambda step: 0.9 if step % 50 < 5 else 0.2  # noqa: E731 - five saturated steps every 50
    assert verdict(1, pinned) == verdict(10, pinned) == [("saturation", "1", "warning")]
    assert verdict(1, blips) == verdict(10, blips) == []


def test_a_saturated_layer_asks_for_the_next_steps_to_be_sampled_until_confirmed():
    detector = Saturation()
    detector.update(sampled_every(1, 1, lambda step: 0.8)[0])
    assert detector.look_closer() == detector.min_steps
    for event in sampled_every(1, 12, lambda step: 0.8)[1:]:
        detector.update(event)
    assert detector.look_closer() == 0


def test_the_output_nonlinearity_is_left_alone_unless_asked():
    events = samples(*[(act("1", sat=0.1), act("2", sat=0.99, module="Sigmoid"))] * 8)
    assert flags_of(events) == []
    [flag] = flags_of(events, skip_output=False)
    assert flag.layer == "2" and flag.severity.value == "critical"


def test_layers_without_a_saturated_fraction_or_with_nan_are_not_judged():
    events = samples(*[(act("1", sat=None, module="ReLU"), act("2", sat=math.nan), output())] * 10)
    assert flags_of(events) == []


def test_gradient_summaries_are_not_judged():
    events = samples(*[(act("1", sat=0.99, signal="output_grad"), output())] * 10)
    assert flags_of(events) == []


@pytest.mark.parametrize("options", [
    {"sat_fraction": 1.0}, {"sat_fraction": -0.5}, {"critical_fraction": 0.5}, {"critical_fraction": 2.0},
    {"patience": 0}, {"skip_output": "yes"},
])
def test_thresholds_that_cannot_work_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        Saturation(**options)


def scaled_mlp(activation, factor, seed=0):
    torch.manual_seed(seed)
    model = make_mlp(activation=activation)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def test_a_tanh_mlp_with_large_weights_and_inputs_is_flagged_at_its_first_layer(tmp_path):
    mon = train_mlp(tmp_path, [Saturation()], model=scaled_mlp(nn.Tanh, 5), data=blobs(scale=5),
                    val_data=blobs(n=256, draw=1, scale=5), epochs=2)
    first = [f for f in mon.flags if f.layer == "1"]  # about 88 % pinned (the second tanh: about 50 %)
    assert len(first) == 1 and first[0].kind == "saturation" and first[0].evidence["sat_frac"] > 0.8
    with RunStore(tmp_path) as store:
        events = store.events(mon.run_id)
    assert [f for _, f in diagnose([Saturation()], events)] == mon.flags  # the same over the stored run


@pytest.mark.parametrize("options", [{}, {"optimizer": "adam", "lr": 0.01}])
def test_healthy_tanh_mlps_raise_nothing(tmp_path, options):
    assert train_mlp(tmp_path, [Saturation()], model=make_mlp(activation=nn.Tanh), **options).flags == []


def test_a_binary_classifier_whose_sigmoid_output_grows_confident_is_not_flagged(tmp_path):
    torch.manual_seed(0)
    x, y = blobs(classes=2)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 1), nn.Sigmoid())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    shuffle = torch.Generator().manual_seed(0)
    detectors = [Saturation(), Saturation(skip_output=False)]
    with watch(model, optimizer, run="binary", logdir=tmp_path, every=2, detectors=detectors) as mon:
        for _ in range(3):
            for idx in torch.randperm(len(y), generator=shuffle).split(32):
                optimizer.zero_grad()
                loss = F.binary_cross_entropy(model(x[idx]).squeeze(1), y[idx].float())
                loss.backward()
                optimizer.step()
                mon.log(loss=loss)
    # the output sigmoid ends up pinned (what skip_output=False reports); the default says nothing
    assert mon.flags and {f.layer for f in mon.flags} == {"3"}
    with RunStore(tmp_path) as store:
        assert [f for _, f in diagnose([Saturation()], store.events(mon.run_id))] == []


@pytest.mark.parametrize("activation", [nn.GELU, nn.SiLU])
def test_smooth_units_pushed_into_their_flat_tail_are_saturated_by_the_exact_share_of_inputs_there(
        tmp_path, activation):
    """GELU/SiLU outputs are rarely exactly zero, so "dead" does not apply; hidden biases of
    -8 put every input deep in the flat tail, where the share is counted exactly (plain
    torch on the same batch agrees) and the flag says so in the words of a smooth unit."""
    from trainer_hooks.reduce import flat_tail_start

    torch.manual_seed(0)
    model = make_mlp(activation=activation)
    with torch.no_grad():
        model[0].bias.fill_(-8.0)
    x, _ = blobs()
    start = flat_tail_start(activation())
    expected = (model[0](x[:32]) < start).double().mean().item()
    mon = train_mlp(tmp_path, [Saturation()], model=model, epochs=1, every=1, lr=0.01)
    stats = monitor.load_run(mon.run_id, tmp_path).layer_stats
    first = stats[(stats.layer == "1") & (stats.signal == "activation")]
    assert first.iloc[0].sat_frac > 0.9 and math.isnan(first.iloc[0].units)  # no "dead units" for a smooth unit
    flags = [f for f in mon.flags if f.layer == "1"]
    assert flags and flags[0].kind == "saturation" and "lay in its flat tail" in flags[0].message
    assert "LayerNorm" in flags[0].advice and "tanh" not in flags[0].advice
    assert expected > 0.9


def test_the_share_in_the_flat_tail_equals_plain_torch_on_a_healthy_gelu_layer(tmp_path):
    from trainer_hooks.reduce import flat_tail_start

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 256), nn.GELU(), nn.Linear(256, 4))
    x = torch.randn(64, 20) * 3  # wide pre-activations: some of them in the tail
    with watch(model, every=1, logdir=tmp_path) as mon:
        model(x)
        mon.log(loss=0.0)
    stats = monitor.load_run(mon.run_id, tmp_path).layer_stats
    gelu = stats[(stats.layer == "1") & (stats.signal == "activation")].iloc[0]
    expected = (model[0](x) < flat_tail_start(nn.GELU())).double().mean().item()
    assert 0.01 < expected < 0.5 and gelu.sat_frac == pytest.approx(expected, abs=1e-12)


def test_the_flat_tail_starts_where_the_slope_falls_below_the_tanh_margin_share():
    """4 % of the steepest slope, the bar tanh meets at |y| = 0.98: GELU near -2.4, SiLU -4.3,
    ELU ln(0.04) = -3.2; a leaky unit has no flat tail."""
    from trainer_hooks.reduce import flat_tail_start

    assert flat_tail_start(nn.GELU()) == pytest.approx(-2.4, abs=0.02)
    assert flat_tail_start(nn.SiLU()) == pytest.approx(-4.27, abs=0.02)
    assert flat_tail_start(nn.ELU()) == pytest.approx(math.log(0.04), abs=0.01)
    assert flat_tail_start(nn.LeakyReLU(0.1)) is None
