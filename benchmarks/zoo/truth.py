"""Ground truth: which pathologies a training had, from the raw series of :mod:`zoo.measure`.

Every definition is written from the literature and practice, is scale-free (a ratio to
the run's own quantities: a layer's gradient to its weights, the loss to its own minimum
or its start, validation to its best) and is applied alike to every zoo run. None uses
babysit. Each yields :class:`Truth` entries named with babysit's flag kinds:

``onset`` is the first step the condition holds (on the run's own measurements);
``unambiguous`` the step by which a careful practitioner reading the raw numbers would be
sure (the condition confirmed for ``CONFIRM_STEPS``, or the crossing of a threshold that
only a real problem reaches); ``layers`` the module names affected (empty where the
pathology is not about layers). A layer condition counts only when it persists: for
``PERSIST_FRACTION`` of the run (at least ``PERSIST_MIN_STEPS``) or, for dead units, to
the end of the run (a unit that fires again was not dead).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .measure import Series

#: Steps a condition present from its onset must hold before it is unambiguous.
CONFIRM_STEPS = 10
#: A layer or loss condition must hold this share of the run (or to its end) to count...
PERSIST_FRACTION = 0.1
#: ...and at least this many steps.
PERSIST_MIN_STEPS = 20
#: Trailing median windows smooth the per-step series: this share of the run...
SMOOTH_FRACTION = 0.02
#: ...and at least this many steps (a mini-batch loss is noisy; its median is not).
SMOOTH_MIN_STEPS = 10

#: dead_relu: a layer is affected when at least this share of its units is never positive
#: on the probe batch (SageMaker Debugger's DeadRelu rule flags a layer at 50 % dead units;
#: CS231n: "as much as 40 % of your network can be dead"; a unit silent on 256 varied
#: examples gets no gradient from any of them).
DEAD_LAYER_FRACTION = 0.5
#: ...and it is unambiguous once the share passes what healthy layers reach: the zoo's
#: healthy runs go up to 56 % on the probe batch (the warm-up ConvNet's hidden layer, steps
#: 48-96, 47 % at the end), so from 60 % on (confirmed); a layer that stays between 50 % and
#: 60 % is a problem only by lasting to the end of the run, which is when it is known.
DEAD_SURE_FRACTION = 0.6
#: saturation: a layer is affected when at least this share of its tanh/sigmoid outputs
#: (GELU/SiLU inputs) is on the flat tails (zoo.measure.SATURATED_SLOPE; Glorot & Bengio 2010 saw the top
#: sigmoid layer saturate and stall learning).
SATURATED_LAYER_FRACTION = 0.5
#: vanishing_gradient: a layer's relative gradient |g|/|W| below this share of the largest
#: layer's (Glorot & Bengio 2010, fig. 7; Hochreiter 1991): three orders of magnitude
#: between layers of one network means the first layers do not learn at the rate of the last.
VANISHING_SPREAD = 1e-3
#: exploding_gradient: a layer's gradient norm at least this multiple of its weight norm
#: (Pascanu et al. 2013: clip when the norm is far above its usual size; You et al. 2017,
#: LARS: |g|/|W| sets a safe step). At 10, an SGD step of lr 0.1 would replace the layer.
#: Healthy layers measured in the zoo stay below 4 (the largest: embeddings and output
#: layers whose weights start small, 1-3.7); a deep ReLU stack at 3x Kaiming std is at 30+.
EXPLODING_RELATIVE_GRADIENT = 10.0
#: update_ratio: the per-step update over the weights, |dW|/|W|, should be near 1e-3
#: (Karpathy, CS231n "ratio of weights:updates"); outside two decades of it, early in
#: training (the first ``UPDATE_EARLY_FRACTION`` of the run), the learning rate is off.
#: Later in a run schedules rightly shrink updates, so only the early part is judged.
UPDATE_RATIO_BAND = (1e-5, 1e-1)
UPDATE_EARLY_FRACTION = 0.2
#: input_not_normalized: standardised inputs have mean 0 and std 1 per channel (images) or
#: globally (flat, tabular) (CS231n, LeCun et al. 1998 sec. 4.3); a channel or the whole
#: input off by more than this mean (in std units of 1) or std factor is not normalised...
INPUT_MEAN_LIMIT = 1.0
INPUT_STD_FACTOR = 5.0
#: ...and per feature (tabular, flattened), where offsets of a standard unit or so are
#: normal after global standardisation, a feature beyond these limits is.
FEATURE_MEAN_LIMIT = 3.0
FEATURE_STD_LIMIT = 10.0
#: initial_loss: the loss at init should be that of an input-blind prediction (Karpathy,
#: "A recipe for training neural networks": -ln(1/C) for C classes; Var(y) for MSE on a
#: standardised target); this multiple of it or more means a broken output init.
INITIAL_LOSS_RATIO = 1.5
#: overfitting: Prechelt's generalisation loss GL = val / best val - 1 ("Early stopping,
#: but when?", 1998) at least this, while the epoch's training loss is below its value at
#: the best epoch, on every validation to the end of the run and at least OVERFIT_EPOCHS.
OVERFIT_RISE = 0.10
OVERFIT_EPOCHS = 2
#: ...and the rise at least this share of the loss at the start: near a loss of 0 a
#: relative rise of 10 % can be a few thousandths of a nat, which matters to nobody.
#: The best validation loss must also be below the loss at the start: a model that never
#: beat its untrained self (a diverged one, whose best may be 1e31) has learned nothing
#: to overfit.
OVERFIT_MIN_RISE = 0.01
#: divergence: the smoothed loss at least this multiple of its own minimum so far, held
#: (or non-finite): sustained growth of the loss, not noise (noise moves a median little).
DIVERGENCE_FACTOR = 3.0
#: ...and the climb at least this share of the loss at the start: near a loss of 0, a
#: median moving from 0.0002 to 0.001 is 5x but no divergence (noise of a memorised set).
DIVERGENCE_MIN_RISE = 0.1
#: plateau: the smoothed loss within this share of its initial value...
PLATEAU_PROGRESS = 0.10
#: ...for the first ``PLATEAU_FRACTION`` of the run (at least PLATEAU_MIN_STEPS): no
#: progress at all from the start (a run that learned and then flattened has converged).
PLATEAU_FRACTION = 0.1
PLATEAU_MIN_STEPS = 100


@dataclass(frozen=True)
class Truth:
    """One measured pathology of a run."""

    kind: str
    onset: int
    unambiguous: int
    layers: tuple[str, ...] = ()
    evidence: str = ""

    @property
    def at_init(self) -> bool:
        """Present from the first step: a problem of the initialisation or the data."""
        return self.onset == 0

    def as_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers), "at_init": self.at_init}


def derive(series: Series, *, chance_loss: float | None) -> list[Truth]:
    """Every pathology the series show, one entry per kind."""
    steps = len(series.loss)
    if steps == 0:
        return []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf / inf in blown-up runs
        found = [dead_relu(series, steps), saturation(series, steps), *gradient_kinds(series, steps),
                 update_ratio(series, steps), input_not_normalized(series), initial_loss(series, chance_loss),
                 overfitting(series), divergence(series, steps), plateau(series, steps)]
    return [t for t in found if t is not None]


def persist_steps(steps: int) -> int:
    return max(PERSIST_MIN_STEPS, int(PERSIST_FRACTION * steps))


def smooth_window(steps: int) -> int:
    return max(SMOOTH_MIN_STEPS, int(SMOOTH_FRACTION * steps))


def trailing_median(values, window: int) -> np.ndarray:
    """Median of the last ``window`` values at each step (fewer at the start)."""
    x = np.asarray(values, dtype=float)
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = np.median(x[max(0, i - window + 1): i + 1])
    return out


def held(at: list[int], cond: list[bool], last: int, persist: int | None) -> tuple[int, int] | None:
    """``(onset, unambiguous)`` of the first stretch where ``cond`` holds at every
    measurement for ``persist`` steps (None: to the end of the run), confirmed for
    CONFIRM_STEPS; None if there is none."""
    for i, start in enumerate(at):
        if not cond[i] or start + CONFIRM_STEPS > last:
            continue
        end = last if persist is None else min(last, start + persist)
        if all(c for s, c in zip(at[i:], cond[i:]) if s <= end):
            sure = next((s for s in at[i:] if s >= start + CONFIRM_STEPS), last)
            return start, sure
    return None


def _layer_truth(kind: str, per_layer: dict[str, tuple[int, int]], groups: dict | None = None,
                 evidence: str = "") -> Truth | None:
    if not per_layer:
        return None
    layers = sorted({m for name in per_layer for m in (groups.get(name, [name]) if groups else [name])})
    return Truth(kind, min(o for o, _ in per_layer.values()), min(u for _, u in per_layer.values()),
                 tuple(layers), evidence)


def dead_relu(s: Series, steps: int) -> Truth | None:
    hits = {}
    for name, fractions in s.dead.items():
        found = held(s.probe_steps, [f >= DEAD_LAYER_FRACTION for f in fractions], steps - 1, None)
        if found:
            onset, confirmed = found
            sure = next((at for at, f in zip(s.probe_steps, fractions) if at >= confirmed and f >= DEAD_SURE_FRACTION),
                        steps - 1)
            hits[name] = (onset, sure)
    detail = ", ".join(f"{n}: {s.dead[n][-1]:.0%} dead at the end" for n in hits)
    return _layer_truth("dead_relu", hits, s.layer_groups, detail)


def saturation(s: Series, steps: int) -> Truth | None:
    hits = {}
    for name, fractions in s.saturated.items():
        found = held(s.probe_steps, [f >= SATURATED_LAYER_FRACTION for f in fractions], steps - 1,
                     persist_steps(steps))
        if found:
            hits[name] = found
    detail = ", ".join(f"{n}: {max(s.saturated[n]):.0%} saturated at most" for n in hits)
    return _layer_truth("saturation", hits, s.layer_groups, detail)


def relative(s: Series, steps: int, which: dict) -> dict[str, np.ndarray]:
    """Per layer, the trailing median of ``which`` (gradient or update norms) over the weight norm."""
    window = smooth_window(steps)
    out = {}
    for name, values in which.items():
        w = np.asarray(s.weight[name][:len(values)], dtype=float)
        ratio = np.asarray(values, dtype=float) / np.where(w > 0, w, np.inf)
        out[name] = trailing_median(np.nan_to_num(ratio, nan=np.inf), window)
    return out


def gradient_kinds(s: Series, steps: int) -> list[Truth | None]:
    if not s.grad:
        return [None, None]
    rel = relative(s, steps, s.grad)
    at = list(range(steps))
    largest = np.max(np.stack(list(rel.values())), axis=0)
    vanishing, exploding = {}, {}
    for name, r in rel.items():
        small = held(at, list(r < VANISHING_SPREAD * largest), steps - 1, persist_steps(steps))
        if small:
            vanishing[name] = small
        big = held(at, list(r >= EXPLODING_RELATIVE_GRADIENT), steps - 1, persist_steps(steps))
        if big:
            exploding[name] = big
    spread = ", ".join(f"{n}: median |g|/|W| {np.median(rel[n]):.1e} vs largest {np.median(largest):.1e}"
                       for n in vanishing)
    size = ", ".join(f"{n}: median |g|/|W| {np.median(rel[n]):.2g}" for n in exploding)
    return [_layer_truth("vanishing_gradient", vanishing, evidence=spread),
            _layer_truth("exploding_gradient", exploding, evidence=size)]


def update_ratio(s: Series, steps: int) -> Truth | None:
    if not s.update:
        return None
    early = max(PERSIST_MIN_STEPS + CONFIRM_STEPS, int(UPDATE_EARLY_FRACTION * steps))
    low, high = UPDATE_RATIO_BAND
    hits = {}
    for name, r in relative(s, steps, s.update).items():
        r = r[:early]
        found = held(list(range(len(r))), list((r < low) | (r > high)), min(steps, early) - 1,
                     persist_steps(steps))
        if found:
            hits[name] = found
    detail = ", ".join(f"{n}: |dW|/|W| {np.median(relative(s, steps, {n: s.update[n]})[n][:early]):.1e}"
                       for n in hits)
    return _layer_truth("update_ratio", hits, evidence=detail)


def input_not_normalized(s: Series) -> Truth | None:
    st = s.inputs
    if not st:
        return None
    problems = []
    if abs(st["mean"]) > INPUT_MEAN_LIMIT or not 1 / INPUT_STD_FACTOR <= st["std"] <= INPUT_STD_FACTOR:
        problems.append(f"overall mean {st['mean']:.3g}, std {st['std']:.3g}")
    means, stds = np.asarray(st["unit_mean"]), np.asarray(st["unit_std"])
    if st["layout"] == "image":
        bad = (np.abs(means) > INPUT_MEAN_LIMIT) | (stds > INPUT_STD_FACTOR) | (stds < 1 / INPUT_STD_FACTOR)
        unit = "channel"
    else:
        bad = (np.abs(means) > FEATURE_MEAN_LIMIT) | (stds > FEATURE_STD_LIMIT)
        unit = "feature"
    if bad.any():
        i = int(np.argmax(np.abs(means) + stds))
        problems.append(f"{int(bad.sum())} {unit}(s) off, e.g. {unit} {i}: mean {means[i]:.3g}, std {stds[i]:.3g}")
    return Truth("input_not_normalized", 0, 0, (), "; ".join(problems)) if problems else None


def initial_loss(s: Series, chance_loss: float | None) -> Truth | None:
    if chance_loss is None or s.initial_loss is None:
        return None
    if s.initial_loss >= INITIAL_LOSS_RATIO * chance_loss:
        return Truth("initial_loss", 0, 0, (), f"loss at init {s.initial_loss:.3g} vs {chance_loss:.3g} expected")
    return None


def overfitting(s: Series) -> Truth | None:
    v = s.validation
    if len(v) < OVERFIT_EPOCHS + 1:
        return None
    vals = [x[1] for x in v]
    start = s.initial_loss if s.initial_loss is not None and math.isfinite(s.initial_loss) else s.loss[0]
    best = [int(np.argmin(vals[:i + 1])) for i in range(len(v))]
    cond = [vals[i] >= (1 + OVERFIT_RISE) * vals[best[i]] and vals[i] - vals[best[i]] >= OVERFIT_MIN_RISE * start
            and v[i][2] < v[best[i]][2] and vals[best[i]] < start for i in range(len(v))]
    for i in range(len(v) - OVERFIT_EPOCHS + 1):
        if all(cond[i:]):
            b = best[i]
            return Truth("overfitting", v[b][0], v[i][0], (),
                         f"best val {vals[b]:.3g} at step {v[b][0]}; {vals[i] / vals[b] - 1:.0%} above it at step "
                         f"{v[i][0]}, {vals[-1] / vals[b] - 1:.0%} at the end; train {v[b][2]:.3g} -> {v[-1][2]:.3g}")
    return None


def divergence(s: Series, steps: int) -> Truth | None:
    loss = np.asarray(s.loss, dtype=float)
    smooth = trailing_median(loss, smooth_window(steps))
    floor = np.minimum.accumulate(smooth)
    ratio = np.where(floor > 0, smooth / np.where(floor > 0, floor, 1), np.where(smooth > 0, np.inf, 1.0))
    nonfinite = np.flatnonzero(~np.isfinite(loss))
    start = s.initial_loss if s.initial_loss is not None and math.isfinite(s.initial_loss) else smooth[0]
    climbing = (ratio >= DIVERGENCE_FACTOR) & (smooth - floor >= DIVERGENCE_MIN_RISE * start)
    found = held(list(range(steps)), list(climbing), steps - 1, persist_steps(steps))
    crossing = found[0] if found else None  # crossing the factor is the certainty: no confirmation wait
    if nonfinite.size:
        crossing = int(nonfinite[0]) if crossing is None else min(crossing, int(nonfinite[0]))
    if crossing is None:
        return None
    onset = int(np.argmin(smooth[:crossing + 1]))
    top = float(np.max(loss[np.isfinite(loss)])) if np.isfinite(loss).any() else math.nan
    return Truth("divergence", onset, crossing, (),
                 f"smoothed loss {smooth[onset]:.3g} at step {onset}, {DIVERGENCE_FACTOR:g}x that by step {crossing}; "
                 f"largest finite loss {top:.3g}"
                 + (f"; non-finite from step {int(nonfinite[0])}" if nonfinite.size else ""))


def plateau(s: Series, steps: int) -> Truth | None:
    span = max(PLATEAU_MIN_STEPS, int(PLATEAU_FRACTION * steps))
    window = smooth_window(steps)
    if steps <= span or steps < window:
        return None
    loss = np.asarray(s.loss, dtype=float)
    smooth = trailing_median(loss, window)
    start = float(np.median(loss[:window]))
    moved = np.abs(smooth[window - 1: span + 1] / start - 1)
    if start > 0 and np.all(moved < PLATEAU_PROGRESS):
        return Truth("plateau", 0, span, (), f"smoothed loss within {moved.max():.1%} of its start "
                                             f"{start:.3g} for {span} steps")
    return None
