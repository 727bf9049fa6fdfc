"""The initial-loss detector: scripted first losses (no training), then real tiny trainings."""
import math

import pytest
import torch
import torch.nn.functional as F

from monitor.detectors import diagnose
from monitor.detectors.initial_loss import InitialLoss
from monitor.events import Event, Kind, LayerStats, ModuleInfo, RunEnd, RunStart, Scalars
from monitor.store import RunStore
from trainer_hooks import watch

from conftest import summary
from trainings import blobs, make_mlp, train_mlp

MLP = (("0", "Linear", "64x20, 64"), ("2", "Linear", "64x64, 64"), ("4", "Linear", "4x64, 4"))


def output(layer, module, spread):
    return summary(layer, module=module, nan=0, inf=0, std=1.0, min=-spread / 2, max=spread / 2, units=None,
                   dead_units=None, window=None)


def events_of(losses, spread=2.0, rows=MLP, last=("4", "Linear"), start=True, stats_first=True, end=True,
              scalar="loss"):
    """A run as the trainer records it: run_start, then per step layer statistics (every
    second step, output layer last) and the loss, then run_end."""
    payloads = [(0, RunStart(name="r", config={}, model=tuple(ModuleInfo(n, m, 10, 10, s) for n, m, s in rows),
                             host="h", pid=1, rank=0, world=1, versions={}, sampling={}))] if start else []
    for step, loss in enumerate(losses):
        stats = [(step, LayerStats((output("0", "Linear", 3.0), output(*last, spread))))] if step % 2 == 0 else []
        scalars = [(step, Scalars({scalar: loss}))]
        payloads += stats + scalars if stats_first else scalars + stats
    payloads += [(len(losses), RunEnd("finished", len(losses), 1.0))] if end else []
    kinds = {RunStart: Kind.RUN_START, LayerStats: Kind.LAYER_STATS, Scalars: Kind.SCALARS, RunEnd: Kind.RUN_END}
    return [Event("r", seq, step, 1.0 + seq, kinds[type(p)], p) for seq, (step, p) in enumerate(payloads)]


def flags_of(events, **options):
    return [flag for _, flag in diagnose([InitialLoss(**options)], events)]


def test_a_classifier_starting_far_above_chance_is_flagged_with_its_numbers():
    [flag] = flags_of(events_of([25.0, 22.0, 18.0, 10.0, 5.0], spread=60.0), first_losses=3)
    assert flag.kind == "initial_loss" and flag.severity.value == "warning" and flag.layer == "4"
    assert flag.evidence["median"] == 22.0 and flag.evidence["classes"] == 4 and flag.evidence["inferred"]
    assert flag.evidence["ln_classes"] == pytest.approx(math.log(4)) and flag.evidence["steps"] == (0, 1, 2)
    assert flag.evidence["step"] == 2 and flag.evidence["output_spread"] == 60.0
    assert "median 22 over steps 0-2" in flag.message and "ln(4) = 1.386" in flag.message
    assert "chance" in flag.advice and "Xavier" in flag.advice and "labels" in flag.advice


def test_a_classifier_starting_at_chance_is_not_flagged():
    assert flags_of(events_of([1.40, 1.37, 1.36, 1.2, 0.9])) == []


def test_with_several_first_losses_one_odd_first_batch_does_not_decide():
    assert flags_of(events_of([30.0, 1.4, 1.38, 1.3], spread=60.0), first_losses=3) == []


def test_by_default_the_loss_before_any_update_decides_not_what_the_first_updates_did():
    # a last layer scaled 50x on the demo: 26 at step 0, then the learning rate blows it up
    [flag] = flags_of(events_of([26.0, 1416.0, 436.0], spread=77.0))
    assert flag.evidence["losses"] == (26.0,) and flag.evidence["step"] == 0


def test_a_first_loss_below_chance_is_not_flagged():
    # a last-layer bias set to the class priors, or a run resumed from a checkpoint
    assert flags_of(events_of([0.05, 0.04, 0.04], spread=20.0)) == []


def test_a_loss_no_cross_entropy_over_the_outputs_can_reach_is_left_alone_unless_classes_are_given():
    regression = events_of([1e4, 9e3, 8e3], spread=2.0)  # 1e4 above ln 4, outputs spread over 2
    assert flags_of(regression) == []
    [flag] = flags_of(regression, classes=4)
    assert flag.layer is None and not flag.evidence["inferred"] and flag.evidence["classes"] == 4


@pytest.mark.parametrize("rows, last", [
    (MLP[:2] + (("4", "Linear", "1x64, 1"),), ("4", "Linear")),  # one output: a regression or a binary logit
    (MLP + (("5", "Sigmoid", ""),), ("5", "Sigmoid")),  # the model ends in a sigmoid
    (MLP[:2] + (("4", "Conv2d", "4x64x1x1, 4"),), ("4", "Conv2d")),  # not a Linear head
])
def test_outputs_that_are_not_a_linear_over_classes_are_not_judged(rows, last):
    assert flags_of(events_of([25.0] * 5, spread=60.0, rows=rows, last=last)) == []


def test_a_linear_head_without_bias_gives_its_classes():
    rows = MLP[:2] + (("4", "Linear", "10x64"),)
    [flag] = flags_of(events_of([25.0] * 5, spread=60.0, rows=rows))
    assert flag.evidence["classes"] == 10


def test_without_a_model_summary_only_given_classes_are_checked():
    events = events_of([25.0] * 5, spread=60.0, start=False)
    assert flags_of(events) == []
    assert [f.evidence["classes"] for f in flags_of(events, classes=10)] == [10]


def test_losses_logged_before_the_layer_statistics_wait_for_them():
    # the first loss arrives before the output layer is known: the decision waits for its statistics
    events = events_of([25.0, 22.0, 18.0], spread=60.0, stats_first=False)
    [(event, flag)] = diagnose([InitialLoss(first_losses=1)], events)
    assert event.kind is Kind.LAYER_STATS and flag.evidence["losses"] == (25.0,) and flag.layer == "4"


def test_a_run_shorter_than_the_first_losses_is_judged_at_its_end():
    [flag] = flags_of(events_of([25.0], spread=60.0), first_losses=3)
    assert flag.evidence["losses"] == (25.0,) and "the first loss (25 at step 0) is 18x ln(4)" in flag.message


def test_non_finite_losses_are_left_to_the_divergence_detector():
    [flag] = flags_of(events_of([math.nan, math.inf, 25.0, 22.0, 18.0], spread=60.0), first_losses=3)
    assert flag.evidence["losses"] == (25.0, 22.0, 18.0)


def test_the_loss_is_judged_once_whatever_follows():
    events = events_of([1.4, 1.4, 1.4] + [50.0] * 20, spread=60.0)
    assert flags_of(events) == []


def test_another_scalar_can_be_the_loss():
    events = events_of([25.0] * 3, spread=60.0, scalar="train_loss")
    assert flags_of(events) == [] and len(flags_of(events, scalar="train_loss")) == 1


@pytest.mark.parametrize("options", [
    {"classes": 1}, {"classes": 2.5}, {"first_losses": 0}, {"factor": 1.0}, {"factor": math.inf},
    {"spread_slack": 0}, {"scalar": ""},
])
def test_thresholds_that_cannot_work_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        InitialLoss(**options)


def test_a_classifier_whose_last_layer_is_scaled_by_50_is_flagged(tmp_path):
    torch.manual_seed(0)
    model = make_mlp()
    with torch.no_grad():
        model[-1].weight.mul_(50)
    mon = train_mlp(tmp_path, [InitialLoss()], model=model, epochs=1)
    [flag] = mon.flags
    assert flag.layer == "4" and flag.evidence["classes"] == 4 and flag.evidence["median"] > 2 * math.log(4)
    with RunStore(tmp_path) as store:
        events = store.events(mon.run_id)
    assert [f for _, f in diagnose([InitialLoss()], events)] == mon.flags  # the same over the stored run


def test_a_healthy_classifier_is_not_flagged(tmp_path):
    assert train_mlp(tmp_path, [InitialLoss()], epochs=1).flags == []


def test_a_regression_with_three_outputs_is_not_taken_for_a_classifier(tmp_path):
    torch.manual_seed(0)
    x, _ = blobs()
    target = x[:, :3] * 10 + 20  # unnormalised targets: the first mean squared error is about 500
    model = make_mlp(classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with watch(model, optimizer, run="regression", logdir=tmp_path, every=2,
               detectors=[InitialLoss(), InitialLoss(classes=3)]) as mon:
        for idx in torch.arange(len(x)).split(32):
            optimizer.zero_grad()
            loss = F.mse_loss(model(x[idx]), target[idx])
            loss.backward()
            optimizer.step()
            mon.log(loss=loss)
    # only the detector told that there are 3 classes flags: the inferred one sees no cross-entropy
    assert [f.evidence["inferred"] for f in mon.flags] == [False]
