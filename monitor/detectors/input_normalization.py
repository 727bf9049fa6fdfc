"""Input not normalised: the model's input is far from zero mean and unit variance.

Heuristic (CS231n, data preprocessing: "always use zero-centred data", "normalise to
control variance"; the Xavier and Kaiming inits assume inputs of unit scale): an input
centred far from zero makes every first-layer unit see a large shared offset (all-positive
inputs make the weight gradients of a unit share one sign, so SGD zig-zags), and an
input of the wrong scale puts the pre-activations outside the range the init was designed
for (saturation, dead units, a learning rate that does not transfer). The hooks give each
sampled batch's floating input as :class:`~monitor.events.InputStats`: mean and std over
the whole tensor and per channel (dimension 1: image channels, or the features of an
(N, F) input). Integer inputs (token ids) are not floating and never reach this detector.

The input is judged the way practitioners normalise it:

* images and other channel-first inputs (3-d and more: ``N x C x ...``) are normalised
  per channel (``torchvision.transforms.Normalize``), so each channel's mean must be
  within ``max_abs_mean`` (1) of 0;
* flattened images and tabular data (2-d: ``N x F``) are standardised either per feature
  or globally, with the training set's one mean and std. Global standardisation leaves
  each feature offset by its own mean in units of the pooled std (MNIST flattened: up to
  1.4, normal), so a feature's mean is only held against the wide ``max_feature_mean``
  (4 units), and its std against ``max_std``: a column in thousands is off by far more.

Rules, flagged once per run (warning), on every sample over at least ``min_steps`` steps
and ``patience`` samples (:class:`~monitor.detectors.common.Persistence`: the same verdict
at any sampling interval; an off batch not yet confirmed asks for the next steps to be
sampled):

* ``|mean|`` above ``max_abs_mean``, over the whole input or (3-d and more) in any
  channel, or (2-d) above ``max_feature_mean`` in any feature, each by more than
  ``noise`` standard errors of a batch mean (per-feature means of a small batch scatter
  by chance);
* the whole input's std below ``min_std`` or above ``max_std``, or any channel's or
  feature's std above ``max_std``. One with a tiny std is left alone: a constant channel
  or a rare binary feature is legitimate, and the whole tensor's std catches an input
  scaled away.

The band is wide on purpose: images in 0..1 (mean about 0.45, std 0.3) are not flagged,
raw digits in 0..16 (mean 4.9), raw pixels in 0..255 (std about 70) and a tabular column
in thousands are.

Sample flag: ``input_not_normalized (warning) at step 10: the model input has mean 4.87
and std 6.02 (values 0 to 16) over 10 steps (11 samples): |mean| above 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from dataclasses import field

from monitor.detectors.common import MIN_SAMPLES, MIN_STEPS, Persistence
from monitor.events import Event, Flag, InputStats, Kind, Severity

KIND = "input_not_normalized"
#: Largest |mean| (whole input or one channel) that still counts as zero-centred.
MAX_ABS_MEAN = 1.0
#: Largest |mean| of one feature of a 2-d input: global standardisation leaves features
#: offset by up to ~1.5 pooled stds (MNIST flattened: 1.4); 4 leaves a wide margin.
MAX_FEATURE_MEAN = 4.0
#: The band of std (whole input) that counts as unit variance: an order of magnitude either way.
MIN_STD = 0.1
MAX_STD = 10.0
#: Standard errors of a batch mean added to ``max_abs_mean``: what chance alone can give.
NOISE = 3.0
#: Fewest sampled batches off (none on in between, over ``min_steps`` steps) before the flag.
PATIENCE = MIN_SAMPLES

ADVICE = ("Zero-centre and normalise the input with the training set's statistics: subtract the mean and "
          "divide by the std computed on the training data (per channel for images, e.g. "
          "torchvision.transforms.Normalize(mean, std); per feature for tabular data), and apply the same "
          "numbers to validation and test data. Inputs of unit scale are what Xavier/Kaiming init and usual "
          "learning rates assume; BatchNorm after the first layer helps but does not replace this.")


@dataclass
class InputNormalization:
    """``update(event) -> list[Flag]`` over ``input_stats`` events; see the module."""

    max_abs_mean: float = MAX_ABS_MEAN
    max_feature_mean: float = MAX_FEATURE_MEAN
    min_std: float = MIN_STD
    max_std: float = MAX_STD
    patience: int = PATIENCE
    noise: float = NOISE
    min_steps: int = MIN_STEPS
    _held: Persistence = field(init=False)
    _fired: bool = False

    def __post_init__(self):
        if not (self.max_abs_mean > 0 and math.isfinite(self.max_abs_mean)):
            raise ValueError(f"max_abs_mean: expected a positive finite number, got {self.max_abs_mean!r}")
        if not 0 <= self.min_std < 1:
            raise ValueError(f"min_std: expected a std in [0, 1), got {self.min_std!r}")
        if not 1 < self.max_std:
            raise ValueError(f"max_std: expected a std above 1, got {self.max_std!r}")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience: expected at least 1 sampled batch, got {self.patience!r}")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"noise: expected a finite number of standard errors >= 0, got {self.noise!r}")
        if not (self.max_feature_mean >= self.max_abs_mean and math.isfinite(self.max_feature_mean)):
            raise ValueError(f"max_feature_mean: expected a finite number >= max_abs_mean ({self.max_abs_mean}), "
                             f"got {self.max_feature_mean!r}")
        if not isinstance(self.min_steps, int) or self.min_steps < 0:
            raise ValueError(f"min_steps: expected an integer >= 0 (steps), got {self.min_steps!r}")
        self._held = Persistence(self.patience, self.min_steps)

    def look_closer(self) -> int:
        """Steps to sample next: ``min_steps`` while the input is off but not yet confirmed."""
        return self.min_steps if not self._fired and self._held.pending() else 0

    def update(self, event: Event) -> list[Flag]:
        if self._fired or event.kind is not Kind.INPUT_STATS or event.data.integer:
            return []  # ids (tokens, categories) are not normalised: their mean and std mean nothing
        stats: InputStats = event.data
        reasons = self._reasons(stats)
        if not self._held.add("input", event.step, bool(reasons)):
            return []
        self._fired = True
        samples, steps = self._held.samples["input"], self._held.span("input", event.step)
        channel = _worst_channel(stats, self.max_abs_mean, self.max_std)
        where = f" (values {stats.min:.4g} to {stats.max:.4g})" if math.isfinite(stats.min + stats.max) else ""
        return [Flag(
            KIND, Severity.WARNING,
            f"the model input has mean {stats.mean:.4g} and std {stats.std:.4g}{where} over {steps} steps "
            f"({samples} samples): {'; '.join(reasons)}", ADVICE,
            evidence={"mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max,
                      "shape": list(stats.shape), "reasons": reasons, "step": event.step, "samples": samples,
                      "steps": steps, "per": "channel" if len(stats.shape) > 2 else "feature",
                      "max_feature_mean": self.max_feature_mean,
                      "channel_mean": list(stats.channel_mean), "channel_std": list(stats.channel_std),
                      "worst_channel": channel, "max_abs_mean": self.max_abs_mean, "min_std": self.min_std,
                      "max_std": self.max_std})]

    def _reasons(self, stats: InputStats) -> list[str]:
        """What is off in one batch (NaN statistics, from a batch without a finite value, say nothing).

        A mean is off when it is further from 0 than ``max_abs_mean`` plus ``noise`` (:data:`NOISE`)
        standard errors of a batch mean (std / sqrt(values)): a small batch of tabular data
        of std 5 has per-feature means of about +-1 by chance alone.
        """
        reasons = []
        numel = math.prod(stats.shape)
        per_channel = numel // stats.shape[1] if len(stats.shape) > 1 and stats.shape[1] else 0
        features = len(stats.shape) == 2  # flattened or tabular: standardised globally or per feature
        bar, what = (self.max_feature_mean, "feature") if features else (self.max_abs_mean, "channel")
        if abs(stats.mean) > self.max_abs_mean + self.noise * stats.std / math.sqrt(max(numel, 1)):
            reasons.append(f"|mean| above {self.max_abs_mean:g}")
        else:
            means = [abs(m) for m, s in zip(stats.channel_mean, stats.channel_std)
                     if per_channel and abs(m) > bar + self.noise * s / math.sqrt(per_channel)]
            if means:
                reasons.append(f"a {what}'s |mean| above {bar:g} (up to {max(means):.4g})")
        stds = [s for s in stats.channel_std if math.isfinite(s)]
        if stats.std < self.min_std:
            reasons.append(f"std below {self.min_std:g}")
        elif stats.std > self.max_std:
            reasons.append(f"std above {self.max_std:g}")
        elif stds and max(stds) > self.max_std:
            reasons.append(f"a {what}'s std above {self.max_std:g} (up to {max(stds):.4g})")
        return reasons


def _worst_channel(stats: InputStats, max_abs_mean: float, max_std: float) -> int | None:
    """The channel furthest past the thresholds (|mean| / max_abs_mean or std / max_std, the
    larger), None without finite per-channel statistics."""
    offs = [(max(abs(m) / max_abs_mean, s / max_std), i)
            for i, (m, s) in enumerate(zip(stats.channel_mean, stats.channel_std)) if math.isfinite(m + s)]
    return max(offs)[1] if offs else None
