"""The vanishing and exploding gradient detectors: scripted layer statistics (no training),
then deep MLPs that provoke each one."""
import math

import pytest
import torch
from torch import nn

from monitor.detectors import diagnose
from monitor.detectors.divergence import Divergence
from monitor.detectors.exploding_gradient import ExplodingGradient
from monitor.detectors.gradient_flow import layer_gradients
from monitor.detectors.vanishing_gradient import VanishingGradient
from monitor.events import Event, Kind, LayerStats, Scalars
from monitor.store import RunStore

from conftest import summary
from trainings import blobs, train_mlp

NUMEL = 100  # elements per layer output: the RMS of a gradient is its norm / 10


def grads(step, rms, modules=None, signal="output_grad", nan=0):
    """A layer_stats event: activations in forward order, then each layer's gradient with RMS
    ``rms[layer]`` in backward order, as the hooks record them."""
    modules = modules or {}
    acts = [summary(layer, numel=NUMEL, nan=0, inf=0, module=modules.get(layer, "Linear")) for layer in rms]
    back = [summary(layer if signal == "output_grad" else f"{layer}.weight", signal=signal, numel=NUMEL,
                    nan=nan, inf=0, norm=value * math.sqrt(NUMEL - nan), module=modules.get(layer, "Linear"),
                    **({"weight_norm": 1.0, "update_ratio": 1e-3} if signal == "param_grad" else {}))
            for layer, value in reversed(rms.items())]
    return Event("r", step, step, 1.0, Kind.LAYER_STATS, LayerStats(tuple(acts + back)))


def run(detector, samples, losses=None):
    """Diagnose one event per sample, each after the losses logged before it (``losses[i]``: a list)."""
    events = []
    for i, rms in enumerate(samples):
        for value in losses[i] if losses is not None else ():
            events.append(Event("r", i, i, 1.0, Kind.SCALARS, Scalars({"loss": value})))
        events.append(grads(i, rms))
    return diagnose([detector], events)


DEEP_SIGMOID = {"fc0": 1e-10, "fc1": 1e-8, "fc2": 1e-6, "fc3": 1e-4, "fc4": 1e-2}  # fc4: the output
HEALTHY = {"conv0": 3e-3, "bn1": 2e-3, "conv3": 1e-3, "fc8": 5e-3, "fc10": 1e-2}
EXPLODING = {"fc0": 70.0, "fc1": 25.0, "fc2": 5.0, "fc3": 1.0, "fc4": 0.02}
FELL = [[2.3 * 0.9 ** (10 * i + j) for j in range(10)] for i in range(10)]  # ten losses per sample, to 1e-4
FLOWING = {"fc0": 5e-3, "fc1": 5e-3, "fc2": 6e-3, "fc3": 8e-3, "fc4": 1e-2}  # the same layers, healthy


def test_layers_in_forward_order_with_their_rms_gradient():
    found = layer_gradients(grads(0, DEEP_SIGMOID), "output_grad")
    assert [g.layer for g in found] == list(DEEP_SIGMOID) and found[0].rms == pytest.approx(1e-10)
    # without activations, output gradients are taken in reverse arrival order (backward runs from the output)
    only_grads = Event("r", 0, 0, 1.0, Kind.LAYER_STATS, LayerStats(tuple(
        s for s in grads(0, DEEP_SIGMOID).data.summaries if s.signal.value == "output_grad")))
    assert [g.layer for g in layer_gradients(only_grads, "output_grad")] == list(DEEP_SIGMOID)


def test_a_gradient_that_dies_out_towards_the_input_is_flagged_at_the_earliest_layer_after_the_window():
    [(event, flag)] = run(VanishingGradient(), [DEEP_SIGMOID] * 8)
    assert flag.kind == "vanishing_gradient" and flag.severity.value == "warning"
    assert flag.layer == "fc0" and event.step == 4 and flag.evidence["step"] == 4  # the 5th sample
    ev = flag.evidence
    assert [entry["layer"] for entry in ev["layers"]] == ["fc0", "fc1", "fc2"]  # below 1e-3 x 1e-2 = 1e-5
    assert ev["layers"][0]["ratio"] == pytest.approx(1e-8) and ev["layers"][0]["why"] == "ratio"
    assert ev["output_layer"] == "fc4"
    assert "layer fc0 (Linear) gets 1e-08 of the output layer fc4's gradient" in flag.message
    assert "Kaiming" in flag.advice and "BatchNorm" in flag.advice and "residual" in flag.advice


def test_a_healthy_network_and_short_dips_raise_no_vanishing_flag():
    assert run(VanishingGradient(), [HEALTHY] * 20) == []
    assert run(VanishingGradient(), ([DEEP_SIGMOID] * 4 + [FLOWING]) * 5) == []


def test_a_converged_network_has_tiny_gradients_everywhere_without_vanishing():
    tiny = {layer: value * 1e-7 for layer, value in HEALTHY.items()}  # below the floor, ratios unchanged
    assert run(VanishingGradient(), [tiny] * 10, losses=FELL) == []
    # the same gradients while the loss has not moved: nothing reaches the weights
    [(_, flag)] = run(VanishingGradient(), [tiny] * 10, losses=[[2.3] * 10] * 10)
    assert flag.layer == "conv0" and flag.evidence["floor_applied"] and flag.evidence["layers"][0]["why"] == "floor"
    assert "below the floor 1e-08, while the loss is high" in flag.message


def test_ratios_to_a_negligible_output_gradient_are_not_read():
    dead_output = {**HEALTHY, "conv0": 1e-12, "fc10": 1e-30}  # conv0 is 1e18 times it, but both are nothing
    assert run(VanishingGradient(), [dead_output] * 10, losses=FELL) == []
    assert run(ExplodingGradient(), [{**HEALTHY, "fc10": 1e-30}] * 10) == []


def test_a_layer_that_feeds_a_normalisation_layer_is_judged_at_its_output():
    grown = {**HEALTHY, "conv3": 1e-9, "bn4": 2e-3, "fc10": 1e-2}  # conv3's weights grew: BatchNorm divides
    modules = {"conv0": "Conv2d", "bn1": "BatchNorm2d", "conv3": "Conv2d", "bn4": "BatchNorm2d"}
    order = ["conv0", "bn1", "conv3", "bn4", "fc8", "fc10"]
    events = [grads(i, {layer: grown[layer] for layer in order}, modules) for i in range(10)]
    assert diagnose([VanishingGradient()], events) == []
    assert [g.layer for g in layer_gradients(events[0], "output_grad")] == ["bn1", "bn4", "fc8", "fc10"]


def test_parameter_gradients_can_be_read_instead():
    events = [grads(i, DEEP_SIGMOID, signal="param_grad") for i in range(6)]
    [(_, flag)] = diagnose([VanishingGradient(signal="param_grad")], events)
    assert flag.layer == "fc0.weight" and flag.evidence["signal"] == "param_grad"
    assert diagnose([VanishingGradient()], events) == []  # no output gradients in these events


def test_non_finite_gradient_norms_are_skipped_without_crashing():
    nan_layer = [grads(i, {**DEEP_SIGMOID, "fc1": math.nan}) for i in range(6)]
    [(_, flag)] = diagnose([VanishingGradient(), ExplodingGradient()], nan_layer)
    assert [entry["layer"] for entry in flag.evidence["layers"]] == ["fc0", "fc2"]
    all_nan = [grads(i, {layer: math.inf for layer in DEEP_SIGMOID}) for i in range(6)]
    assert diagnose([VanishingGradient(), ExplodingGradient()], all_nan) == []
    partly = [grads(i, DEEP_SIGMOID, nan=10) for i in range(6)]  # RMS over the 90 finite elements
    assert diagnose([VanishingGradient()], partly)[0][1].evidence["layers"][0]["rms"] == pytest.approx(1e-10)


def test_a_gradient_that_grows_towards_the_input_is_flagged_at_the_earliest_layer():
    [(event, flag)] = run(ExplodingGradient(), [EXPLODING] * 8)
    assert flag.kind == "exploding_gradient" and flag.layer == "fc0" and event.step == 4
    assert [entry["layer"] for entry in flag.evidence["layers"]] == ["fc0", "fc1"]  # above 1e3 x 0.02 = 20
    assert "gradients explode: layer fc0 (Linear) gets 3.5e+03 times the output layer fc4's gradient" in flag.message
    assert "clip" in flag.advice and "learning rate" in flag.advice
    assert run(ExplodingGradient(), [HEALTHY] * 20) == []
    assert run(ExplodingGradient(), ([EXPLODING] * 4 + [FLOWING]) * 5) == []
    assert run(VanishingGradient(), [EXPLODING] * 8) == [] and run(ExplodingGradient(), [DEEP_SIGMOID] * 8) == []


def test_a_gradient_above_the_ceiling_is_exploding_whatever_the_output_gets():
    huge = {layer: 1e7 for layer in HEALTHY}
    [(_, flag)] = run(ExplodingGradient(), [huge] * 5)
    assert flag.layer == "conv0" and "above the ceiling 1e+06" in flag.message
    assert flag.evidence["layers"][0]["why"] == "ceiling"
    assert run(ExplodingGradient(ceiling=1e8), [huge] * 5) == []


@pytest.mark.parametrize("cls, options", [
    (VanishingGradient, {"min_ratio": 0.0}), (VanishingGradient, {"min_ratio": 1.0}),
    (VanishingGradient, {"floor": -1.0}), (VanishingGradient, {"window": 0}),
    (VanishingGradient, {"stuck_level": 2.0}), (VanishingGradient, {"signal": "activation"}),
    (ExplodingGradient, {"max_ratio": 1.0}), (ExplodingGradient, {"ceiling": math.inf}),
    (ExplodingGradient, {"window": 2.0}), (ExplodingGradient, {"min_output": math.nan}),
    (ExplodingGradient, {"signal": "grad"}),
])
def test_options_that_cannot_work_are_refused_naming_the_option(cls, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        cls(**options)


def deep_mlp(depth, activation, gain=1.0, width=32, inputs=20, classes=4):
    """A plain stack of ``depth`` Linear layers (no normalisation), weights scaled by ``gain``."""
    torch.manual_seed(0)
    sizes = [inputs] + [width] * (depth - 1) + [classes]
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(a, b)] + ([activation()] if i < depth - 1 else [])
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(gain)
    return model


def test_a_deep_sigmoid_mlp_is_flagged_vanishing_at_its_first_layer(tmp_path):
    detectors = [VanishingGradient(), ExplodingGradient()]
    mon = train_mlp(tmp_path, detectors, model=deep_mlp(10, nn.Sigmoid), epochs=1, data=blobs())
    [flag] = mon.flags
    assert flag.kind == "vanishing_gradient" and flag.layer == "0" and flag.evidence["output_layer"] == "18"
    assert flag.evidence["layers"][0]["ratio"] < 1e-7 and flag.evidence["step"] == 8  # 5th sample, every 2nd step
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id)
    assert [f for _, f in diagnose([VanishingGradient(), ExplodingGradient()], stored)] == mon.flags


def test_a_deep_relu_mlp_with_large_weights_is_flagged_exploding_before_its_loss_diverges(tmp_path):
    # 12 layers, weights 6x PyTorch's default: each layer multiplies the gradient by ~2.5; the loss
    # (about 2e4) stays finite at this tiny learning rate
    detectors = [VanishingGradient(), ExplodingGradient(), Divergence()]
    mon = train_mlp(tmp_path, detectors, model=deep_mlp(12, nn.ReLU, gain=6.0), lr=1e-12, epochs=1)
    [flag] = mon.flags
    assert flag.kind == "exploding_gradient" and flag.layer == "0" and flag.evidence["layers"][0]["ratio"] > 1e3
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id)
        assert all(math.isfinite(loss) for *_, loss in store.scalars(mon.run_id, ["loss"]))
    assert [f for _, f in diagnose([ExplodingGradient()], stored)] == mon.flags
