"""The overfitting detector: scripted evaluations (no training), then real tiny trainings.

The healthy trainings at the end run all five of the issue-4 detectors built together
(overfitting, plateau, vanishing and exploding gradients, update ratio) once each, to
keep the suite fast: each must stay silent on them.
"""
import math

import pytest

from monitor.detectors import diagnose
from monitor.detectors.exploding_gradient import ExplodingGradient
from monitor.detectors.overfitting import Overfitting
from monitor.detectors.plateau import Plateau
from monitor.detectors.update_ratio import UpdateRatio
from monitor.detectors.vanishing_gradient import VanishingGradient
from monitor.events import Event, Kind, Scalars
from monitor.store import RunStore

from trainings import train_demo_cnn, train_mlp


def epochs(history, steps_per_epoch=4):
    """Events for ``[(train losses of the interval, val_loss), ...]``: training steps, then one evaluation."""
    events, step = [], 0
    for epoch, (train, val) in enumerate(history):
        for loss in train:
            events.append(Event("r", len(events), step, 1.0, Kind.SCALARS, Scalars({"loss": loss})))
            step += 1
        events.append(Event("r", len(events), step - 1, 1.0, Kind.SCALARS,
                            Scalars({"val_loss": val, "epoch": float(epoch)})))
    return events


def flags_of(history, **options):
    return [(event, flag) for event, flag in diagnose([Overfitting(**options)], epochs(history))]


# train losses start at 2.0: the rise that counts is 2 % of it, 0.04
OVERFIT = [([2.0, 1.5], 1.6), ([1.0, 0.8], 1.0), ([0.5, 0.4], 0.6), ([0.2, 0.1], 0.7), ([0.05, 0.05], 0.8),
           ([0.02, 0.01], 0.9), ([0.01, 0.005], 1.0)]


def test_a_rising_validation_loss_with_a_falling_training_loss_is_flagged_once_with_the_best_epoch_and_gap():
    [(event, flag)] = flags_of(OVERFIT)
    assert flag.kind == "overfitting" and flag.severity.value == "warning" and flag.layer is None
    assert event.step == 11 and flag.evidence["step"] == 11  # the 6th evaluation: the 3rd above the best
    ev = flag.evidence
    assert (ev["best"], ev["best_epoch"], ev["best_step"]) == (0.6, 2.0, 5)
    assert ev["value"] == 0.9 and ev["epoch"] == 5.0 and ev["evaluations"] == 3
    assert ev["train_loss"] == pytest.approx(0.015) and ev["train_loss_at_best"] == pytest.approx(0.45)
    assert ev["gap"] == pytest.approx(0.885)
    assert "val_loss has risen for 3 evaluations (0.9 at epoch 5, best 0.6 at epoch 2)" in flag.message
    assert "restore_best_weights" in flag.advice and "augment" in flag.advice and "weight decay" in flag.advice


def test_patience_counts_evaluations():
    [(event, flag)] = flags_of(OVERFIT, patience=2)
    assert event.step == 9 and flag.evidence["evaluations"] == 2
    assert flags_of(OVERFIT, patience=5) == []  # only four evaluations rise after the best


def test_a_validation_loss_that_rises_with_the_training_loss_is_not_overfitting():
    unstable = [(t, v) for (_, v), t in zip(OVERFIT, [[2.0], [1.0], [0.5], [0.6], [0.7], [0.8], [0.9]])]
    assert flags_of(unstable) == []


def test_a_flat_training_loss_under_a_noisy_validation_loss_is_not_overfitting():
    # random labels: the training loss barely moves (1.12 to 1.11) while validation wobbles up by 0.05
    history = [([1.1, 1.12], 1.22), ([1.12], 1.211), ([1.115], 1.25), ([1.11], 1.26), ([1.11], 1.263), ([1.11], 1.27)]
    assert flags_of(history) == []
    assert len(flags_of(history, min_fall=0.0)) == 1


def test_a_validation_loss_that_wobbles_near_its_best_is_not_overfitting():
    # the healthy demo: the loss converged near 0.03 and wobbles by 0.02 (1 % of the first loss 2.3)
    history = [([2.3, 0.8], 0.265), ([0.2], 0.234), ([0.1], 0.073), ([0.02], 0.0274), ([0.004], 0.0471),
               ([0.0024], 0.0258), ([0.0009], 0.0349), ([0.0006], 0.0312), ([0.0004], 0.04), ([0.0003], 0.045)]
    assert flags_of(history) == []
    assert len(flags_of(history, min_rise=0.0)) == 1  # with no margin, the same wobble is a rise


def test_an_evaluation_back_near_the_best_restarts_the_count():
    # 0.7, 0.8, then 0.62 (within 0.04 of the best 0.6), then 0.9, 1.0, 1.1
    history = OVERFIT[:5] + [([0.01], 0.62)] + OVERFIT[5:] + [([0.001], 1.1)]
    [(event, flag)] = flags_of(history)
    assert flag.evidence["value"] == 1.1 and flag.evidence["evaluations"] == 3


def test_nan_values_are_skipped_without_crashing():
    history = [(t + [math.nan], math.nan if i == 4 else v) for i, (t, v) in enumerate(OVERFIT)]
    [(_, flag)] = flags_of(history + [([0.001], 1.1)])
    assert all(math.isfinite(v) for v in (flag.evidence["train_loss"], flag.evidence["value"]))


def test_without_a_training_loss_nothing_is_flagged():
    events = [Event("r", i, i, 1.0, Kind.SCALARS, Scalars({"val_loss": v})) for i, v in enumerate([1, 0.5, 1, 2, 3])]
    assert diagnose([Overfitting()], events) == []


def test_the_metrics_can_be_renamed():
    events = [Event(e.run, e.seq, e.step, e.wall, e.kind, Scalars(
        {{"loss": "train_nll", "val_loss": "val_nll"}.get(k, k): v for k, v in e.data.values.items()}))
        for e in epochs(OVERFIT)]
    assert diagnose([Overfitting()], events) == []
    assert len(diagnose([Overfitting(monitor="val_nll", train="train_nll")], events)) == 1


@pytest.mark.parametrize("options", [{"patience": 0}, {"patience": 1.5}, {"min_rise": -0.1}, {"min_rise": math.nan},
                                     {"min_rise": "big"}, {"min_fall": 1.0}, {"min_fall": -0.5},
                                     {"monitor": ""}, {"monitor": "loss"}])
def test_options_that_cannot_work_are_refused_naming_the_option(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        Overfitting(**options)


def test_the_demo_on_100_images_is_flagged_when_its_validation_loss_turns(tmp_path):
    mon = train_demo_cnn(tmp_path, [Overfitting()], epochs=60, train_size=100)
    [flag] = mon.flags
    assert flag.kind == "overfitting"
    ev = flag.evidence  # measured: best 0.42-0.46 at epoch 10-11, flagged three epochs later
    assert 5 <= ev["best_epoch"] <= 20 and ev["epoch"] >= ev["best_epoch"] + 3 and ev["step"] == 4 * ev["epoch"] + 3
    assert 0.3 < ev["best"] < 0.5 < ev["value"] and ev["train_loss"] < 0.05 and ev["gap"] > 0.4
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id)
    assert [f for _, f in diagnose([Overfitting()], stored)] == mon.flags


def all_five():
    return [Overfitting(), Plateau(), VanishingGradient(), ExplodingGradient(), UpdateRatio()]


def test_the_healthy_demo_raises_none_of_the_five(tmp_path):
    assert train_demo_cnn(tmp_path, all_five(), epochs=8).flags == []


def test_the_healthy_demo_with_adam_raises_none_of_the_five(tmp_path):
    assert train_demo_cnn(tmp_path, all_five(), epochs=8, optimizer="adam").flags == []


def test_the_healthy_mlp_raises_none_of_the_five(tmp_path):
    assert train_mlp(tmp_path, all_five(), epochs=20).flags == []
