"""watch() in a real Jupyter kernel (nbclient): the live page as a link in the cell's
output, and cells run again without closing the run first."""
from __future__ import annotations

import re


from frameworks import framework

nbformat = framework("nbformat", "dev")
nbclient = framework("nbclient", "dev")

SETUP = """
import torch
from torch import nn
from trainer_hooks import watch
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
"""
TRAIN = """
mon = watch(model, optimizer, run="nb", logdir={logdir!r}, dashboard=True)
for _ in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    mon.log(loss=loss)
"""
CLOSE = "mon.close()"


def _outputs(cell, kind: str) -> str:
    found = []
    for output in cell.outputs:
        if kind == "html" and output.output_type == "display_data":
            found.append(output.data.get("text/html", ""))
        elif kind == "stderr" and output.output_type == "stream" and output.name == "stderr":
            found.append(output.text)
    return "".join(found)


def test_in_a_notebook_the_live_page_is_a_link_and_a_cell_run_again_closes_the_forgotten_run(tmp_path):
    import monitor
    from monitor.store import RunStore

    train = TRAIN.format(logdir=str(tmp_path))
    cells = [nbformat.v4.new_code_cell(source) for source in (SETUP, train, train, CLOSE, train, CLOSE)]
    notebook = nbformat.v4.new_notebook(cells=cells)
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3").execute()
    first, again = notebook.cells[1], notebook.cells[2]
    link = re.search(r'href="(http://127\.0\.0\.1:\d+/runs/(nb-[\w-]+))"', _outputs(first, "html"))
    assert link, _outputs(first, "html")
    assert "never closed; closing it now" in _outputs(again, "stderr")
    assert _outputs(notebook.cells[4], "html")  # a watch after close() works, and shows its link
    with RunStore(tmp_path) as store:
        runs = sorted(store.runs(), key=lambda info: info.started)
    assert [info.name for info in runs] == ["nb", "nb", "nb"]
    assert runs[0].run == link.group(2)
    ended = monitor.load_run(runs[0].run, logdir=tmp_path).status.iloc[-1]
    assert ended.state == "finished" and "closed by a new watch()" in ended.reason
    assert all(len(monitor.load_run(info.run, logdir=tmp_path).series("loss")) == 3 for info in runs)


def test_outside_a_notebook_no_link_is_shown():
    from trainer_hooks.notebook import in_notebook, show_link

    assert not in_notebook()
    assert show_link("http://127.0.0.1:1/runs/x", "x") is False
