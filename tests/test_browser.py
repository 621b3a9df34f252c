"""Every dashboard page, served by a real ``streamlit run`` and rendered by headless Chromium.

Slow (run with ``python -m pytest -m slow tests/test_browser.py``); skipped when Chromium is
not installed (``apt-get install chromium``). The app's default model is
``bundled:refusal-organism``; when ``cache/models/refusal-organism/config.json`` does not
exist, the server runs with ``REFUSAL_ATLAS_TEST_MODEL=tiny`` (the tiny random Llama of
``tests/tiny.py``), so the test works before the organism is built.

Each page must draw its title, show no Streamlit exception box and no traceback, and give
a screenshot that is not blank. Pages that need computed data show their empty state.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import browser_util

PAGES = browser_util.app_pages()
MIN_SCREENSHOT_BYTES = 10_000


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("streamlit") / "server.log"


@pytest.fixture(scope="module")
def app_url(server_log):
    """Base URL of the dashboard on 127.0.0.1, served for this module's tests."""
    if browser_util.chromium_binary() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with browser_util.streamlit_server(browser_util.server_env(), server_log) as url:
        yield url


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no server log)"


def test_dom_problems_catch_exceptions_and_blank_pages():
    good = "<h1><span>Export</span></h1><p>ok</p>"
    assert browser_util.dom_problems(good, "Export") == []
    broken = good + '<div data-testid="stException">Traceback (most recent call last)</div>'
    assert len(browser_util.dom_problems(broken, "Export")) == 2
    assert browser_util.dom_problems("<div>Export</div>", "Export"), "a page without its <h1> title is not drawn"


def test_app_declares_pages():
    assert [page.url_path for page in PAGES][0] == "", "the first page should be the default one, served at /"
    assert len({page.url_path for page in PAGES}) == len(PAGES) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_renders(page, app_url, server_log, tmp_path):
    png = tmp_path / f"{page.name}.png"
    rendered = browser_util.render_page(f"{app_url}/{page.url_path}", page.title, png)

    problems = browser_util.dom_problems(rendered.dom, page.title)
    assert not problems, f"{page.script}: {problems}\nserver log:\n{_log_tail(server_log)}"
    assert rendered.settled, f"{page.script}: still running after {rendered.seconds:.0f} s"
    assert png.is_file() and png.stat().st_size > MIN_SCREENSHOT_BYTES, f"{page.script}: screenshot blank or missing"


@pytest.mark.slow
def test_state_carries_across_pages_in_one_session(app_url, server_log):
    """Compute on Data, follow the sidebar to Generate, add a direction, generate: two columns."""
    data, generate = PAGES[0], next(page for page in PAGES if page.script.endswith("generate.py"))
    with browser_util.browser_session() as tab:
        tab.goto(f"{app_url}/{data.url_path}")
        assert tab.wait(data.title), _log_tail(server_log)
        tab.click("Compute activations and DIM directions")
        assert tab.wait(data.title, 600), _log_tail(server_log)
        assert "DIM candidates" in tab.dom()
        tab.nav(generate.title)
        assert tab.wait(generate.title), _log_tail(server_log)
        tab.expand("DIM (")
        tab.check("Add a direction (ActAdd)")
        assert tab.wait(generate.title), _log_tail(server_log)
        tab.click("Generate ")
        assert tab.wait(generate.title, 600), _log_tail(server_log)
        dom = tab.dom()
    assert not browser_util.dom_problems(dom, generate.title), _log_tail(server_log)
    # The button counts the ActAdd column, and each column reports its refusal rate.
    assert "x 2 columns" in dom and dom.count("% refused") >= 2, dom[-2000:]
    with pytest.raises(browser_util.DevToolsError, match="no enabled button"):
        with browser_util.browser_session() as other:
            other.goto(f"{app_url}/{data.url_path}")
            other.wait(data.title)
            other.click("A button this app does not have")
