"""monitor.detectors.rank_desync on scripted rounds of each rank's (loss, gradient norm)."""
import math

from monitor.detectors.rank_desync import RankDesync


def rounds(detector, seq, shared=True):
    flags = []
    for i, (losses, grads) in enumerate(seq):
        flags += detector.update(10 * i, losses, grads, shared_gradients=shared)
    return flags


def test_replicas_sharing_one_averaged_gradient_with_noisy_losses_raise_nothing():
    seq = [([2.3 - 0.1 * i, 2.0 - 0.1 * i, 2.6 - 0.1 * i, 2.2 - 0.1 * i], [0.8 + 1e-7 * r for r in range(4)])
           for i in range(12)]
    assert rounds(RankDesync(), seq) == []


def test_a_rank_whose_gradient_norm_differs_for_three_rounds_is_flagged_once_naming_it():
    seq = [([1.0, 1.0], [0.5, 0.5])] * 2 + [([1.0, 1.0], [0.5, 0.9])] * 5
    flags = rounds(RankDesync(), seq)
    assert [(f.kind, f.step, f.evidence["rank"], f.evidence["signal"]) for f in flags] == [
        ("rank_desync", 40, 1, "grad_norm")]
    assert "rank 1" in flags[0].message and "80%" in flags[0].message


def test_two_rounds_apart_then_agreeing_again_is_not_a_desync():
    seq = [([1.0, 1.0], [0.5, 0.9])] * 2 + [([1.0, 1.0], [0.5, 0.5])] + [([1.0, 1.0], [0.5, 0.9])] * 2
    assert rounds(RankDesync(), seq) == []


def test_sharded_gradients_differ_by_design_and_are_not_compared():
    seq = [([1.0, 1.0], [0.5, 0.9])] * 6
    assert rounds(RankDesync(), seq, shared=False) == []


def test_a_rank_whose_smoothed_loss_stays_far_above_the_others_is_flagged():
    seq = [([1.0, 1.1, 0.9], [0.5] * 3)] * 2 + [([1.0, 1.1, 4.0], [0.5] * 3)] * 5
    flags = rounds(RankDesync(), seq)
    assert [(f.evidence["rank"], f.evidence["signal"]) for f in flags] == [(2, "loss")]
    assert "above" in flags[0].message


def test_a_non_finite_loss_on_one_rank_while_the_others_are_finite_is_flagged_at_once():
    flags = rounds(RankDesync(), [([1.0, 1.0], [0.5, 0.5]), ([1.0, math.nan], [0.5, 0.5])])
    assert [(f.step, f.evidence["rank"]) for f in flags] == [(10, 1)]


def test_every_rank_diverging_together_is_not_a_desync():
    flags = rounds(RankDesync(), [([1.0, 1.0], [0.5, 0.5]), ([math.nan, math.nan], [0.5, 0.5])] * 3)
    assert flags == []
