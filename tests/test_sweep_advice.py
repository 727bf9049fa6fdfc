"""The search's own advice (monitor/sweeps), on synthetic objectives whose optimum is known:
inside the range, below it and above it; a grid; a coarse stage run long; a noisy metric."""
import math
import random

import pytest

from monitor.sweeps.advice import Trial, advise
from monitor.sweeps.space import SpaceError, parse, parse_all

LR = parse("lr=loguniform(1e-5,1e-1)")
WD = parse("wd=loguniform(1e-6,1e-2)")


def random_sweep(optimum: float, trials: int = 24, seed: int = 0, **extra) -> list[Trial]:
    """Random search on a log scale; the loss is the squared distance in decades to ``optimum``
    (plus a little noise), the weight decay does not matter."""
    rng = random.Random(seed)
    out = []
    for i in range(trials):
        lr, wd = 10 ** rng.uniform(-5, -1), 10 ** rng.uniform(-6, -2)
        loss = (math.log10(lr) - math.log10(optimum)) ** 2 + rng.gauss(0, 0.01)
        out.append(Trial(i, {"lr": lr, "wd": wd}, loss, **extra))
    return out


def kinds(advice) -> list[str]:
    return [a.kind for a in advice]


def test_an_optimum_inside_the_range_gets_a_finer_range_around_it_and_no_border_warning():
    advice = advise(random_sweep(1e-3), [LR, WD])
    assert "border" not in [a.kind for a in advice if a.dimension == "lr"]
    [step] = [a for a in advice if a.kind == "next_range"]
    lr = parse(step.space[0])
    assert lr.name == "lr" and lr.low < 1e-3 < lr.high
    assert math.log10(lr.high / lr.low) < 2.5  # finer than the 4 decades searched
    assert "grid" not in kinds(advice)


@pytest.mark.parametrize("optimum, side, direction", [(1e-7, "lower", "downwards"), (1.0, "upper", "upwards")])
def test_a_best_value_on_the_border_says_which_way_to_extend_the_range(optimum, side, direction):
    advice = advise(random_sweep(optimum), [LR, WD])
    [edge] = [a for a in advice if a.kind == "border" and a.dimension == "lr"]
    assert f"{side} border of 1e-05..0.1" in edge.message and direction in edge.message
    extended = parse(edge.space[0])
    if side == "lower":
        assert extended.low == pytest.approx(1e-7) and extended.high == 0.1
    else:
        assert extended.low == 1e-5 and extended.high == pytest.approx(10.0)
    assert edge.evidence["position"] < 0.1 or edge.evidence["position"] > 0.9


def test_a_grid_sweep_gets_the_grid_warning_and_random_search_does_not():
    trials = [Trial(i, {"lr": lr, "wd": wd}, (math.log10(lr) + 3) ** 2)
              for i, (lr, wd) in enumerate((lr, wd) for lr in (1e-5, 1e-4, 1e-3, 1e-2) for wd in (1e-6, 1e-4, 1e-2))]
    [warning] = [a for a in advise(trials, [LR, WD], sampler="grid") if a.kind == "grid"]
    assert "lr: 4" in warning.message and "wd: 3" in warning.message and "random" in warning.message
    # the same grid run by a sampler called random is still found out by its values
    assert "grid" in kinds(advise(trials, [LR, WD]))
    assert "grid" not in kinds(advise(random_sweep(1e-3), [LR, WD]))


def test_pruned_and_diverged_trials_are_left_out_of_the_advice():
    trials = random_sweep(1e-3, trials=12)
    # a "best" value at the border that diverged (its value is meaningless) changes nothing
    trials.append(Trial(99, {"lr": 1.1e-5, "wd": 1e-4}, -1.0, state="pruned"))
    trials.append(Trial(100, {"lr": 0.09, "wd": 1e-4}, math.nan, state="diverged"))
    advice = advise(trials, [LR, WD])
    assert not [a for a in advice if a.kind == "border" and a.dimension == "lr"]
    assert 99 not in next(a for a in advice if a.kind == "next_range").evidence["top"]


def test_a_coarse_stage_run_for_many_epochs_is_told_to_start_with_one():
    [long] = [a for a in advise(random_sweep(1e-3, epochs=8), [LR]) if a.kind == "first_stage"]
    assert "8 epochs per trial" in long.message and "one epoch or less" in long.message
    assert "first_stage" not in kinds(advise(random_sweep(1e-3, epochs=1), [LR]))
    fine = parse("lr=loguniform(3e-4,3e-3)")
    assert "first_stage" not in kinds(advise(random_sweep(1e-3, epochs=8), [fine]))


def test_top_trials_inside_the_metric_noise_ask_for_a_larger_validation_set():
    flat = [Trial(i, {"lr": 10 ** (-5 + i / 5)}, 0.5 + 0.001 * (i % 3), noise=0.02) for i in range(20)]
    [small] = [a for a in advise(flat, [LR]) if a.kind == "validation_noise"]
    assert "too small to rank them" in small.message
    assert "validation_noise" not in kinds(advise(random_sweep(1e-3, noise=0.001), [LR]))


def test_space_specs_read_back_and_bad_ones_name_the_problem():
    assert parse("bs=choice(32, 64, 128)").choices == (32, 64, 128)
    assert parse("layers=int(1,8)").spec() == "layers=int(1,8)"
    assert parse(parse("lr=loguniform(1e-5,1e-1)").spec()) == LR
    for text, words in [("lr=loguniform(0,1)", "low > 0"), ("lr=uniform(1,1)", "low < high"),
                        ("lr=normal(0,1)", "unknown distribution"), ("lr", "NAME=DIST(ARGS)"),
                        ("bs=choice(32)", "two or more"), ("n=int(1.5,4)", "whole bounds"),
                        ("lr=loguniform(a,b)", "not numbers")]:
        with pytest.raises(SpaceError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse(text)
    with pytest.raises(SpaceError, match="lr given more than once"):
        parse_all(["lr=uniform(0,1)", "lr=uniform(0,2)"])


def test_a_trial_is_pruned_by_a_diverged_run_a_dead_network_or_an_early_plateau_only():
    from monitor.events import Flag, Severity
    from monitor.sweeps.pruning import prune_reason, savings

    def flag(kind, severity=Severity.WARNING, step=10):
        return Flag(kind, severity, f"{kind} at step {step}", "advice", step=step)

    assert prune_reason([flag("update_ratio"), flag("divergence", Severity.CRITICAL, 40)]).kind == "divergence"
    assert prune_reason([flag("dead_relu")]) is None  # a warning: part of a layer
    pruned = prune_reason([flag("dead_relu", Severity.CRITICAL, 12)])
    assert pruned.kind == "dead_relu" and pruned.step == 12 and pruned.reason.startswith("dead_relu: ")
    assert prune_reason([flag("plateau")], evaluations=1).kind == "plateau"
    assert prune_reason([flag("plateau")], evaluations=5) is None  # a late plateau is convergence's business
    assert prune_reason([flag("overfitting")]) is None
    saved = savings([100.0, 120.0, 110.0], [10.0, 30.0])
    assert (saved.pruned, saved.completed, saved.seconds_saved) == (2, 3, 100.0 + 80.0)
