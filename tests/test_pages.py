"""The dashboard's pages over HTTP (no browser): they render, load nothing from elsewhere,
and carry a Content-Security-Policy. What the pages do is tested in a real browser
(test_dashboard_browser.py)."""
import re

import pytest

from servers import serving
from web.figures import compare_figures, run_page_figures


@pytest.fixture
def server(tmp_path):
    with serving(tmp_path) as running:
        yield running


def test_every_named_model_of_the_run_page_has_its_own_name():
    models = {m.id: m for fig in run_page_figures().values() for m in fig.references()}  # shared ones once
    names = [m.name for m in models.values() if m.name]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_compare_page_has_a_training_and_a_validation_source_per_run():
    names = {m.name for fig in compare_figures(["a", "b", "c"]).values() for m in fig.references() if m.name}
    assert {f"cmp_{kind}_{i}" for kind in ("loss", "val") for i in range(3)} <= names


@pytest.mark.parametrize("path", ["/", "/runs/some-run-1", "/compare?runs=a,b"])
def test_pages_render_and_load_scripts_from_this_server_only(server, http_get, path):
    status, headers, body = http_get(server.url + path)
    assert status == 200
    page = body.decode()
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


def test_every_script_a_page_names_is_served(server, http_get):
    _, _, body = http_get(server.url + "/runs/some-run-1")
    for src in re.findall(r'<script src="([^"]+)"', body.decode()):
        status, headers, content = http_get(server.url + src)
        assert status == 200 and len(content) > 1000, src
        assert "javascript" in headers["Content-Type"], src


def test_the_inline_bokeh_script_carries_the_pages_nonce(server, http_get):
    _, headers, body = http_get(server.url + "/runs/some-run-1")
    nonce = re.search(r"'nonce-([^']+)'", headers["Content-Security-Policy"]).group(1)
    assert f'<script nonce="{nonce}">' in body.decode()


def test_a_run_id_that_cannot_be_one_is_not_found(server, http_get):
    assert http_get(server.url + "/runs/..%2Fetc")[0] == 404
    assert http_get(server.url + "/compare?runs=<script>")[0] == 400


def test_a_run_name_is_escaped_in_the_page(server, http_get):
    # The id check refuses markup; the template escapes whatever passes it anyway.
    _, _, body = http_get(server.url + "/runs/a-b_c.1")
    assert 'data-run="a-b_c.1"' in body.decode()
