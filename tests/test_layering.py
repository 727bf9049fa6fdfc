"""The package split holds: monitor and web never import torch (ARCHITECTURE.md)."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["monitor", "monitor.events", "monitor.codec", "monitor.store",
                                    "monitor.frames", "monitor.export", "monitor.cli", "web", "web.app",
                                    "web.live", "web.api", "web.serving", "web.downsample", "web.production",
                                    "monitor.store_reads", "web.history", "web.png"])
def test_importing_the_analysis_and_web_packages_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
