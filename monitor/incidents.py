"""Incidents: a run's flags grouped by cause, so that a run tells one story per problem.

Each detector sees one symptom, and one problem shows several: dead ReLUs stop the
gradient from flowing back (``vanishing_gradient`` upstream), so the weights barely move
(``update_ratio`` too low) and the loss stalls (``plateau``); a divergence leaves NaN
layers, saturated and dead units behind it. Shown as a pile, newest first, the symptoms come
before their cause (they are confirmed sooner) and their advice contradicts it (raise the
learning rate, says a tiny update; lower it, say the dead ReLUs). An incident is a cause and
the symptoms it explains: the cause's flags first, the layers listed once, one piece of
advice, the cause's.

**What explains what** (:data:`EXPLAINS`), from the mechanisms the background notes give
(CS231n: dead ReLUs and saturated units pass no gradient; a learning rate too high kills
ReLUs, explodes gradients and diverges; an input far from zero mean saturates and kills
units): a flag is a symptom of an incident when the incident's cause explains its kind.
Causes are taken most fundamental first (:data:`CAUSES`); a flag no cause explains is a
cause of its own. Flags of one kind are one incident (three dead layers are one problem).
After a divergence, every flag of a kind it explains that comes at or after its step
(less :data:`DIVERGENCE_LEAD` steps, the climb that confirmed it) is its consequence, even
of a kind that would otherwise be a cause (dead units after a NaN).

**Advice that agrees.** Where two incidents of one run advise opposite changes of the
learning rate, the less fundamental one carries a ``note`` naming the other, saying to
follow that one first and why. Pure: no I/O; ``flags`` in, incidents out.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from monitor.events import Flag, Severity

#: Kinds in the order they are taken as causes: what breaks training first, first.
CAUSES = ("input_not_normalized", "initial_loss", "rank_desync", "divergence", "dead_relu", "saturation",
          "exploding_gradient", "vanishing_gradient", "update_ratio", "plateau", "overfitting")
#: cause kind -> the kinds of flag it explains. ``update_ratio:low`` / ``:high`` by the flag's direction.
EXPLAINS = {
    "input_not_normalized": {"saturation", "dead_relu", "exploding_gradient", "vanishing_gradient",
                             "update_ratio:low", "plateau"},
    "divergence": {"saturation", "dead_relu", "vanishing_gradient", "exploding_gradient", "update_ratio:low",
                   "update_ratio:high", "plateau", "overfitting"},
    "dead_relu": {"vanishing_gradient", "update_ratio:low", "plateau"},
    "saturation": {"vanishing_gradient", "update_ratio:low", "plateau"},
    "exploding_gradient": {"update_ratio:high"},
    "vanishing_gradient": {"update_ratio:low", "plateau"},
    "update_ratio:low": {"plateau"},
}
#: Steps before a divergence's flag from which its consequences are counted (the climb
#: that confirms it: monitor.detectors.divergence's patience).
DIVERGENCE_LEAD = 10
#: Which way each kind's advice moves the learning rate (None: it does not say one way).
LOWER, RAISE = "lower", "raise"
LR_ADVICE = {"divergence": LOWER, "dead_relu": LOWER, "saturation": LOWER, "exploding_gradient": LOWER,
             "update_ratio:low": RAISE, "update_ratio:high": LOWER}
_SEVERITY = {Severity.CRITICAL: 0, Severity.WARNING: 1}


@dataclass(frozen=True)
class Incident:
    """One problem of a run: its cause (``cause``, the kind; ``flags[0]`` its first flag),
    the symptoms it explains (their kinds, in step order), the layers it touches (each
    once, in the order the flags named them), the most severe of its flags, its first
    step, the cause's message and advice, and a ``note`` when that advice conflicts with
    a more fundamental incident's."""

    cause: str
    severity: Severity
    step: int
    layers: tuple[str, ...]
    flags: tuple[Flag, ...]
    symptoms: tuple[str, ...]
    message: str
    advice: str
    note: str = ""


def group_flags(flags: Iterable[Flag]) -> list[Incident]:
    """The run's incidents, most severe first, then by the step they began at."""
    flags = sorted(flags, key=lambda f: (f.step if f.step is not None else 0))
    members: dict[str, list[Flag]] = {}  # cause key -> its flags, the cause's own first
    order: list[str] = []
    divergence = next((f for f in flags if f.kind == "divergence"), None)
    taken: set[int] = set()
    if divergence is not None:  # its consequences first: after it, everything it explains is its doing
        start = (divergence.step or 0) - DIVERGENCE_LEAD
        mine = [f for f in flags if f.kind == "divergence" or (
            _key(f) in EXPLAINS["divergence"] and (f.step or 0) >= start)]
        members["divergence"], order = mine, ["divergence"]
        taken = {id(f) for f in mine}
    rest = [f for f in flags if id(f) not in taken]
    for flag in sorted(rest, key=lambda f: (_rank(f), f.step or 0)):
        owner = next((c for c in order if _key(flag) == c or (
            c != "divergence" and _key(flag) in EXPLAINS.get(c, ()))), None)  # (its consequences: above)
        if owner is None:
            owner = _key(flag)
            order.append(owner)
            members[owner] = []
        members[owner].append(flag)
    incidents = [_incident(key, members[key]) for key in order]
    incidents = _noted(incidents, order)
    return sorted(incidents, key=lambda i: (_SEVERITY.get(i.severity, 3), i.step))


def _incident(key: str, flags: Sequence[Flag]) -> Incident:
    own = [f for f in flags if _key(f) == key]
    symptoms = sorted((f for f in flags if _key(f) != key), key=lambda f: f.step or 0)
    ordered = own + symptoms
    layers = tuple(dict.fromkeys(f.layer for f in ordered if f.layer))
    return Incident(
        cause=own[0].kind, severity=min((f.severity for f in ordered), key=lambda s: _SEVERITY.get(s, 3)),
        step=min(f.step or 0 for f in ordered), layers=layers, flags=tuple(ordered),
        symptoms=tuple(dict.fromkeys(f.kind for f in symptoms)), message=own[0].message, advice=own[0].advice)


def _noted(incidents: list[Incident], order: list[str]) -> list[Incident]:
    """Each incident whose learning-rate advice opposes a more fundamental one's says so."""
    out = []
    for i, incident in enumerate(incidents):
        mine = LR_ADVICE.get(order[i])
        first = next((j for j in range(i) if mine and LR_ADVICE.get(order[j]) not in (None, mine)), None)
        if first is None:
            out.append(incident)
            continue
        other = incidents[first]
        why = (f"{other.cause.replace('_', ' ')} is what a learning rate too high causes, and raising it would "
               "make it worse" if LR_ADVICE.get(order[first]) == LOWER else "it is the more fundamental problem")
        note = (f"This advice ({mine} the learning rate) is the opposite of the {other.cause} incident's (from "
                f"step {other.step}): follow that one first, since {why}; if this one persists once that is "
                "fixed, come back to it.")
        out.append(replace(incident, note=note))
    return out


def _key(flag: Flag) -> str:
    """The flag's kind, with the direction for the kind whose two directions differ."""
    if flag.kind == "update_ratio":
        return f"update_ratio:{flag.evidence.get('direction', 'low')}"
    return flag.kind


def _rank(flag: Flag) -> int:
    kind = flag.kind
    return CAUSES.index(kind) if kind in CAUSES else len(CAUSES)
