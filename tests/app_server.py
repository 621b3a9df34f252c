"""Serve the dashboard with a real ``streamlit run`` for browser tests and screenshots.

The server listens on 127.0.0.1 only, on a free port, in its own process group, and is
stopped whatever happens. Chromium is Debian's (``apt-get install chromium``), driven by
Playwright through ``executable_path``; Playwright never downloads a browser here.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 90.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@dataclass(frozen=True)
class AppPage:
    """One ``st.Page`` of app.py: its script, title, and the URL path it is served at (``""`` = root)."""

    script: str
    title: str
    url_path: str

    @property
    def name(self) -> str:
        """A file-name-safe name for the page (its script's stem)."""
        return Path(self.script).stem


def chromium_launch_options() -> dict:
    """``BrowserType.launch`` options for Debian's Chromium (no sandbox: CI runs as root)."""
    return {"executable_path": CHROMIUM, "args": list(CHROMIUM_ARGS), "headless": True}


def app_pages(app: Path = APP) -> list[AppPage]:
    """The pages app.py declares with ``st.Page(...)``, read from its source (not executed).

    The URL path is ``url_path`` when given, else the file name's stem (what Streamlit
    infers); the ``default=True`` page is served at the root URL.
    """
    pages = []
    for node in ast.walk(ast.parse(app.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page" and node.args):
            continue
        script = ast.literal_eval(node.args[0])
        wanted = ("title", "url_path", "default")
        options = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg in wanted}
        url_path = "" if options.get("default") else options.get("url_path") or Path(script).stem
        pages.append(AppPage(script=script, title=options.get("title") or Path(script).stem, url_path=url_path))
    return pages


def tiny_unless_built() -> list[str]:
    """Stand-ins for ``streamlit_server``: the tiny test model when the organism is not built."""
    from refusal_core.model.loading import organism_built

    return [] if organism_built() else ["--tiny"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group, then kill it if it does not exit in time."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@contextlib.contextmanager
def streamlit_server(
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
    stand_ins: list[str] | None = None,
) -> Iterator[str]:
    """Run ``streamlit run app.py`` on a free 127.0.0.1 port; yields its base URL.

    ``env`` entries are added to this process's environment; ``extra_args`` are more
    ``streamlit run`` options; ``stand_ins`` (``--tiny``, ``--no-umap-warm-up``) run the
    server through ``tests/patched_app.py`` with those test stand-ins applied.
    """
    port = free_port()
    base_url = f"http://{HOST}:{port}"
    launcher = ["tests.patched_app", *stand_ins, "--"] if stand_ins else ["streamlit", "run"]
    command = [
        sys.executable, "-m", *launcher, str(APP),
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.address", HOST,
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
        *(extra_args or []),
    ]  # fmt: skip
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    log_file = open(log_path, "wb") if log_path else contextlib.nullcontext(subprocess.DEVNULL)  # noqa: SIM115
    with log_file as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while not _healthy(base_url):
                if process.poll() is not None:
                    raise RuntimeError(f"streamlit exited with code {process.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from {base_url}/_stcore/health within {HEALTH_TIMEOUT_S:.0f} s")
                time.sleep(0.5)
            yield base_url
        finally:
            _stop(process)
