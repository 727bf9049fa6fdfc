"""In a Jupyter notebook, the run's live page as a link in the cell's output.

A link, not an inline frame: the dashboard forbids being framed (``frame-ancestors
'none'``), because a page that frames it could trick a click on *Stop run*; the link opens
the page in its own tab. Outside a notebook (a script, a plain IPython shell) nothing is
shown: the stderr line of :meth:`~trainer_hooks.Monitor.where` says the same.
"""
from __future__ import annotations

import html
import sys


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where rich output is shown), without importing IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def show_link(url: str, run_id: str) -> bool:
    """Show the run's page as a link in the cell's output; False when not in a notebook."""
    if not in_notebook():
        return False
    from IPython.display import HTML, display

    display(HTML(f'babysit: run <code>{html.escape(run_id)}</code>, live at '
                 f'<a href="{html.escape(url, quote=True)}" target="_blank" rel="noopener">'
                 f'{html.escape(url)}</a>'))
    return True
