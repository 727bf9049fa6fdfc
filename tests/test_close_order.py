"""close() ends a run after everything its last records made the detectors say.

Regression (issue 9, item 0): the detectors run on the writer thread, so a flag raised by
the evaluation that stops a run (overfitting on the same val_loss that stops it early)
was stored after ``run_end`` or before it depending on whether the writer had woken up
before close(); and a flag to stop on, raised by the last losses, came too late to decide
how the run ended.
"""
from __future__ import annotations

from torch import nn

from monitor.detectors.divergence import Divergence
from monitor.detectors.overfitting import Overfitting
from monitor.early_stopping import EarlyStopping
from monitor.store import RunStore
from trainer_hooks import watch


def test_a_flag_raised_by_the_evaluation_that_stops_the_run_is_stored_before_its_end(tmp_path):
    stopping = EarlyStopping(monitor="val_loss", patience=1)
    with watch(nn.Linear(2, 2), logdir=tmp_path, detectors=[Overfitting(patience=1)],
               early_stopping=stopping) as mon:
        for loss, val_loss in [(2.0, 1.0), (1.0, 1.5)]:  # val_loss rises while the loss halves
            mon.log(loss=loss)
            mon.log(val_loss=val_loss)
            if mon.should_stop:
                break
    assert [flag.kind for flag in mon.flags] == ["overfitting"]
    events = RunStore(tmp_path).events(mon.run_id)
    kinds = [event.kind.value for event in events]
    # the flag follows the evaluation that raised it, before the stop it explains and the end
    assert kinds[-5:] == ["scalars", "flag", "status", "status", "run_end"], kinds
    assert events[-5].data.values == {"val_loss": 1.5}
    assert [e.data.state.value for e in events[-3:-1]] == ["stopping", "stopped"]


def test_a_flag_to_stop_on_raised_by_the_last_losses_decides_how_the_run_ends(tmp_path):
    with watch(nn.Linear(2, 2), logdir=tmp_path, detectors=[Divergence()],
               early_stopping=EarlyStopping(stop_on=("divergence",))) as mon:
        for loss in [2.0, 1.5, float("nan")]:
            mon.log(loss=loss)
    assert [flag.kind for flag in mon.flags] == ["divergence"]
    [info] = RunStore(tmp_path).runs()
    assert info.status == "diverged"
    assert RunStore(tmp_path).events(mon.run_id)[-1].data.state.value == "diverged"
