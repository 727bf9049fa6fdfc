"""The package split holds (ARCHITECTURE.md): trainer_hooks -> monitor <- web; monitor and
web never import torch, the web framework lives in web only, and monitor.cli, the
composition root, is the one module that reaches into the other two (lazily).

The import graph is checked by import-linter's contracts in pyproject.toml (every module,
imports inside functions included); every module is also imported for real, to catch what
a static graph cannot see (an import by name, a plugin)."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_in_pyproject_hold():
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def every_module(package: str) -> list[str]:
    return [package] + [m.name for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")]


@pytest.mark.parametrize("package", ["monitor", "web"])
def test_importing_any_module_of_the_analysis_and_web_packages_does_not_import_torch(package):
    modules = every_module(package)
    assert len(modules) > 5  # the walk found the package
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]



def test_ruff_finds_nothing_in_the_tree():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]
