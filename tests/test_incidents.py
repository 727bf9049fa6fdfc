"""monitor.incidents on scripted flag sequences: causes first, symptoms under them, one advice."""
import random

from monitor.events import Flag
from monitor.incidents import group_flags


def flag(kind, step, layer=None, severity="warning", **evidence):
    return Flag(kind=kind, severity=severity, step=step, layer=layer, message=f"{kind} at {step}",
                advice=f"advice of {kind}", evidence=evidence)


DEAD_RELU_RUN = [
    flag("vanishing_gradient", 20, "bn1"), flag("update_ratio", 20, direction="low"),
    flag("dead_relu", 50, "relu1", "critical"), flag("dead_relu", 50, "relu2"), flag("dead_relu", 52, "relu3"),
    flag("plateau", 80),
]


def test_dead_relus_explain_the_vanishing_gradient_tiny_updates_and_plateau_seen_before_them():
    [incident] = group_flags(DEAD_RELU_RUN)
    assert incident.cause == "dead_relu" and incident.severity == "critical" and incident.step == 20
    assert incident.symptoms == ("vanishing_gradient", "update_ratio", "plateau")
    assert incident.layers == ("relu1", "relu2", "relu3", "bn1")  # each once, the cause's first
    assert [f.kind for f in incident.flags][:3] == ["dead_relu"] * 3
    assert incident.advice == "advice of dead_relu" and incident.note == ""


def test_the_grouping_does_not_depend_on_the_order_the_flags_arrive_in():
    shuffled = list(DEAD_RELU_RUN)
    random.Random(0).shuffle(shuffled)
    assert group_flags(shuffled) == group_flags(DEAD_RELU_RUN)


def test_a_divergence_explains_what_follows_it_but_not_a_problem_from_long_before():
    flags = [flag("dead_relu", 5, "relu1"), flag("divergence", 100, severity="critical"),
             flag("saturation", 105, "tanh"), flag("dead_relu", 110, "relu2"), flag("vanishing_gradient", 95, "fc1"),
             flag("overfitting", 130)]
    first, second = group_flags(flags)
    assert first.cause == "divergence" and first.severity == "critical"
    assert first.symptoms == ("vanishing_gradient", "saturation", "dead_relu", "overfitting")
    assert second.cause == "dead_relu" and second.layers == ("relu1",) and second.symptoms == ()


def test_opposite_learning_rate_advice_says_which_incident_to_follow_and_why():
    flags = [flag("exploding_gradient", 10, "fc0"), flag("update_ratio", 30, direction="low")]
    exploding, tiny = group_flags(flags)
    assert exploding.cause == "exploding_gradient" and exploding.note == ""
    assert tiny.cause == "update_ratio"
    assert "opposite of the exploding_gradient incident's" in tiny.note
    assert "follow that one first" in tiny.note and "raising it would make it worse" in tiny.note


def test_updates_too_large_are_a_symptom_of_exploding_gradients_and_too_small_ones_are_not():
    [incident, other] = group_flags([flag("exploding_gradient", 10), flag("update_ratio", 12, direction="high"),
                                     flag("update_ratio", 40, direction="low")])
    assert incident.symptoms == ("update_ratio",) and incident.flags[1].evidence["direction"] == "high"
    assert other.cause == "update_ratio" and other.flags[0].evidence["direction"] == "low"


def test_an_input_far_from_normalised_is_the_cause_of_the_saturation_it_brings():
    [incident] = group_flags([flag("saturation", 12, "tanh1"), flag("input_not_normalized", 15)])
    assert incident.cause == "input_not_normalized" and incident.symptoms == ("saturation",)


def test_a_healthy_run_has_no_incident_and_unrelated_problems_are_each_their_own():
    assert group_flags([]) == []
    kinds = [i.cause for i in group_flags([flag("overfitting", 200), flag("initial_loss", 0)])]
    assert kinds == ["initial_loss", "overfitting"]  # by the step they began at


def test_a_stored_run_gives_its_incidents(tmp_path):
    import torch
    from torch import nn

    import monitor
    from trainer_hooks import watch

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    with watch(model, torch.optim.SGD(model.parameters(), lr=0.1), logdir=tmp_path, run="told", detectors=[]) as mon:
        for f in DEAD_RELU_RUN:
            mon.add_flag(f)
    [incident] = monitor.load_run("told", logdir=tmp_path).incidents
    assert incident.cause == "dead_relu" and incident.symptoms == ("vanishing_gradient", "update_ratio", "plateau")
    assert incident.layers == ("relu1", "relu2", "relu3", "bn1")
