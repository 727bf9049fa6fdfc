"""The divergence detector: scripted sequences (no training), then a real tiny training."""
import math

import pytest
import torch
from torch import nn

from monitor.detectors import diagnose
from monitor.detectors.divergence import Divergence
from monitor.events import Event, Kind, LayerStats, Scalars
from monitor.store import RunStore
from trainer_hooks import watch

from conftest import summary


def losses(values, start=0):
    return [Event("r", start + i, start + i, 1.0 + i, Kind.SCALARS, Scalars({"loss": v}))
            for i, v in enumerate(values)]


def flags_of(values, **options):
    return [flag for _, flag in diagnose([Divergence(**options)], losses(values))]


def test_a_nan_loss_is_flagged_critical_at_once_with_the_last_finite_value():
    [flag] = flags_of([2.3, 2.1, math.nan, math.nan])
    assert flag.kind == "divergence" and flag.severity.value == "critical"
    assert "loss is NaN at step 2 (it was 2.1 at step 1)" in flag.message
    assert flag.evidence["step"] == 2 and "learning rate" in flag.advice


def test_an_infinite_loss_is_flagged():
    [flag] = flags_of([2.3, math.inf])
    assert "+Inf" in flag.message


def test_a_loss_that_climbs_two_orders_of_magnitude_for_a_while_is_flagged_once():
    values = [2.3, 1.0, 0.5] + [60.0 * 1.2 ** i for i in range(20)]  # 120x to 3800x: below a burst
    [flag] = flags_of(values)
    assert flag.evidence["min_loss"] == 0.5 and flag.evidence["factor"] > 100
    assert flag.evidence["step"] == 12  # above 100 x 0.5 from step 3 on; the 10th in a row is step 12


def test_one_spike_is_not_divergence():
    assert flags_of([2.3, 1.0, 0.5, 500.0, 0.4, 0.3] + [0.3] * 20) == []


def test_a_loss_far_below_its_start_does_not_flag_on_noise():
    # minimum 1e-5, noise up to 1e-2: 1000x the minimum, but far below the first loss
    assert flags_of([2.3] + [1e-5] + [1e-2, 1e-3] * 20) == []


def test_diagnose_stamps_each_flag_with_the_step_of_its_event():
    [(event, flag)] = diagnose([Divergence()], losses([2.3, 2.1, math.nan], start=40))
    assert flag.step == event.step == 42


def test_a_healthy_falling_loss_raises_nothing():
    assert flags_of([2.3 * 0.99 ** i for i in range(500)]) == []


def test_nonfinite_activations_name_the_first_layer_where_they_appear():
    stats = LayerStats((summary("conv1", nan=0, inf=0), summary("fc1", nan=3, inf=0),
                        summary("fc2", nan=5, inf=1)))
    event = Event("r", 0, 7, 1.0, Kind.LAYER_STATS, stats)
    [flag] = Divergence().update(event)
    assert flag.layer == "fc1" and "step 7" in flag.message and flag.evidence["nan"] == 3
    assert Divergence().update(Event("r", 0, 7, 1.0, Kind.LAYER_STATS,
                                     LayerStats((summary("conv1", nan=0, inf=0),)))) == []


@pytest.mark.parametrize("options", [{"climb_factor": 1.0}, {"patience": 0}, {"burst_factor": 10.0}])
def test_thresholds_that_cannot_work_are_refused(options):
    with pytest.raises(ValueError):
        Divergence(**options)


def test_a_training_whose_loss_turns_nan_is_flagged_in_the_handle_and_the_store(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e12)  # certain to blow up
    with watch(model, optimizer, run="blowup", logdir=tmp_path, every=1) as mon:
        for _ in range(20):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.log(loss=loss)
    kinds = {flag.kind for flag in mon.flags}
    assert "divergence" in kinds  # its ReLUs die as well, and are flagged too
    assert any("loss is NaN" in f.message or "+Inf" in f.message for f in mon.flags)
    assert "babysit: critical divergence" in capsys.readouterr().err
    with RunStore(tmp_path) as store:
        stored = store.events(mon.run_id, kinds=["flag"])
    assert len(stored) == len(mon.flags)
    # every flag says when: the step of the event that raised it, in the handle and in the store
    assert [f.step for f in mon.flags] == [e.step for e in stored] == [e.data.step for e in stored]
    assert all(isinstance(f.step, int) for f in mon.flags)


def test_detectors_can_be_turned_off(tmp_path):
    model = nn.Linear(2, 1)
    with watch(model, run="quiet", logdir=tmp_path, detectors=[]) as mon:
        mon.log(loss=math.nan)
    assert mon.flags == []


def test_a_loss_that_jumps_four_orders_of_magnitude_once_is_flagged_at_once():
    [flag] = flags_of([2.3, 1.0, 1.0, 3e20, 2.5, 2.4])
    assert flag.evidence["step"] == 3 and flag.evidence["factor"] == 3e20
