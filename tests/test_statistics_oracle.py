"""The statistics equal an independent plain-torch computation on known tensors."""
import math

import numpy as np
import pytest
import torch

from monitor.events import QUANTILE_LEVELS, Signal
from trainer_hooks.capture import StepCapture, decode
from trainer_hooks.decode import HIST_BINS, raw_moments, whole_moments
from trainer_hooks.reduce import (AMINMAX_BELOW, CHANNEL_CHUNK, DEAD_SPAN_STEPS, PRECISE_CHUNK, SAMPLE_SIZE,
                                  SamplePositions, UnitWindow, active_units, cache_bytes, channel_moments, cpu_bounds,
                                  dead_span, reduce_tensor)


def summarize(x: torch.Tensor, module: str = "Linear", sample_size: int = SAMPLE_SIZE):
    """Run a tensor through the real device -> pack -> host path and return its summary."""
    capture = StepCapture(step=0)
    reduced = reduce_tensor(x, sample_size=sample_size, generator=torch.Generator(x.device).manual_seed(1))
    capture.add_reduced("tensor", {"layer": "l", "module": module, "signal": Signal.ACTIVATION}, reduced)
    return decode(capture.pack()).layer_stats.summaries[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_the_cpu_joins_its_pieces_in_numpy_and_they_decode_as_the_joined_tensor(dtype):
    """On the CPU numpy joins a sampled step's pieces; an accelerator joins them into one
    tensor, copied later. Both decode to the same summaries, half types included."""
    torch.manual_seed(0)
    capture = StepCapture(step=0)
    positions = SamplePositions(SAMPLE_SIZE, lambda device: torch.Generator(device).manual_seed(1))
    for i, shape in enumerate([(64, 512), (64, 512), (300,), (5000,)]):
        x = (torch.randn(shape) * (i + 1)).to(dtype)
        x.view(-1)[:3] = float("nan") if i == 1 else 0.0
        reduced = reduce_tensor(x, indices=positions(x.numel(), x.device))
        capture.add_reduced("tensor", {"layer": f"l{i}", "module": "Linear", "signal": Signal.ACTIVATION}, reduced)
    loose, joined = capture.pack(), capture.pack(join=True)
    assert isinstance(loose.values, np.ndarray) and isinstance(joined.values, torch.Tensor)
    assert decode(loose) == decode(joined)
    assert positions(64 * 512, torch.device("cpu")) is positions(64 * 512, torch.device("cpu"))
    assert positions(300, torch.device("cpu")) is None  # small enough to travel whole


def oracle(x: torch.Tensor) -> dict:
    x = x.double().flatten()
    finite = x[torch.isfinite(x)]
    return {
        "numel": x.numel(), "nan": int(torch.isnan(x).sum()), "inf": int(torch.isinf(x).sum()),
        "mean": finite.mean().item(), "std": finite.std().item(), "min": finite.min().item(),
        "max": finite.max().item(), "norm": finite.norm().item(),
        "quantiles": torch.quantile(finite, torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)).tolist(),
        "hist": torch.histc(finite, bins=HIST_BINS, min=finite.min().item(), max=finite.max().item()).tolist(),
        "zero_frac": (finite == 0).double().mean().item(),
    }


@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 3, 4, 5), (SAMPLE_SIZE,)])
def test_summary_of_a_small_tensor_equals_plain_torch_exactly(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    x.view(-1)[::5] = 0.0
    s, o = summarize(x), oracle(x)
    for key in ("mean", "std", "min", "max", "norm", "zero_frac"):
        assert getattr(s, key) == pytest.approx(o[key], rel=1e-5, abs=1e-6), key
    assert (s.numel, s.nan, s.inf) == (o["numel"], 0, 0)
    assert s.quantiles == pytest.approx(o["quantiles"], rel=1e-6, abs=1e-6)
    assert list(s.hist) == [int(round(c)) for c in o["hist"]]
    assert s.sample == x.numel()
    assert (s.hist_lo, s.hist_hi) == pytest.approx((o["min"], o["max"]))


def test_moments_of_a_large_tensor_are_exact_and_its_quantiles_close():
    torch.manual_seed(0)
    x = torch.randn(64, 16, 32, 32)  # 1M elements, far above the sample size
    s, o = summarize(x), oracle(x)
    for key in ("mean", "std", "min", "max", "norm"):
        assert getattr(s, key) == pytest.approx(o[key], rel=1e-4, abs=1e-5), key
    assert s.sample == SAMPLE_SIZE
    # DKW: with 2048 draws the sample CDF is within 0.03 of the truth (95 %); in value
    # terms near the centre of a unit normal that is about 0.1.
    assert s.quantiles == pytest.approx(o["quantiles"], abs=0.12)
    assert sum(s.hist) == SAMPLE_SIZE


def test_nan_and_inf_are_counted_and_the_moments_cover_the_finite_rest():
    x = torch.tensor([1.0, 2.0, float("nan"), float("inf"), -float("inf"), 3.0, float("nan"), 0.0])
    s, o = summarize(x), oracle(x)
    assert (s.nan, s.inf) == (2, 2)
    for key in ("mean", "std", "min", "max", "norm", "zero_frac"):
        assert getattr(s, key) == pytest.approx(o[key]), key
    assert s.sample == 4  # the finite part of the sample


def test_nan_counts_are_exact_in_a_tensor_larger_than_the_sample():
    x = torch.randn(100_000)
    x[::1000] = float("nan")
    x[5::5000] = float("inf")
    s = summarize(x)
    assert (s.nan, s.inf) == (100, 20)
    finite = x[torch.isfinite(x)].double()
    assert s.mean == pytest.approx(finite.mean().item(), rel=1e-4, abs=1e-6)
    assert s.std == pytest.approx(finite.std().item(), rel=1e-4)
    assert (s.min, s.max) == pytest.approx((finite.min().item(), finite.max().item()))


def test_bounds_of_a_large_one_sided_tensor_with_nan_come_from_its_sample():
    """Zero-filled non-finite elements would read as a bound of 0; the sample's finite
    extremes stand in (uniform 1..2 over 100,000 values: within 0.01 of the truth)."""
    x = torch.rand(100_000) + 1
    x[::1000] = float("nan")
    s = summarize(x)
    assert s.nan == 100 and s.inf == 0
    assert 1.0 <= s.min < 1.01 and 1.99 < s.max <= 2.0
    assert s.mean == pytest.approx(x[~x.isnan()].double().mean().item(), rel=1e-5)


def test_an_all_nan_tensor_gives_nan_moments_without_crashing():
    s = summarize(torch.full((10,), float("nan")))
    assert s.nan == 10 and math.isnan(s.mean) and s.quantiles == () and s.hist == ()


def test_a_constant_tensor_has_zero_spread_and_one_full_histogram_bin():
    s = summarize(torch.full((50,), 2.5))
    assert (s.mean, s.std, s.min, s.max) == (2.5, 0.0, 2.5, 2.5)
    assert sum(s.hist) == 50 and max(s.hist) == 50


def test_bfloat16_tensors_are_summarised_in_float32_accumulation():
    x = torch.linspace(-2, 2, 1000).to(torch.bfloat16)
    s, o = summarize(x), oracle(x.float())
    assert s.mean == pytest.approx(o["mean"], abs=1e-3)
    assert s.std == pytest.approx(o["std"], rel=1e-3)


@pytest.mark.parametrize("module,values,expected", [
    ("Tanh", [-1.0, -0.995, 0.0, 0.5, 0.99, 1.0], 4 / 6),
    ("Sigmoid", [0.0, 0.005, 0.5, 0.7, 0.995, 1.0], 4 / 6),
    ("ReLU", [0.0, 1.0], None),
])
def test_saturation_counts_outputs_within_one_percent_of_a_bound(module, values, expected):
    s = summarize(torch.tensor(values), module=module)
    assert s.sat_frac == (pytest.approx(expected) if expected is not None else None)


def test_dead_units_are_those_never_positive_over_the_window():
    window = UnitWindow(units=4, window=3, device=torch.device("cpu"))
    batches = [torch.tensor([[1.0, 0.0, -1.0, 0.0]]), torch.tensor([[0.0, 2.0, -1.0, 0.0]]),
               torch.tensor([[0.0, 0.0, -3.0, 0.0]]), torch.tensor([[0.0, 0.0, -3.0, 0.0]])]
    dead = [4 - int(window.add(active_units(b))) for b in batches]  # add() returns the active count
    # unit 0 fired in batch 1 only, so it counts as dead once batch 1 leaves the window
    assert dead == [3, 2, 2, 3]


def test_a_batch_from_longer_ago_than_the_span_no_longer_keeps_a_unit_alive():
    """With sparse sampling the window's batches would span thousands of steps; only the
    last DEAD_SPAN_STEPS count, and the window reports how many batches it holds."""
    window = UnitWindow(units=2, window=8, device=torch.device("cpu"), span=50)
    fired, silent = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert int(window.add(active_units(fired), step=0)) == 2 and window.filled == 1
    assert int(window.add(active_units(silent), step=40)) == 2 and window.filled == 2  # step 0 is recent
    assert int(window.add(active_units(silent), step=100)) == 1 and window.filled == 1  # both others are stale


def test_the_span_keeps_recent_batches_only_unless_a_fixed_interval_spreads_the_window_wider():
    assert dead_span(8, None) == DEAD_SPAN_STEPS  # automatic sampling looks closer instead
    assert dead_span(8, 1) == DEAD_SPAN_STEPS
    assert dead_span(8, 10) == 80  # every=10: eight batches are 80 steps apart, all of them count


def test_units_are_channels_of_feature_maps_and_features_of_dense_outputs():
    conv = torch.zeros(2, 3, 4, 4)
    conv[:, 1, 2, 2] = 1.0
    assert active_units(conv).tolist() == [False, True, False]
    seq = torch.zeros(2, 5, 6)
    seq[..., 4] = 1.0
    assert active_units(seq).tolist() == [False] * 4 + [True, False]
    assert active_units(torch.ones(3)) is None


def test_parameter_summaries_carry_the_exact_update_ratio_of_small_weights():
    torch.manual_seed(0)
    from trainer_hooks.probe import Probe
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt)
    try:
        probe.capture = capture = StepCapture(step=0)
        model(torch.randn(5, 4)).pow(2).sum().backward()
        before = model.weight.detach().clone()
        grad_norm = model.weight.grad.norm().item()
        opt.step()
        summaries = decode(capture.pack()).layer_stats.summaries
    finally:
        probe.remove()
    weight = next(s for s in summaries if s.layer == "Linear.weight")
    expected = ((model.weight.detach() - before).norm() / before.norm()).item()
    assert weight.update_ratio == pytest.approx(expected, rel=1e-6)
    assert weight.norm == pytest.approx(grad_norm, rel=1e-6)
    assert weight.weight_norm == pytest.approx(model.weight.norm().item(), rel=1e-6)


def test_the_sample_does_not_consume_the_users_random_stream():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reduce_tensor(torch.ones(10_000), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)


def test_recorded_moments_of_large_layers_equal_plain_torch_on_the_same_forward(tmp_path):
    """End to end through watch(): activations and output gradients far above the sample
    size (sampled, reduced on the device; the ReLU's max comes from its unit maxima)."""
    import monitor
    from trainer_hooks import watch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 16 * 16, 4))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    seen = {}
    handles = [model[0].register_forward_hook(lambda m, a, out: seen.update(conv=out.detach().clone())),
               model[1].register_forward_hook(lambda m, a, out: seen.update(relu=out.detach().clone()))]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    for h in handles:
        h.remove()
    stats = monitor.load_run(mon.run_id, tmp_path).layer_stats
    act = stats[stats.signal == "activation"].set_index("layer")
    for layer, key in (("0", "conv"), ("1", "relu")):
        o = oracle(seen[key])
        assert o["numel"] > SAMPLE_SIZE
        for column in ("mean", "std", "min", "max", "norm"):
            assert act.loc[layer, column] == pytest.approx(o[column], rel=1e-4, abs=1e-6), (layer, column)


def test_recorded_moments_of_large_parameter_gradients_equal_plain_torch_on_the_same_step(tmp_path):
    """The gradients' sums of squares come from the vital signs' pass (not a second one):
    each large weight's gradient summary is still its own, exactly."""
    import monitor
    from trainer_hooks import watch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 48), torch.nn.Tanh(),
                                torch.nn.Linear(48, 64))
    x, y = torch.randn(32, 64), torch.randint(0, 64, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}
    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        seen.update({name: p.grad.detach().clone() for name, p in model.named_parameters()})
        opt.step()
        mon.log(loss=loss)
    stats = monitor.load_run(mon.run_id, tmp_path).layer_stats
    grads = stats[stats.signal == "param_grad"].set_index("layer")
    for name in ("0.weight", "2.weight", "4.weight"):
        o = oracle(seen[name])
        assert o["numel"] > SAMPLE_SIZE
        row = grads.loc[name]
        for column in ("mean", "std", "min", "max", "norm"):
            assert row[column] == pytest.approx(o[column], rel=1e-4, abs=1e-9), (name, column)


def test_input_statistics_per_channel_equal_plain_torch_on_raw_pixels(tmp_path):
    """Raw 0..255 pixels (mean far above the spread, where float32 sums of squares
    would cancel) give the exact per-channel mean and std."""
    import monitor
    from trainer_hooks import watch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.randint(100, 256, (16, 3, 24, 24)).float()
    model(x)  # materialise the lazy layer
    with watch(model, every=1, logdir=tmp_path) as mon:
        model(x)
        mon.log(loss=0.0)
    stats = monitor.load_run(mon.run_id, tmp_path).input_stats.iloc[0]
    x64 = x.double()
    assert stats.channel_mean == pytest.approx(x64.mean(dim=(0, 2, 3)).tolist(), rel=1e-12)
    assert stats.channel_std == pytest.approx(x64.std(dim=(0, 2, 3)).tolist(), rel=1e-9)
    assert (stats["mean"], stats["std"]) == pytest.approx((x64.mean().item(), x64.std().item()), rel=1e-5)


@pytest.mark.parametrize("shape", [(16, 3, 24, 24), (48, 3, 64, 64)])  # one slice, and several (CHANNEL_CHUNK)
def test_per_channel_sums_of_a_large_batch_are_the_float64_ones(shape):
    """A batch above CHANNEL_CHUNK is reduced by slices converted to float64: the same
    sums as one float64 reduction of the whole, whatever the slicing."""
    assert math.prod(shape) > CHANNEL_CHUNK or shape[0] == 16
    torch.manual_seed(0)
    x = torch.randint(100, 256, shape).float() + torch.rand(shape)
    sums, squares = channel_moments(x, 64)
    x64 = x.double()
    assert sums.tolist() == pytest.approx(x64.sum(dim=(0, 2, 3)).tolist(), rel=1e-12)
    assert squares.tolist() == pytest.approx((x64 * x64).sum(dim=(0, 2, 3)).tolist(), rel=1e-9)


@pytest.mark.parametrize("numel", [5000, PRECISE_CHUNK * 3 + 17])
def test_a_flat_input_far_from_zero_is_summed_in_float64_by_chunks(numel):
    """A model input with no channel sums (a flat or wide one) is summed in float64 chunk
    by chunk: its mean and std are those of float64, also for a mean 1e4 times its spread."""
    torch.manual_seed(0)
    x = (1e4 + torch.randn(numel)).float()
    reduced = reduce_tensor(x, precise=True, generator=torch.Generator().manual_seed(1))
    x64 = x.double()
    total, squares = (float(v) for v in reduced.moments[:2])
    assert total == pytest.approx(x64.sum().item(), rel=1e-13)
    assert squares == pytest.approx(x64.square().sum().item(), rel=1e-13)


@pytest.mark.parametrize("numel", [1000, AMINMAX_BELOW - 1, AMINMAX_BELOW, 3 * AMINMAX_BELOW, "beyond the cache"])
@pytest.mark.parametrize("threads", [1, 2])
def test_bounds_of_a_cpu_tensor_are_exact_whichever_way_they_are_taken(numel, threads):
    if numel == "beyond the cache":
        numel = cache_bytes() // 2 // 4 + 1  # float32 elements: one aminmax pass
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
        low, high = cpu_bounds(x)
        assert (low.item(), high.item()) == (x.min().item(), x.max().item())
    finally:
        torch.set_num_threads(before)


class _Embedded(torch.nn.Module):
    """Token ids in, as a Hugging Face model takes them: by keyword."""

    def __init__(self, padding_idx):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8, padding_idx=padding_idx)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 50)

    def forward(self, input_ids):
        return self.head(torch.nn.functional.gelu(self.norm(self.embed(input_ids))))


@pytest.mark.parametrize("padding_idx", [0, None])
def test_integer_input_statistics_equal_plain_torch_and_find_the_padding(tmp_path, padding_idx):
    """Ids passed by keyword are read where the model embeds them: their range, distinct
    count and (with a padding_idx) the share of padding, exactly as torch counts them."""
    import monitor
    from trainer_hooks import watch

    torch.manual_seed(0)
    model = _Embedded(padding_idx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(1, 40, (6, 12))
    ids[:, 9:] = 0  # right-padded rows
    ids[0, 3:] = 0
    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).reshape(-1, 50), ids.reshape(-1))
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    stats = monitor.load_run(mon.run_id, tmp_path).input_stats.iloc[0]
    assert stats.integer and tuple(stats["shape"]) == (6, 12) and stats.vocab == 50
    assert (stats["min"], stats["max"]) == (ids.min().item(), ids.max().item())
    assert stats.distinct == torch.unique(ids).numel()
    if padding_idx is None:
        assert stats.padding is None and stats.pad_id is None
    else:
        assert stats.pad_id == 0 and stats.padding == pytest.approx((ids == 0).double().mean().item(), abs=1e-12)
    assert stats["mean"] == pytest.approx(ids.double().mean().item(), rel=1e-12)


def test_a_large_tensor_far_from_zero_keeps_a_meaningful_std():
    """Mean 1e4, std 1: float32 sums of squares cancel to noise; the std comes from the
    sample instead, within a few per cent (2048 draws: relative error about 1.6 %)."""
    torch.manual_seed(0)
    x = torch.randn(64, 16, 32, 32) + 1e4
    s = summarize(x)
    assert s.mean == pytest.approx(1e4, rel=1e-6)
    assert s.std == pytest.approx(x.double().std().item(), rel=0.06)


def test_every_summary_the_writer_builds_unchecked_passes_the_schema(tmp_path, monkeypatch):
    """The writer builds summaries without re-validating them (its hot path): each must
    equal what the validating constructor makes of its dict, NaN, Inf and units included."""
    from monitor.codec import dumps
    from monitor.events import TensorSummary
    from trainer_hooks import watch
    from trainer_hooks.writer import CaptureRecord, Writer

    captured = []
    put = Writer.put

    def spy(self, record, wait=False):
        if isinstance(record, CaptureRecord):
            captured.append(record)
        return put(self, record, wait)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(40, 64)
    x[0, 0] = float("nan")
    x[1, 1] = float("inf")
    monkeypatch.setattr(Writer, "put", spy)
    with watch(model, opt, every=1, logdir=tmp_path):
        model(x).sum().backward()
        opt.step()
    summaries = decode(captured[0].packed).layer_stats.summaries
    assert {s.signal.value for s in summaries} == {"activation", "output_grad", "param_grad"}
    assert any(s.nan for s in summaries) and any(s.sat_frac is not None for s in summaries)
    for s in summaries:  # compared as codec text: NaN != NaN, but its encoding is exact
        assert dumps(TensorSummary.from_dict(s.to_dict()).to_dict()) == dumps(s.to_dict()), s.layer
        assert all(type(getattr(s, name)) is float for name in ("mean", "std", "min", "max", "norm", "zero_frac"))


def test_every_event_the_writer_stamps_unchecked_passes_the_schema(tmp_path, monkeypatch):
    """The writer stamps its own events (scalars, vitals, statistics) without validating
    them: each, as handed to the store, equals what the validating constructor makes of its
    dict, with the schema's types."""
    from monitor.codec import dumps
    from monitor.events import Event
    from monitor.store import RunStore
    from trainer_hooks import watch

    handed = []
    append = RunStore.append

    def spy(self, events, texts=None):
        handed.extend(events)
        return append(self, events, texts)

    monkeypatch.setattr(RunStore, "append", spy)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, every=2, logdir=tmp_path) as mon:
        for _ in range(4):
            opt.zero_grad()
            loss = model(torch.randn(5, 8)).pow(2).mean()
            loss.backward()
            opt.step()
            mon.log(loss=loss, lr_scale=torch.tensor(0.5))
    assert {e.kind.value for e in handed} >= {"scalars", "vitals", "layer_stats", "input_stats"}
    for e in handed:
        assert dumps(Event.from_dict(e.to_dict()).to_dict()) == dumps(e.to_dict()), e.kind
        assert type(e.seq) is int and type(e.step) is int and type(e.wall) is float


def test_moments_of_whole_tensors_taken_together_are_each_ones_own():
    """The writer reduces the tensors that travelled whole all at once (whole_moments):
    each row is what raw_moments gives for that tensor alone, lengths mixed and a tensor
    with NaN and Inf among healthy ones of its length."""
    rng = np.random.default_rng(0)
    samples = [rng.normal(size=n) * (i + 1) for i, n in enumerate([512, 512, 10, 2048, 512, 1])]
    samples[4][[3, 7]] = [math.nan, -math.inf]
    samples.append(np.array([]))
    rows = whole_moments(samples)
    for sample, row in zip(samples, rows):
        np.testing.assert_allclose(row, raw_moments(sample), rtol=1e-12, equal_nan=True)
