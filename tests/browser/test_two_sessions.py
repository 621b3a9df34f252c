"""Two browser sessions generating at once on one real Streamlit server, offline and quiet.

The server is started with the project's own .streamlit/config.toml (no file-watcher or
usage-statistics flags on the command line), so this also checks that configuration: the
server log must hold no watcher messages and no traceback, and the pages must ask for
nothing outside 127.0.0.1 (every other request is blocked and recorded, as on an offline
machine). Playwright drives Debian's Chromium; nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
RESULT_TIMEOUT_MS = 180_000

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, log path) of ``streamlit run app.py`` on the tiny model, with the repo's config."""
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    import playwright.sync_api  # noqa: F401 - required (requirements.txt): a broken install fails, never skips

    log = tmp_path_factory.mktemp("server") / "server.log"
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REFUSAL_ATLAS_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.patched_app",
                "--tiny",
                "--",
                "app.py",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        yield url, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_two_sessions_generate_at_once_offline(server, browser):
    # ``browser`` is pytest-playwright's session browser (Debian's Chromium, launched with
    # conftest's options): a second sync_playwright() inside that session's loop would fail.
    from playwright.sync_api import expect

    url, log = server
    outside: list[str] = []
    console_errors: list[str] = []

    def only_local(route) -> None:
        host = urlparse(route.request.url).hostname or ""
        if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    contexts = []
    try:
        pages = []
        for _ in range(2):  # two contexts: two independent Streamlit sessions
            context = browser.new_context(viewport={"width": 1300, "height": 900})
            contexts.append(context)
            context.route("**/*", only_local)
            page = context.new_page()
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            # Open the root and follow the navigation: a page URL opened first would run the page
            # file alone (Streamlit's app_pages/ folder mode) until app.py's st.navigation has run.
            page.goto(url)
            expect(page.get_by_role("link", name="Data & activations", exact=True)).to_be_visible(
                timeout=RESULT_TIMEOUT_MS
            )
            page.get_by_role("link", name="Generate", exact=True).click()
            pages.append(page)
        buttons = [page.get_by_role("button", name=re.compile(r"^Generate \d+ prompts")) for page in pages]
        for button in buttons:
            expect(button).to_be_enabled(timeout=RESULT_TIMEOUT_MS)
        for button in buttons:  # both start before either finishes
            button.click()
        for page in pages:
            expect(page.get_by_text(re.compile(r"\d+% complied")).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
            assert page.get_by_text("Generation failed").count() == 0
            assert page.locator("[data-testid='stException']").count() == 0
    finally:
        for context in contexts:
            context.close()

    server_log = log.read_text(errors="replace")
    assert "Traceback" not in server_log and "Already borrowed" not in server_log, server_log[-3000:]
    assert "Inotify" not in server_log and "watchdog" not in server_log.lower(), server_log[-3000:]
    assert outside == [], outside
    assert not [text for text in console_errors if "ERR_INTERNET_DISCONNECTED" in text or "ERR_NAME" in text]
