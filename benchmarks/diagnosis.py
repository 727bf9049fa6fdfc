"""Does babysit tell a person, early and correctly, what went wrong? The diagnosis benchmark (issue 10).

Runs the zoo (``benchmarks/zoo``: small realistic trainings, each pathology beside a
healthy twin, ground truth measured with raw torch by the zoo's own code) watched by
``trainer_hooks.watch`` at the settings given, and scores babysit's flags against the truth:

* a flag is **true** when its kind is among the run's measured truth kinds and, when both
  name layers, its layer is one of the truth's layers or inside one ("3.weight" is in "3");
* **recall**: pathological runs whose primary kind got a true flag, over pathological runs
  (per kind and overall); a run whose primary kind was not measured is left out (with
  ``--check-zoo`` that is an error), and so is one that babysit stopped (early stopping,
  a flag it stops on) before its primary problem's measured onset: it was no longer
  watching, and the zoo trains on unwatched only so that the truth stays the same;
* **precision**: true flags over all flags, on pathological runs;
* **false flags on healthy runs**: every flag on a run whose truth is empty;
* **delay**: first true flag of a kind minus that truth's ``unambiguous`` step (negative:
  earlier), per kind, median and max; **on time** when within ``INIT_DELAY`` steps for a
  problem present at initialisation (the zoo entry's ``at_init`` for its primary kind,
  a measured onset of 0 for the others), within ``RUN_DELAY_FRACTION`` of the run's
  steps otherwise.

Run: ``python benchmarks/diagnosis.py`` (all runs, default settings, 2 workers);
``--every N`` (several, ``default`` among them, run in one pool: a report each),
``--early-stopping``, ``--only NAME...``, ``--quick`` (the CI subset),
``--jobs N``, ``--json PATH``, ``--check-zoo`` (exit 1 unless every healthy run measures
nothing and every sick run measures its primary kind). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import zoo  # noqa: E402  (benchmarks/zoo, found through the path above)

#: The issue's targets.
RECALL_TARGET = 0.95
PRECISION_TARGET = 0.95
#: Steps after the unambiguous step within which a problem present at init must be flagged.
INIT_DELAY = 20
#: Share of the run's steps within which any other problem must be flagged.
RUN_DELAY_FRACTION = 0.05
KINDS = ("dead_relu", "saturation", "vanishing_gradient", "exploding_gradient", "input_not_normalized",
         "initial_loss", "overfitting", "divergence", "plateau", "update_ratio")


def in_layer(flag_layer: str | None, layers: list[str]) -> bool:
    if not flag_layer or not layers:
        return True
    return any(flag_layer == layer or flag_layer.startswith(layer + ".") for layer in layers)


def judge(result: dict) -> dict:
    """Marks each flag true or false and finds each truth kind's first true flag."""
    truth = {t["kind"]: t for t in result["truth"]}
    for flag in result["flags"]:
        t = truth.get(flag["kind"])
        flag["true"] = t is not None and in_layer(flag["layer"], t["layers"])
    detections = {}
    for kind, t in truth.items():
        first = min((f["step"] for f in result["flags"] if f["kind"] == kind and f["true"]), default=None)
        if first is not None:
            delay = first - t["unambiguous"]
            at_init = result["at_init"] if kind == result["primary"] else t["at_init"]
            bound = INIT_DELAY if at_init else RUN_DELAY_FRACTION * result["steps"]
            detections[kind] = {"step": first, "delay": delay, "on_time": delay <= bound, "bound": bound}
    result["detections"] = detections
    result["healthy"] = result["primary"] is None
    result["primary_measured"] = result["primary"] in truth if result["primary"] else not truth
    stop = result.get("stopped_at")
    primary = truth.get(result["primary"]) if result["primary"] else None
    result["stopped_before_onset"] = stop is not None and primary is not None and primary["onset"] > stop
    return result


def zoo_problems(results: list[dict]) -> list[str]:
    """What is wrong with the zoo itself: a healthy run that measures a pathology, a sick
    run that does not measure its primary kind, or one marked "at init" whose primary
    kind is not measured from step 0 (a problem that starts at step 0 without being
    marked, such as a learning rate far too high, keeps the later bound)."""
    problems = []
    for r in results:
        kinds = [t["kind"] for t in r["truth"]]
        if r["primary"] is None and kinds:
            problems.append(f"{r['name']}: healthy, but measures {', '.join(kinds)}")
        elif r["primary"] is not None and r["primary"] not in kinds:
            problems.append(f"{r['name']}: meant to show {r['primary']}, measures {', '.join(kinds) or 'nothing'}")
        elif r["primary"] is not None:
            at_init = next(t["at_init"] for t in r["truth"] if t["kind"] == r["primary"])
            if r["at_init"] and not at_init:
                problems.append(f"{r['name']}: declared at_init={r['at_init']}, measured onset "
                                f"{next(t['onset'] for t in r['truth'] if t['kind'] == r['primary'])}")
    return problems


def score(results: list[dict]) -> dict:
    """Recall, precision, false flags on healthy runs and delays, per kind and overall."""
    sick = [r for r in results if not r["healthy"] and r["primary_measured"] and not r["stopped_before_onset"]]
    per_kind = {}
    for kind in KINDS:
        runs = [r for r in sick if r["primary"] == kind]
        flags = [f for r in results if not r["healthy"] for f in r["flags"] if f["kind"] == kind]
        delays = [r["detections"][kind] for r in results if not r["healthy"] and kind in r["detections"]]
        per_kind[kind] = {
            "runs": len(runs), "found": sum(kind in r["detections"] for r in runs),
            "true": sum(f["true"] for f in flags), "flags": len(flags),
            "healthy_flags": sum(f["kind"] == kind for r in results if r["healthy"] for f in r["flags"]),
            "delays": [d["delay"] for d in delays], "late": sum(not d["on_time"] for d in delays)}
    flags = [f for r in results if not r["healthy"] for f in r["flags"]]
    detections = [d for r in results if not r["healthy"] for d in r["detections"].values()]
    return {"per_kind": per_kind, "runs": len(sick), "found": sum(r["primary"] in r["detections"] for r in sick),
            "true": sum(f["true"] for f in flags), "flags": len(flags),
            "healthy_runs": sum(r["healthy"] for r in results),
            "healthy_flags": [(r["name"], f["kind"], f["layer"], f["step"]) for r in results if r["healthy"]
                              for f in r["flags"]],
            "late": sum(not d["on_time"] for d in detections), "detections": len(detections),
            "unmeasured": [r["name"] for r in results if not r["primary_measured"]],
            "stopped_before_onset": [r["name"] for r in results if r["stopped_before_onset"]]}


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "-"


def _delays(values: list[int]) -> tuple[str, str]:
    return (f"{statistics.median(values):+g}", f"{max(values):+d}") if values else ("-", "-")


def table(s: dict) -> str:
    lines = [f"{'kind':<22}{'runs':>5}{'found':>6}{'recall':>7}{'flags':>6}{'true':>5}{'prec.':>6}"
             f"{'healthy':>8}{'delay med':>10}{'max':>6}{'late':>5}"]
    for kind, k in s["per_kind"].items():
        if not (k["runs"] or k["flags"] or k["healthy_flags"]):
            continue
        med, top = _delays(k["delays"])
        lines.append(f"{kind:<22}{k['runs']:>5}{k['found']:>6}{_ratio(k['found'], k['runs']):>7}{k['flags']:>6}"
                     f"{k['true']:>5}{_ratio(k['true'], k['flags']):>6}{k['healthy_flags']:>8}{med:>10}{top:>6}"
                     f"{k['late']:>5}")
    alld = [d for k in s["per_kind"].values() for d in k["delays"]]
    med, top = _delays(alld)
    lines.append(f"{'all':<22}{s['runs']:>5}{s['found']:>6}{_ratio(s['found'], s['runs']):>7}{s['flags']:>6}"
                 f"{s['true']:>5}{_ratio(s['true'], s['flags']):>6}{len(s['healthy_flags']):>8}{med:>10}{top:>6}"
                 f"{s['late']:>5}")
    recall = s["found"] / s["runs"] if s["runs"] else 0.0
    precision = s["true"] / s["flags"] if s["flags"] else 1.0
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines += ["",
              f"targets: recall {recall:.2f} (>= {RECALL_TARGET}: {verdict(recall >= RECALL_TARGET)}); "
              f"precision {precision:.2f} (>= {PRECISION_TARGET}: {verdict(precision >= PRECISION_TARGET)}); "
              f"flags on {s['healthy_runs']} healthy runs: {len(s['healthy_flags'])} (0: "
              f"{verdict(not s['healthy_flags'])}); late detections {s['late']} of {s['detections']} "
              f"(0: {verdict(s['late'] == 0)}; at init <= {INIT_DELAY} steps, else <= "
              f"{RUN_DELAY_FRACTION:.0%} of the run)"]
    if s["healthy_flags"]:
        lines.append("false flags on healthy runs: " + "; ".join(
            f"{name} {kind}" + (f"[{layer}]" if layer else "") + f"@{step}"
            for name, kind, layer, step in s["healthy_flags"]))
    if s["unmeasured"]:
        lines.append("left out (primary kind not measured): " + ", ".join(s["unmeasured"]))
    if s["stopped_before_onset"]:
        lines.append("left out of recall (stopped by babysit before the problem's onset): "
                     + ", ".join(s["stopped_before_onset"]))
    return "\n".join(lines)


def run_line(r: dict) -> str:
    """One run: its truth (kind@unambiguous step) and its flags (kind[layer]@step, FALSE
    when not true, EARLY when true but raised before the truth's onset: a guess that came
    true rather than a detection)."""
    truth = ", ".join(f"{t['kind']}@{t['unambiguous']}" + ("(init)" if t["at_init"] else "") for t in r["truth"])
    onsets = {t["kind"]: t["onset"] for t in r["truth"]}
    flags = ", ".join(f["kind"] + (f"[{f['layer']}]" if f["layer"] else "") + f"@{f['step']}"
                      + ("" if f["true"] else " FALSE")
                      + (" EARLY" if f["true"] and f["step"] < onsets[f["kind"]] else "") for f in r["flags"])
    stop = f" stopped@{r['stopped_at']}" if r["stopped_at"] is not None else ""
    return (f"{r['name']:<34}{r['steps']:>6}{stop} {r['seconds']:>6.1f}s  primary {r['primary'] or 'healthy'}"
            f"\n    truth: {truth or '-'}\n    flags: {flags or '-'}")


def sampling(text: str) -> int | None:
    """An ``--every`` value: a positive interval, or ``default`` (babysit's automatic one)."""
    if text == "default":
        return None
    every = int(text)
    if every < 1:
        raise ValueError(text)
    return every


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=sampling, nargs="+", default=[None], metavar="N|default",
                   help="fixed sampling interval(s) (default: babysit's automatic); several run in one pool, "
                        "a report each")
    p.add_argument("--early-stopping", action="store_true",
                   help="attach EarlyStopping(monitor='val_loss', patience=5) to runs with validation")
    p.add_argument("--only", nargs="+", metavar="NAME", help="these zoo runs only")
    p.add_argument("--quick", action="store_true", help="the CI subset (every kind, a few healthy runs)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--check-zoo", action="store_true", help="exit 1 if the zoo's truth disagrees with its entries")
    args = p.parse_args(argv)
    names = args.only or (list(zoo.QUICK) if args.quick else [e.name for e in zoo.ZOO])
    unknown = [n for n in names if n not in zoo.BY_NAME]
    if unknown:
        p.error(f"--only: unknown run(s) {', '.join(unknown)}; the zoo has: {', '.join(zoo.BY_NAME)}")
    everies = list(dict.fromkeys(args.every))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="babysit-diagnosis-") as tmp:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {(n, every): pool.submit(zoo.run_entry, n, logdir=os.path.join(tmp, f"{n}-{every}"),
                                               every=every, early_stopping=args.early_stopping)
                       for n, every in sorted(((n, e) for e in everies for n in names), key=_longest_first)}
            results = {key: judge(f.result()) for key, f in futures.items()}
    wall = time.perf_counter() - started
    reports = [report([results[n, every] for n in names], every, args, wall) for every in everies]
    if args.json:
        args.json.write_text(json.dumps(reports[0] if len(reports) == 1 else {"reports": reports}, indent=1))
    return 1 if args.check_zoo and any(r["zoo_problems"] for r in reports) else 0


def report(results: list[dict], every: int | None, args, wall: float) -> dict:
    """Print one setting's runs, score table and zoo self-check; return its JSON report
    (``seconds``: the wall time of the whole pool, shared with the other settings)."""
    setting = (f"every={every}" if every else "every=default") + (
        ", EarlyStopping(val_loss, patience=5)" if args.early_stopping else "")
    print(f"babysit diagnosis benchmark: {len(results)} runs, {setting}, {args.jobs} workers, "
          f"{wall:.0f} s wall, {os.cpu_count()} CPUs\n")
    for r in results:
        print(run_line(r))
    s = score(results)
    print()
    print(table(s))
    problems = zoo_problems(results)
    if problems:
        print("\nzoo self-check FAILED:\n  " + "\n  ".join(problems))
    elif args.check_zoo:
        print("\nzoo self-check: every healthy run measures nothing, every sick run its primary kind")
    print()
    return {"setting": setting, "seconds": wall, "results": results, "score": s, "zoo_problems": problems}


def _longest_first(task: tuple[str, int | None]) -> tuple[int, float]:
    """Start the long runs first, so the workers finish together: the zoo's long runs, then
    every sampled step, then the sparser settings."""
    name, every = task
    return 0 if name.startswith("long-") else 1, -1 / every if every else 0


if __name__ == "__main__":
    sys.exit(main())
