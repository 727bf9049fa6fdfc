"""The page scripts' pure parts (smoothing, the NaN-safe codec) under Node's own test runner."""
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent.parent / "web" / "js"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_page_scripts_unit_tests_pass_under_node():
    result = subprocess.run(["node", "--test", "test/"], cwd=JS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout
