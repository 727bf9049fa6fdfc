"""The input-normalisation detector: scripted input statistics (no training), then real tiny trainings."""
import math

import pytest

from monitor.detectors import diagnose
from monitor.detectors.input_normalization import InputNormalization
from monitor.events import Event, InputStats, Kind
from monitor.store import RunStore

from trainings import blobs, train_demo_cnn, train_mlp


def batch(mean=0.0, std=1.0, shape=(32, 3, 8, 8), channel_mean=None, channel_std=None, low=-3.0, high=3.0):
    channels = shape[1] if len(shape) > 1 else 0
    return InputStats(shape=shape, mean=mean, std=std, min=low, max=high, nan=0, inf=0,
                      channel_mean=tuple(channel_mean or [mean] * channels),
                      channel_std=tuple(channel_std or [std] * channels))


def flags_of(batches, **options):
    events = [Event("r", i, 2 * i, 1.0 + i, Kind.INPUT_STATS, b) for i, b in enumerate(batches)]
    return [flag for _, flag in diagnose([InputNormalization(**options)], events)]


def test_raw_digit_pixels_are_flagged_once_after_the_patience():
    raw = batch(mean=4.9, std=6.0, shape=(32, 1, 8, 8), low=0.0, high=16.0)
    [flag] = flags_of([raw] * 10)
    assert flag.kind == "input_not_normalized" and flag.severity.value == "warning" and flag.layer is None
    assert flag.evidence["step"] == 10 and flag.evidence["samples"] == 6  # off from step 0, every 2nd step sampled
    assert flag.evidence["mean"] == 4.9 and flag.evidence["std"] == 6.0
    assert tuple(flag.evidence["shape"]) == (32, 1, 8, 8)
    assert "mean 4.9 and std 6 (values 0 to 16)" in flag.message and "|mean| above 1" in flag.message
    assert "training set" in flag.advice and "per channel" in flag.advice and "validation" in flag.advice


def test_integer_ids_are_never_judged_for_normalisation():
    """Token ids 0..50000 have a huge mean and std: that is what ids are, not a fault."""
    ids = InputStats(shape=(8, 128), mean=20000.0, std=14000.0, min=0.0, max=50256.0, nan=0, inf=0, integer=True,
                     distinct=900, vocab=50257)
    assert flags_of([ids] * 20) == []


def test_raw_pixels_in_0_to_255_are_flagged_for_their_scale():
    [flag] = flags_of([batch(mean=0.8, std=70.0, low=0.0, high=255.0)] * 6)
    assert "std above 10" in flag.message


def test_an_input_scaled_away_to_nothing_is_flagged():
    [flag] = flags_of([batch(mean=0.0, std=0.004)] * 6)
    assert "std below 0.1" in flag.message


def test_one_channel_off_centre_is_flagged_and_named():
    means, stds = [0.1, 3.0, -0.2], [1.0, 1.0, 1.0]
    [flag] = flags_of([batch(mean=1.0, std=1.5, channel_mean=means, channel_std=stds)] * 6)
    assert "a channel's |mean| above 1 (up to 3)" in flag.message and flag.evidence["worst_channel"] == 1


def test_one_channel_of_a_large_scale_is_flagged():
    [flag] = flags_of([batch(std=5.0, channel_mean=[0.0] * 3, channel_std=[1.0, 1.0, 12.0])] * 6)
    assert "a channel's std above 10" in flag.message and flag.evidence["worst_channel"] == 2


@pytest.mark.parametrize("stats", [
    batch(),  # normalised images
    batch(mean=0.45, std=0.3, low=0.0, high=1.0),  # images in 0..1: not centred, but not far off
    batch(std=0.8, channel_mean=[0.0, 0.0, 0.0], channel_std=[1.0, 1.0, 0.0]),  # a constant channel
    batch(std=0.3, shape=(64, 20), channel_mean=[0.05] * 19 + [0.9], channel_std=[0.1] * 19 + [0.3]),  # binary features
    batch(std=5.0, shape=(4, 20), channel_mean=[1.8, -2.5] + [0.5] * 18, channel_std=[5.0] * 20),  # 4 rows' noise
    batch(mean=math.nan, std=math.nan, channel_mean=[math.nan] * 3, channel_std=[math.nan] * 3),  # nothing finite
])
def test_inputs_near_zero_mean_and_unit_variance_or_unjudgeable_are_left_alone(stats):
    assert flags_of([stats] * 10) == []


def test_per_feature_means_of_a_small_batch_are_judged_against_their_noise():
    # 4 rows of features of std 5: a batch mean is off by 2.5 (one standard error) by chance
    small = batch(std=5.0, shape=(4, 20), channel_mean=[1.8, -2.5] + [0.5] * 18, channel_std=[5.0] * 20)
    assert flags_of([small] * 6) == []
    assert len(flags_of([small] * 6, noise=0, max_feature_mean=1.0)) == 1
    # 4 units (the bar of a feature) plus 3 standard errors of 2.5 is 11.5
    far = batch(std=5.0, shape=(4, 20), channel_mean=[13.0] + [0.5] * 19, channel_std=[5.0] * 20)
    assert len(flags_of([far] * 6)) == 1


def flattened_mnist(rows=64):
    """MNIST flattened and standardised with the training set's one mean and std: per-pixel
    means from -0.42 (the background) to 1.4 (the centre), stds up to 1.45."""
    means = [-0.42 + 1.82 * (i % 28) / 27 for i in range(784)]
    return batch(mean=0.0, std=1.0, shape=(rows, 784), channel_mean=means,
                 channel_std=[0.0 if m < -0.4 else 1.45 for m in means], low=-0.42, high=2.8)


def test_flattened_images_standardised_globally_are_left_alone_at_any_interval():
    assert flags_of([flattened_mnist()] * 200) == []


def test_a_tabular_column_in_thousands_is_flagged():
    means, stds = [0.0] * 9 + [3000.0], [1.0] * 9 + [800.0]
    [flag] = flags_of([batch(mean=300.0, std=950.0, shape=(64, 10), channel_mean=means, channel_std=stds)] * 6)
    assert "|mean| above 1" in flag.message and "std above 10" in flag.message
    alone = batch(mean=0.3, std=8.0, shape=(64, 10), channel_mean=[0.0] * 9 + [3.0], channel_std=[1.0] * 9 + [25.0])
    [flag] = flags_of([alone] * 6)
    assert "a feature's std above 10 (up to 25)" in flag.message


def test_a_feature_far_off_centre_is_flagged_but_the_usual_offsets_are_not():
    off = batch(std=1.2, shape=(64, 20), channel_mean=[0.0] * 19 + [6.0], channel_std=[1.0] * 20)
    assert "a feature's |mean| above 4" in flags_of([off] * 6)[0].message
    usual = batch(std=1.0, shape=(64, 20), channel_mean=[1.5, -1.2] + [0.0] * 18, channel_std=[1.0] * 20)
    assert flags_of([usual] * 6) == []


def test_the_same_run_gives_the_same_flags_at_every_1_and_every_10():
    def verdict(every, stats):
        events = [Event("r", i, step, 1.0, Kind.INPUT_STATS, stats(step))
                  for i, step in enumerate(range(0, 300, every))]
        return [f.kind for _, f in diagnose([InputNormalization()], events)]
    raw = lambda step: batch(mean=4.9, std=6.0, shape=(32, 1, 8, 8), low=0.0, high=16.0)  # noqa: E731
    odd = lambda step: batch(mean=4.0, std=6.0) if step % 40 < 3 else batch()  # noqa: E731 - three odd batches
    assert verdict(1, raw) == verdict(10, raw) == ["input_not_normalized"]
    assert verdict(1, odd) == verdict(10, odd) == []
    assert verdict(1, lambda step: flattened_mnist()) == verdict(10, lambda step: flattened_mnist()) == []


def test_an_input_off_asks_for_the_next_steps_to_be_sampled():
    detector = InputNormalization()
    detector.update(Event("r", 0, 0, 1.0, Kind.INPUT_STATS, batch(mean=4.9, std=6.0)))
    assert detector.look_closer() == detector.min_steps


def test_a_few_odd_batches_do_not_fire():
    odd = batch(mean=4.0, std=6.0)
    assert flags_of([odd, odd, batch()] * 5) == []


@pytest.mark.parametrize("options", [
    {"max_abs_mean": 0}, {"max_abs_mean": math.inf}, {"min_std": 1.0}, {"min_std": -1},
    {"max_std": 1.0}, {"patience": 0}, {"noise": -1.0}, {"max_feature_mean": 0.5}, {"min_steps": -1},
])
def test_thresholds_that_cannot_work_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        InputNormalization(**options)


def test_the_demo_on_raw_pixels_is_flagged_and_the_stored_run_says_the_same(tmp_path):
    mon = train_demo_cnn(tmp_path, [InputNormalization()], epochs=1, normalize=False)
    [flag] = mon.flags
    assert flag.kind == "input_not_normalized" and 4 < flag.evidence["mean"] < 6 and flag.evidence["min"] == 0.0
    with RunStore(tmp_path) as store:
        events = store.events(mon.run_id)
    assert [f for _, f in diagnose([InputNormalization()], events)] == mon.flags


def test_an_mlp_on_shifted_features_is_flagged(tmp_path):
    mon = train_mlp(tmp_path, [InputNormalization()], data=blobs(shift=5), val_data=blobs(n=256, draw=1, shift=5),
                    epochs=1)
    assert [f.kind for f in mon.flags] == ["input_not_normalized"] and "|mean| above 1" in mon.flags[0].message


def test_healthy_trainings_raise_nothing(tmp_path):
    assert train_mlp(tmp_path / "mlp", [InputNormalization()]).flags == []
    assert train_mlp(tmp_path / "small-batches", [InputNormalization()], batch=4, epochs=1,
                     data=blobs(n=128)).flags == []
