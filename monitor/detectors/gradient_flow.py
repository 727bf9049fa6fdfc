"""Reading the gradient flow out of one ``layer_stats`` event, for the vanishing- and
exploding-gradient detectors: per-layer RMS gradients in forward order, and the flag both
raise when layers stay beyond their bound."""
from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.detectors.update_ratio import is_weight
from monitor.events import Event, Flag, Severity, Signal

#: The gradients a detector can read: d loss / d layer output, or the weights' own.
SIGNALS = (Signal.OUTPUT_GRAD.value, Signal.PARAM_GRAD.value)
_NORM = "Norm"  # in the class names of normalisation layers: BatchNorm2d, LayerNorm, GroupNorm...
#: Modules whose gradients say nothing about the flow: an embedding's weight gradient is
#: sparse by design (only the rows of the tokens in the batch), so its per-element RMS
#: measures the batch's vocabulary, not the gradient reaching it.
_SPARSE = ("Embedding", "EmbeddingBag")


@dataclass(frozen=True)
class LayerGradient:
    layer: str
    module: str
    rms: float  # per-element root mean square of the gradient (finite elements)
    #: RMS over the elements that got any gradient (``rms / sqrt(1 - zero_frac)``), None
    #: when none did. A ReLU passes exactly 0 for its inactive units and nothing at all for
    #: dead ones: those zeros are gating (the dead_relu story), not a gradient fading with
    #: depth, so the flow is read on the elements it reaches.
    active_rms: float | None = None
    #: A normalisation layer comes later in the forward pass: the gradient reaching this
    #: layer has been divided by that layer's input scale (LayerNorm, BatchNorm: d norm(x) /
    #: dx ~ 1 / std(x)), so comparing it with the output layer's measures that scale, not depth.
    below_norm: bool = False


def layer_gradients(event: Event, signal: str) -> list[LayerGradient]:
    """The layers' gradients in forward order (the output layer last), from one ``layer_stats`` event.

    Forward order comes from the activation summaries (recorded as the forward pass ran);
    without them, output gradients are taken in reverse arrival order (backward runs from
    the output) and parameter gradients in arrival order. Non-finite norms are skipped, and
    so are layers that feed a normalisation layer: BatchNorm makes them scale-free, so the
    gradient reaching them shrinks as their weights grow (1 / ||w||), whatever the depth; the
    flow is read at the normalisation layer's output instead.
    """
    summaries = event.data.summaries
    forward = [s for s in summaries if s.signal is Signal.ACTIVATION]
    position = {s.layer: i for i, s in enumerate(forward)}
    normalised = {a.layer for a, b in zip(forward, forward[1:]) if _NORM in b.module}
    last_norm = max((i for i, s in enumerate(forward) if _NORM in s.module), default=-1)
    wanted = Signal(signal)
    found = []
    for i, s in enumerate(summaries):
        if s.signal is not wanted or (wanted is Signal.PARAM_GRAD and not is_weight(s)):
            continue
        module = s.layer.rpartition(".")[0] if wanted is Signal.PARAM_GRAD else s.layer
        if module in normalised or any(word in s.module for word in _SPARSE):
            continue
        count = s.numel - s.nan - s.inf
        if count <= 0 or not math.isfinite(s.norm):
            continue
        fallback = -i if wanted is Signal.OUTPUT_GRAD else i
        key = (0, position[module]) if module in position else (1, fallback)
        active = count * (1.0 - min(max(s.zero_frac, 0.0), 1.0)) if math.isfinite(s.zero_frac) else count
        active_rms = s.norm / math.sqrt(active) if active > 0 and s.norm > 0 else None
        below = module in position and position[module] < last_norm
        found.append((key, LayerGradient(s.layer, s.module, s.norm / math.sqrt(count), active_rms, below)))
    return [g for _, g in sorted(found, key=lambda pair: pair[0])]


def fmt_layers(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def persistent(persistence, step: int, grads: list[LayerGradient], why: dict) -> list[LayerGradient]:
    """Hold each layer's condition (``why`` not None) in ``persistence``; the layers for which
    it is confirmed at ``step``, in forward order."""
    return [g for g in grads if persistence.add(g.layer, step, why[g.layer] is not None)]


def gradient_flag(kind: str, advice: str, event: Event, signal: str, grads: list[LayerGradient],
                  hits: list[LayerGradient], ratio: dict, why: dict, persistence, *, verb: str, relation: str,
                  beyond: str, bounds: str, evidence: dict) -> Flag:
    """The flag of a gradient detector, naming the earliest layer beyond its bound: by its
    ratio to the output layer's gradient (``relation``: "times" or "of"), or by its own RMS
    (``beyond``: "below the floor 1e-08"). Every such layer is in the evidence with its
    RMS, its ratio and which bound it broke (``why``)."""
    first, output = hits[0], grads[-1]
    if why[first.layer] == "ratio":
        where = (f"gets {ratio[first.layer]:.2g} {relation} the output layer {output.layer}'s gradient "
                 f"(RMS {first.rms:.2g} vs {output.rms:.2g})")
    else:
        where = f"has an RMS gradient of {first.rms:.2g}, {beyond}"
    plural = "s" if len(hits) > 1 else ""
    samples, steps = persistence.samples[first.layer], persistence.span(first.layer, event.step)
    message = (f"gradients {verb}: layer {first.layer} ({first.module}) {where}, for {steps} steps "
               f"({samples} samples); {len(hits)} layer{plural} {bounds}: {fmt_layers([g.layer for g in hits])}")
    return Flag(kind, Severity.WARNING, message, advice, layer=first.layer, evidence={
        "step": event.step, "signal": signal, "output_layer": output.layer, "output_rms": output.rms,
        "samples": samples, "steps": steps, "min_samples": persistence.min_samples,
        "min_steps": persistence.min_steps,
        "layers": [{"layer": g.layer, "module": g.module, "rms": g.rms, "active_rms": g.active_rms,
                    "ratio": ratio[g.layer], "why": why[g.layer]}
                   for g in hits], **evidence})
