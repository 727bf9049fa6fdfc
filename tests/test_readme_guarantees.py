"""Every test the README's Guarantees section names exists: a promise backed by a test
that was renamed or removed is a promise nobody checks any more."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def guarantees() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Guarantees")
    return text[start:text.index("\n## ", start + 1)]


def test_every_test_the_guarantees_name_exists():
    section = guarantees()
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", section)
    assert len(named) >= 15, "the Guarantees section names its tests"
    for filename, function in named:
        path = ROOT / "tests" / filename
        assert path.is_file(), f"README names {filename}, which does not exist"
        if function:
            assert re.search(rf"^def {function}\(", path.read_text(), re.M), \
                f"README names {filename}::{function}, which does not exist"
