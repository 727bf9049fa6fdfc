"""Optional frameworks in the tests: a skip that names the extra, or in CI a failure."""
from __future__ import annotations

import importlib
import os

import pytest


def framework(module: str, extra: str):
    """The framework's module, or a skip that names the extra to install; where
    ``BABYSIT_REQUIRE_FRAMEWORKS`` is set (CI, whose dev extra has both) a missing one fails."""
    if os.environ.get("BABYSIT_REQUIRE_FRAMEWORKS"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module.split('.')[0]} is not installed (pip install "
                                              f"'babysit[{extra}]'; CI installs it)")
