"""Sampling schedules, driven by scripted step times (no training)."""
import math

import pytest

from trainer_hooks.schedule import (MAX_DEBT, MAX_EVERY, MAX_LOOK, MAX_VITALS_EVERY, START_STEPS, VITALS_START_STEPS,
                                    AutoInterval, FixedInterval, VitalsCadence)


def drive(schedule, plain: float, extra: float, steps: int) -> list[int]:
    sampled = []
    for step in range(steps):
        due = schedule.due(step)
        if due:
            sampled.append(step)
        schedule.observe(step, plain + (extra if due else 0.0), due)
    return sampled


def test_a_fixed_interval_samples_step_zero_and_every_nth_step():
    assert drive(FixedInterval(4), 0.01, 0.0, 10) == [0, 4, 8]


@pytest.mark.parametrize("every", [0, -3, 1.5, True, "2"])
def test_a_fixed_interval_must_be_a_whole_number_of_steps(every):
    with pytest.raises(ValueError, match="every: expected a whole number"):
        FixedInterval(every)


def test_the_automatic_schedule_samples_the_start_then_doubles_its_gaps_up_to_the_budget_interval():
    schedule = AutoInterval(budget=0.01)
    sampled = drive(schedule, plain=0.010, extra=0.005, steps=400)  # a sample costs half a step
    assert sampled[:START_STEPS] == list(range(START_STEPS))
    gaps = [b - a for a, b in zip(sampled[START_STEPS - 1:], sampled[START_STEPS:])]
    assert gaps[:4] == [1, 2, 4, 8] and set(gaps[-3:]) == {50}


def test_the_automatic_interval_keeps_the_sampling_cost_near_its_budget():
    schedule = AutoInterval(budget=0.01, start_steps=1)
    sampled = drive(schedule, plain=0.010, extra=0.005, steps=2000)  # a sample costs half a step
    assert sampled[0] == 0
    assert schedule.every == 50  # 0.005 / (0.01 * 0.010)
    cost = len(sampled) * 0.005 / (2000 * 0.010)
    assert cost < 0.015


def test_a_closer_look_samples_the_steps_asked_for_and_is_repaid_from_the_next_regular_gaps():
    schedule = AutoInterval(budget=0.01, start_steps=1)
    drive(schedule, plain=0.010, extra=0.005, steps=1000)
    before = drive_sampled(schedule, 1000, 0.010, 0.005, 1000)
    assert schedule.look(2000, 5)
    after = drive_sampled(schedule, 2000, 0.010, 0.005, 1000)
    assert after[:5] == [2000, 2001, 2002, 2003, 2004]
    assert len(after) <= len(before) + 1  # over the next interval the budget holds
    assert schedule.debt == 0


def test_a_detector_that_keeps_asking_gets_at_most_the_owed_samples_it_may_borrow():
    schedule = AutoInterval(budget=0.01, start_steps=1)
    drive(schedule, plain=0.010, extra=0.005, steps=1000)
    taken = 0
    for step in range(1000, 1400):
        schedule.look(step, MAX_LOOK)  # a suspicion that never confirms
        due = schedule.due(step)
        taken += due
        schedule.observe(step, 0.010 + (0.005 if due else 0.0), due)
    assert taken <= MAX_DEBT + 400 // schedule.every + 1


def test_a_fixed_interval_grants_no_closer_look():
    schedule = FixedInterval(10)
    assert not schedule.look(3, 5) and drive(schedule, 0.01, 0.0, 12) == [0, 10]


def drive_sampled(schedule, start, plain, extra, steps):
    sampled = []
    for step in range(start, start + steps):
        due = schedule.due(step)
        sampled += [step] if due else []
        schedule.observe(step, plain + (extra if due else 0.0), due)
    return sampled


def test_the_automatic_interval_samples_every_step_when_sampling_is_cheap():
    schedule = AutoInterval(budget=0.01)
    drive(schedule, plain=1.0, extra=0.001, steps=100)
    assert schedule.every == 1


def test_the_automatic_interval_is_capped_so_a_run_is_never_unwatched_for_long():
    schedule = AutoInterval(budget=0.01)
    drive(schedule, plain=0.001, extra=1.0, steps=3000)
    assert schedule.every == MAX_EVERY


def test_one_slow_plain_step_such_as_a_validation_pass_does_not_move_the_interval():
    schedule = AutoInterval(budget=0.01)
    drive(schedule, plain=0.010, extra=0.005, steps=200)
    before = schedule.every
    schedule.observe(200, 5.0, False)  # validation ran between two steps
    assert drive_from(schedule, 201, 0.010, 0.005, 200) and schedule.every == before


def drive_from(schedule, start, plain, extra, steps):
    for step in range(start, start + steps):
        due = schedule.due(step)
        schedule.observe(step, plain + (extra if due else 0.0), due)
    return True


def test_an_overhead_budget_outside_zero_and_one_is_rejected():
    with pytest.raises(ValueError, match="overhead budget"):
        AutoInterval(budget=2.0)


def test_the_writers_cost_of_a_sample_counts_against_the_budget():
    """A sample costs what the training thread sees plus what the writer thread spends on
    it later; with both the interval is the one the sum calls for."""
    schedule = AutoInterval(budget=0.01, background=lambda: 0.002)
    plain, extra = 0.010, 0.003
    for step in range(400):
        due = schedule.due(step)
        schedule.observe(step, plain + (extra if due else 0.0), due)
    # ceil((3 ms + 2 ms) / (1 % of 10 ms)) = 50 (give or take float rounding); 30 without the writer
    assert abs(schedule.every - math.ceil((extra + 0.002) / (0.01 * plain))) <= 1


def test_the_steps_slowed_down_after_a_sample_count_as_its_cost():
    """A sample that costs 2 ms itself and 1 ms in each of the next two steps (caches
    refilled) costs 4 ms: the interval doubles from what the sampled step alone implies."""
    schedule = AutoInterval(budget=0.01)
    plain, last_sampled = 0.010, -100
    for step in range(2000):
        due = schedule.due(step)
        if due:
            last_sampled = step
        slow = 0.002 if due else (0.001 if 0 < step - last_sampled <= 2 else 0.0)
        schedule.observe(step, plain + slow, due)
    assert abs(schedule.every - 40) <= 1


def test_a_validation_pass_in_every_interval_does_not_inflate_the_cost():
    """Long intervals all hold an epoch's validation: it is not the sample's doing."""
    schedule = AutoInterval(budget=0.01)
    for step in range(3000):
        due = schedule.due(step)
        validation = 2.0 if step % 97 == 50 else 0.0  # more often than any interval is long
        schedule.observe(step, 0.010 + (0.005 if due else 0.0) + validation, due)
    assert abs(schedule.every - 50) <= 1


def test_noisy_plain_steps_do_not_add_up_to_a_cost():
    """Step times scatter by ±20 %: over a long interval the scatter cancels, so the
    interval stays near what the sample's true cost calls for (50)."""
    import random

    rng = random.Random(0)
    schedule = AutoInterval(budget=0.01)
    for step in range(5000):
        due = schedule.due(step)
        schedule.observe(step, 0.010 * rng.uniform(0.8, 1.2) + (0.005 if due else 0.0), due)
    assert 35 <= schedule.every <= 65


def read_vitals(cadence: VitalsCadence, step_seconds: float, cost: float, steps: int) -> list[int]:
    """The steps whose vital signs a cadence reads, each reading costing ``cost``."""
    read = []
    for step in range(steps):
        due = cadence.due(step)
        if due:
            read.append(step)
        cadence.observe(step, step_seconds + (cost if due else 0.0), cost if due else None)
    return read


def test_the_vital_signs_are_read_on_every_step_while_they_are_cheap():
    assert read_vitals(VitalsCadence(budget=0.002), 0.010, 0.000015, 300) == list(range(300))


def test_dear_vital_signs_are_thinned_to_their_budget_after_the_start():
    """A pass over the gradients at 5 % of a step (a small-batch MLP on the CPU) is read on
    every step of the start, then once per ceil(5 % / budget) steps."""
    read = read_vitals(VitalsCadence(budget=0.002), 0.006, 0.0003, 400)
    assert read[:VITALS_START_STEPS] == list(range(VITALS_START_STEPS))
    gaps = {b - a for a, b in zip(read[VITALS_START_STEPS:], read[VITALS_START_STEPS + 1:])}
    every = math.ceil(0.0003 / (0.002 * 0.006))  # the median step is one without them
    assert gaps == {every}
    spent = 0.0003 * len(read[VITALS_START_STEPS:]) / (0.006 * (400 - VITALS_START_STEPS))
    assert spent < 0.0025


def test_the_vital_signs_are_never_further_apart_than_the_cap():
    read = read_vitals(VitalsCadence(budget=0.002), 0.0001, 0.0001, 500)
    assert max(b - a for a, b in zip(read, read[1:])) == MAX_VITALS_EVERY


@pytest.mark.parametrize("budget", [0, 1, -0.1, 2])
def test_a_vital_signs_budget_outside_zero_and_one_is_rejected(budget):
    with pytest.raises(ValueError, match="budget"):
        VitalsCadence(budget=budget)
