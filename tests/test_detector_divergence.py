"""The divergence detector: scripted sequences (no training), then a real tiny training."""
import math
import random

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
    # the running median of 5 bottoms out at 1.0 (step 2) and is above 3x that and the start from step 5
    assert flag.evidence["min_loss"] == 1.0 and flag.evidence["factor"] > 3 and flag.evidence["step"] == 14


def test_a_loss_growing_geometrically_is_flagged_well_before_it_is_ten_times_its_minimum():
    falling = [2.3 * 0.98 ** i for i in range(76)]  # down to 0.5
    values = falling + [falling[-1] * 1.047 ** i for i in range(1, 340)]  # then x2 every 15 steps, to 2.4e6
    [flag] = flags_of(values)
    assert flag.evidence["factor"] < 10 and values[flag.evidence["step"]] / min(values) < 10
    assert "the loss is exploding" in flag.message and "above its start" in flag.message


def test_a_loss_that_climbs_far_above_its_start_and_stays_there_is_divergence():
    # a tiny transformer at a learning rate 1000x too high: 4.2 at chance, 3.0, then 45 within 140 steps
    rng = random.Random(0)
    values = [4.2 - 1.2 * i / 20 for i in range(20)] + [3.0 * 15 ** (i / 140) for i in range(140)]
    values += [45 * (1 + rng.uniform(-0.1, 0.1)) for _ in range(200)]
    [flag] = flags_of(values)
    assert flag.evidence["smoothed"] < 10 * flag.evidence["min_loss"] and flag.evidence["step"] < 160


def test_a_noisy_converging_loss_and_short_spikes_are_not_divergence():
    rng = random.Random(1)
    noisy = [max(2.3 * math.exp(-i / 300), 0.02) * math.exp(rng.gauss(0, 0.7)) for i in range(5000)]
    assert flags_of(noisy) == []
    spikes = [2.3 * 0.99 ** i for i in range(300)]
    for start in (100, 200):
        spikes[start:start + 4] = [10 * v for v in spikes[start:start + 4]]  # four steps 10x up: a spike
    assert flags_of(spikes) == []


def test_a_stop_on_a_non_finite_metric_is_explained_as_divergence_once():
    detector = Divergence()
    events = losses([2.3, 2.0, 1.8]) + [Event("r", 3, 3, 4.0, Kind.SCALARS, Scalars({"val_loss": math.nan}))]
    assert diagnose([detector], events) == []
    [flag] = detector.explain_stop("early_stopping", "val_loss", 3)
    assert flag.kind == "divergence" and "val_loss is NaN at step 3" in flag.message
    assert flag.evidence["stop_cause"] == "early_stopping"
    assert detector.explain_stop("early_stopping", "val_loss", 3) == []  # once
    finite = Divergence()
    diagnose([finite], losses([2.3, 2.0]) + [Event("r", 2, 2, 3.0, Kind.SCALARS, Scalars({"val_loss": 1.9}))])
    assert finite.explain_stop("early_stopping", "val_loss", 2) == []  # a plain early stop
    flagged = Divergence()
    nan_val = Event("r", 2, 1, 3.0, Kind.SCALARS, Scalars({"val_loss": math.nan}))
    diagnose([flagged], losses([2.3, math.nan]) + [nan_val])
    assert flagged.explain_stop("early_stopping", "val_loss", 1) == []  # already said


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


@pytest.mark.parametrize("options", [{"climb_factor": 1.0}, {"patience": 0}, {"burst_factor": 2.0}, {"smooth": 0},
                                     {"fast_ratio": 0.0}, {"fast_ratio": math.inf}, {"fast_samples": 1},
                                     {"fast_growth": 0.5}])
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


def stepped(values, ratios):
    """Per step its loss, then the sampled statistics of two weight tensors whose
    update/weight ratio is ``ratios[step]`` (a bias beside them, which does not count)."""
    events = []
    for step, (loss, ratio) in enumerate(zip(values, ratios)):
        events.append(Event("r", 2 * step, step, 1.0 + step, Kind.SCALARS, Scalars({"loss": loss})))
        params = tuple(summary(name, signal="param_grad", module="Linear", nan=0, inf=0, weight_norm=1.0,
                               update_ratio=r)
                       for name, r in (("0.weight", ratio), ("2.weight", ratio), ("2.bias", 5.0)))
        events.append(Event("r", 2 * step + 1, step, 1.0 + step, Kind.LAYER_STATS, LayerStats(params)))
    return [flag for _, flag in diagnose([Divergence()], events)]


#: The zoo's tiny transformer under SGD at 30x its learning rate (during its warm-up), per
#: step: the loss, and the update/weight ratio measured with raw torch. 10x its minimum at step 11.
RUNAWAY_LOSS = [3.08, 2.95, 2.77, 2.71, 3.16, 2.72, 3.36, 4.22, 3.21, 7.95, 3.92, 28.6, 14.5, 403.0]
RUNAWAY_RATIO = [0.02, 0.05, 0.06, 0.09, 0.10, 0.11, 0.21, 0.21, 0.25, 0.61, 0.61, 0.73, 1.21, 2.06]


def test_steps_running_away_while_the_loss_is_above_its_start_are_divergence_before_the_loss_is_10x():
    [flag] = stepped(RUNAWAY_LOSS, RUNAWAY_RATIO)
    assert flag.kind == "divergence" and flag.severity.value == "critical"
    # the steps 0.21, 0.25, 0.61 of their weights by step 9 (2.9x their minimum), two steps before 10x
    assert flag.step == 9 and flag.evidence["loss"] < 10 * min(RUNAWAY_LOSS[:10])
    assert flag.evidence["fast_since"] == 5 and flag.evidence["smoothed"] > flag.evidence["first"]
    assert "running away" in flag.message and "0.21 to 0.61 of their norm per step" in flag.message


def test_large_steps_that_shrink_or_a_loss_below_its_start_are_not_divergence():
    # AdamW at 300x: steps of a third of the weights, shrinking as the weights grow, and a loss
    # bumping above its start before it settles below it
    adam_loss = [3.08, 2.92, 2.63, 3.47, 3.31, 4.61, 3.19, 3.37, 3.1, 2.96, 2.91, 2.86, 2.8, 2.76, 2.7]
    adam_ratio = [0.19, 0.27, 0.32, 0.34, 0.34, 0.31, 0.27, 0.23, 0.20, 0.17, 0.14, 0.12, 0.11, 0.09, 0.06]
    assert stepped(adam_loss, adam_ratio) == []
    # a broken output scale: large and growing first steps, the loss falling from far above chance
    falling = [27.2, 364.0, 11.8, 95.3, 19.3, 12.3, 6.16, 4.88, 2.37, 2.31, 2.31, 2.34]
    assert stepped(falling, [0.11, 0.12, 0.13, 0.15, 0.17, 0.2, 0.22, 0.25, 0.2, 0.1, 0.05, 0.04]) == []
    # the same loss with steps of a healthy size: left to the climb rule, which waits for its patience
    assert stepped(RUNAWAY_LOSS, [0.05] * len(RUNAWAY_LOSS)) == []
    # large steps that only creep up (0.32 to 0.34) while the loss bumps above its start
    assert stepped(adam_loss, [0.30, 0.31, 0.32, 0.33, 0.34, 0.35, 0.34] + adam_ratio[7:]) == []
