"""Build hook: bundle the dashboard's JavaScript (web/js, npm + esbuild) into the package.

Third-party JS is never committed: ``npm ci`` installs socket.io-client from the lockfile
and esbuild bundles it with our scripts into ``web/static/dist``, which ships in the wheel
(and is served from the source tree in an editable install). Everything else about the
package lives in pyproject.toml.
"""
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
JS = ROOT / "web" / "js"
DIST = ROOT / "web" / "static" / "dist"


def _newest(paths) -> float:
    return max((p.stat().st_mtime for p in paths), default=0.0)


def bundle_js() -> None:
    """``npm ci && npm run build`` in web/js, unless the bundle is newer than its sources."""
    sources = [*JS.joinpath("src").rglob("*.js"), JS / "package-lock.json"]
    bundles = list(DIST.glob("*.js"))
    if bundles and _newest(bundles) >= _newest(sources):
        return
    npm = shutil.which("npm")
    if npm is None:
        if bundles:
            print("babysit build: npm not found; using the existing bundle in web/static/dist")
            return
        raise SystemExit("babysit build: the dashboard's scripts need Node.js and npm to bundle "
                         "(apt-get install nodejs npm), then build again")
    if not (JS / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True)
    subprocess.run([npm, "run", "build"], cwd=JS, check=True)


class BuildWithJs(build_py):
    def run(self):
        bundle_js()
        super().run()


setup(cmdclass={"build_py": BuildWithJs})
