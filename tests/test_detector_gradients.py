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
from monitor.events import Event, Kind, LayerStats, ModuleInfo, RunStart, Scalars, Vitals
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
FELL = [[2.3 * 0.9 ** (10 * i + j) for j in range(10)] for i in range(12)]  # ten losses per sample, to 1e-5
FLOWING = {"fc0": 5e-3, "fc1": 5e-3, "fc2": 6e-3, "fc3": 8e-3, "fc4": 1e-2}  # the same layers, healthy


def test_layers_in_forward_order_with_their_rms_gradient():
    found = layer_gradients(grads(0, DEEP_SIGMOID), "output_grad")
    assert [g.layer for g in found] == list(DEEP_SIGMOID) and found[0].rms == pytest.approx(1e-10)
    # without activations, output gradients are taken in reverse arrival order (backward runs from the output)
    only_grads = Event("r", 0, 0, 1.0, Kind.LAYER_STATS, LayerStats(tuple(
        s for s in grads(0, DEEP_SIGMOID).data.summaries if s.signal.value == "output_grad")))
    assert [g.layer for g in layer_gradients(only_grads, "output_grad")] == list(DEEP_SIGMOID)


def test_a_gradient_that_dies_out_towards_the_input_is_flagged_at_the_earliest_layer_after_the_window():
    [(event, flag)] = run(VanishingGradient(), [DEEP_SIGMOID] * 14)
    assert flag.kind == "vanishing_gradient" and flag.severity.value == "warning"
    assert flag.layer == "fc0" and event.step == 10 and flag.evidence["step"] == 10  # 10 steps after the first
    assert flag.evidence["steps"] == 10 and flag.evidence["samples"] == 11
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
    assert run(VanishingGradient(), [tiny] * 12, losses=FELL) == []
    [(_, flag)] = run(VanishingGradient(), [tiny] * 12, losses=[[2.3] * 10] * 12)
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
    events = [grads(i, DEEP_SIGMOID, signal="param_grad") for i in range(12)]
    [(_, flag)] = diagnose([VanishingGradient(signal="param_grad")], events)
    assert flag.layer == "fc0.weight" and flag.evidence["signal"] == "param_grad"
    assert diagnose([VanishingGradient()], events) == []  # no output gradients in these events


def test_non_finite_gradient_norms_are_skipped_without_crashing():
    nan_layer = [grads(i, {**DEEP_SIGMOID, "fc1": math.nan}) for i in range(12)]
    [(_, flag)] = diagnose([VanishingGradient(), ExplodingGradient()], nan_layer)
    assert [entry["layer"] for entry in flag.evidence["layers"]] == ["fc0", "fc2"]
    all_nan = [grads(i, {layer: math.inf for layer in DEEP_SIGMOID}) for i in range(12)]
    assert diagnose([VanishingGradient(), ExplodingGradient()], all_nan) == []
    partly = [grads(i, DEEP_SIGMOID, nan=10) for i in range(12)]  # RMS over the 90 finite elements
    assert diagnose([VanishingGradient()], partly)[0][1].evidence["layers"][0]["rms"] == pytest.approx(1e-10)


def test_a_gradient_that_grows_towards_the_input_is_flagged_at_the_earliest_layer():
    [(event, flag)] = run(ExplodingGradient(), [EXPLODING] * 14)
    assert flag.kind == "exploding_gradient" and flag.layer == "fc0" and event.step == 10
    assert [entry["layer"] for entry in flag.evidence["layers"]] == ["fc0", "fc1"]  # above 1e3 x 0.02 = 20
    assert "gradients explode: layer fc0 (Linear) gets 3.5e+03 times the output layer fc4's gradient" in flag.message
    assert "clip" in flag.advice and "learning rate" in flag.advice
    assert run(ExplodingGradient(), [HEALTHY] * 20) == []
    assert run(ExplodingGradient(), ([EXPLODING] * 4 + [FLOWING]) * 5) == []
    assert run(VanishingGradient(), [EXPLODING] * 14) == [] and run(ExplodingGradient(), [DEEP_SIGMOID] * 14) == []


@pytest.mark.parametrize("cls, options", [
    (VanishingGradient, {"min_ratio": 0.0}), (VanishingGradient, {"min_ratio": 1.0}),
    (VanishingGradient, {"floor": -1.0}), (VanishingGradient, {"min_samples": 0}),
    (VanishingGradient, {"stuck_level": 2.0}), (VanishingGradient, {"signal": "activation"}),
    (ExplodingGradient, {"max_ratio": 1.0}), (ExplodingGradient, {"max_relative": math.inf}),
    (ExplodingGradient, {"min_samples": 2.0}), (ExplodingGradient, {"min_output": math.nan}),
    (ExplodingGradient, {"growth": 1.0}), (ExplodingGradient, {"min_steps": -1}),
    (ExplodingGradient, {"reference_steps": 0}),
    (ExplodingGradient, {"signal": "grad"}),
])
def test_options_that_cannot_work_are_refused_naming_the_option(cls, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        cls(**options)


ROWS = ("fc0", "fc1", "fc2", "fc3", "fc4")  # fc4: the output layer


def vital_run(steps, every, grad_norm, weight_norm=10.0, layer_share=None, start=True, vitals=True,
              output_rms=None):
    """A run as the trainer records it: run_start, then on every step the vital signs
    (global gradient norm ``grad_norm(step)``, split evenly over the five layers unless
    ``layer_share`` says otherwise), and on every ``every``-th step the sampled layer
    statistics (each layer's parameter gradient with ``weight_norm``, and output gradients
    of RMS ``output_rms(step)`` per layer when given)."""
    share = layer_share or {row: 1 / len(ROWS) for row in ROWS}
    events = [Event("r", 0, 0, 1.0, Kind.RUN_START, RunStart(
        name="r", config={}, model=tuple(ModuleInfo(row, "Linear", 100, 100) for row in ROWS) +
        (ModuleInfo("(total)", "Sequential", 500, 500),), host="h", pid=1, rank=0, world=1, versions={},
        sampling={}))] if start else []
    for step in range(steps):
        total = grad_norm(step)
        norms = {row: total * math.sqrt(share[row]) for row in ROWS}
        if step % every == 0:
            weights = weight_norm if isinstance(weight_norm, dict) else {row: weight_norm for row in ROWS}
            stats = [summary(f"{row}.weight", signal="param_grad", module="Linear", numel=NUMEL, nan=0, inf=0,
                             norm=norms[row], weight_norm=weights[row], update_ratio=1e-3) for row in ROWS]
            if output_rms is not None:
                rms = output_rms(step)
                stats = ([summary(row, numel=NUMEL, nan=0, inf=0, module="Linear") for row in ROWS] +
                         [summary(row, signal="output_grad", numel=NUMEL, nan=0, inf=0, module="Linear",
                                  norm=rms[row] * math.sqrt(NUMEL)) for row in reversed(ROWS)] + stats)
            events.append(Event("r", len(events), step, 1.0, Kind.LAYER_STATS, LayerStats(tuple(stats))))
        if vitals:
            events.append(Event("r", len(events), step, 1.0, Kind.VITALS,
                                Vitals(total, tuple(norms[row] for row in ROWS))))
    return events


def verdicts(detector_class, events):
    return [(flag.kind, flag.layer) for _, flag in diagnose([detector_class()], events)]


def test_gradients_large_in_every_layer_are_flagged_against_the_weights_norm_from_the_vital_signs():
    # a deep ReLU MLP at 3x the Kaiming std: global norm 4.6e3 against weights of norm 34 each (76 in all)
    events = vital_run(40, 300, lambda step: 4.6e3 * (1 - step / 100), weight_norm=34.0,
                       layer_share={"fc0": 0.4, "fc1": 0.3, "fc2": 0.15, "fc3": 0.1, "fc4": 0.05})
    [(event, flag)] = diagnose([ExplodingGradient()], events)
    assert flag.kind == "exploding_gradient" and flag.layer == "fc0" and event.step == 10
    ev = flag.evidence
    assert ev["reference"] == "relative" and ev["source"] == "vitals" and ev["relative"] > 10
    assert ev["steps"] == 10 and ev["samples"] == 11 and ev["layer_ratios"]["fc0"] > 10
    assert "gradient norm (4.14e+03) is 54.5 times the weights' norm (76)" in flag.message
    assert "layer fc0 (Linear) gets" in flag.message


def test_healthy_gradients_and_a_zero_initialised_layer_raise_no_exploding_flag():
    healthy = vital_run(400, 100, lambda step: 0.1 + 0.7 * abs(math.sin(step)), weight_norm=11.0)
    assert diagnose([ExplodingGradient()], healthy) == []
    zero_init = vital_run(400, 100, lambda step: 0.5, weight_norm={**{row: 11.0 for row in ROWS}, "fc4": 1e-4})
    assert diagnose([ExplodingGradient()], zero_init) == []


def test_a_gradient_norm_that_grows_a_hundredfold_over_its_early_history_is_flagged():
    events = vital_run(80, 100, lambda step: 0.5 if step < 40 else 0.5 * 300, weight_norm=1e4)
    [(event, flag)] = diagnose([ExplodingGradient()], events)
    assert flag.evidence["reference"] == "growth" and event.step == 50
    assert flag.evidence["early_median"] == 0.5 and "300 times its median over the first 20 steps" in flag.message
    spike = vital_run(80, 100, lambda step: 150.0 if 40 <= step < 45 else 0.5, weight_norm=1e4)
    assert diagnose([ExplodingGradient()], spike) == []  # five steps: a spike, not an explosion


@pytest.mark.parametrize("vitals", [True, False])
def test_the_same_exploding_run_gives_the_same_flag_at_every_1_and_every_10(vitals):
    def run_at(every):
        return verdicts(ExplodingGradient, vital_run(200, every, lambda step: 3e3, weight_norm=30.0,
                                                     layer_share={"fc0": 0.5, "fc1": 0.2, "fc2": 0.1, "fc3": 0.1,
                                                                  "fc4": 0.1}, vitals=vitals))
    assert run_at(1) == run_at(10) == [("exploding_gradient", "fc0")]


def test_the_same_vanishing_run_gives_the_same_flag_at_every_1_and_every_10_and_by_step_10_at_every_1():
    # 8 sigmoid layers: the first gets 1e-6 of the output layer's gradient from step 0
    rms = {"fc0": 1e-8, "fc1": 1e-7, "fc2": 1e-5, "fc3": 1e-3, "fc4": 1e-2}
    flags = {every: [(e.step, f.kind, f.layer) for e, f in diagnose(
        [VanishingGradient()], vital_run(300, every, lambda step: 0.01, output_rms=lambda step: rms))]
        for every in (1, 10)}
    assert [f[1:] for f in flags[1]] == [f[1:] for f in flags[10]] == [("vanishing_gradient", "fc0")]
    assert flags[1][0][0] == 10 and flags[10][0][0] == 20


def test_a_layer_past_its_bar_asks_to_be_sampled_until_it_is_confirmed():
    detector = VanishingGradient()
    assert detector.look_closer() == 0
    detector.update(grads(0, DEEP_SIGMOID))
    assert detector.look_closer() == detector.min_steps  # suspicious: sample the next steps
    for step in range(1, 11):
        detector.update(grads(step, DEEP_SIGMOID))
    assert detector.look_closer() == 0  # flagged: nothing more to confirm
    exploding = ExplodingGradient()
    exploding.update(grads(0, EXPLODING))
    assert exploding.look_closer() == exploding.min_steps


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
    assert flag.evidence["layers"][0]["ratio"] < 1e-7 and flag.evidence["step"] == 10  # 10 steps, every 2nd sampled
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
